"""The diffusion path of `fedonco data`: procedural masks (and backgrounds), diffusion appearance.

``common.data.build`` plans and writes shards exactly as for the procedural generator; when
``data.generator = "diffusion"`` each shard job carries a :class:`DiffusionJob`, and after the
procedural slices of the shard are rendered, :func:`diffuse_shard` replaces their images:

- ``mode = "composite"``: only tumour slices are sampled; the tumour and a ``dilate_px`` ring
  are generated on the procedural slice and blended back (tumour-free slices stay procedural);
- ``mode = "whole"``: every slice is generated from noise, conditioned on its mask and site.

The mask is always the procedural one, so labels are exact by construction; whether the image
shows the tumour there is what `fedonco diffusion report` measures. Per-sample manifest params
keep the procedural draws (they describe the mask and, in composite mode, the background) plus a
``diffusion`` entry. Slices are sampled in fixed chunks of ``sample_batch`` within a shard with
one seed per slice, so rebuilding, or regenerating one slice (:func:`regenerate_diffusion_slice`,
which re-samples its chunk), gives the same bytes with the same model and torch thread count.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Config
from common.seeds import SPLIT_CODE, diffusion_slice_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiffusionJob:
    model_dir: str
    model_sha256: str
    mode: str
    steps: int
    batch: int
    dilate_px: int
    blur_px: float

    def diffuse(self, job, slices: list, only: int | None = None) -> None:
        """Replace the images of a shard job's procedural slices (``common.data.build``)."""
        diffuse_shard(job, slices, only=only)

    def to_dict(self) -> dict:
        return {
            "model_dir": self.model_dir,
            "model_sha256": self.model_sha256,
            "mode": self.mode,
            "ddim_steps": self.steps,
            "sample_batch": self.batch,
            "dilate_px": self.dilate_px,
            "blur_px": self.blur_px,
        }


def diffusion_job(cfg: Config) -> DiffusionJob | None:
    """The sampling settings of a dataset config (None for the procedural generator).

    The architecture is the model's own; the dataset config's ``[diffusion]`` section decides
    how it is sampled (mode, DDIM steps, batch, composite ring). Fails early, naming the reason,
    when the model is missing or was trained for another image size.
    """
    if cfg.data.generator != "diffusion":
        return None
    import importlib.util
    import json

    if importlib.util.find_spec("diffusers") is None:
        raise ValueError(
            "data.generator 'diffusion' needs the optional 'diffusion' extra: "
            "pip install -e '.[diffusion]' (diffusers, safetensors)"
        )

    from common.data.diffusion.model import META, model_sha256

    model_dir = Path(cfg.data.diffusion_model or "")
    sha = model_sha256(model_dir)
    meta = json.loads((model_dir / META).read_text())
    if meta["image_size"] != cfg.data.image_size:
        raise ValueError(
            f"diffusion model {model_dir} makes {meta['image_size']}px slices but data.image_size "
            f"is {cfg.data.image_size}; train a model for this size or change the profile"
        )
    dc = cfg.diffusion
    return DiffusionJob(
        str(model_dir.resolve()),
        sha,
        dc.mode,
        dc.ddim_steps,
        dc.sample_batch,
        dc.dilate_px,
        dc.blur_px,
    )


@functools.lru_cache(maxsize=2)
def _model(model_dir: str, sha: str):
    import torch

    from common.data.diffusion.model import load_model, model_sha256

    if model_sha256(model_dir) != sha:
        raise ValueError(f"diffusion model {model_dir} changed (sha256 differs from the manifest)")
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)  # one process per core in build_dataset's pool
    return load_model(model_dir)


def slice_seed(seed: int, site_index: int, split: str, index: int) -> int:
    """The sampling seed of one slice (independent of the procedural stream of the same slice)."""
    return diffusion_slice_seed(seed, site_index, SPLIT_CODE[split], index)


