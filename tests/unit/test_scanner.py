"""The scanner model: noise that behaves like FBP CT noise, and resolution per kernel."""

import numpy as np
import pytest

from common.data.scanner import ct_noise, kernel_noise_gain, radial_nps, scan, sigma_map


def _rng(s=0):
    return np.random.default_rng(s)


def test_ct_noise_has_unit_variance():
    n = ct_noise(_rng(), 128, 0.8)
    assert n.std() == pytest.approx(1.0, rel=0.05)
    assert abs(n.mean()) < 0.05


def test_nps_is_ct_like_not_white():
    """FBP noise: ~no power at DC, a peak at mid frequency, roll-off by the kernel."""
    f, p = radial_nps(ct_noise(_rng(1), 256, 0.8), bins=16)
    peak = int(np.argmax(p))
    assert p[0] < 0.25 * p.max()  # ramp: low-frequency power suppressed
    assert 2 <= peak <= 12  # peak at mid frequency
    assert p[-1] < 0.5 * p.max()  # apodisation rolls off high frequencies
    white_f, white_p = radial_nps(_rng(1).standard_normal((256, 256)), bins=16)
    assert white_p.max() / white_p.min() < 1.5  # the test can tell white noise apart


def test_smooth_kernel_gives_coarser_noise_than_sharp():
    _, p_smooth = radial_nps(ct_noise(_rng(2), 256, 0.5))
    _, p_sharp = radial_nps(ct_noise(_rng(2), 256, 1.3))
    assert np.argmax(p_smooth) < np.argmax(p_sharp)


def test_noise_is_spatially_correlated():
    n = ct_noise(_rng(3), 256, 0.5)
    lag1 = np.corrcoef(n[:, :-1].ravel(), n[:, 1:].ravel())[0, 1]
    assert lag1 > 0.3


def test_kernel_gain_orders_noise():
    assert kernel_noise_gain(0.8) == pytest.approx(1.0)
    assert kernel_noise_gain(0.5) < 1.0 < kernel_noise_gain(1.3)


def test_noise_is_larger_in_the_body_centre_and_for_large_patients():
    m = sigma_map(64, 380.0, (160.0, 115.0), 0.0, 10.0)
    assert m[32, 32] == pytest.approx(10.0, rel=0.05)
    assert m[32, 32] > m[32, 8] and m[32, 32] > m[8, 32]
    big = sigma_map(64, 380.0, (175.0, 130.0), 0.0, 10.0)
    assert big[32, 32] > 1.2 * m[32, 32]


def _flat_scan(dose, cutoff, seed=0):
    hu = np.full((128, 128), 60.0, np.float32)
    img, noise = scan(
        np.random.default_rng(seed),
        hu,
        fov_mm=380.0,
        body_axes_mm=(160.0, 115.0),
        body_cy_mm=0.0,
        dose=dose,
        kernel_cutoff=cutoff,
        psf_mm=0.6,
        hu_offset=0.0,
        hu_gain=1.0,
        noise_ref_hu=12.0,
    )
    return img, noise


def test_dose_scales_noise_as_inverse_sqrt():
    _, n1 = _flat_scan(1.0, 0.8)
    _, n4 = _flat_scan(4.0, 0.8)
    c = slice(54, 74)
    assert n1[c, c].std() / n4[c, c].std() == pytest.approx(2.0, rel=0.05)


def test_calibration_offset_and_gain():
    hu = np.full((64, 64), 100.0, np.float32)
    img, noise = scan(
        np.random.default_rng(0),
        hu,
        fov_mm=380.0,
        body_axes_mm=(160.0, 115.0),
        body_cy_mm=0.0,
        dose=1e6,
        kernel_cutoff=0.8,
        psf_mm=0.6,
        hu_offset=10.0,
        hu_gain=1.02,
        noise_ref_hu=12.0,
    )
    assert abs(np.median(img) - 112.0) <= 1


