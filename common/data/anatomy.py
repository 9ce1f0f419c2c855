"""A parametric axial slice of the upper abdomen, in Hounsfield units (noise-free).

The patient is drawn in millimetres around the body centre (x to the image's right = patient's
left, radiological convention; y down = posterior), then rasterised at any image size and field
of view. Organs are ellipses seen through one smooth random warp, so outlines are organic rather
than geometric; a slice level ``z`` (0 = liver dome, 1 = lower liver) decides which organs appear
and how large. Each tissue gets a patient-level HU draw plus mild correlated texture.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# name -> (label, mean HU (portal-venous phase), patient-level sd, texture amplitude HU)
TISSUES: dict[str, tuple[int, float, float, float]] = {
    "air": (0, -1000.0, 0.0, 0.0),
    "fat": (1, -100.0, 8.0, 6.0),
    "muscle": (2, 50.0, 5.0, 6.0),
    "visceral_fat": (3, -95.0, 8.0, 6.0),
    "liver": (4, 110.0, 10.0, 5.0),
    "spleen": (5, 120.0, 8.0, 5.0),
    "kidney": (6, 175.0, 12.0, 8.0),
    "renal_pelvis": (7, 10.0, 5.0, 3.0),
    "aorta": (8, 170.0, 15.0, 3.0),
    "ivc": (9, 140.0, 12.0, 3.0),
    "cancellous_bone": (10, 260.0, 40.0, 40.0),
    "cortical_bone": (11, 900.0, 80.0, 40.0),
    "csf": (12, 15.0, 5.0, 3.0),
    "bowel": (13, 30.0, 10.0, 8.0),
    "gas": (14, -1000.0, 0.0, 0.0),
}
LABEL = {name: v[0] for name, v in TISSUES.items()}


@dataclass
class Anatomy:
    hu: np.ndarray  # float32 (N, N), noise-free HU
    tissue: np.ndarray  # uint8 (N, N) labels of TISSUES
    body_axes_mm: tuple[float, float]  # semi-axes of the body outline (lateral, AP)
    params: dict


def pixel_grid(size: int, fov_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in mm, origin at the image centre."""
    c = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) * (fov_mm / size)
    return np.meshgrid(c, c, indexing="xy")


