"""`fedonco data import`: real-CT layouts written here from the procedural phantom (nibabel,
pydicom) import into a dataset that reproduces the phantom's slices and masks, splits by patient,
loads through the normal loader, and fails with one line and nothing written on bad input."""

import csv
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from realct import (
    CFG,
    N_CASES,
    N_Z,
    SIZE,
    case_ids,
    imported_slices,
    phantom_case,
    save_nifti,
    stored,
    write_layout,
)
from scipy import ndimage

from bench.cli import main
from common.config import DEFAULT_SITE_NAMES
from common.data.loader import ct_dataset, load_arrays, regenerate_slice
from common.data.real.importer import convert_case, import_dataset
from common.data.real.sources import (
    Case,
    ImportDataError,
    read_case,
    read_dicom_series,
)
from common.data.store import DatasetIntegrityError, read_manifest


@pytest.fixture(scope="module")
def cases():
    return [phantom_case(k) for k in range(N_CASES)]


@pytest.mark.parametrize("layout", ["msd", "lits", "kits", "dicom"])
def test_each_layout_reproduces_the_phantom_exactly(layout, cases, tmp_path):
    src = write_layout(tmp_path, layout, cases)
    if layout == "msd":  # the fixture really is int16 with scaling
        hdr = nib.load(src / "imagesTr" / "liver_00.nii.gz")
        assert hdr.get_data_dtype() == np.int16 and hdr.dataobj.slope != 1.0
    out = tmp_path / "out"
    # msd: dataset.json names the tumour ("cancer") but two organs; lits, kits: their defaults
    labels = {"tumor_label": 2, "organ_label": 1} if layout == "dicom" else {}
    manifest = import_dataset(src, out, CFG, gallery=False, **labels)
    assert manifest["generator"] == "import" and manifest["import"]["layout"] == layout
    assert manifest["import"]["tumor_label"] == 2
    organ = manifest["import"]["organ_label"]
    assert organ == (None if layout == "msd" else 1)
    got = imported_slices(out)
    for k, (cid, c) in enumerate(zip(case_ids(layout), cases, strict=True)):
        tumour_z = {z for z in range(N_Z) if c["mask"][:, :, z].any()}
        mine = {z for (i, z) in got if i == cid}
        assert tumour_z <= mine, cid  # every tumour slice
        # plus ceil(1.0 * max(T, 1)) tumour-free ones from the organ's extent
        in_organ = (c["label"] != 0) if organ is None else np.isin(c["label"], (organ, 2))
        extent = np.flatnonzero(in_organ.any(axis=(0, 1)))
        free = set(range(extent[0], extent[-1] + 1)) - tumour_z
        assert mine - tumour_z <= free, cid
        assert len(mine - tumour_z) == min(len(free), max(len(tumour_z), 1)), cid
        for z in mine:
            image, mask, site, _ = got[(cid, z)]
            assert site == DEFAULT_SITE_NAMES[k % 5]
            np.testing.assert_array_equal(mask, c["mask"][:, :, z], err_msg=f"{cid} z={z}")
            np.testing.assert_array_equal(image, c["hu"][:, :, z], err_msg=f"{cid} z={z}")
    assert sum(m.sum() for _, m, _, _ in got.values()) == sum(c["mask"].sum() for c in cases)


