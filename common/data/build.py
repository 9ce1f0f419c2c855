"""Write a whole dataset: every split of every site, in parallel, atomically.

The dataset is assembled in a temporary sibling directory and renamed into place only when every
shard, the manifest, the summary and the gallery are written; a failure leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Config
from common.data.generate import SPLITS, render_slice
from common.data.sites import SiteSpec, preset_labels, resolve_sites, split_counts
from common.data.store import FORMAT_VERSION, sha256_bytes, shard_name
from common.io import npz_bytes, write_json_atomic
from common.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardJob:
    split: str
    site_index: int
    k: int  # shard number within (split, site)
    start: int  # first slice index
    n: int
    seed: int
    spec: SiteSpec
    size: int
    noise_ref_hu: float
    diffusion: object | None = (
        None  # common.data.diffusion.generate.DiffusionJob (generator=diffusion)
    )
    label: int = 0  # the diffusion model's class label: the site's preset (sites.preset_labels)


def split_sizes(cfg: Config) -> dict[str, list[int]]:
    """Slices per split and site (train by site size fractions; attacker pool spread evenly)."""
    d = cfg.data
    sites = resolve_sites(d, cfg.sites)
    sizes = {
        "train": split_counts(d.train_total, [s.size_fraction for s in sites]),
        "holdout": [d.holdout_per_site] * len(sites),
        "test": [d.test_per_site] * len(sites),
        "attacker": split_counts(d.attacker_size, [1.0] * len(sites))
        if d.attacker_size
        else [0] * len(sites),
    }
    return sizes


def check_subset(cfg: Config, sites: list[str] | None, splits: list[str] | None) -> None:
    bad = [s for s in sites or [] if s not in cfg.site_names]
    bad += [s for s in splits or [] if s not in SPLITS]
    if bad:
        raise ValueError(
            f"unknown site(s)/split(s) {bad}: sites are {', '.join(cfg.site_names)}, "
            f"splits {', '.join(SPLITS)}"
        )


def plan(
    cfg: Config, sites: list[str] | None = None, splits: list[str] | None = None, diffusion=None
):
    """The shard jobs; ``sites``/``splits`` select a subset (each slice is the same as in the
    full dataset: a site can generate only its own data). ``diffusion``: the diffusion layer's
    job (``common.data.diffusion.generate.DiffusionJob``) that a diffusion dataset needs."""
    check_subset(cfg, sites, splits)
    if (cfg.data.generator == "diffusion") != (diffusion is not None):
        raise ValueError(
            "a diffusion dataset is built by common.data.diffusion.generate.build_dataset "
            "(it needs the model); a procedural one takes no diffusion job"
        )
    specs = resolve_sites(cfg.data, cfg.sites)
    labels = preset_labels(cfg.sites)
    jobs = []
    for split, counts in split_sizes(cfg).items():
        if splits and split not in splits:
            continue
        seed = cfg.attacker_seed if split == "attacker" else cfg.seed
        for i, (spec, n) in enumerate(zip(specs, counts, strict=True)):
            if sites and spec.name not in sites:
                continue
            for k, start in enumerate(range(0, n, cfg.data.shard_size)):
                m = min(cfg.data.shard_size, n - start)
                jobs.append(
                    ShardJob(
                        split,
                        i,
                        k,
                        start,
                        m,
                        seed,
                        spec,
                        cfg.data.image_size,
                        cfg.data.noise_ref_hu,
                        diffusion,
                        labels[i],
                    )
                )
    return jobs


def make_slices(job: ShardJob, only: int | None = None) -> list:
    """The slices of one shard job; the diffusion generator then replaces their images (all, or
    the sampling chunk holding position ``only``)."""
    slices = [
        render_slice(job.seed, job.site_index, job.split, idx, job.spec, job.size, job.noise_ref_hu)
        for idx in range(job.start, job.start + job.n)
    ]
    if job.diffusion is not None:  # the diffusion layer's job object replaces the images
        job.diffusion.diffuse(job, slices, only=only)
    return slices


def shard_bytes(
    split: str,
    site: str,
    k: int,
    start: int,
    images: np.ndarray,
    masks: np.ndarray,
    samples: list[dict],
) -> tuple[dict, bytes]:
    """Shard ``k`` of (split, site): its manifest entry and its ``.npz`` bytes (slice indices
    ``start``...); ``images`` int16 HU and ``masks`` uint8, (n, H, W) each."""
    n = len(images)
    data = npz_bytes(
        {"image": images, "mask": masks, "index": np.arange(start, start + n, dtype=np.int32)}
    )
    entry = {
        "file": shard_name(split, site, k),
        "site": site,
        "split": split,
        "start": start,
        "n": n,
        "sha256": sha256_bytes(data),
        "samples": samples,
    }
    return entry, data


def make_shard(job: ShardJob) -> tuple[dict, bytes]:
    slices = make_slices(job)
    return shard_bytes(
        job.split,
        job.spec.name,
        job.k,
        job.start,
        np.stack([s.image for s in slices]),
        np.stack([s.mask for s in slices]),
        [s.params for s in slices],
    )


def prepare_out(out: Path, force: bool) -> Path:
    """A fresh temporary directory for the dataset that will be installed at ``out``."""
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; use --force to replace it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # An existing OUT is never renamed (it may be a bind mount, e.g. a container's /data):
        # the new dataset is written inside it and swapped in entry by entry (install).
        where = out if out.exists() else out.parent
        tmp = where / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise OSError(f"cannot write the dataset to {out}: {err.strerror or err}") from None
    return tmp


def install(tmp: Path, out: Path) -> None:
    """Put the finished dataset ``tmp`` at ``out``: a rename when ``out`` does not exist; else
    (``tmp`` lies inside ``out``) the old entries are removed and the new ones renamed into
    ``out``, which itself keeps its inode (a mount point cannot be renamed: EBUSY)."""
    if tmp.parent != out:
        tmp.rename(out)
        return
    for old in out.iterdir():
        if old != tmp:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    for new in tmp.iterdir():
        new.rename(out / new.name)
    tmp.rmdir()


def write_manifest(tmp: Path, manifest: dict, gallery: bool) -> None:
    """Add the per-site summary to ``manifest`` and write manifest.json, summary.md and (if
    ``gallery``) gallery.png beside the shards in ``tmp``."""
    from common.data.summary import render_gallery, site_summary, summary_markdown

    manifest["summary"] = site_summary(manifest)
    write_json_atomic(tmp / "manifest.json", manifest)
    (tmp / "summary.md").write_text(summary_markdown(manifest["summary"]))
    if gallery:
        render_gallery(tmp, manifest, tmp / "gallery.png")


def build_dataset(
    cfg: Config,
    out: str | Path,
    *,
    workers: int | None = None,
    force: bool = False,
    gallery: bool = True,
    only_sites: list[str] | None = None,
    only_splits: list[str] | None = None,
    diffusion=None,
) -> dict:
    """Generate the dataset of `cfg` (or the ``sites``/``splits`` subset) into `out`.
    Returns the manifest. A diffusion dataset comes through
    ``common.data.diffusion.generate.build_dataset``, which passes its ``diffusion`` job."""
    sites_sel, splits_sel = only_sites, only_splits  # (``sites`` below are the site specs)
    out = Path(out)
    check_subset(cfg, sites_sel, splits_sel)
    tmp = prepare_out(out, force)
    try:
        jobs = plan(cfg, sites_sel, splits_sel, diffusion)
        total = sum(j.n for j in jobs)
        workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        shards = []
        with progress(total, "generating", "slice") as bar:
            pool = ProcessPoolExecutor(workers) if workers > 1 else None
            results = pool.map(make_shard, jobs) if pool else map(make_shard, jobs)
            for entry, data in results:
                (tmp / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
                (tmp / entry["file"]).write_bytes(data)
                shards.append(entry)
                bar.update(entry["n"])
            if pool:
                pool.shutdown()
        sites = resolve_sites(cfg.data, cfg.sites)
        manifest = {
            "format_version": FORMAT_VERSION,
            "generator": cfg.data.generator,
            "seed": cfg.seed,
            "attacker_seed": cfg.attacker_seed,
            "profile": cfg.profile,
            "config": cfg.model_dump(mode="json"),
            "image_size": cfg.data.image_size,
            "window": list(cfg.data.window),
            "sites": [s.to_dict() for s in sites],
            "site_names": cfg.site_names,
            "splits": list(SPLITS),
            "shards": shards,
            "subset": {
                "sites": sorted(sites_sel or cfg.site_names),
                "splits": list(splits_sel or SPLITS),
            },
        }
        if jobs and jobs[0].diffusion is not None:
            manifest["diffusion"] = jobs[0].diffusion.to_dict()
        write_manifest(tmp, manifest, gallery)
        install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d slices in %d shards to %s", total, len(shards), out)
    return manifest