def chunks(masks: list[np.ndarray], mode: str, batch: int) -> list[list[int]]:
    """Positions to sample, in fixed groups of at most ``batch`` (the unit of regeneration)."""
    todo = [i for i, m in enumerate(masks) if mode == "whole" or m.any()]
    return [todo[k : k + batch] for k in range(0, len(todo), batch)]


def diffuse_shard(job, slices: list, only: int | None = None) -> None:
    """Replace the images of ``slices`` (one shard job's, in order) in place.

    ``job`` is a ``common.data.build.ShardJob`` with ``diffusion`` set. With ``only`` (a position),
    just the chunk holding it is sampled (regeneration of one slice).
    """
    from common.data.diffusion.sample import generate_hu

    dj: DiffusionJob = job.diffusion
    model = _model(dj.model_dir, dj.model_sha256)
    for group in chunks([s.mask for s in slices], dj.mode, dj.batch):
        if only is not None and only not in group:
            continue
        seeds = [slice_seed(job.seed, job.site_index, job.split, job.start + i) for i in group]
        images = generate_hu(
            model,
            np.stack([slices[i].mask for i in group]),
            np.full(len(group), job.label),
            seeds,
            mode=dj.mode,
            steps=dj.steps,
            background_hu=np.stack([slices[i].image for i in group]),
            dilate_px=dj.dilate_px,
            blur_px=dj.blur_px,
        )
        for i, img, sd in zip(group, images, seeds, strict=True):
            s = slices[i]
            s.image = img
            s.params["diffusion"] = {"mode": dj.mode, "seed": sd}
            if dj.mode == "whole":  # the procedural noise realisation is not in this image
                s.params["noise"]["sigma_liver_hu"] = None


def regenerate_diffusion_slice(manifest: dict, split: str, site: str, index: int):
    """Re-sample one slice of a diffusion dataset (needs the same model at the recorded path)."""
    from common.data.build import ShardJob, make_slices

    d = manifest.get("diffusion")
    if not d:
        raise ValueError("manifest says generator 'diffusion' but has no 'diffusion' entry")
    entry = next(
        (
            e
            for e in manifest["shards"]
            if e["split"] == split
            and e["site"] == site
            and e["start"] <= index < e["start"] + e["n"]
        ),
        None,
    )
    if entry is None:
        raise ValueError(f"no slice {index} of site {site} in split {split!r}")
    from common.data.loader import site_spec
    from common.data.sites import preset_labels, roster_of

    i = manifest["site_names"].index(site)
    cfg_data = manifest["config"]["data"]
    job = ShardJob(
        split,
        i,
        0,
        entry["start"],
        entry["n"],
        manifest["attacker_seed"] if split == "attacker" else manifest["seed"],
        site_spec(manifest, site),
        manifest["image_size"],
        cfg_data["noise_ref_hu"],
        DiffusionJob(
            d["model_dir"],
            d["model_sha256"],
            d["mode"],
            d["ddim_steps"],
            d["sample_batch"],
            d["dilate_px"],
            d["blur_px"],
        ),
        preset_labels(roster_of(manifest))[i],
    )
    return make_slices(job, only=index - entry["start"])[index - entry["start"]]


def build_dataset(cfg: Config, out, **kwargs) -> dict:
    """Any dataset: procedural, or (``data.generator = "diffusion"``) with the images of its
    slices sampled by the diffusion model. Same arguments as ``common.data.build.build_dataset``."""
    from common.data.build import build_dataset as build

    return build(cfg, out, diffusion=diffusion_job(cfg), **kwargs)


def regenerate_slice(root_or_manifest, split: str, site: str, index: int):
    """Re-create one slice of any dataset: a diffusion dataset's is re-sampled with its recorded
    seed by the model at the recorded path (whose sha256 must match the manifest)."""
    from common.data import loader
    from common.data.store import read_manifest

    m = root_or_manifest if isinstance(root_or_manifest, dict) else read_manifest(root_or_manifest)
    if m.get("generator", "procedural") == "diffusion":
        return regenerate_diffusion_slice(m, split, site, index)
    return loader.regenerate_slice(m, split, site, index)