def test_resampling_keeps_hu_and_mask_within_tolerance(cases):
    """A case acquired at 3/4 of the site's pixel size (a finer scan, 85 px): import resamples
    it to the site's grid; soft tissue HU and the tumour outline stay close."""
    c = cases[0]
    fine = ndimage.zoom(
        c["hu"].astype(np.float32),
        (4 / 3, 4 / 3, 1),
        order=1,
        grid_mode=True,
        mode="grid-constant",
        cval=-1024,
    )
    label = ndimage.zoom(
        c["label"], (4 / 3, 4 / 3, 1), order=0, grid_mode=True, mode="grid-constant"
    )
    affine = c["affine"].copy()
    affine[:2, :2] *= 0.75
    images, masks, recs = convert_case(
        "c",
        fine,
        np.rint(label).astype(np.int16),
        affine,
        tumor_label=2,
        organ_label=1,
        px_mm=c["px"],
        size=SIZE,
        free_ratio=1.0,
        seed=0,
    )
    assert images.shape[1:] == (SIZE, SIZE)
    for im, mk, r in zip(images, masks, recs, strict=True):
        z = r["z"]
        liver = ndimage.binary_erosion(c["label"][:, :, z] == 1, iterations=2)
        diff = np.abs(im.astype(float) - c["hu"][:, :, z])[liver]
        assert np.median(diff) < 12, (z, np.median(diff))  # noise sd ~15 HU, interpolated twice
        truth = c["mask"][:, :, z].astype(bool)
        if truth.any():
            dice = 2 * (mk.astype(bool) & truth).sum() / (mk.sum() + truth.sum())
            assert dice > 0.85, (z, dice)


