"""`fedonco data compare REAL SYNTH`: how close is one CT dataset to another (the phantom to real
CT), statistic by statistic, per dataset and per site.

A side is a dataset directory (``fedonco data`` or ``fedonco data import``) or DICOM: one file
(e.g. pydicom's ``CT_small.dcm``) or a folder holding one series. Every statistic is a
distribution of per-slice (or per-tumour) values, measured by the same rule on both sides:

- ``tumour_slice``: 1 if the slice has tumour, else 0 (its mean: the fraction of tumour slices).
- ``organ_hu_mean``, ``organ_hu_sd``: HU mean and sd over the organ without the tumour, per slice
  with >= ``MIN_ORGAN_PX`` organ pixels. The organ: the phantom's liver (tissue label of
  common/data/anatomy.py, each slice regenerated from its seed) or, for an imported dataset, the
  organ label its records keep (common/data/real/importer.py, ``organ_record``).
- ``tumour_hu_mean``, ``tumour_hu_sd``: over the tumour mask, per tumour slice.
- ``contrast_hu``: tumour HU mean - organ HU mean, per slice with both.
- ``tumours_per_slice``: 8-connected components of the tumour mask, per tumour slice.
- ``tumour_diameter_mm``: per component, the equivalent diameter 2 sqrt(area / pi), area in mm^2
  from the pixel size.
- ``tumour_organ_area_ratio``: tumour area / area of organ or tumour, per tumour slice with organ.
- Flat soft tissue: pixels whose ``WINDOW_PX`` x ``WINDOW_PX`` local mean lies in ``SOFT_HU``,
  eroded by half a window (every pixel of its window is such a pixel); a slice needs
  ``MIN_FLAT_PX`` of them. ``soft_tissue_hu``: their mean HU. ``noise_sd_hu``: the median of their
  local sd (ddof 1, the same window); for uncorrelated noise on a constant region that is the
  noise sd (within 1%), correlated noise reads a little lower, on both sides alike.
- ``nps_peak_per_mm``: the frequency (cycles/mm) of the peak of the noise power spectrum |FFT|^2
  averaged over the ``ROI_PX`` square ROIs (each minus its least-squares plane; on a
  half-overlapping grid) that lie wholly in flat soft tissue, then over rings of radius k/ROI_PX
  cycles/pixel (k = 1 .. ROI_PX/2; k = 0, DC, excluded): k / (ROI_PX x pixel mm).

A statistic a side cannot support (no labels in a DICOM file, no organ in a diffusion dataset, no
flat region) is "n/a (why)", never invented. Distances (pooled over sites): scipy.stats'
``wasserstein_distance`` and ``ks_2samp`` (D and p).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from common.data.anatomy import LABEL
from common.data.loader import load_arrays, regenerate_slice, sample_params
from common.data.real.sources import ImportDataError, read_ct_file, read_dicom_series
from common.data.store import read_manifest
from common.progress import progress

WINDOW_PX = 7
SOFT_HU = (0.0, 200.0)  # a flat soft-tissue pixel's local mean (muscle, liver, spleen; no fat)
MIN_FLAT_PX = 100
MIN_ORGAN_PX = 20
ROI_PX = 16

STATS = {  # name: (unit, what one value is)
    "tumour_slice": ("0/1", "slice has tumour (mean: fraction of tumour slices)"),
    "organ_hu_mean": ("HU", "organ HU mean, per slice"),
    "organ_hu_sd": ("HU", "organ HU sd, per slice"),
    "tumour_hu_mean": ("HU", "tumour HU mean, per tumour slice"),
    "tumour_hu_sd": ("HU", "tumour HU sd, per tumour slice"),
    "contrast_hu": ("HU", "tumour - organ HU mean, per slice"),
    "tumours_per_slice": ("count", "tumours per tumour slice"),
    "tumour_diameter_mm": ("mm", "equivalent diameter, per tumour"),
    "tumour_organ_area_ratio": ("ratio", "tumour area / organ area, per tumour slice"),
    "soft_tissue_hu": ("HU", "flat soft-tissue HU mean, per slice"),
    "noise_sd_hu": ("HU", "noise sd in flat soft tissue, per slice"),
    "nps_peak_per_mm": ("1/mm", "NPS peak frequency, per slice"),
}
TUMOUR_STATS = (
    "tumour_slice",
    "tumour_hu_mean",
    "tumour_hu_sd",
    "contrast_hu",
    "tumours_per_slice",
    "tumour_diameter_mm",
    "tumour_organ_area_ratio",
)
ORGAN_STATS = ("organ_hu_mean", "organ_hu_sd", "contrast_hu", "tumour_organ_area_ratio")
EMPTY_WHY = {  # why a supported statistic still has no value
    **{s: "no slice with tumour" for s in TUMOUR_STATS},
    "organ_hu_mean": f"no slice with >= {MIN_ORGAN_PX} organ pixels",
    "organ_hu_sd": f"no slice with >= {MIN_ORGAN_PX} organ pixels",
    "soft_tissue_hu": f"no slice with >= {MIN_FLAT_PX} flat soft-tissue pixels",
    "noise_sd_hu": f"no slice with >= {MIN_FLAT_PX} flat soft-tissue pixels",
    "nps_peak_per_mm": f"no {ROI_PX}x{ROI_PX} ROI wholly in flat soft tissue",
}


def flat_soft_tissue(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat mask, local mean, local sd) of one slice (module docstring)."""
    x = image.astype(np.float64)
    n = WINDOW_PX * WINDOW_PX
    mean = ndimage.uniform_filter(x, WINDOW_PX, mode="reflect")
    sq = ndimage.uniform_filter(x * x, WINDOW_PX, mode="reflect")
    sd = np.sqrt(np.maximum(sq - mean * mean, 0.0) * n / (n - 1))
    band = (mean >= SOFT_HU[0]) & (mean <= SOFT_HU[1])
    flat = ndimage.binary_erosion(band, np.ones((WINDOW_PX, WINDOW_PX)), border_value=0)
    return flat, mean, sd


