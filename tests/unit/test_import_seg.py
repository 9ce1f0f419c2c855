"""`fedonco data import`, dicom layout with a DICOM-SEG mask: a CT series written from the phantom
(pydicom) and a BINARY DICOM-SEG of it (highdicom: liver, tumour and kidney segments, the liver's
holding the tumour, frames stored in shuffled order) import to exactly the phantom's tumour
voxels; a SEG of another series, a missing segment number and frames off the CT's geometry are
one-line errors that write nothing."""

import shutil

import numpy as np
import pydicom
import pytest
from realct import (
    CFG,
    N_CASES,
    N_Z,
    case_ids,
    imported_slices,
    phantom_case,
    save_nifti,
    write_dicom_seg,
    write_dicom_series,
    write_layout,
)

from bench.cli import main
from common.data.real.importer import import_dataset
from common.data.real.sources import Case, ImportDataError, find_cases, read_case
from common.data.store import read_manifest


@pytest.fixture(scope="module")
def cases():
    return [phantom_case(k) for k in range(N_CASES)]


def test_dicom_seg_imports_the_phantom_tumour_voxels_exactly(cases, tmp_path):
    src = write_layout(tmp_path, "dicom", cases, seg=True)
    assert not list(src.rglob("segmentation.nii*"))  # the SEG is the only mask
    seg = pydicom.dcmread(src / "case00" / "mask-0")
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    z = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert z != sorted(z) and z != sorted(z, reverse=True)  # the frames really are shuffled
    # read_case: the label volume is the NIfTI path's (1 liver, 2 tumour, 3 kidney) exactly, the
    # tumour winning where the liver segment overlaps it; the top slice (no frame) is empty
    for case, c in zip(find_cases(src, "dicom"), cases, strict=True):
        hu, label, _ = read_case(case, tumor_label=2, organ_label=1)
        np.testing.assert_array_equal(label, np.rint(c["label"]).astype(np.int16), case.id)
        np.testing.assert_array_equal(label == 2, c["mask"].astype(bool), case.id)
        np.testing.assert_array_equal(hu, c["hu"], case.id)
    # the whole import, --layout auto: every imported slice's mask and image are the phantom's
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
        "--no-gallery",
    ]
    assert main(argv) == 0
    m = read_manifest(out)
    assert m["import"]["layout"] == "dicom" and m["import"]["tumor_label"] == 2
    got = imported_slices(out)
    for cid, c in zip(case_ids("dicom"), cases, strict=True):
        tumour_z = {z for z in range(N_Z) if c["mask"][:, :, z].any()}
        assert tumour_z <= {z for (i, z) in got if i == cid}, cid
    for (cid, z), (image, mask, _, _) in got.items():
        c = cases[case_ids("dicom").index(cid)]
        np.testing.assert_array_equal(mask, c["mask"][:, :, z], err_msg=f"{cid} z={z}")
        np.testing.assert_array_equal(image, c["hu"][:, :, z], err_msg=f"{cid} z={z}")
    assert sum(v[1].sum() for v in got.values()) == sum(c["mask"].sum() for c in cases) > 0


def test_tumour_is_the_segment_numbered_tumor_label_and_wins_overlaps(cases, tmp_path):
    """Segments numbered the other way round (1 Tumour, 2 Liver holding it): --tumor-label 1 is
    the tumour, painted over the liver; without --organ-label nothing is dropped."""
    c, folder = cases[0], tmp_path / "case"
    write_dicom_series(folder, c["hu"], c["affine"], seed=3)
    swapped = {1: ("Tumour", (2,), "Neoplasm"), 2: ("Liver", (1, 2), "Liver")}
    mask = write_dicom_seg(folder, c["label"], c["affine"], seed=3, segments=swapped)
    _, label, _ = read_case(Case("case", folder, mask), tumor_label=1)
    np.testing.assert_array_equal(label == 1, c["mask"].astype(bool))
    np.testing.assert_array_equal(label == 2, np.rint(c["label"]) == 1)


def _other_series(src, cases):
    """case01's mask replaced by a SEG of case02's series (same geometry, other UIDs)."""
    (src / "case01" / "mask-1").unlink()
    write_dicom_seg(
        src / "case01", cases[2]["label"], cases[2]["affine"], seed=1, source=src / "case02"
    )
    return "case01/mask-1: the DICOM-SEG references series", {}


def _instance_not_held(src, cases):
    """case02's top CT slice (no label, no frame) deleted: the series has no gap, but the SEG
    still lists it among its source images."""
    top = max(
        (src / "case02").glob("IM*"), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2]
    )
    top.unlink()
    return "case02/mask-2: the DICOM-SEG references 1 instance(s) the CT series does not hold", {}


def _no_segment(src, cases):
    return "no segment number 5 (--tumor-label); its segments: 1 'Liver', 2 'Tumour', 3 'Kidney'", {
        "tumor_label": 5
    }


def _no_organ_segment(src, cases):
    return "no segment number 4 (--organ-label); its segments: 1 'Liver'", {"organ_label": 4}


def _frame_moved(src, cases):
    """One frame's ImagePositionPatient moved 5 mm along the slice normal."""
    path = src / "case01" / "mask-1"
    seg = pydicom.dcmread(path)
    pos = seg.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
    pos.ImagePositionPatient = [*pos.ImagePositionPatient[:2], pos.ImagePositionPatient[2] + 5]
    seg.save_as(path)
    return "case01/mask-1: DICOM-SEG frame 3 position", {}


def _spacing(src, cases):
    path = src / "case02" / "mask-2"
    seg = pydicom.dcmread(path)
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [1.0, 1.0]
    seg.save_as(path)
    return "case02/mask-2: DICOM-SEG frame 1 pixel spacing [1.0, 1.0] differs", {}


def _two_masks(src, cases):
    save_nifti(src / "case00" / "segmentation.nii.gz", cases[0]["label"], cases[0]["affine"])
    return "case00: more than one mask (segmentation.nii.gz, mask-0)", {}


ERRORS = {
    "series": _other_series,
    "instance": _instance_not_held,
    "segment": _no_segment,
    "organ": _no_organ_segment,
    "position": _frame_moved,
    "spacing": _spacing,
    "two": _two_masks,
}


@pytest.mark.parametrize("what", list(ERRORS))
def test_bad_dicom_seg_is_one_line_and_writes_nothing(what, cases, tmp_path, capsys):
    src = write_layout(tmp_path / "in", "dicom", cases[:3], seg=True)  # one site: --site A
    expect, opts = ERRORS[what](src, cases)
    opts = {"tumor_label": 2, "organ_label": 1, **opts}
    out = tmp_path / "out"
    with pytest.raises(ImportDataError) as err:
        import_dataset(src, out, CFG, layout="dicom", only_site="A", gallery=False, **opts)
    assert expect in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no OUT, no temporary beside it
    argv = [
        "data",
        "import",
        str(src),
        "--out",
        str(out),
        "--config",
        "configs/smoke.toml",
        "--site",
        "A",
        *[f"--{k.replace('_', '-')}={v}" for k, v in opts.items()],
    ]
    assert main(argv) == 2
    text = capsys.readouterr().err
    assert text.startswith("fedonco data: error:") and expect in text, text
    assert len(text.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    shutil.rmtree(src)
