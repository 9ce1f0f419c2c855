"""`fedonco data compare`: each statistic against a value constructed here, the organ statistics
of an imported dataset against its source, the n/a rule, and the report on pydicom's real
CT_small.dcm against a generated dataset."""

import json

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from realct import CFG, N_CASES, phantom_case, write_layout

from bench.cli import main
from common.data.build import build_dataset
from common.data.real.compare import WINDOW_PX, measure_slice
from common.data.real.importer import import_dataset
from common.data.store import read_manifest

CT_SMALL = get_testdata_file("CT_small.dcm")


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_tumour_and_organ_statistics_of_a_drawn_slice():
    """Two discs (radius 10 and 6 px at 0.8 mm) of 20 HU in a 100 HU organ on -1000 HU air."""
    px, shape = 0.8, (96, 96)
    image = np.full(shape, -1000.0)
    organ = np.zeros(shape, bool)
    organ[8:88, 8:88] = True
    t1, t2 = disc(shape, 30, 30, 10), disc(shape, 65, 65, 6)
    tumour = t1 | t2
    image[organ], image[tumour] = 100.0, 20.0
    v = measure_slice(image.astype(np.int16), px, tumour.astype(np.uint8), organ)
    assert v["tumour_slice"] == [1.0] and v["tumours_per_slice"] == [2.0]
    # equivalent diameter of a digital disc: within 2% of 2 r px
    np.testing.assert_allclose(
        sorted(v["tumour_diameter_mm"]), [2 * 6 * px, 2 * 10 * px], rtol=0.02
    )
    assert v["tumour_hu_mean"] == [20.0] and v["tumour_hu_sd"] == [0.0]
    assert v["organ_hu_mean"] == [100.0] and v["organ_hu_sd"] == [0.0]
    assert v["contrast_hu"] == [-80.0]
    np.testing.assert_allclose(
        v["tumour_organ_area_ratio"], [np.pi * (100 + 36) / 80**2], rtol=0.02
    )
    # the same from an imported slice's organ record instead of a mask
    rec = {"area_px": int(organ.sum()), "hu_mean": 100.0, "hu_sd": 0.0}
    assert measure_slice(image.astype(np.int16), px, tumour.astype(np.uint8), rec) == v
    # a tumour-free slice counts in the fraction only
    empty = measure_slice(image.astype(np.int16), px, np.zeros(shape, np.uint8), organ)
    assert empty["tumour_slice"] == [0.0] and empty["tumour_diameter_mm"] == []


def test_noise_sd_and_soft_tissue_hu_of_a_constant_region_with_known_noise():
    rng = np.random.default_rng(0)
    image = 60.0 + rng.normal(0.0, 20.0, (128, 128))
    image[:, :20] = -1000.0  # air: not flat soft tissue
    v = measure_slice(image, 0.7)
    np.testing.assert_allclose(v["noise_sd_hu"], [20.0], rtol=0.03)
    np.testing.assert_allclose(v["soft_tissue_hu"], [60.0], atol=1.0)
    assert v["tumour_slice"] == [] and v["organ_hu_mean"] == []  # no masks: not measured
    flat = measure_slice(np.full((128, 128), 60.0), 0.7)
    assert flat["noise_sd_hu"] == [0.0]
    assert measure_slice(np.full((128, 128), -1000.0), 0.7)["noise_sd_hu"] == []  # nothing flat
    assert WINDOW_PX == 7


def test_nps_peak_is_the_frequency_of_a_periodic_pattern():
    """A 4-cycles-per-16-px stripe pattern (0.25 cycles/px) at 0.5 mm: a peak at 0.5 /mm."""
    rng = np.random.default_rng(1)
    xx = np.arange(128)[None, :]
    image = 60.0 + 10 * np.sin(2 * np.pi * 0.25 * xx) + rng.normal(0, 1.0, (128, 128))
    assert measure_slice(image, 0.5)["nps_peak_per_mm"] == [0.5]
    smooth = 60.0 + 10 * np.sin(2 * np.pi * xx / 8) + rng.normal(0, 1.0, (128, 128))
    assert measure_slice(smooth, 0.5)["nps_peak_per_mm"] == [0.25]  # 2 cycles per 16 px


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cases = [phantom_case(k) for k in range(N_CASES)]
    import_dataset(write_layout(root, "lits", cases), root / "imported", CFG, gallery=False)
    build_dataset(CFG, root / "synth", workers=1, gallery=False, only_splits=["test"])
    return root, cases


def test_imported_organ_records_are_the_source_labels_statistics(datasets):
    root, cases = datasets
    m = read_manifest(root / "imported")
    seen = 0
    for e in m["shards"]:
        for r in e["samples"]:
            c = cases[int(r["case"].split("-")[1])]
            hu, label = c["hu"][:, :, r["z"]].astype(float), c["label"][:, :, r["z"]]
            liver = label == 1  # lits: organ label 1, tumour 2
            assert r["organ"]["area_px"] == int((label > 0).sum() - (label == 3).sum())
            if liver.any():
                assert r["organ"]["hu_mean"] == pytest.approx(hu[liver].mean(), abs=0.01)
                assert r["organ"]["hu_sd"] == pytest.approx(hu[liver].std(), abs=0.01)
            seen += 1
    assert seen == sum(e["n"] for e in m["shards"])


def test_compare_ct_small_with_a_generated_dataset_writes_the_report(datasets, tmp_path, capsys):
    root, _ = datasets
    out = tmp_path / "report"
    assert main(["data", "compare", CT_SMALL, str(root / "synth"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.json", "compare.png"}
    rep = json.loads((out / "compare.json").read_text())
    real, synth = rep["real"]["pooled"], rep["synth"]["pooled"]
    # one unlabelled slice: tumour and organ statistics are n/a, with the reason, never numbers
    for stat in ("tumour_slice", "tumour_diameter_mm", "organ_hu_mean", "contrast_hu"):
        assert "without a tumour or organ mask" in real[stat]["n/a"] and "mean" not in real[stat]
        assert "n/a" in rep["distance"][stat]
        assert synth[stat]["n"] > 0 and "mean" in synth[stat]
    assert real["noise_sd_hu"]["n"] == 1 and 5 < real["noise_sd_hu"]["mean"] < 60
    d = rep["distance"]["noise_sd_hu"]
    assert d["wasserstein"] > 0 and 0 <= d["ks_d"] <= 1
    md = (out / "compare.md").read_text()
    assert "| noise_sd_hu | HU |" in md and "n/a (a DICOM image without" in md
    # an imported dataset supports the organ statistics (from its records)
    assert (
        main(
            [
                "data",
                "compare",
                str(root / "imported"),
                str(root / "synth"),
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 0
    )
    rep2 = json.loads((tmp_path / "r2" / "compare.json").read_text())
    for stat in ("organ_hu_mean", "contrast_hu", "tumour_organ_area_ratio", "tumour_diameter_mm"):
        assert "wasserstein" in rep2["distance"][stat], (stat, rep2["distance"][stat])
    capsys.readouterr()
    assert main(["data", "compare", str(tmp_path / "nothing"), CT_SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedonco data: error:") and "no such file" in err
    assert len(err.strip().splitlines()) == 1
