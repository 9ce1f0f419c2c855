"""Real CT on disk: the layouts ``fedonco data import`` reads, and each case as (HU volume, label
volume, affine) in one canonical voxel frame.

Layouts (``find_cases``):

- ``msd`` (Medical Segmentation Decathlon): ``imagesTr/<id>.nii.gz`` + ``labelsTr/<id>.nii.gz``;
  ``dataset.json``'s ``labels`` name the tumour label ("tumour", "tumor", "cancer", "lesion") and
  the organ (the one other non-background label) when the options do not.
- ``lits``: ``volume-<n>.nii[.gz]`` + ``segmentation-<n>.nii[.gz]`` in one folder (any depth);
  labels 1 liver, 2 tumour.
- ``kits``: ``case_*/imaging.nii[.gz]`` + ``case_*/segmentation.nii[.gz]``; labels 1 kidney,
  2 tumour.
- ``dicom``: one folder per case holding one CT series (every file but the mask) and its mask:
  ``segmentation.nii[.gz]``, a NIfTI on the series' grid, or one DICOM-SEG file (Modality SEG,
  any name; ``read_dicom_seg``). Slices are ordered by ImagePositionPatient projected on the slice
  normal (the cross product of the ImageOrientationPatient cosines) and RescaleSlope/Intercept are
  applied (pydicom).

A DICOM-SEG mask (read by highdicom) becomes a label volume whose values are segment numbers, so
``--tumor-label N`` is SegmentNumber N and ``--organ-label M`` SegmentNumber M (without it, any
segment is the organ, as any non-zero label is in a NIfTI). Where segments overlap, the tumour's
number wins, then the organ's, then the higher number. Frames are matched to the CT slices by the
SOP Instance UIDs they reference (highdicom's ``get_pixels_by_source_instance``), not by frame or
file order; a slice no frame references is empty. Errors: a SEG that references another series
(or instances the case's series does not hold), a segment number it does not have (its segments
are listed), frames whose size, pixel spacing, orientation or position differ from the CT
slice they reference.

Files are read by nibabel, pydicom and highdicom. The canonical frame: voxel axes (row, column,
slice) run towards the patient's posterior, left and superior (nibabel axis codes P, L, S), i.e.
an axial slice is displayed as a radiologist sees it and as the phantom is drawn
(common/data/anatomy.py).
Reorientation permutes and flips axes only (the closest canonical axes of the affine): an oblique
acquisition keeps its own slice plane, nothing is interpolated across slices.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as nio

LAYOUTS = ("msd", "lits", "kits", "dicom")
LABEL_DEFAULTS = {"lits": (2, 1), "kits": (2, 1)}  # (tumour, organ) of the datasets' label maps
CANONICAL = nio.axcodes2ornt(("P", "L", "S"))
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient space -> NIfTI world
AFFINE_TOL_MM = 0.01  # image and label affines may differ by this much (any element)
NOT_CT_HU = -500.0  # a CT volume has air below this; a volume that never goes below it is not CT
GAP_TOL = 0.1  # a DICOM slice step may differ from the series' median step by 10%
_TUMOUR_NAME = re.compile(r"tumou?r|cancer|lesion|neoplasm", re.IGNORECASE)
_NII = (".nii.gz", ".nii")


class ImportDataError(ValueError):
    """Real CT that cannot be imported; the message names the file or folder."""


@dataclass(frozen=True)
class Case:
    id: str
    image: Path  # a NIfTI file, or a DICOM series folder
    label: Path  # a NIfTI file, or a DICOM-SEG file (dicom layout)


def _modality(path: Path) -> str | None:
    """The Modality of a DICOM file (its header only), None for a file that is not DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except pydicom.errors.InvalidDicomError:
        return None
    return ds.get("Modality")