def test_split_is_by_patient_and_follows_the_sites_csv(cases, tmp_path):
    src = write_layout(tmp_path, "lits", cases)
    ids = case_ids("lits")
    table = tmp_path / "sites.csv"
    mapping = {
        cid: DEFAULT_SITE_NAMES[(k // 3) % 5] for k, cid in enumerate(ids)
    }  # 0-2 A, 3-5 B, ...
    with table.open("w", newline="") as f:
        csv.writer(f).writerows([["case", "site"], *mapping.items()])
    out = tmp_path / "out"
    m = import_dataset(src, out, CFG, sites_csv=table, gallery=False)
    where = [
        (cid, site, split)
        for site, per in m["cases"].items()
        for split, v in per.items()
        for cid in v
    ]
    assert sorted(c for c, _, _ in where) == sorted(ids)  # each case once: one site, one split
    assert all(mapping[c] == site for c, site, _ in where)
    for site in DEFAULT_SITE_NAMES:  # 3 cases: one each to train, holdout, test
        assert [len(m["cases"][site][s]) for s in ("train", "holdout", "test")] == [1, 1, 1]
    for (cid, _), (_, _, site, split) in imported_slices(out).items():
        assert cid in m["cases"][site][split]  # every slice in its patient's split
    again = import_dataset(src, tmp_path / "again", CFG, sites_csv=table, gallery=False)
    assert again["cases"] == m["cases"]  # the seed fixes the split
    other = import_dataset(
        src, tmp_path / "other", CFG.model_copy(update={"seed": 8}), sites_csv=table, gallery=False
    )
    assert other["cases"] != m["cases"]


def test_imported_dataset_loads_trains_and_is_integrity_checked(cases, tmp_path):
    import torch

    from common.model import build_model

    src = write_layout(tmp_path, "dicom", cases)
    out = tmp_path / "out"
    argv = [
        "data",
        "import",
        str(src),
        "--out",
        str(out),
        "--config",
        "configs/smoke.toml",
        "--tumor-label",
        "2",
        "--organ-label",
        "1",
    ]
    assert main(argv) == 0
    assert (out / "gallery.png").is_file() and (out / "summary.md").is_file()
    m = read_manifest(out)
    assert [r["site"] for r in m["summary"]] == list(DEFAULT_SITE_NAMES)
    assert sum(r["n_train"] for r in m["summary"]) == sum(
        e["n"] for e in m["shards"] if e["split"] == "train"
    )
    train = ct_dataset(out, "train", "A")
    x, y = next(iter(torch.utils.data.DataLoader(train, batch_size=4)))
    assert x.shape == (4, 1, SIZE, SIZE) and x.min() >= 0 and x.max() <= 1 and y.max() == 1
    model = build_model(CFG.model.base, CFG.model.norm, CFG.model.groups)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="imported"):
        regenerate_slice(m, "train", "A", 0)
    shard = out / m["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetIntegrityError, match="corrupted"):
        load_arrays(out, m["shards"][0]["split"], m["shards"][0]["site"])


def test_ct_small_a_real_dicom_file_is_read_with_its_geometry_and_rescale(tmp_path):
    real = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(real)
    case = tmp_path / "ct_small"
    case.mkdir()
    shutil.copy(real, case / "CT_small.dcm")
    hu, affine = read_dicom_series(case)
    np.testing.assert_array_equal(hu[:, :, 0], ds.pixel_array * 1.0 - 1024)  # slope 1, -1024
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    np.testing.assert_allclose(affine[:3, 3], [-x, -y, z])  # LPS -> RAS
    dr, dc = (float(v) for v in ds.PixelSpacing)
    # the label's affine from the tags: rows run along the column cosine, columns along the row
    # cosine (both LPS +x/+y here), slices along their normal by SliceThickness
    own = np.array([[0, -dc, 0, -x], [-dr, 0, 0, -y], [0, 0, 5.0, z], [0, 0, 0, 1]])
    label = np.zeros((128, 128, 1), np.uint8)
    label[40:60, 50:80] = 2
    save_nifti(case / "segmentation.nii.gz", label, own)
    hu2, lab2, _ = read_case(Case("ct_small", case, case / "segmentation.nii.gz"))
    assert hu2.min() < -500 and lab2.sum() == label.sum()


def _src(tmp_path, cases, layout="lits"):
    return write_layout(tmp_path, layout, cases)


def _shape_mismatch(src, cases):
    c = cases[4]
    save_nifti(
        src / "segmentation-04.nii", *stored(c["label"][:, :, :-1], c["affine"], ("L", "P", "S"))
    )
    return "segmentation-04.nii", {}


def _affine_mismatch(src, cases):
    c = cases[4]
    data, aff = stored(c["label"], c["affine"], ("L", "P", "S"))
    aff[0, 3] += 5.0
    save_nifti(src / "segmentation-04.nii", data, aff)
    return "segmentation-04.nii", {}


def _no_tumour_value(src, cases):
    return "no case's label volume holds the tumour label 9", {"tumor_label": 9}


def _mr_volume(src, cases):
    c = cases[2]
    save_nifti(src / "volume-02.nii", *stored(c["hu"] + 1100.0, c["affine"], ("L", "P", "S")))
    return "volume-02.nii: not CT", {}


def _dicom_gap(src, cases):
    files = sorted(
        (src / "case03").glob("IM*"), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2]
    )
    files[2].unlink()
    return "case03: a gap", {"tumor_label": 2}


def _dicom_two_series(src, cases):
    p = next((src / "case03").glob("IM*"))
    ds = pydicom.dcmread(p)
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(p)
    return "case03: mixed SeriesInstanceUID", {"tumor_label": 2}


def _empty_site(src, cases):
    table = src.parent / "sites.csv"
    table.write_text(
        "".join(f"{cid},{DEFAULT_SITE_NAMES[k % 4]}\n" for k, cid in enumerate(case_ids("lits")))
    )
    return "site E has no cases", {"sites_csv": table}


def _small_site(src, cases):
    table = src.parent / "sites.csv"
    sites = ["E" if k < 2 else DEFAULT_SITE_NAMES[k % 4] for k in range(N_CASES)]
    table.write_text("".join(f"{c},{s}\n" for c, s in zip(case_ids("lits"), sites, strict=True)))
    return "site E has 2 cases", {"sites_csv": table}


def _csv_unknown_case(src, cases):
    table = src.parent / "sites.csv"
    rows = [f"{c},{DEFAULT_SITE_NAMES[k % 5]}\n" for k, c in enumerate(case_ids("lits"))]
    table.write_text("case,site\n" + "".join(rows) + "volume-99,A\n")
    return "['volume-99'] not in the source", {"sites_csv": table}


ERRORS = {
    "shape": _shape_mismatch,
    "affine": _affine_mismatch,
    "tumour": _no_tumour_value,
    "mr": _mr_volume,
    "gap": ("dicom", _dicom_gap),
    "series": ("dicom", _dicom_two_series),
    "site": _empty_site,
    "few": _small_site,
    "csv": _csv_unknown_case,
}


@pytest.mark.parametrize("what", list(ERRORS))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(what, cases, tmp_path, capsys):
    layout, spoil = ERRORS[what] if isinstance(ERRORS[what], tuple) else ("lits", ERRORS[what])
    src = _src(tmp_path / "in", cases, layout)
    expect, opts = spoil(src, cases)
    out = tmp_path / "out"
    with pytest.raises(ImportDataError) as err:
        import_dataset(src, out, CFG, gallery=False, **opts)
    assert isinstance(err.value, ValueError) and expect in str(err.value)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no OUT, no temporary beside it
    # the CLI: exit 2, one line
    argv = ["data", "import", str(src), "--out", str(out), "--config", "configs/smoke.toml"]
    argv += [f"--{k.replace('_', '-').replace('-csv', '')}={v}" for k, v in opts.items()]
    assert main(argv) == 2
    text = capsys.readouterr().err
    assert text.startswith("fedonco data: error:") and expect in text
    assert len(text.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_data_import_help_and_data_still_needs_out(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "import", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: fedonco data import" in text and "segmentation.nii.gz" in text
    assert main(["data", "--profile", "smoke"]) == 2  # `fedonco data` without --out
    assert "required: --out" in capsys.readouterr().err


def test_bench_data_refuses_a_dataset_that_does_not_fit_in_one_line(cases, tmp_path, capsys):
    """`fedonco bench --data DIR` checks the dataset against the run before anything starts:
    another image size, or (audit on) no attacker split; nothing is written under --out."""
    out = tmp_path / "data"
    import_dataset(_src(tmp_path / "in", cases), out, CFG, gallery=False)
    runs = tmp_path / "runs"
    for argv, expect in [
        (["--profile", "paper"], "64 px slices, the profile 'paper' trains on 256 px"),
        (["--profile", "smoke"], "no attacker split"),  # 3 cases a site: train, holdout, test
        (["--profile", "smoke", "--dry-run"], "--dry-run makes its own tiny dataset"),
    ]:
        assert main(["bench", "--data", str(out), "--out", str(runs), *argv]) == 2
        text = capsys.readouterr().err
        assert text.startswith("fedonco bench: error:") and expect in text, text
        assert len(text.strip().splitlines()) == 1
    assert not runs.exists()


def test_one_hospital_imports_its_own_cases_as_one_site(cases, tmp_path, capsys):
    """`--site C` (the site container): every case to site C, split by patient; the other sites
    are empty, so only C's client can train on it and a benchmark refuses it."""
    src, out = _src(tmp_path / "in", cases), tmp_path / "data"
    argv = ["data", "import", str(src), "--out", str(out), "--config", "configs/smoke.toml"]
    assert main([*argv, "--site", "C"]) == 0
    m = read_manifest(out)
    assert m["import"]["site_rule"] == "site C"
    assert sorted(c for per in m["cases"]["C"].values() for c in per) == case_ids("lits")
    assert all(not per for s in DEFAULT_SITE_NAMES if s != "C" for per in m["cases"][s].values())
    assert {e["site"] for e in m["shards"]} == {"C"}
    assert len(ct_dataset(out, "train", "C")) == m["summary"][2]["n_train"] > 0
    assert len(ct_dataset(out, "train", "A")) == 0
    capsys.readouterr()
    assert (
        main(["bench", "--data", str(out), "--profile", "smoke", "--out", str(tmp_path / "r")]) == 2
    )
    assert "site A has no train/test/holdout slices" in capsys.readouterr().err
    few = tmp_path / "few"  # a hospital with 2 cases
    few.mkdir()
    for p in src.glob("*-0[01].nii"):
        shutil.copy(p, few / p.name)
    assert main([*argv[:2], str(few), "--out", str(tmp_path / "o2"), "--site", "B"]) == 2
    assert "site B has 2 cases (--site)" in capsys.readouterr().err