def ellipse(X, Y, cx, cy, a, b, angle=0.0) -> np.ndarray:
    """Boolean mask of an ellipse with semi-axes (a, b) rotated by `angle` radians."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = X - cx, Y - cy
    u = (dx * c + dy * s) / a
    v = (dy * c - dx * s) / b
    return u * u + v * v <= 1.0


@functools.lru_cache(maxsize=16)
def _lowpass(size: int, corr_px: float) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return np.exp(-2 * (math.pi * corr_px) ** 2 * (fx * fx + fy * fy)).astype(np.float32)


def smooth_field(rng: np.random.Generator, size: int, corr_px: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~corr_px pixels."""
    white = rng.standard_normal((size, size), dtype=np.float32)
    f = np.fft.irfft2(np.fft.rfft2(white) * _lowpass(size, max(corr_px, 0.3)), s=(size, size))
    f -= f.mean()
    return (f / (f.std() + 1e-12)).astype(np.float32)


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def build_anatomy(rng: np.random.Generator, size: int, fov_mm: float) -> Anatomy:
    """Draw one patient slice. All randomness comes from `rng` (and is recorded in params)."""
    px = fov_mm / size
    X, Y = pixel_grid(size, fov_mm)
    # One smooth warp for the whole slice: organic outlines, different in every patient.
    warp = rng.standard_normal((2, 6, 6)).astype(np.float32) * 3.5
    zoom = size / 6
    Xw = X + ndimage.zoom(warp[0], zoom, order=3)
    Yw = Y + ndimage.zoom(warp[1], zoom, order=3)

    z = _u(rng, 0, 1)  # slice level
    a = min(_u(rng, 138, 172), 0.46 * fov_mm)
    b = a * _u(rng, 0.68, 0.8)
    cy_body = _u(rng, -6, 10)
    Yb = Yw - cy_body
    fat_mm, muscle_mm = _u(rng, 8, 30), _u(rng, 7, 13)
    ca, cb = a - fat_mm - muscle_mm, b - fat_mm - muscle_mm  # peritoneal cavity

    tissue = np.zeros((size, size), np.uint8)

    def paint(mask, name):
        tissue[mask] = LABEL[name]

    body = ellipse(Xw, Yb, 0, 0, a, b)
    cavity = ellipse(Xw, Yb, 0, 0, ca, cb)
    paint(body, "fat")
    paint(ellipse(Xw, Yb, 0, 0, a - fat_mm, b - fat_mm), "muscle")
    paint(cavity, "visceral_fat")

    # Bowel loops (patient's left, anterior) with air-fluid levels; stomach in upper slices.
    loops = []
    if z < 0.4:
        loops.append((0.35 * ca, -0.45 * cb, _u(rng, 22, 34)))
    for _ in range(int(rng.integers(3, 8))):
        loops.append((_u(rng, -0.1, 0.7) * ca, _u(rng, -0.75, 0.2) * cb, _u(rng, 7, 20)))
    for lx, ly, r in loops:
        loop = ellipse(Xw, Yb, lx, ly, r, r * 0.85) & cavity
        paint(loop, "bowel")
        if rng.random() < 0.6:  # gas rises anteriorly (smaller y): an air-fluid level
            level = ly - r + 2 * r * _u(rng, 0.2, 0.6)
            paint(loop & ellipse(Xw, Yb, lx, ly, r - 2, r * 0.85 - 2) & (Yb < level), "gas")

    spleen_scale = max(0.0, 1.0 - 1.3 * z) * _u(rng, 0.85, 1.15)
    if spleen_scale > 0.25:
        sp = ellipse(
            Xw,
            Yb,
            0.6 * ca,
            0.3 * cb,
            0.22 * ca * spleen_scale,
            0.34 * cb * spleen_scale,
            math.radians(_u(rng, 25, 45)),
        )
        paint(sp & cavity, "spleen")
    kidney_scale = min(1.0, max(0.0, (z - 0.25) * 2.2)) * _u(rng, 0.85, 1.1)
    if kidney_scale > 0.25:
        for side in (-1, 1):
            kx, ky = side * 0.37 * ca, 0.45 * cb
            ang = math.radians(side * _u(rng, 15, 30))
            kw, kh = 0.13 * ca * kidney_scale, 0.2 * cb * kidney_scale
            paint(ellipse(Xw, Yb, kx, ky, kw, kh, ang) & cavity, "kidney")
            paint(
                ellipse(Xw, Yb, kx - side * 0.35 * kw, ky, 0.4 * kw, 0.45 * kh, ang), "renal_pelvis"
            )

    liver_scale = (1.1 - 0.4 * z) * _u(rng, 0.9, 1.08)
    liver = ellipse(
        Xw,
        Yb,
        -0.42 * ca,
        -0.05 * cb,
        0.52 * ca * liver_scale,
        0.74 * cb * liver_scale,
        math.radians(_u(rng, -25, -8)),
    )
    if rng.random() < 0.85 * (1 - z):  # left lobe reaching across the midline
        liver |= ellipse(
            Xw,
            Yb,
            0.02 * ca,
            -0.52 * cb,
            0.3 * ca * liver_scale,
            0.2 * cb * liver_scale,
            math.radians(_u(rng, -10, 10)),
        )
    paint(liver & cavity, "liver")

    if z > 0.45:
        for side in (-1, 1):
            paint(ellipse(Xw, Yb, side * 30, 0.52 * cb, 10 + 8 * z, 13 + 6 * z), "muscle")  # psoas
    paint(ellipse(Xw, Yb, 0.07 * ca, 0.36 * cb, r_ao := _u(rng, 9, 13), r_ao), "aorta")
    paint(ellipse(Xw, Yb, -0.13 * ca, 0.3 * cb, _u(rng, 10, 15), _u(rng, 7, 10)), "ivc")

    vy, vr = 0.62 * b, _u(rng, 16, 20)  # vertebral body, canal, arch, back muscles
    for side in (-1, 1):
        paint(ellipse(Xw, Yb, side * 34, vy + vr + 14, 26, 20) & body, "muscle")
    paint(ellipse(Xw, Yb, 0, vy + vr + 9, 13, 12) & body, "cortical_bone")  # arch
    paint(ellipse(Xw, Yb, 0, vy + vr + 24, 4, 14) & body, "cortical_bone")  # spinous process
    paint(ellipse(Xw, Yb, 0, vy + vr + 8, 8, 7), "csf")
    paint(ellipse(Xw, Yb, 0, vy, vr, vr * 0.9), "cortical_bone")
    paint(ellipse(Xw, Yb, 0, vy, vr - 2.5, vr * 0.9 - 2.5), "cancellous_bone")

    # HU: patient-level draw per tissue + correlated texture (two scales).
    means = np.zeros(len(TISSUES), np.float32)
    amps = np.zeros(len(TISSUES), np.float32)
    for _name, (lab, mu, sd, amp) in TISSUES.items():
        means[lab] = mu + sd * rng.standard_normal()
        amps[lab] = amp
    texture = 0.8 * smooth_field(rng, size, 3.0 / px) + 0.6 * smooth_field(rng, size, 1.0 / px)
    hu = means[tissue] + amps[tissue] * texture

    params = {
        "z": z,
        "body_axes_mm": [a, b],
        "body_center_y_mm": cy_body,
        "fat_mm": fat_mm,
        "muscle_mm": muscle_mm,
        "liver_scale": liver_scale,
        "spleen_scale": spleen_scale,
        "kidney_scale": kidney_scale,
        "n_bowel_loops": len(loops),
        "liver_hu": float(means[LABEL["liver"]]),
    }
    return Anatomy(hu=hu.astype(np.float32), tissue=tissue, body_axes_mm=(a, b), params=params)