def _files(folder: Path) -> list[Path]:
    """The files of a DICOM case folder but its NIfTI mask, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_NII)
    )


def dicom_mask(folder: Path) -> Path | None:
    """The mask of a DICOM case folder: ``segmentation.nii[.gz]`` or its one DICOM-SEG file."""
    segs = [p for p in _files(folder) if _modality(p) == "SEG"]
    nifti = _nifti(folder, "segmentation")
    if len(segs) + (nifti is not None) > 1:
        names = ", ".join(p.name for p in ([nifti] if nifti else []) + segs)
        raise ImportDataError(
            f"{folder}: more than one mask ({names}); a case folder holds one "
            "segmentation.nii.gz or one DICOM-SEG file"
        )
    return nifti or (segs[0] if segs else None)


def _nifti(folder: Path, stem: str) -> Path | None:
    return next((folder / f"{stem}{e}" for e in _NII if (folder / f"{stem}{e}").is_file()), None)


def _stem(path: Path) -> str:
    return next(path.name[: -len(e)] for e in (*_NII, "") if path.name.endswith(e))


def detect_layout(src: Path) -> str:
    if (src / "imagesTr").is_dir():
        return "msd"
    if next(src.rglob("volume-*.nii*"), None):
        return "lits"
    if next(src.glob("case_*/imaging.nii*"), None):
        return "kits"
    if any(dicom_mask(d) for d in src.iterdir() if d.is_dir()):
        return "dicom"
    raise ImportDataError(
        f"{src}: no known layout (imagesTr/ of MSD, volume-*.nii of LiTS, "
        "case_*/imaging.nii.gz of KiTS, or case folders with a DICOM series "
        "and segmentation.nii.gz or a DICOM-SEG); give --layout"
    )


def find_cases(src: Path, layout: str) -> list[Case]:
    """Every case of ``src``, sorted by id; a case without its label file is an error."""
    if layout == "msd":
        pairs = [
            (_stem(p), p, src / "labelsTr" / p.name)
            for p in (src / "imagesTr").glob("*.nii*")
            if not p.name.startswith(".")
        ]
    elif layout == "lits":
        pairs = [
            (_stem(p), p, p.with_name(p.name.replace("volume-", "segmentation-", 1)))
            for p in src.rglob("volume-*.nii*")
        ]
    elif layout == "kits":
        pairs = [
            (p.parent.name, p, _nifti(p.parent, "segmentation") or p.parent / "segmentation.nii.gz")
            for p in src.glob("case_*/imaging.nii*")
        ]
    elif layout == "dicom":
        pairs = [
            (d.name, d, dicom_mask(d) or d / "segmentation.nii.gz")
            for d in src.iterdir()
            if d.is_dir() and not d.name.startswith(".")
        ]
    else:
        raise ImportDataError(f"unknown layout {layout!r}; layouts are {', '.join(LAYOUTS)}")
    for _, image, label in pairs:
        if not label.is_file():
            also = " or a DICOM-SEG file" if layout == "dicom" else ""
            raise ImportDataError(f"{image}: no label volume (expected {label}{also})")
    ids = [i for i, _, _ in pairs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ImportDataError(f"{src}: case id(s) {dup} found twice")
    if not pairs:
        raise ImportDataError(f"{src}: no cases of layout {layout}")
    return [Case(i, im, lab) for i, im, lab in sorted(pairs)]


def msd_labels(src: Path) -> tuple[int | None, int | None]:
    """(tumour, organ) label values from an MSD ``dataset.json`` (None where it does not say)."""
    path = src / "dataset.json"
    if not path.is_file():
        return None, None
    labels = json.loads(path.read_text()).get("labels", {})
    # MSD: {"0": "background", "1": "liver", "2": "cancer"}; nnU-Net v2: {"background": 0, ...}
    named = (
        {int(k): v for k, v in labels.items()}
        if all(k.isdigit() for k in labels)
        else {int(v): k for k, v in labels.items() if isinstance(v, int)}
    )
    tumour = [v for v, n in named.items() if _TUMOUR_NAME.search(n)]
    others = [v for v, n in named.items() if v != 0 and v not in tumour]
    return (tumour[0] if len(tumour) == 1 else None), (others[0] if len(others) == 1 else None)


def canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``arr`` and its affine reoriented to the canonical (P, L, S) voxel axes."""
    ornt = nio.ornt_transform(nio.io_orientation(affine), CANONICAL)
    return nio.apply_orientation(arr, ornt), affine @ nio.inv_ornt_aff(ornt, arr.shape)


def read_ct_file(path: Path, hint: str):
    """The pydicom dataset of one CT file; ``ImportDataError`` (with ``hint``) if it is not one."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise ImportDataError(f"{path}: not a DICOM file ({hint})") from None
    if ds.get("Modality") != "CT":
        raise ImportDataError(f"{path}: modality {ds.get('Modality')!r}, not CT")
    return ds


@dataclass(frozen=True)
class Series:
    hu: np.ndarray  # (rows, columns, slices) float32
    affine: np.ndarray  # RAS, of the voxel axes of ``hu``
    slices: list  # (path, pydicom dataset) per slice of ``hu``, in its order


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume (rows, columns, slices) float32, RAS affine) of the one series in ``folder``."""
    series = read_series(folder)
    return series.hu, series.affine


