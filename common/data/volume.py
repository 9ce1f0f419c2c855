"""One synthetic CT volume (a patient) from (seed, site, split, index): the volumetric study's data.

The slice generator's pieces, made coherent along z:

- anatomy: one patient slice (``build_anatomy``) at the volume's centre, carried through the
  volume with a smooth per-slice scale about the body centre (organs grow towards the lower
  liver, ``GROWTH`` over the whole depth), so neighbouring slices show the same organs;
- lesions: 3D warped ellipsoids (the slice recipe's size classes and counts, ``RADIUS_MM`` in
  every direction at ``slice_mm`` spacing along z), inside the liver; appearance as in
  ``common.data.tumor``: a smoothed Bernoulli texture, a blurred edge and a hypo-attenuation
  depth, in 3D; the label is the union of the ellipsoids before blurring, clipped to the liver;
- scanner: each axial slice through the site's scanner (``common.data.scanner.scan``):
  calibration, MTF and CT-like noise.

Every draw comes from one generator seeded by ``SeedSequence([seed, site, split, index,
VOLUME_STREAM])``: a volume regenerates alone and never shares a stream with a 2D slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from common.data.anatomy import LABEL, build_anatomy
from common.data.generate import scan_at_site
from common.data.sites import SiteSpec
from common.data.tumor import N_LESIONS, RADIUS_MM, WARP
from common.seeds import SPLIT_CODE

VOLUME_STREAM = 3  # the seed sequence's fifth word: volumes, not slices
GROWTH = 0.3  # relative in-plane scale change of the anatomy from the top slice to the bottom


@dataclass
class Volume:
    image: np.ndarray  # int16 HU (D, N, N)
    mask: np.ndarray  # uint8 {0, 1} (D, N, N), exact tumour label
    params: dict


def volume_rng(seed: int, site_index: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; splits are {tuple(SPLIT_CODE)}")
    words = [seed, site_index, SPLIT_CODE[split], index, VOLUME_STREAM]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def _extrude(plane: np.ndarray, depth: int, order: int) -> np.ndarray:
    """``plane`` (N, N) scaled about the image centre by 1 - GROWTH/2 ... 1 + GROWTH/2 over z."""
    n = plane.shape[0]
    c = (n - 1) / 2.0
    out = np.empty((depth, n, n), plane.dtype)
    for k in range(depth):
        s = 1.0 + GROWTH * ((k + 0.5) / depth - 0.5)
        out[k] = ndimage.affine_transform(
            plane, np.eye(2) / s, offset=c - c / s, order=order, mode="nearest"
        )
    return out


def _ellipsoid(rng, shape, centre, radii_vox, klass: str) -> np.ndarray:
    """A warped, rotated (in plane) ellipsoid of semi-axes ``radii_vox`` (z, y, x) at ``centre``."""
    zz, yy, xx = (np.arange(n, dtype=np.float32) - c for n, c in zip(shape, centre, strict=True))
    z, y, x = np.meshgrid(zz, yy, xx, indexing="ij")
    ang = rng.uniform(0, math.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    u, v = x * ca + y * sa, y * ca - x * sa
    warp = rng.standard_normal((3, *shape)).astype(np.float32)
    sm = max(min(radii_vox) / 2, 0.5)
    warp = np.stack([ndimage.gaussian_filter(w, sm, mode="reflect") for w in warp])
    warp *= WARP[klass] / (np.abs(warp).max() + 1e-6)
    r = np.asarray(radii_vox, np.float32)
    q = ((z / r[0]) + warp[0]) ** 2 + ((v / r[1]) + warp[1]) ** 2 + ((u / r[2]) + warp[2]) ** 2
    inside = q <= 1.0
    if not inside.any():  # sub-voxel lesion: keep its centre voxel
        inside[tuple(int(round(c)) for c in centre)] = True
    return inside


def _add_lesions(rng, hu, liver, px_mm: float, slice_mm: float, spec: SiteSpec):
    """Lesions into the liver of a (D, N, N) HU volume: (new HU, uint8 mask, params)."""
    from common.config import SIZE_CLASSES

    mix = np.asarray(spec.size_mix, float)
    klass = SIZE_CLASSES[int(rng.choice(len(SIZE_CLASSES), p=mix / mix.sum()))]
    dist = ndimage.distance_transform_edt(liver, sampling=(slice_mm, px_mm, px_mm))
    mask = np.zeros(hu.shape, bool)
    lesions = []
    lo, hi = N_LESIONS[klass]
    for _ in range(int(rng.integers(lo, hi + 1))):
        r_mm = RADIUS_MM[klass] * rng.uniform(0.75, 1.25, size=3)
        need = min(0.6 * float(r_mm.min()), 0.8 * float(dist.max()))
        zs, ys, xs = np.nonzero(dist >= max(need, min(px_mm, float(dist.max()))))
        k = int(rng.integers(len(zs)))
        radii = (max(r_mm[0] / slice_mm, 0.7), max(r_mm[1] / px_mm, 0.7), max(r_mm[2] / px_mm, 0.7))
        centre = (float(zs[k]), float(ys[k]), float(xs[k]))
        mask |= _ellipsoid(rng, hu.shape, centre, radii, klass)
        lesions.append({"centre_vox": [int(zs[k]), int(ys[k]), int(xs[k])], "radii_mm": r_mm})
    mask &= liver
    if not mask.any():  # centres lie inside the liver; guard the label anyway
        raise RuntimeError("lesion fell outside the liver")
    edge = rng.uniform(1.0, 3.0)  # mm
    soft = ndimage.gaussian_filter(
        mask.astype(np.float32), (edge / slice_mm, edge / px_mm, edge / px_mm), mode="constant"
    )
    field = ndimage.gaussian_filter(rng.random(hu.shape, dtype=np.float32), 8.0 / px_mm)
    prob = 0.05 + 0.2 * (field - field.min()) / (field.max() - field.min() + 1e-12)
    tex = ndimage.gaussian_filter((rng.random(hu.shape) < prob).astype(np.float32), 5.0 / px_mm)
    tex = np.clip(tex * (rng.uniform(0.5, 0.55) / (tex.mean() + 1e-6)), 0.0, 1.0)
    depth_hu = float(rng.uniform(*spec.contrast_hu))
    out = hu - tex * soft * depth_hu * liver.astype(np.float32)
    params = {
        "size_class": klass,
        "n_lesions": len(lesions),
        "lesions": [
            {**le, "radii_mm": [round(float(r), 2) for r in le["radii_mm"]]} for le in lesions
        ],
        "depth_hu": round(depth_hu, 2),
        "voxels": int(mask.sum()),
    }
    return out.astype(np.float32), mask.astype(np.uint8), params


def render_volume(
    seed: int,
    site_index: int,
    split: str,
    index: int,
    spec: SiteSpec,
    size: int,
    depth: int,
    slice_mm: float,
    noise_ref_hu: float,
) -> Volume:
    """One patient of ``spec``'s site: ``depth`` slices of ``size`` x ``size`` pixels. Every
    patient has at least one lesion (a tumour cohort, as LiTS; the slice generator's per-slice
    ``prevalence`` has no per-patient meaning), so every volume has a Dice."""
    rng = volume_rng(seed, site_index, split, index)
    px = spec.fov_mm / size
    anat = build_anatomy(rng, size, spec.fov_mm)
    hu = _extrude(anat.hu, depth, order=1)
    tissue = _extrude(anat.tissue, depth, order=0)
    liver = tissue == LABEL["liver"]
    hu, mask, tumour = _add_lesions(rng, hu, liver, px, slice_mm, spec)
    image = np.stack([scan_at_site(rng, hu[k], spec, anat, noise_ref_hu)[0] for k in range(depth)])
    params = {"site": spec.name, "split": split, "index": index, "tumour": tumour}
    return Volume(image, mask, params)
