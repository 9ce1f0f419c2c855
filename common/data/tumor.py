"""Liver tumors after the procedural recipe of Hu et al. (CVPR 2023), adapted to 2D.

Per tumor slice: one size class (tiny/small/medium/large: radius 4/8/16/32 mm, each lesion cut at
a random height of its ellipsoid), a few lesions, each an ellipse with jittered axes and an
elastic warp (a smoothed random displacement field), placed inside the liver and clipped to it.
Appearance: a Bernoulli-then-smoothed texture with mean ~0.5, multiplied by the blurred lesion
mask and a hypo-attenuation depth D (HU), subtracted inside the liver; optionally a faint bright
capsule rim. The label is the union of the lesion shapes BEFORE blurring, so it is exact.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from common.config import SIZE_CLASSES

RADIUS_MM = {"tiny": 4.0, "small": 8.0, "medium": 16.0, "large": 32.0}
N_LESIONS = {"tiny": (1, 3), "small": (1, 3), "medium": (1, 2), "large": (1, 1)}
WARP = {"tiny": 0.12, "small": 0.18, "medium": 0.25, "large": 0.3}  # x radius


def _texture(rng: np.random.Generator, shape: tuple[int, int], px_mm: float) -> np.ndarray:
    """Hu et al. texture: smoothed uniform -> probability map -> Bernoulli -> smoothed -> mean 0.5."""
    sa = rng.uniform(3, 15) / px_mm
    sb = rng.uniform(3, 8) / px_mm
    field = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), sa, mode="reflect")
    lo, hi = field.min(), field.max()
    prob = 0.05 + 0.2 * (field - lo) / (hi - lo + 1e-12)
    tex = ndimage.gaussian_filter((rng.random(shape) < prob).astype(np.float32), sb, mode="reflect")
    u0 = rng.uniform(0.5, 0.55)
    return np.clip(tex * (u0 / (tex.mean() + 1e-6)), 0.0, 1.0)


def _lesion_shape(rng, r_px: float, klass: str) -> tuple[np.ndarray, dict]:
    """A warped ellipse on its own small canvas centred on the lesion centre."""
    rx, ry = r_px * rng.uniform(0.75, 1.25), r_px * rng.uniform(0.75, 1.25)
    ang = rng.uniform(0, math.pi)
    half = int(math.ceil(1.6 * max(rx, ry))) + 2
    g = np.arange(-half, half + 1, dtype=np.float32)
    X, Y = np.meshgrid(g, g, indexing="xy")
    disp = rng.standard_normal((2, *X.shape)).astype(np.float32)
    sm = max(r_px / 2, 0.5)
    dx, dy = (ndimage.gaussian_filter(d, sm, mode="reflect") for d in disp)
    scale = WARP[klass] * r_px / (max(np.abs(dx).max(), np.abs(dy).max()) + 1e-6)
    Xw, Yw = X + dx * scale, Y + dy * scale
    c, s = math.cos(ang), math.sin(ang)
    u, v = (Xw * c + Yw * s) / rx, (Yw * c - Xw * s) / ry
    shape = u * u + v * v <= 1.0
    if not shape.any():  # sub-pixel lesion: keep at least its centre pixel
        shape[half, half] = True
    return shape, {"rx_px": rx, "ry_px": ry, "angle": ang}


def _paste(canvas_shape, small: np.ndarray, cy: int, cx: int) -> np.ndarray:
    out = np.zeros(canvas_shape, bool)
    h = small.shape[0] // 2
    y0, x0 = cy - h, cx - h
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(canvas_shape[0], y0 + small.shape[0]), min(canvas_shape[1], x0 + small.shape[1])
    out[ys:ye, xs:xe] = small[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return out


def add_tumors(
    rng: np.random.Generator,
    hu: np.ndarray,
    liver: np.ndarray,
    px_mm: float,
    size_mix: tuple[float, ...],
    contrast_hu: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Insert 1+ lesions into the liver. Returns (new hu, exact uint8 mask, params)."""
    klass = SIZE_CLASSES[int(rng.choice(len(SIZE_CLASSES), p=np.asarray(size_mix) / sum(size_mix)))]
    dist = ndimage.distance_transform_edt(liver)
    mask = np.zeros(hu.shape, bool)
    lesions = []
    for _ in range(int(rng.integers(N_LESIONS[klass][0], N_LESIONS[klass][1] + 1))):
        cut = math.sqrt(1 - rng.uniform(0, 0.6) ** 2)  # cross-section of a 3D ellipsoid
        r_px = max(RADIUS_MM[klass] * cut / px_mm, 1.5)
        # Centre deep enough in the liver that most of the lesion is inside it.
        need = min(0.6 * r_px, 0.8 * dist.max())
        ys, xs = np.nonzero(dist >= max(need, 1.0))
        k = int(rng.integers(len(ys)))
        shape, info = _lesion_shape(rng, r_px, klass)
        mask |= _paste(hu.shape, shape, int(ys[k]), int(xs[k]))
        lesions.append({"cy": int(ys[k]), "cx": int(xs[k]), "r_px": r_px, **info})
    mask &= liver
    if not mask.any():  # cannot happen with centres inside the liver; guard the label anyway
        raise RuntimeError("tumor fell outside the liver")

    # Appearance, computed on the bounding box (plus blur margin) for speed.
    ys, xs = np.nonzero(mask)
    m = int(math.ceil(4 / px_mm)) + 4
    y0, y1 = max(ys.min() - m, 0), min(ys.max() + m + 1, hu.shape[0])
    x0, x1 = max(xs.min() - m, 0), min(xs.max() + m + 1, hu.shape[1])
    box = (slice(y0, y1), slice(x0, x1))
    edge = rng.uniform(1.0, 3.0) / px_mm  # edge blur (mm -> px)
    soft = ndimage.gaussian_filter(mask[box].astype(np.float32), edge, mode="constant")
    tex = _texture(rng, soft.shape, px_mm)
    depth = float(rng.uniform(*contrast_hu))
    inside_liver = liver[box].astype(np.float32)
    out = hu.copy()
    out[box] -= tex * soft * depth * inside_liver
    capsule = bool(rng.random() < 0.25)
    rim_hu = float(rng.uniform(10, 25)) if capsule else 0.0
    if capsule:  # faint enhancing rim just outside the lesion (HCC-like capsule)
        ring = ndimage.binary_dilation(mask[box], iterations=2) & ~mask[box]
        out[box] += rim_hu * ndimage.gaussian_filter(ring.astype(np.float32), 0.7) * inside_liver
    params = {
        "size_class": klass,
        "n_lesions": len(lesions),
        "lesions": lesions,
        "depth_hu": depth,
        "edge_sigma_px": edge,
        "capsule_hu": rim_hu,
        "area_px": int(mask.sum()),
    }
    return out, mask.astype(np.uint8), params
