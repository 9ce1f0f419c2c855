"""On-disk dataset format: compressed ``.npz`` shards plus ``manifest.json``.

Layout of a dataset directory::

    manifest.json            format, generator, resolved config and sites, per-shard sha256 and
                             per-sample generator parameters
    summary.md               per-site table (counts, prevalence, tumor area, measured noise)
    gallery.png              slices and masks from every site
    <split>/site<S>_<k>.npz  arrays image (n,H,W) int16 HU, mask (n,H,W) uint8, index (n,) int32

Shards are written with fixed zip timestamps, so the same data gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from common.io import npz_from_bytes

FORMAT_VERSION = 1


class DatasetIntegrityError(ValueError):
    """A shard or the manifest is missing, altered or inconsistent."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shard_name(split: str, site: str, k: int) -> str:
    return f"{split}/site{site}_{k:03d}.npz"


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise DatasetIntegrityError(f"{root}: no manifest.json (not a FedOnco dataset directory?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetIntegrityError(f"{path}: corrupted manifest: {err}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetIntegrityError(
            f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return manifest


def check_roster(manifest: dict, sites: list[str], what: str) -> None:
    """A dataset serves a federation only if it holds the roster's sites, in the roster's order
    (``sites``: the config's ``site_names``)."""
    have = list(manifest.get("site_names", []))
    if have != list(sites):
        raise ValueError(
            f"{what}: the dataset's sites are {have}, the roster's {list(sites)}; build or "
            "import it with the same [[sites]] as the run"
        )


def load_shard(root: str | Path, entry: dict) -> dict[str, np.ndarray]:
    """Read one shard after checking its sha256 against the manifest entry."""
    path = Path(root) / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetIntegrityError(f"missing shard {path}") from None
    digest = sha256_bytes(data)
    if digest != entry["sha256"]:
        raise DatasetIntegrityError(
            f"shard {path} is corrupted: sha256 {digest[:16]}… != manifest {entry['sha256'][:16]}…; "
            "regenerate the dataset with `fedonco data`"
        )
    arrays = npz_from_bytes(data, ("image", "mask", "index"))
    if len(arrays["index"]) != entry["n"]:
        raise DatasetIntegrityError(
            f"shard {path}: {len(arrays['index'])} slices, manifest says {entry['n']}"
        )
    return arrays
