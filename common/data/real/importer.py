"""Import real CT with tumour labels into the project's dataset format (``fedonco data import``).

The result is a dataset like the generator's (shards, manifest.json, summary.md, gallery.png;
common/data/store.py), so the loader, training, the audit and ``fedonco verify`` read it
unchanged. It is written atomically by common/data/build.py's helpers: nothing is left at OUT
(or beside it) when an error stops the import.

Per case (common/data/real/sources.py reads it into the canonical P-L-S frame):

1. Masks: tumour = voxels whose (rounded) label is ``tumor_label``; organ = ``organ_label`` or
   tumour (without an organ label: any non-zero label). A DICOM-SEG mask's labels are its
   SegmentNumbers (sources.py), so there the options name segments.
2. Axial slices (the rule): every slice with tumour, plus ``ceil(free_ratio * max(T, 1))``
   tumour-free slices (T: the case's tumour slices; at most as many as there are), drawn without
   replacement from the tumour-free slices within the organ's extent (first to last slice with
   organ or tumour; the whole volume when the case has no labels) by
   ``numpy.random.default_rng([seed, crc32(case id)])``. So a case without tumour gives
   ``ceil(free_ratio)`` slices, and the same seed gives the same slices.
3. In-plane resampling to the pixel size of the case's site (site fov_mm / image_size, as the
   profile resolves it): image linear, mask nearest neighbour (scipy.ndimage.affine_transform).
   The output window is image_size pixels square: centred on the body (voxels above -500 HU, over
   the chosen slices) and kept inside the volume when the volume is larger, centred on the volume
   (padded with -1024 HU air) when it is smaller; its origin is rounded to a whole source pixel, so
   a volume already at the target pixel size and matrix is copied exactly.
4. HU rounded and clipped to the scanner range of the generator (-1024..3071, int16). The organ
   mask (resampled like the tumour's) is not stored; each slice's record keeps its area and the
   organ's HU mean and sd (``organ_record``) for ``fedonco data compare``.

Sites: a ``--sites`` CSV (``case,site`` rows, a header row allowed) or round-robin over the case
ids in sorted order (A, B, C, D, E, A, ...). Every site needs at least three cases. ``--site S``
(one hospital importing its own CT, the site container): every case to site S, which needs three;
the other sites are empty.
Splits, by patient: each site's cases (sorted, then permuted by ``default_rng(seed)``) go one each
to train, holdout and test, and the rest by the profile's split fractions (train_total,
5 x holdout_per_site, 5 x test_per_site, attacker_size), largest remainder first. Every slice of a
case lands in its case's split; manifest.json lists the case ids per site and split.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.config import Config
from common.data.build import install, prepare_out, shard_bytes, write_manifest
from common.data.real.sources import (
    LABEL_DEFAULTS,
    NOT_CT_HU,
    ImportDataError,
    detect_layout,
    find_cases,
    msd_labels,
    read_case,
)
from common.data.scanner import HU_RANGE
from common.data.sites import resolve_sites
from common.data.store import FORMAT_VERSION
from common.data.tumor import RADIUS_MM
from common.io import npz_bytes, npz_from_bytes
from common.progress import progress
from common.seeds import SPLITS

log = logging.getLogger(__name__)


def select_slices(
    tumor_z: np.ndarray, organ_z: np.ndarray, free_ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """The slice rule (module docstring, 2): sorted slice indices of one case."""
    tumour = np.flatnonzero(tumor_z)
    extent = np.flatnonzero(organ_z | tumor_z)
    lo, hi = (extent[0], extent[-1]) if len(extent) else (0, len(tumor_z) - 1)
    free = np.array([z for z in range(lo, hi + 1) if not tumor_z[z]], dtype=np.int64)
    k = min(len(free), math.ceil(free_ratio * max(len(tumour), 1)))
    return np.sort(np.concatenate([tumour, rng.choice(free, k, replace=False)])).astype(np.int64)


def _origin(n: int, size: int, scale: float, body: np.ndarray) -> int:
    """First source pixel (along one axis) of the output window (module docstring, 3)."""
    span = (size - 1) * scale
    if size * scale >= n or not body.any():
        return round((n - 1 - span) / 2)
    idx = np.flatnonzero(body)
    return round(min(max((idx[0] + idx[-1] - span) / 2, 0.0), n - 1 - span))


def size_class(area_mm2: float) -> str:
    """The generator's size class whose radius is nearest (log scale) the equivalent radius."""
    r = math.sqrt(area_mm2 / math.pi)
    return min(RADIUS_MM, key=lambda c: abs(math.log(max(r, 1e-6) / RADIUS_MM[c])))