def read_series(folder: Path) -> Series:
    """The one CT series in ``folder`` (a DICOM-SEG file there is its mask, not read here)."""
    from pydicom.pixels import apply_rescale

    slices = []
    for p in _files(folder):
        if _modality(p) == "SEG":
            continue
        ds = read_ct_file(
            p, "a case folder holds one DICOM series and its segmentation.nii.gz or DICOM-SEG"
        )
        if int(ds.get("NumberOfFrames") or 1) != 1:
            raise ImportDataError(f"{p}: a multi-frame DICOM; one file per slice is read")
        slices.append((p, ds))
    if not slices:
        raise ImportDataError(f"{folder}: no DICOM files")
    uids = sorted({str(ds.get("SeriesInstanceUID")) for _, ds in slices})
    if len(uids) > 1:
        raise ImportDataError(
            f"{folder}: mixed SeriesInstanceUID ({len(uids)} series: "
            f"{', '.join(uids)}); a case folder holds one series"
        )
    p0, ds0 = slices[0]
    # ImageOrientationPatient: the direction of a row (column index +1), then of a column
    iop = np.array(ds0.ImageOrientationPatient, float).reshape(2, 3)
    normal = np.cross(iop[0], iop[1])
    for p, ds in slices:
        if (ds.Rows, ds.Columns) != (ds0.Rows, ds0.Columns) or not np.allclose(
            np.array(ds.ImageOrientationPatient, float).reshape(2, 3), iop, atol=1e-4
        ):
            raise ImportDataError(f"{p}: image size or orientation differs from {p0}")
    slices.sort(key=lambda s: float(np.array(s[1].ImagePositionPatient, float) @ normal))
    z = np.array([np.array(ds.ImagePositionPatient, float) @ normal for _, ds in slices])
    dz = float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
    if len(z) > 1:
        steps = np.diff(z)
        dz = float(np.median(steps))
        i = int(np.argmax(np.abs(steps - dz)))
        if dz <= 0 or abs(steps[i] - dz) > GAP_TOL * dz:
            raise ImportDataError(
                f"{folder}: a gap or a duplicate in the series: "
                f"{slices[i][0].name} -> {slices[i + 1][0].name} is "
                f"{steps[i]:.2f} mm, the series' step {dz:.2f} mm"
            )
    try:  # RescaleSlope/RescaleIntercept applied by pydicom
        hu = np.stack([apply_rescale(ds.pixel_array, ds) for _, ds in slices], axis=-1)
    except Exception as err:  # pixel data pydicom cannot decode (a compressed syntax, say)
        raise ImportDataError(f"{folder}: cannot read the pixel data: {err}") from None
    d_row, d_col = (float(v) for v in ds0.PixelSpacing)  # between rows, between columns
    lps = np.eye(4)  # voxel (row, column, slice) -> DICOM patient space (LPS)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[1] * d_row, iop[0] * d_col, normal * dz
    lps[:3, 3] = np.array(slices[0][1].ImagePositionPatient, float)
    return Series(hu.astype(np.float32), LPS_TO_RAS @ lps, slices)


def _frame_attr(frame, shared, seq: str, name: str):
    """A functional group attribute of one SEG frame: its own, else the shared one."""
    for groups in (frame, shared):
        if groups is not None and seq in groups and name in groups[seq][0]:
            return groups[seq][0][name].value
    return None


_GEOMETRY = (  # what a SEG frame shares with its CT slice: (name, group, attribute, tolerance)
    ("pixel spacing", "PixelMeasuresSequence", "PixelSpacing", 1e-3),
    ("orientation", "PlaneOrientationSequence", "ImageOrientationPatient", 1e-4),
    ("position", "PlanePositionSequence", "ImagePositionPatient", AFFINE_TOL_MM),
)


def _check_seg_geometry(path: Path, seg, slices: list) -> None:
    """Each SEG frame has the size, pixel spacing, orientation and position of the CT slice it
    references (``ImportDataError`` naming the first that does not)."""
    by_uid = {str(ds.SOPInstanceUID): ds for _, ds in slices}
    ds0 = slices[0][1]
    if (seg.Rows, seg.Columns) != (ds0.Rows, ds0.Columns):
        raise ImportDataError(
            f"{path}: DICOM-SEG frames are {seg.Rows}x{seg.Columns}, the CT "
            f"slices {ds0.Rows}x{ds0.Columns}"
        )
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    for i, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence") or [], start=1):
        refs = {
            str(src.ReferencedSOPInstanceUID)
            for der in frame.get("DerivationImageSequence", [])
            for src in der.get("SourceImageSequence", [])
        }
        for uid in sorted(refs & by_uid.keys()):
            for what, group, name, tol in _GEOMETRY:
                mine, theirs = _frame_attr(frame, shared, group, name), by_uid[uid].get(name)
                if mine is None or theirs is None:
                    continue
                mine, theirs = np.array(mine, float), np.array(theirs, float)
                if mine.shape != theirs.shape or not np.allclose(mine, theirs, atol=tol):
                    raise ImportDataError(
                        f"{path}: DICOM-SEG frame {i} {what} "
                        f"{mine.round(3).tolist()} differs from the CT slice it "
                        f"references ({theirs.round(3).tolist()}, instance "
                        f"{uid})"
                    )


