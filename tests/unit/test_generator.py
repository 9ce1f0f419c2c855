"""The synthetic CT generator: tissue HU, tumor placement and contrast, prevalence, size mix."""

import numpy as np
import pytest
from scipy import ndimage

from common.config import parse_config
from common.data.anatomy import LABEL
from common.data.generate import render_slice
from common.data.sites import resolve_sites


def _spec(site=0, **data):
    return resolve_sites(parse_config({"data": data}).data)[site]


@pytest.fixture(scope="module")
def slices():
    spec = _spec(0, severity="moderate")
    return [render_slice(11, 0, "train", i, spec, 128, 12.0) for i in range(12)]


def test_shapes_and_dtypes(slices):
    s = slices[0]
    assert s.image.shape == (128, 128) and s.image.dtype == np.int16
    assert s.mask.dtype == np.uint8 and set(np.unique(s.mask)) <= {0, 1}


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [
        ("air", -1001, -999),
        ("fat", -140, -60),
        ("visceral_fat", -140, -60),
        ("muscle", 25, 75),
        ("liver", 75, 150),
        ("spleen", 90, 150),
        ("aorta", 120, 230),
        ("cortical_bone", 600, 1300),
    ],
)
def test_tissue_hu_ranges(slices, tissue, lo, hi):
    """Mean HU of each tissue (before the scanner, away from tumors) lies in its textbook range."""
    means = []
    for s in slices:
        sel = (s.tissue == LABEL[tissue]) & (s.mask == 0)
        if sel.sum() > 5:
            means.append(float(s.clean[sel].mean()))
    assert means, f"no {tissue} in any slice"
    assert lo <= min(means) and max(means) <= hi


def test_air_and_bone_survive_the_scanner(slices):
    s = slices[0]
    air = ndimage.binary_erosion(s.tissue == LABEL["air"], iterations=3)
    assert abs(np.median(s.image[air]) + 1000) < 30
    assert s.image.min() >= -1024


def test_tumor_mask_inside_liver_and_hypodense():
    spec = _spec(0)
    n_tumor = 0
    for i in range(30):
        s = render_slice(5, 0, "train", i, spec, 128, 12.0)
        if not s.params["has_tumor"]:
            assert s.mask.sum() == 0
            continue
        n_tumor += 1
        liver = (s.tissue == LABEL["liver"]) | (s.mask == 1)
        assert not (s.mask.astype(bool) & ~liver).any(), "mask leaves the liver"
        assert s.params["tumor"]["area_px"] == int(s.mask.sum())
        ring = ndimage.binary_dilation(s.mask, iterations=3) & ~s.mask.astype(bool) & liver
        inside = s.clean[s.mask == 1].mean()
        around = s.clean[ring].mean()
        assert inside < around - 10, f"slice {i}: tumor {inside:.0f} HU vs liver {around:.0f} HU"
    assert n_tumor >= 10


def test_tumor_darker_than_liver_in_noisy_images():
    spec = _spec(3, severity="extreme")  # the low-dose site
    diffs = []
    for i in range(40):
        s = render_slice(6, 3, "test", i, spec, 128, 12.0)
        if s.mask.any():
            ring = ndimage.binary_dilation(s.mask, iterations=3) & ~s.mask.astype(bool)
            ring &= s.tissue == LABEL["liver"]
            diffs.append(s.image[s.mask == 1].mean() - s.image[ring].mean())
    assert len(diffs) >= 8
    assert np.median(diffs) < -15


def _binomial_ok(k, n, p, z=4.0):
    return abs(k / n - p) <= z * np.sqrt(p * (1 - p) / n) + 1e-9


def test_prevalence_as_configured():
    for site, p in ((2, 0.8), (3, 0.35)):  # extreme: C 80%, D 35%
        spec = _spec(site, severity="extreme")
        assert spec.prevalence == pytest.approx(p)
        k = sum(
            render_slice(3, site, "train", i, spec, 64, 12.0).params["has_tumor"]
            for i in range(150)
        )
        assert _binomial_ok(k, 150, p), (site, k)


def test_size_mix_as_configured_in_the_paper_stress_setting():
    for site, klass in ((0, "large"), (1, "small")):
        spec = _spec(site, stress="paper", overrides={"ABCDE"[site]: {"prevalence": 1.0}})
        classes = [
            render_slice(4, site, "train", i, spec, 64, 12.0).params["tumor"]["size_class"]
            for i in range(80)
        ]
        assert _binomial_ok(classes.count(klass), 80, 0.9), (site, classes.count(klass))


def test_large_tumors_are_larger_than_small_ones():
    areas = {}
    for klass, mix in (("small", [0, 1, 0, 0]), ("large", [0, 0, 0, 1])):
        spec = _spec(0, overrides={"A": {"prevalence": 1.0, "size_mix": mix}})
        areas[klass] = np.median(
            [
                render_slice(8, 0, "train", i, spec, 128, 12.0).params["tumor"]["area_px"]
                for i in range(15)
            ]
        )
    assert areas["large"] > 4 * areas["small"]


def test_same_seed_same_slice_different_seed_different_slice():
    spec = _spec(1)
    a = render_slice(9, 1, "holdout", 4, spec, 64, 12.0)
    b = render_slice(9, 1, "holdout", 4, spec, 64, 12.0)
    c = render_slice(10, 1, "holdout", 4, spec, 64, 12.0)
    d = render_slice(9, 1, "test", 4, spec, 64, 12.0)
    assert np.array_equal(a.image, b.image) and a.params == b.params
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.image, d.image)


def test_unknown_split_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        render_slice(1, 0, "validation", 0, _spec(), 64, 12.0)