def organ_record(image: np.ndarray, organ: np.ndarray, tumor: np.ndarray) -> dict:
    """What the dataset keeps of a slice's organ label (its shards hold the tumour mask only):
    the area of organ or tumour, and the HU mean and sd of the organ without the tumour (None
    where it has no pixel); ``fedonco data compare`` reads them."""
    hu = image[organ & ~tumor].astype(np.float64)
    return {
        "area_px": int((organ | tumor).sum()),
        "hu_mean": round(float(hu.mean()), 2) if hu.size else None,
        "hu_sd": round(float(hu.std()), 2) if hu.size else None,
    }


def convert_case(
    case_id: str,
    hu: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    *,
    tumor_label: int,
    organ_label: int | None,
    px_mm: float,
    size: int,
    free_ratio: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(images int16 HU, masks uint8, per-slice records) of one canonical case at the
    dataset's geometry (module docstring, 1-4)."""
    tumor = label == tumor_label
    organ = tumor | (label == organ_label if organ_label is not None else label != 0)
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
    zs = select_slices(tumor.any(axis=(0, 1)), organ.any(axis=(0, 1)), free_ratio, rng)
    # source pixels per output pixel (rows, columns); rounded: NIfTI stores the affine as float32
    scale = np.round(px_mm / np.linalg.norm(affine[:3, :2], axis=0), 5)
    body = (hu[:, :, zs] > NOT_CT_HU).any(axis=2)
    offset = [_origin(hu.shape[a], size, scale[a], body.any(axis=1 - a)) for a in (0, 1)]
    images, masks, records = [], [], []
    for z in zs:
        img = ndimage.affine_transform(
            hu[:, :, z],
            scale,
            offset,
            output_shape=(size, size),
            order=1,
            mode="constant",
            cval=HU_RANGE[0],
        )
        mask, in_organ = (
            ndimage.affine_transform(
                m[:, :, z].astype(np.uint8),
                scale,
                offset,
                output_shape=(size, size),
                order=0,
                cval=0,
            )
            for m in (tumor, organ)
        )
        images.append(np.clip(np.rint(img), *HU_RANGE).astype(np.int16))
        masks.append(mask)
        area = int(mask.sum())
        records.append(
            {
                "case": case_id,
                "z": int(z),
                "has_tumor": area > 0,
                "tumor": {"area_px": area, "size_class": size_class(area * px_mm**2)}
                if area
                else None,
                "noise": {"sigma_liver_hu": None},
                "organ": organ_record(images[-1], in_organ.astype(bool), mask.astype(bool)),
            }
        )
    return np.stack(images), np.stack(masks), records


def assign_sites(
    case_ids: list[str],
    sites_csv: str | Path | None,
    only_site: str | None,
    roster: list[str],
) -> dict[str, str]:
    """case id -> site of ``roster``: every case to ``only_site`` (one hospital importing its own
    CT), from the CSV, or round-robin over the sorted ids; every site (or ``only_site``) needs 3
    cases."""
    if only_site is not None:
        if only_site not in roster:
            raise ImportDataError(f"site {only_site!r} is not one of {', '.join(roster)}")
        if sites_csv is not None:
            raise ImportDataError("give --site or --sites, not both")
        sites = dict.fromkeys(case_ids, only_site)
    elif sites_csv is None:
        sites = {c: roster[i % len(roster)] for i, c in enumerate(sorted(case_ids))}
    else:
        path = Path(sites_csv)
        with path.open(newline="") as f:
            rows = [[x.strip() for x in r] for r in csv.reader(f) if any(x.strip() for x in r)]
        if rows and [x.lower() for x in rows[0]] == ["case", "site"]:
            rows = rows[1:]
        bad = [r for r in rows if len(r) != 2 or r[1] not in roster]
        if bad:
            raise ImportDataError(
                f"{path}: row {bad[0]} is not 'case,site' with a site of {', '.join(roster)}"
            )
        sites = dict(rows)
        unknown, missing = sorted(set(sites) - set(case_ids)), sorted(set(case_ids) - set(sites))
        if unknown or missing:
            raise ImportDataError(
                f"{path}: case(s) {unknown or missing} "
                f"{'not in the source' if unknown else 'not in the CSV'}"
            )
    for site in [only_site] if only_site else roster:
        n = list(sites.values()).count(site)
        if n < 3:
            where = (
                f"in {sites_csv}"
                if sites_csv
                else "--site"
                if only_site
                else f"round-robin over {len(case_ids)} cases"
            )
            raise ImportDataError(
                f"site {site} has {n or 'no'} case{'s' if n != 1 else ''} "
                f"({where}); every site needs at least 3 (train, holdout, "
                "test)"
            )
    return sites


def split_fractions(cfg: Config) -> list[float]:
    d, n = cfg.data, len(cfg.sites)
    sizes = [d.train_total, n * d.holdout_per_site, n * d.test_per_site, d.attacker_size]
    return [s / sum(sizes) for s in sizes]


def split_cases(
    sites: dict[str, str], fractions: list[float], seed: int, roster: list[str]
) -> dict[str, str]:
    """case id -> split (module docstring: by patient, per site of ``roster``)."""
    rng = np.random.default_rng(seed)
    out = {}
    for site in roster:
        cases = list(rng.permutation(sorted(c for c, s in sites.items() if s == site)))
        if not cases:  # a single site's import (--site): the others have none
            continue
        rest = len(cases) - 3
        raw = [rest * f for f in fractions]
        counts = [1 + math.floor(raw[i]) if i < 3 else math.floor(raw[i]) for i in range(4)]
        order = sorted(range(4), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
        for i in order[: len(cases) - sum(counts)]:
            counts[i] += 1
        start = 0
        for split, k in zip(SPLITS, counts, strict=True):
            out.update({str(c): split for c in cases[start : start + k]})
            start += k
    return out


def _labels(src: Path, layout: str, tumor_label: int | None, organ_label: int | None):
    t, o = msd_labels(src) if layout == "msd" else LABEL_DEFAULTS.get(layout, (None, None))
    tumor_label = t if tumor_label is None else tumor_label
    if tumor_label is None:
        raise ImportDataError(
            f"{src}: give --tumor-label (layout {layout} does not say which "
            "label value is the tumour)"
        )
    return tumor_label, (o if organ_label is None else organ_label)


def import_dataset(
    src: str | Path,
    out: str | Path,
    cfg: Config,
    *,
    layout: str = "auto",
    tumor_label: int | None = None,
    organ_label: int | None = None,
    sites_csv: str | Path | None = None,
    only_site: str | None = None,
    free_ratio: float = 1.0,
    force: bool = False,
    gallery: bool = True,
) -> dict:
    """Import the real CT of ``src`` into a dataset at ``out`` for the profile ``cfg`` (its image
    size, sites' pixel sizes, window, split fractions and shard size; ``cfg.seed`` draws the
    slices and the splits). Returns the manifest."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise ImportDataError(f"{src}: not a directory")
    if free_ratio < 0:
        raise ValueError(f"free_ratio must be >= 0, got {free_ratio}")
    layout = detect_layout(src) if layout == "auto" else layout
    cases = find_cases(src, layout)
    tumor_label, organ_label = _labels(src, layout, tumor_label, organ_label)
    roster = cfg.site_names
    sites = assign_sites([c.id for c in cases], sites_csv, only_site, roster)
    splits = split_cases(sites, split_fractions(cfg), cfg.seed, roster)
    size = cfg.data.image_size
    px = {s.name: s.fov_mm / size for s in resolve_sites(cfg.data, cfg.sites)}
    tmp = prepare_out(out, force)
    try:
        work = tmp / ".cases"
        work.mkdir()
        seen: set[int] = set()
        records: dict[int, list[dict]] = {}  # per case (small); its arrays go to work/
        with progress(len(cases), "importing", "case") as bar:
            for i, case in enumerate(cases):
                hu, label, affine = read_case(case, tumor_label, organ_label)
                seen.update(np.unique(label).tolist())
                images, masks, records[i] = convert_case(
                    case.id,
                    hu,
                    label,
                    affine,
                    tumor_label=tumor_label,
                    organ_label=organ_label,
                    px_mm=px[sites[case.id]],
                    size=size,
                    free_ratio=free_ratio,
                    seed=cfg.seed,
                )
                (work / f"{i}.npz").write_bytes(npz_bytes({"image": images, "mask": masks}))
                bar.update(1)
        if tumor_label not in seen:
            raise ImportDataError(
                f"{src}: no case's label volume holds the tumour label "
                f"{tumor_label} (values seen: {sorted(seen)}); check "
                "--tumor-label"
            )
        shards = _write_shards(
            tmp, work, records, cases, sites, splits, cfg.data.shard_size, roster
        )
        shutil.rmtree(work)
        manifest = {
            "format_version": FORMAT_VERSION,
            "generator": "import",
            "import": {
                "source": str(src.resolve()),
                "layout": layout,
                "tumor_label": tumor_label,
                "organ_label": organ_label,
                "free_ratio": free_ratio,
                "seed": cfg.seed,
                "sites_csv": str(sites_csv) if sites_csv else None,
                "site_rule": f"site {only_site}"
                if only_site
                else "csv"
                if sites_csv
                else "round-robin",
                "split_fractions": dict(zip(SPLITS, split_fractions(cfg), strict=True)),
                "hu_range": list(HU_RANGE),
            },
            "seed": cfg.seed,
            "attacker_seed": cfg.attacker_seed,
            "profile": cfg.profile,
            "config": cfg.model_dump(mode="json"),
            "image_size": size,
            "window": list(cfg.data.window),
            "sites": [{"name": s, "fov_mm": px[s] * size, "pixel_mm": px[s]} for s in roster],
            "site_names": roster,
            "splits": list(SPLITS),
            "cases": {
                s: {
                    sp: sorted(c for c in sites if sites[c] == s and splits[c] == sp)
                    for sp in SPLITS
                }
                for s in roster
            },
            "shards": shards,
            "subset": {"sites": roster, "splits": list(SPLITS)},
        }
        write_manifest(tmp, manifest, gallery)
        install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "imported %d cases (%d slices) from %s to %s",
        len(cases),
        sum(e["n"] for e in shards),
        src,
        out,
    )
    return manifest


def _write_shards(
    tmp: Path,
    work: Path,
    records: dict[int, list[dict]],
    cases,
    sites,
    splits,
    shard_size: int,
    roster: list[str],
) -> list[dict]:
    """The shards of every (split, site of ``roster``), the cases in id order, ``shard_size``
    slices each."""
    entries = []
    for split in SPLITS:
        for site in roster:
            mine = [i for i, c in enumerate(cases) if sites[c.id] == site and splits[c.id] == split]
            if not mine:
                continue
            parts = [
                npz_from_bytes((work / f"{i}.npz").read_bytes(), ("image", "mask")) for i in mine
            ]
            images = np.concatenate([p["image"] for p in parts])
            masks = np.concatenate([p["mask"] for p in parts])
            samples = [r for i in mine for r in records[i]]
            for k, start in enumerate(range(0, len(images), shard_size)):
                end = start + shard_size
                entry, data = shard_bytes(
                    split, site, k, start, images[start:end], masks[start:end], samples[start:end]
                )
                (tmp / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
                (tmp / entry["file"]).write_bytes(data)
                entries.append(entry)
    return entries