def nps_peak(image: np.ndarray, flat: np.ndarray, px_mm: float) -> float | None:
    """Peak frequency (cycles/mm) of the mean radial NPS over the flat ROIs; None without one."""
    r = ROI_PX
    yy, xx = np.mgrid[:r, :r]
    design = np.stack([np.ones(r * r), yy.ravel(), xx.ravel()], axis=1)
    f = np.fft.fftfreq(r) * r  # whole cycles per ROI
    ring = np.rint(np.hypot(f[:, None], f[None, :])).astype(int).ravel()  # radius, 1/r cycles/px
    power, n = np.zeros(ring.max() + 1), 0
    for i in range(0, image.shape[0] - r + 1, r // 2):
        for j in range(0, image.shape[1] - r + 1, r // 2):
            if not flat[i : i + r, j : j + r].all():
                continue
            roi = image[i : i + r, j : j + r].astype(np.float64).ravel()
            roi = roi - design @ np.linalg.lstsq(design, roi, rcond=None)[0]  # minus its plane
            power += np.bincount(ring, np.abs(np.fft.fft2(roi.reshape(r, r))).ravel() ** 2)
            n += 1
    if not n:
        return None
    mean = power / np.bincount(ring)
    k = 1 + int(np.argmax(mean[1 : r // 2 + 1]))  # ring 0 is DC; up to Nyquist
    return float(k / (r * px_mm))


def measure_slice(
    image: np.ndarray,
    px_mm: float,
    tumour: np.ndarray | None = None,
    organ: np.ndarray | dict | None = None,
) -> dict[str, list[float]]:
    """Every statistic's values from one slice. ``tumour``: its mask (None: not known);
    ``organ``: its mask, or an imported slice's organ record (``importer.organ_record``)."""
    out: dict[str, list[float]] = {s: [] for s in STATS}
    flat, mean, sd = flat_soft_tissue(image)
    if flat.sum() >= MIN_FLAT_PX:
        out["soft_tissue_hu"].append(float(mean[flat].mean()))
        out["noise_sd_hu"].append(float(np.median(sd[flat])))
        peak = nps_peak(image, flat, px_mm)
        if peak is not None:
            out["nps_peak_per_mm"].append(peak)
    hu = image.astype(np.float64)
    t = tumour.astype(bool) if tumour is not None else None
    if isinstance(organ, np.ndarray):
        o = organ.astype(bool)
        inner = o & ~t if t is not None else o
        organ = {
            "area_px": int((o | t).sum() if t is not None else o.sum()),
            "hu_mean": float(hu[inner].mean()) if inner.any() else None,
            "hu_sd": float(hu[inner].std()) if inner.any() else None,
        }
    has_organ = (
        organ is not None and organ["area_px"] >= MIN_ORGAN_PX and organ["hu_mean"] is not None
    )
    if has_organ:
        out["organ_hu_mean"].append(organ["hu_mean"])
        out["organ_hu_sd"].append(organ["hu_sd"])
    if t is None:
        return out
    out["tumour_slice"].append(float(t.any()))
    if not t.any():
        return out
    out["tumour_hu_mean"].append(float(hu[t].mean()))
    out["tumour_hu_sd"].append(float(hu[t].std()))
    labels, n = ndimage.label(t, structure=np.ones((3, 3)))
    out["tumours_per_slice"].append(float(n))
    areas = np.bincount(labels.ravel())[1:] * px_mm * px_mm
    out["tumour_diameter_mm"].extend(float(2 * math.sqrt(a / math.pi)) for a in areas)
    if has_organ:
        out["contrast_hu"].append(float(hu[t].mean()) - organ["hu_mean"])
        out["tumour_organ_area_ratio"].append(float(t.sum()) / organ["area_px"])
    return out


@dataclass
class Side:
    """One side of the comparison: its slices' values per site, and why a statistic is n/a."""

    path: str
    kind: str
    values: dict[str, dict[str, list[float]]] = field(
        default_factory=dict
    )  # site -> stat -> values
    slices: dict[str, int] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)  # statistics this side cannot support

    def add(self, site: str, measured: dict[str, list[float]]) -> None:
        per = self.values.setdefault(site, {s: [] for s in STATS})
        for s, v in measured.items():
            per[s].extend(v)
        self.slices[site] = self.slices.get(site, 0) + 1

    def pooled(self, stat: str) -> list[float]:
        return [v for per in self.values.values() for v in per[stat]]

    def reason(self, stat: str, values: list[float]) -> str | None:
        """None when ``values`` is usable, else why the statistic is n/a."""
        return self.why.get(stat) or (None if values else EMPTY_WHY.get(stat, "no value"))


def _dicom_slices(path: Path) -> list[tuple[np.ndarray, float]]:
    """(HU image, pixel mm) of each slice of a DICOM file or single-series folder."""
    from pydicom.pixels import apply_rescale

    if path.is_dir():
        hu, affine = read_dicom_series(path)
        px = float(np.sqrt(np.linalg.norm(affine[:3, 0]) * np.linalg.norm(affine[:3, 1])))
        return [(hu[:, :, z], px) for z in range(hu.shape[2])]
    ds = read_ct_file(path, "nor a dataset directory with manifest.json")
    frames = apply_rescale(ds.pixel_array, ds).astype(np.float32)
    frames = frames[None] if frames.ndim == 2 else frames
    px = float(np.sqrt(np.prod([float(v) for v in ds.PixelSpacing])))
    return [(f, px) for f in frames]


def load_side(path: str | Path, max_slices: int, seed: int = 0) -> Side:
    """Measure every statistic on (at most ``max_slices`` per site of) ``path``."""
    path = Path(path)
    if not path.exists():
        raise ImportDataError(f"{path}: no such file or directory")
    if not (path / "manifest.json").is_file():
        side = Side(str(path), "DICOM")
        no_labels = "a DICOM image without a tumour or organ mask"
        side.why.update({s: no_labels for s in (*TUMOUR_STATS, *ORGAN_STATS)})
        slices = _dicom_slices(path)
        with progress(len(slices), "measuring", "slice") as bar:
            for image, px in slices:
                side.add("-", measure_slice(image, px))
                bar.update(1)
        return side
    m = read_manifest(path)
    generator = m.get("generator", "procedural")
    side = Side(str(path), f"{generator} dataset ({m.get('profile')}, seed {m.get('seed')})")
    if generator == "diffusion":
        side.why.update({s: "a diffusion dataset has no organ mask" for s in ORGAN_STATS})
    rng = np.random.default_rng(seed)
    plan = []
    for i, site in enumerate(m["site_names"]):
        spec = m["sites"][i]
        px = float(spec.get("pixel_mm") or spec["fov_mm"] / m["image_size"])
        rows = [
            (split, k) for split in m["splits"] for k in range(len(sample_params(m, split, site)))
        ]
        pick = np.sort(rng.choice(len(rows), min(max_slices, len(rows)), replace=False))
        plan.append((site, px, [rows[j] for j in pick]))
    if generator == "import" and not any(r.get("organ") for e in m["shards"] for r in e["samples"]):
        side.why.update(
            {s: "imported without organ records (re-import with this version)" for s in ORGAN_STATS}
        )
    with progress(sum(len(p[2]) for p in plan), "measuring", "slice") as bar:
        for site, px, rows in plan:
            arrays = {sp: load_arrays(path, sp, site, m) for sp in {sp for sp, _ in rows}}
            records = {sp: sample_params(m, sp, site) for sp in arrays}
            for split, k in rows:
                image, mask, index = (a[k] for a in arrays[split][:3])
                organ = None
                if generator == "procedural":  # the liver: the phantom's own tissue label
                    tissue = regenerate_slice(m, split, site, int(index)).tissue
                    organ = tissue == LABEL["liver"]
                elif generator == "import":
                    organ = records[split][k].get("organ")
                side.add(site, measure_slice(image, px, mask, organ))
                bar.update(1)
    return side


def _summary(values: list[float], why: str | None) -> dict:
    if why:
        return {"n": len(values), "n/a": why}
    v = np.asarray(values)
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "sd": float(v.std()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def distance(a: list[float], b: list[float]) -> dict:
    ks = stats.ks_2samp(a, b)
    return {
        "wasserstein": float(stats.wasserstein_distance(a, b)),
        "ks_d": float(ks.statistic),
        "ks_p": float(ks.pvalue),
    }


def compare(real: Side, synth: Side) -> dict:
    """The report as JSON: each side's statistics pooled and per site, and the distances."""
    out: dict = {
        "definitions": {s: {"unit": u, "value": d} for s, (u, d) in STATS.items()},
        "rule": {
            "window_px": WINDOW_PX,
            "soft_hu": list(SOFT_HU),
            "min_flat_px": MIN_FLAT_PX,
            "min_organ_px": MIN_ORGAN_PX,
            "roi_px": ROI_PX,
        },
    }
    for name, side in (("real", real), ("synth", synth)):
        out[name] = {
            "path": side.path,
            "kind": side.kind,
            "slices": side.slices,
            "pooled": {s: _summary(v, side.reason(s, v)) for s in STATS for v in [side.pooled(s)]},
            "sites": {
                site: {s: _summary(v, side.reason(s, v)) for s, v in per.items()}
                for site, per in side.values.items()
            },
        }
    out["distance"] = {}
    for s in STATS:
        a, b = real.pooled(s), synth.pooled(s)
        why = [
            f"{n}: {side.reason(s, v)}"
            for n, side, v in (("REAL", real, a), ("SYNTH", synth, b))
            if side.reason(s, v)
        ]
        out["distance"][s] = {"n/a": "; ".join(why)} if why else distance(a, b)
    return out


def _cell(d: dict) -> str:
    if "n/a" in d:
        return f"n/a ({d['n/a']})"
    return f"{d['mean']:.4g} ± {d['sd']:.3g}"


def markdown(report: dict) -> str:
    r, s = report["real"], report["synth"]
    lines = [
        "# Realism report: REAL vs SYNTH",
        "",
        f"- REAL: `{r['path']}` ({r['kind']}; {sum(r['slices'].values())} slices measured)",
        f"- SYNTH: `{s['path']}` ({s['kind']}; {sum(s['slices'].values())} slices measured)",
        "",
        "Each statistic pooled over sites: mean ± sd (n values); distances between the two "
        "distributions: Wasserstein (in the statistic's unit) and two-sample KS (D, p). "
        "Definitions: common/data/real/compare.py; docs/data.md.",
        "",
        "| statistic | unit | REAL | n | SYNTH | n | Wasserstein | KS D | KS p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for stat, (unit, _) in STATS.items():
        a, b, d = r["pooled"][stat], s["pooled"][stat], report["distance"][stat]
        dist = (
            "n/a | n/a | n/a"
            if "n/a" in d
            else f"{d['wasserstein']:.4g} | {d['ks_d']:.3f} | {d['ks_p']:.3g}"
        )
        lines.append(
            f"| {stat} | {unit} | {_cell(a)} | {a['n']} | {_cell(b)} | {b['n']} | {dist} |"
        )
    lines += [
        "",
        "Per site: mean (n values); n/a: see the table above.",
        "",
        "| side | site | slices | " + " | ".join(STATS) + " |",
        "|---|---|---|" + "---|" * len(STATS),
    ]
    for name, side in (("REAL", r), ("SYNTH", s)):
        for site, per in side["sites"].items():
            cells = [
                f"{d['mean']:.4g} ({d['n']})" if "n/a" not in d else "n/a" for d in per.values()
            ]
            lines.append(
                f"| {name} | {site} | {side['slices'][site]} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def figure(real: Side, synth: Side, report: dict, path: Path) -> None:
    """The distributions side by side, one panel per statistic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(16, 10))
    for ax, (stat, (unit, _)) in zip(axes.ravel(), STATS.items(), strict=True):
        sides = [("REAL", real, "tab:red"), ("SYNTH", synth, "tab:blue")]
        vals = [v for _, side, _ in sides for v in side.pooled(stat)]
        bins = np.histogram_bin_edges(vals, bins=20) if vals else 10
        notes = []
        for label, side, colour in sides:
            v = side.pooled(stat)
            why = side.reason(stat, v)
            if why:
                notes.append(f"{label}: n/a ({why})")
            elif len(v) == 1:
                ax.axvline(v[0], color=colour, lw=2, label=f"{label} (1 value)")
            else:
                ax.hist(
                    v, bins=bins, density=True, alpha=0.5, color=colour, label=f"{label} ({len(v)})"
                )
        ax.set_title("\n".join([stat, *notes]), fontsize=9 if not notes else 7)
        ax.set_xlabel(unit, fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"REAL {Path(real.path).name} vs SYNTH {Path(synth.path).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_compare(
    real: str | Path, synth: str | Path, out: str | Path, max_slices: int = 200
) -> dict:
    """Measure both sides, write OUT/compare.md, compare.json and compare.png; return the JSON."""
    if max_slices < 1:
        raise ValueError(f"max_slices must be >= 1, got {max_slices}")
    a, b = load_side(real, max_slices), load_side(synth, max_slices)
    report = compare(a, b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "compare.md").write_text(markdown(report))
    figure(a, b, report, out / "compare.png")
    return report
