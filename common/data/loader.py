"""Load a generated dataset: numpy arrays per (split, site), torch datasets, single-slice regeneration.

Network inputs use one fixed HU window for every image and site (clip, then scale to [0, 1]);
never per-image normalisation, which would erase HU meaning and the sites' scanner differences.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.config import parse_config
from common.data.sites import SiteSpec
from common.data.store import DatasetIntegrityError, load_shard, read_manifest
from common.seeds import SPLITS

if TYPE_CHECKING:  # the generator (scipy) is imported only to regenerate a slice
    from common.data.generate import Slice


def load_arrays(
    root: str | Path, split: str, site: str | None = None, manifest: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images int16 HU, masks uint8, slice indices, site IDs) of one split, one or all sites.

    Every shard's sha256 is checked against the manifest before its bytes are used.
    """
    manifest = manifest or read_manifest(root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    if site is not None and site not in manifest["site_names"]:
        raise ValueError(f"unknown site {site!r}; sites are {manifest['site_names']}")
    entries = [e for e in manifest["shards"] if e["split"] == split and site in (None, e["site"])]
    size = manifest["image_size"]
    if not entries:
        empty = np.zeros((0, size, size))
        return (
            empty.astype(np.int16),
            empty.astype(np.uint8),
            np.zeros(0, np.int32),
            np.zeros(0, "U1"),
        )
    parts = [(load_shard(root, e), e["site"]) for e in entries]
    images = np.concatenate([p["image"] for p, _ in parts])
    masks = np.concatenate([p["mask"] for p, _ in parts])
    index = np.concatenate([p["index"] for p, _ in parts])
    # as wide as the longest ID (a roster's names are up to 32 characters, not letters A-E)
    sites = np.concatenate([np.full(len(p["index"]), s, f"U{len(s)}") for p, s in parts])
    return images, masks, index, sites


def sample_params(manifest: dict, split: str, site: str) -> list[dict]:
    """The per-sample generator parameters of one split and site, in slice-index order."""
    out = []
    for e in manifest["shards"]:
        if e["split"] == split and e["site"] == site:
            out.extend(e["samples"])
    return out


def site_spec(manifest: dict, site: str) -> SiteSpec:
    """The resolved SiteSpec of one site, as recorded in a manifest."""
    if site not in manifest["site_names"]:
        raise ValueError(f"unknown site {site!r}")
    i = manifest["site_names"].index(site)
    spec_d = {k: v for k, v in manifest["sites"][i].items() if k != "kernel"}
    return SiteSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_d.items()})


def regenerate_slice(
    root_or_manifest: str | Path | dict, split: str, site: str, index: int
) -> Slice:
    """Re-create one slice from (seed, site, split, index) and the manifest's resolved site spec.

    A diffusion dataset (manifest ``generator = "diffusion"``) is refused here: its slices are
    re-sampled by ``common.data.diffusion.generate.regenerate_slice``.
    """
    m = root_or_manifest if isinstance(root_or_manifest, dict) else read_manifest(root_or_manifest)
    if m.get("generator") == "import":
        raise ValueError("an imported dataset's slices come from real CT: none can be regenerated")
    if m.get("generator", "procedural") == "diffusion":
        raise ValueError(
            "a diffusion dataset's slice is re-sampled by its model: use "
            "common.data.diffusion.generate.regenerate_slice"
        )
    spec = site_spec(m, site)
    cfg = parse_config(m["config"], "manifest")
    i = m["site_names"].index(site)
    seed = m["attacker_seed"] if split == "attacker" else m["seed"]
    from common.data.generate import render_slice  # the generator (scipy) only when needed

    return render_slice(seed, i, split, index, spec, m["image_size"], cfg.data.noise_ref_hu)


def _torch_dataset_cls():
    import torch
    from torch.utils.data import Dataset

    from common.transforms import to_inputs

    class CTSlices(Dataset):
        """Slices of one split (one site or all) as (image [1,H,W] in [0,1], mask [1,H,W]) floats."""

        def __init__(self, root: str | Path, split: str, site: str | None = None, window=None):
            manifest = read_manifest(root)
            images, masks, self.index, self.sites = load_arrays(root, split, site, manifest)
            self.window = tuple(window or manifest["window"])
            self.images = to_inputs(images, self.window)
            self.masks = torch.from_numpy(masks.astype(np.float32)).unsqueeze(1)

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], self.masks[i]

    return CTSlices


def ct_dataset(root: str | Path, split: str, site: str | None = None, window=None):
    """A torch Dataset over one split of one site (or all sites when site is None)."""
    return _torch_dataset_cls()(root, split, site, window)


__all__ = [
    "DatasetIntegrityError",
    "ct_dataset",
    "load_arrays",
    "regenerate_slice",
    "sample_params",
]
