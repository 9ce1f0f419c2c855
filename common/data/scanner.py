"""Scanner model: calibration, resolution and CT-like (correlated, non-stationary) noise.

Why not white Gaussian noise: filtered back-projection (FBP) turns independent photon noise in the
sinogram into image noise whose power spectrum (NPS) is ~0 at DC, rises with the ramp filter |f|
and is rolled off by the reconstruction kernel's apodisation W(f); its variance is larger where
rays cross more tissue. We model exactly those three facts, in the image domain (fast):

1. calibration: HU' = gain * HU + offset (per site);
2. resolution: the image spectrum is multiplied by the system MTF = W(f) * Gaussian PSF, where the
   kernel W is a Butterworth low-pass (order 4) with the site's cutoff (fraction of Nyquist):
   smooth kernels blur, sharp ones keep edges;
3. noise: white noise shaped to NPS(f) = |f| W(f)^2 and scaled to unit variance, times a sigma map
   sigma(x, y) = sigma_c * sqrt(mean_theta exp(mu_w L_theta(x, y)) / same at the reference body
   centre), where L_theta is the chord length through the (water-equivalent) body ellipse of the
   ray through (x, y) at angle theta: Poisson counts behind a path of attenuation p have variance
   ~ exp(p) / I0. sigma_c = noise_ref_hu * g(kernel) / sqrt(dose) * (w_ref / w)^(3/2), with g the
   kernel's noise gain relative to the reference kernel (from the same NPS) and w the pixel width
   (field of view / matrix): a reconstruction averages noise down with the pixel size (Brooks &
   Di Chiro 1976: sigma^2 ~ 1 / (dose * w^3 * h), slice thickness h fixed here). noise_ref_hu is
   calibrated at w_ref, the reference site's pixel at the paper's 256x256 (380 mm / 256), so a
   lower-resolution profile is a downsampled scanner, not a noisier one. So dose, kernel, pixel
   size and patient size all set the noise, and the centre of a large patient is noisiest, as in
   real CT.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

MU_WATER_PER_MM = 0.018  # effective linear attenuation of soft tissue at ~70 keV
REF_BODY_MM = (160.0, 115.0)  # reference patient (semi-axes) at which sigma_c is defined
REF_CUTOFF = 0.8  # reference kernel cutoff
REF_PIXEL_MM = 380.0 / 256  # pixel width at which noise_ref_hu is calibrated (paper's 256x256)
N_ANGLES = 24
HU_RANGE = (-1024, 3071)  # the stored image's range (12-bit CT), also of imported CT


def _radial_freq(size: int) -> np.ndarray:
    """|f| as a fraction of Nyquist on the rfft2 grid (0 at DC, 1 at Nyquist along an axis)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return np.sqrt(fx * fx + fy * fy) / 0.5


def kernel_window(fn: np.ndarray, cutoff: float) -> np.ndarray:
    """Reconstruction-kernel apodisation: Butterworth low-pass of order 4 (1 at DC)."""
    return 1.0 / (1.0 + (fn / cutoff) ** 8)