def read_dicom_seg(
    path: Path, slices: list, tumor_label: int | None = None, organ_label: int | None = None
) -> np.ndarray:
    """The label volume (rows, columns, slices) int16 of a DICOM-SEG on the CT ``slices`` (in
    the series' order, ``Series.slices``): each voxel holds the number of its segment (the rule:
    module docstring). ``tumor_label``, ``organ_label``: segment numbers that must exist."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as err:  # not a Segmentation highdicom can read
        raise ImportDataError(f"{path}: cannot read the DICOM-SEG: {err}") from None
    series_uid = str(slices[0][1].SeriesInstanceUID)
    refs = seg.get_source_image_uids()  # (study, series, instance) of each referenced image
    other = sorted({str(s) for _, s, _ in refs} - {series_uid})
    if other or not refs:
        raise ImportDataError(
            f"{path}: the DICOM-SEG references series "
            f"{', '.join(other) or '(none)'}, not the case's CT series "
            f"{series_uid}"
        )
    ct_uids = [str(ds.SOPInstanceUID) for _, ds in slices]
    unknown = sorted({str(i) for _, _, i in refs} - set(ct_uids))
    if unknown:
        raise ImportDataError(
            f"{path}: the DICOM-SEG references {len(unknown)} instance(s) the "
            f"CT series does not hold (e.g. {unknown[0]})"
        )
    numbers = list(seg.segment_numbers)
    for option, n in (("--tumor-label", tumor_label), ("--organ-label", organ_label)):
        if n is not None and n not in numbers:
            have = ", ".join(
                f"{k} {seg.get_segment_description(k).segment_label!r}" for k in numbers
            )
            raise ImportDataError(f"{path}: no segment number {n} ({option}); its segments: {have}")
    _check_seg_geometry(path, seg, slices)
    # painted in this order, so the tumour wins where segments overlap, then the organ
    order = sorted(numbers, key=lambda k: (k == tumor_label, k == organ_label, k))
    try:
        pix = seg.get_pixels_by_source_instance(
            ct_uids, segment_numbers=order, assert_missing_frames_are_empty=True
        )
    except (ValueError, RuntimeError, KeyError) as err:
        raise ImportDataError(
            f"{path}: cannot match the DICOM-SEG frames to the CT slices: "
            f"{' '.join(str(err).split())}"
        ) from None
    label = np.zeros((len(ct_uids), int(seg.Rows), int(seg.Columns)), np.int16)
    for c, k in enumerate(order):  # BINARY 0/1; FRACTIONAL rescaled to 0..1 by highdicom
        label[pix[..., c] >= 0.5] = k
    return label.transpose(1, 2, 0)  # (rows, columns, slices), as Series.hu


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(_NII)


def read_case(
    case: Case, tumor_label: int | None = None, organ_label: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU float32, integer labels int16, affine) of one case in the canonical frame, checked:
    image and label on one grid, and CT intensities. ``tumor_label``/``organ_label`` are used by
    a DICOM-SEG mask only (the segment numbers it must have)."""
    series = None
    if case.image.is_dir():
        series = read_series(case.image)
        hu, affine = series.hu, series.affine
    else:
        img = nib.load(case.image)
        hu, affine = img.get_fdata(dtype=np.float32), img.affine  # scl_slope/scl_inter applied
    if series is not None and not _is_nifti(case.label):
        label = read_dicom_seg(case.label, series.slices, tumor_label, organ_label)
        lab_affine = affine  # the series' grid, checked frame by frame
    else:
        lab = nib.load(case.label)
        label = np.rint(np.asanyarray(lab.dataobj)).astype(np.int16)  # float labels: nearest
        lab_affine = lab.affine
    if hu.ndim != 3 or label.ndim != 3:
        raise ImportDataError(
            f"{case.image}: image {hu.shape}, label {label.shape}: 3-D volumes are imported"
        )
    hu, affine = canonical(hu, affine)
    label, lab_affine = canonical(label, lab_affine)
    if hu.shape != label.shape:
        raise ImportDataError(
            f"{case.label}: label shape {label.shape} differs from the image's "
            f"{hu.shape} ({case.image}; canonical axes)"
        )
    if np.abs(affine - lab_affine).max() > AFFINE_TOL_MM:
        raise ImportDataError(
            f"{case.label}: label affine differs from the image's ({case.image}) "
            f"by up to {np.abs(affine - lab_affine).max():.3g} "
            f"(tolerance {AFFINE_TOL_MM} mm)"
        )
    low = float(hu.min())
    if low > NOT_CT_HU:
        raise ImportDataError(
            f"{case.image}: not CT: its lowest value is {low:.0f}, CT has air "
            f"near -1000 HU (an MR volume, or CT without its rescale "
            f"intercept)"
        )
    return hu, label, affine