def test_smooth_kernel_blurs_edges():
    hu = np.full((128, 128), -100.0, np.float32)
    hu[:, 64:] = 100.0

    def edge_width(cutoff):
        img, _ = scan(
            np.random.default_rng(0),
            hu,
            fov_mm=380.0,
            body_axes_mm=(160.0, 115.0),
            body_cy_mm=0.0,
            dose=1e8,
            kernel_cutoff=cutoff,
            psf_mm=0.3,
            hu_offset=0.0,
            hu_gain=1.0,
            noise_ref_hu=12.0,
        )
        row = img[64, 40:90].astype(float)
        return int(((row > -80) & (row < 80)).sum())

    assert edge_width(0.4) > edge_width(1.3)


def _model_nps(f, window):
    m = f * window**2
    return m / m.max()


def test_fbp_physics_has_the_nps_our_model_uses():
    """The premise of the noise model, checked against real physics: Poisson counts on a sinogram
    of a water cylinder, reconstructed by FBP (scikit-image, Hann filter), give image noise whose
    radial NPS follows |f| * W(f)^2 for that filter's window W."""
    radon_mod = pytest.importorskip("skimage.transform")
    n = 128
    y, x = np.mgrid[:n, :n]
    mu = np.where(np.hypot(x - n / 2 + 0.5, y - n / 2 + 0.5) < 0.45 * n, 0.0585, 0.0)
    theta = np.linspace(0, 180, 360, endpoint=False)
    sino = radon_mod.radon(mu, theta=theta, circle=True)
    clean = radon_mod.iradon(sino, theta=theta, filter_name="hann", circle=True)
    rng = np.random.default_rng(0)
    acc = 0
    for _ in range(4):
        counts = np.maximum(rng.poisson(2e4 * np.exp(-sino)), 1)
        rec = radon_mod.iradon(-np.log(counts / 2e4), theta=theta, filter_name="hann", circle=True)
        f, p = radial_nps((rec - clean)[32:96, 32:96])
        acc = acc + p
    measured = acc / acc.max()
    model = _model_nps(f, 0.5 * (1 + np.cos(np.pi * f)))
    assert np.corrcoef(measured, model)[0, 1] > 0.9
    assert abs(int(np.argmax(measured)) - int(np.argmax(model))) <= 2
    assert measured[0] < 0.5  # low frequencies suppressed: white noise would be flat at 1


def test_generated_noise_matches_its_analytic_nps():
    from common.data.scanner import kernel_window

    for cutoff in (0.5, 0.8, 1.3):
        acc = 0
        for s in range(4):
            f, p = radial_nps(ct_noise(_rng(10 + s), 128, cutoff)[32:96, 32:96])
            acc = acc + p
        model = _model_nps(f, kernel_window(f, cutoff))
        assert np.corrcoef(acc / acc.max(), model)[0, 1] > 0.95, cutoff


def test_noise_scales_with_pixel_size_as_brooks_di_chiro():
    """A coarser matrix over the same field of view is a downsampled scanner: the noise falls as
    (w_ref / w)^(3/2), calibrated at the reference site's pixel at 256x256."""
    from common.data.scanner import REF_PIXEL_MM, centre_sigma, pixel_noise_factor

    assert pixel_noise_factor(REF_PIXEL_MM) == pytest.approx(1.0)
    assert centre_sigma(12.0, 1.0, 0.8, REF_PIXEL_MM) == pytest.approx(12.0)
    assert pixel_noise_factor(4 * REF_PIXEL_MM) == pytest.approx(1 / 8)
    stds = {}
    for size in (64, 256):
        hu = np.full((size, size), 40.0, np.float32)
        _, noise = scan(
            _rng(7),
            hu,
            fov_mm=380.0,
            body_axes_mm=(160.0, 115.0),
            body_cy_mm=0.0,
            dose=1.0,
            kernel_cutoff=0.8,
            psf_mm=0.6,
            hu_offset=0.0,
            hu_gain=1.0,
            noise_ref_hu=12.0,
        )
        c = slice(size // 2 - size // 8, size // 2 + size // 8)
        stds[size] = float(noise[c, c].std())
    assert stds[256] == pytest.approx(12.0, rel=0.15)
    assert stds[64] / stds[256] == pytest.approx(1 / 8, rel=0.2)