@functools.lru_cache(maxsize=32)
def _nps_filter(size: int, cutoff: float) -> np.ndarray:
    """sqrt(NPS) on the rfft2 grid, scaled so that filtered unit white noise has unit variance."""
    fn = _radial_freq(size)
    h = np.sqrt(fn) * kernel_window(fn, cutoff)
    # Parseval: variance of irfft2(rfft2(w) * h) = mean of |h|^2 over the full (two-sided) grid.
    full = np.concatenate([h, h[:, 1 : size - size // 2][:, ::-1]], axis=1)
    return (h / math.sqrt(np.mean(full**2))).astype(np.float32)


@functools.lru_cache(maxsize=32)
def kernel_noise_gain(cutoff: float) -> float:
    """Noise sigma of a kernel relative to the reference kernel at equal dose (size-independent)."""
    fn = _radial_freq(256)

    def power(c):
        return float(np.mean(fn * kernel_window(fn, c) ** 2))

    return math.sqrt(power(cutoff) / power(REF_CUTOFF))


@functools.lru_cache(maxsize=32)
def _mtf(size: int, cutoff: float, psf_px: float) -> np.ndarray:
    fn = _radial_freq(size)
    f_cyc = fn * 0.5  # cycles per pixel
    return (kernel_window(fn, cutoff) * np.exp(-2 * (math.pi * psf_px * f_cyc) ** 2)).astype(
        np.float32
    )


def _mean_exp_path(xs, ys, a, b) -> np.ndarray:
    """mean over view angles of exp(mu * chord length) of the ray through each point (mm)."""
    acc = np.zeros(np.broadcast(xs, ys).shape, np.float64)
    for k in range(N_ANGLES):
        phi = math.pi * k / N_ANGLES  # direction of the ray's normal
        h2 = (a * math.cos(phi)) ** 2 + (b * math.sin(phi)) ** 2  # squared support distance
        s = xs * math.cos(phi) + ys * math.sin(phi)  # signed distance of the ray from the centre
        chord = 2 * a * b / h2 * np.sqrt(np.maximum(h2 - s * s, 0.0))
        acc += np.exp(MU_WATER_PER_MM * chord)
    return acc / N_ANGLES


_REF_CENTRE = float(_mean_exp_path(np.zeros(1), np.zeros(1), *REF_BODY_MM)[0])


def sigma_map(size: int, fov_mm: float, body_axes_mm, body_cy_mm: float, sigma_c: float):
    """Per-pixel noise sigma (HU), computed on a coarse grid and interpolated (it is smooth)."""
    coarse = 32
    c = (np.arange(coarse) + 0.5 - coarse / 2) * (fov_mm / coarse)
    xs, ys = np.meshgrid(c, c - body_cy_mm, indexing="xy")
    rel = np.sqrt(_mean_exp_path(xs, ys, *body_axes_mm) / _REF_CENTRE).astype(np.float32)
    return sigma_c * ndimage.zoom(rel, size / coarse, order=1, mode="nearest", grid_mode=True)


def pixel_noise_factor(pixel_mm: float) -> float:
    """Noise sigma relative to the reference pixel: (w_ref / w)^(3/2) (Brooks & Di Chiro)."""
    return (REF_PIXEL_MM / pixel_mm) ** 1.5


def centre_sigma(noise_ref_hu: float, dose: float, cutoff: float, pixel_mm: float) -> float:
    """Noise sigma (HU) at the centre of the reference body for a site's dose, kernel, pixel."""
    return noise_ref_hu * kernel_noise_gain(cutoff) / math.sqrt(dose) * pixel_noise_factor(pixel_mm)


def ct_noise(rng: np.random.Generator, size: int, cutoff: float) -> np.ndarray:
    """Stationary unit-variance noise with a CT (FBP) noise power spectrum."""
    white = rng.standard_normal((size, size), dtype=np.float32)
    return np.fft.irfft2(np.fft.rfft2(white) * _nps_filter(size, cutoff), s=(size, size)).astype(
        np.float32
    )


def scan(
    rng: np.random.Generator,
    hu: np.ndarray,
    *,
    fov_mm: float,
    body_axes_mm: tuple[float, float],
    body_cy_mm: float,
    dose: float,
    kernel_cutoff: float,
    psf_mm: float,
    hu_offset: float,
    hu_gain: float,
    noise_ref_hu: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Image the noise-free HU slice. Returns (int16 HU image, float32 noise realisation)."""
    size = hu.shape[0]
    cal = hu_gain * hu + hu_offset
    shifted = cal + 1000.0  # air -> 0, so the periodic FFT sees no edge at the border
    mtf = _mtf(size, float(kernel_cutoff), psf_mm / (fov_mm / size))
    blurred = np.fft.irfft2(np.fft.rfft2(shifted) * mtf, s=hu.shape) - 1000.0
    sig = sigma_map(
        size,
        fov_mm,
        body_axes_mm,
        body_cy_mm,
        centre_sigma(noise_ref_hu, dose, kernel_cutoff, fov_mm / size),
    )
    noise = sig * ct_noise(rng, size, float(kernel_cutoff))
    image = np.clip(np.rint(blurred + noise), *HU_RANGE).astype(np.int16)
    return image, noise.astype(np.float32)


def radial_nps(noise: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged noise power spectrum of a (square) noise patch: (freq/Nyquist, power)."""
    n = noise.shape[0]
    p = np.abs(np.fft.fft2(noise - noise.mean())) ** 2 / noise.size
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    fn = np.sqrt(fx * fx + fy * fy) / 0.5
    edges = np.linspace(0, 1, bins + 1)
    idx = np.digitize(fn.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < bins)
    power = np.bincount(idx[ok], weights=p.ravel()[ok], minlength=bins)
    count = np.bincount(idx[ok], minlength=bins)
    return 0.5 * (edges[1:] + edges[:-1]), power / np.maximum(count, 1)
