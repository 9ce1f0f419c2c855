"""The sites' synthetic scanners and patients, and their non-IID knobs.

Five presets (A-E) hold each site's extreme values; a roster site (``[[sites]]`` of a profile)
follows one of them (``preset``, default its position's), so any number of sites can be generated.

Every knob is interpolated between a shared reference site (the ``iid`` preset: all sites draw
from one distribution) and the site's own extreme value, by a severity factor:
iid 0, mild 1/3, moderate 2/3, extreme 1. Dose interpolates in log space, the tumor size mix as a
probability vector (so it stays a distribution). The paper's stress setting then forces site A to
90% large and site B to 90% small tumors, and profile overrides come last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from common.config import DEFAULT_ROSTER, SITE_PRESETS, SIZE_CLASSES, DataConfig, SiteEntry

SEVERITY = {"iid": 0.0, "mild": 1 / 3, "moderate": 2 / 3, "extreme": 1.0}


@dataclass(frozen=True)
class SiteSpec:
    name: str
    size_fraction: float  # share of data.train_total
    dose: float  # relative dose; noise sigma ~ 1/sqrt(dose)
    kernel_cutoff: float  # reconstruction kernel: Butterworth cutoff, fraction of Nyquist
    psf_mm: float  # focal spot / detector blur (Gaussian sigma)
    hu_offset: float  # calibration offset
    hu_gain: float  # calibration gain around water (0 HU)
    fov_mm: float  # reconstructed field of view -> pixel size
    prevalence: float  # fraction of slices with a tumor
    size_mix: tuple[float, float, float, float]  # P(tiny, small, medium, large)
    contrast_hu: tuple[float, float]  # range of the hypo-attenuation depth D

    @property
    def kernel(self) -> str:
        if self.kernel_cutoff < 0.65:
            return "smooth"
        return "standard" if self.kernel_cutoff < 1.0 else "sharp"

    def to_dict(self) -> dict:
        return {**asdict(self), "kernel": self.kernel}


REFERENCE = SiteSpec(
    name="ref",
    size_fraction=0.2,
    dose=1.0,
    kernel_cutoff=0.8,
    psf_mm=0.6,
    hu_offset=0.0,
    hu_gain=1.0,
    fov_mm=380.0,
    prevalence=0.6,
    size_mix=(0.25, 0.25, 0.25, 0.25),
    contrast_hu=(65.0, 145.0),
)

# The extreme end of each site (severity = 1). Designed so the sites differ on every axis the paper
# names: scanner noise (dose and kernel), tumor sizes, prevalence and site size.
EXTREME = {
    "A": replace(
        REFERENCE,
        name="A",
        size_fraction=0.32,
        dose=1.6,
        kernel_cutoff=0.8,
        psf_mm=0.5,
        prevalence=0.7,
        size_mix=(0.1, 0.2, 0.3, 0.4),
        fov_mm=360.0,
    ),
    "B": replace(
        REFERENCE,
        name="B",
        size_fraction=0.26,
        dose=0.4,
        kernel_cutoff=1.3,
        psf_mm=0.4,
        hu_offset=12.0,
        hu_gain=1.02,
        prevalence=0.5,
        size_mix=(0.4, 0.3, 0.2, 0.1),
        fov_mm=400.0,
    ),
    "C": replace(
        REFERENCE,
        name="C",
        size_fraction=0.2,
        dose=2.5,
        kernel_cutoff=0.5,
        psf_mm=1.0,
        hu_offset=-8.0,
        prevalence=0.8,
        size_mix=(0.15, 0.25, 0.35, 0.25),
        fov_mm=340.0,
    ),
    "D": replace(
        REFERENCE,
        name="D",
        size_fraction=0.14,
        dose=0.15,
        kernel_cutoff=0.7,
        psf_mm=0.7,
        hu_offset=5.0,
        hu_gain=0.98,
        prevalence=0.35,
        size_mix=(0.3, 0.3, 0.25, 0.15),
        fov_mm=420.0,
    ),
    "E": replace(
        REFERENCE,
        name="E",
        size_fraction=0.08,
        dose=0.7,
        kernel_cutoff=0.95,
        psf_mm=0.6,
        hu_offset=-12.0,
        hu_gain=1.03,
        prevalence=0.6,
        size_mix=(0.2, 0.3, 0.3, 0.2),
        contrast_hu=(40.0, 100.0),
    ),
}


def _lerp(a: float, b: float, s: float) -> float:
    return a + s * (b - a)


def _interpolate(ext: SiteSpec, s: float) -> SiteSpec:
    r = REFERENCE
    return SiteSpec(
        name=ext.name,
        size_fraction=_lerp(r.size_fraction, ext.size_fraction, s),
        dose=math.exp(_lerp(math.log(r.dose), math.log(ext.dose), s)),
        kernel_cutoff=_lerp(r.kernel_cutoff, ext.kernel_cutoff, s),
        psf_mm=_lerp(r.psf_mm, ext.psf_mm, s),
        hu_offset=_lerp(r.hu_offset, ext.hu_offset, s),
        hu_gain=_lerp(r.hu_gain, ext.hu_gain, s),
        fov_mm=_lerp(r.fov_mm, ext.fov_mm, s),
        prevalence=_lerp(r.prevalence, ext.prevalence, s),
        size_mix=tuple(_lerp(a, b, s) for a, b in zip(r.size_mix, ext.size_mix, strict=True)),
        contrast_hu=tuple(
            _lerp(a, b, s) for a, b in zip(r.contrast_hu, ext.contrast_hu, strict=True)
        ),
    )


def _stress_mix(dominant: str) -> tuple[float, float, float, float]:
    return tuple(0.9 if c == dominant else 0.1 / 3 for c in SIZE_CLASSES)


def site_presets(roster: Sequence[SiteEntry]) -> list[str]:
    """The generator preset each site of ``roster`` follows: its own, else its position's (A-E,
    then A-E again)."""
    return [e.preset or SITE_PRESETS[i % len(SITE_PRESETS)] for i, e in enumerate(roster)]


def preset_labels(roster: Sequence[SiteEntry]) -> list[int]:
    """Each site's preset as the diffusion model's class label (A-E -> 0-4): the model learned
    the five presets' scanners, so a roster site is generated as its preset's scanner."""
    return [SITE_PRESETS.index(p) for p in site_presets(roster)]


def roster_of(manifest: dict) -> tuple[SiteEntry, ...]:
    """The roster a dataset was built with (its resolved config; A-E before the roster)."""
    entries = manifest.get("config", {}).get("sites")
    return tuple(SiteEntry(**e) for e in entries) if entries else DEFAULT_ROSTER


def resolve_sites(cfg: DataConfig, roster: Sequence[SiteEntry] = DEFAULT_ROSTER) -> list[SiteSpec]:
    """The resolved site specs, one per site of ``roster`` (a config's ``sites``), in its order:
    preset -> severity -> stress (the first two sites) -> the site's overrides."""
    s = SEVERITY[cfg.severity]
    sites = [
        replace(_interpolate(EXTREME[p], s), name=e.name)
        for p, e in zip(site_presets(roster), roster, strict=True)
    ]
    if cfg.stress == "paper":
        sites[0] = replace(sites[0], size_mix=_stress_mix("large"))
        if len(sites) > 1:
            sites[1] = replace(sites[1], size_mix=_stress_mix("small"))
    out = []
    for site in sites:
        ov = cfg.overrides.get(site.name)
        if ov is not None:
            site = replace(site, **ov.model_dump(exclude_none=True))
        out.append(site)
    return out


def split_counts(total: int, fractions: list[float]) -> list[int]:
    """Largest-remainder split of `total` by `fractions`, with at least one slice per site."""
    if total < len(fractions):
        raise ValueError(f"train_total={total} is smaller than the number of sites")
    norm = sum(fractions)
    raw = [total * f / norm for f in fractions]
    counts = [max(1, math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    i = 0
    while sum(counts) < total:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > total:
        j = max(range(len(counts)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts
