"""One synthetic CT slice from (seed, site, split, index): anatomy -> tumors -> scanner.

Every random draw of a slice comes from its own generator, seeded by
``SeedSequence([seed, site, split, index])``; so any slice can be regenerated alone, slices can be
made in any order or in parallel, and the same seed gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from common import seeds
from common.data.anatomy import LABEL, build_anatomy
from common.data.scanner import centre_sigma, scan
from common.data.sites import SiteSpec
from common.data.tumor import add_tumors
from common.seeds import SPLIT_CODE, SPLITS

__all__ = ["SPLITS", "Slice", "render_slice", "slice_rng"]


@dataclass
class Slice:
    image: np.ndarray  # int16 HU, what is stored
    mask: np.ndarray  # uint8 {0, 1}, exact tumor label
    clean: np.ndarray  # float32 HU before the scanner (tumors included)
    noise: np.ndarray  # float32 HU noise realisation that was added
    tissue: np.ndarray  # uint8 labels (common.data.anatomy.TISSUES)
    params: dict  # every per-sample generator draw (goes to manifest.json)


def slice_rng(seed: int, site_index: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; splits are {SPLITS}")
    return seeds.slice_rng(seed, site_index, split, index)


def _round(obj):
    """Round floats for a compact, still deterministic manifest."""
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_round(v) for v in obj]
    if isinstance(obj, np.integer | np.floating | np.bool_):
        return _round(obj.item())
    return obj


def scan_at_site(rng, hu: np.ndarray, spec: SiteSpec, anat, noise_ref_hu: float):
    """``scan`` of one noise-free HU slice with ``spec``'s scanner and ``anat``'s body outline."""
    return scan(
        rng,
        hu,
        fov_mm=spec.fov_mm,
        body_axes_mm=anat.body_axes_mm,
        body_cy_mm=anat.params["body_center_y_mm"],
        dose=spec.dose,
        kernel_cutoff=spec.kernel_cutoff,
        psf_mm=spec.psf_mm,
        hu_offset=spec.hu_offset,
        hu_gain=spec.hu_gain,
        noise_ref_hu=noise_ref_hu,
    )


def render_slice(
    seed: int,
    site_index: int,
    split: str,
    index: int,
    spec: SiteSpec,
    size: int,
    noise_ref_hu: float,
) -> Slice:
    rng = slice_rng(seed, site_index, split, index)
    px = spec.fov_mm / size
    anat = build_anatomy(rng, size, spec.fov_mm)
    liver = anat.tissue == LABEL["liver"]
    has_tumor = bool(rng.random() < spec.prevalence) and liver.sum() >= 20
    if has_tumor:
        clean, mask, tumor = add_tumors(rng, anat.hu, liver, px, spec.size_mix, spec.contrast_hu)
    else:
        clean, mask, tumor = anat.hu, np.zeros(liver.shape, np.uint8), None
    image, noise = scan_at_site(rng, clean, spec, anat, noise_ref_hu)
    # Measured noise in flat liver: eroded liver away from any tumor (what a physicist's ROI sees).
    flat = ndimage.binary_erosion(liver, iterations=2) & ~ndimage.binary_dilation(
        mask, iterations=3
    )
    noise_liver = float(noise[flat].std()) if flat.sum() >= 10 else None
    params = {
        "site": spec.name,
        "split": split,
        "index": index,
        "has_tumor": has_tumor,
        "tumor": tumor,
        "anatomy": anat.params,
        "noise": {
            "sigma_centre_hu": centre_sigma(
                noise_ref_hu, spec.dose, spec.kernel_cutoff, spec.fov_mm / size
            ),
            "sigma_liver_hu": noise_liver,
        },
    }
    return Slice(image, mask, clean, noise, anat.tissue, _round(params))
