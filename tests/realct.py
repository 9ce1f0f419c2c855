"""Real-CT fixtures written from the procedural phantom (nibabel, pydicom, highdicom): the four
layouts `fedonco data import` reads, with known tumour voxels. Shared by tests/unit/test_import.py,
tests/unit/test_import_seg.py and tests/integration/test_import_{federation,audit}.py (which
run `fedonco bench --data` through ``bench_on``)."""

import json
import random
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from benchrun import bench_ok
from nibabel import orientations as nio
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from common.config import load_profile
from common.data.anatomy import LABEL
from common.data.generate import render_slice
from common.data.loader import load_arrays
from common.data.real.sources import CANONICAL
from common.data.sites import resolve_sites
from common.data.store import read_manifest

CFG = load_profile("smoke")  # 64 px, seed 7
SIZE = CFG.data.image_size
SPECS = resolve_sites(CFG.data)
N_CASES, N_Z, DZ = 15, 5, 2.5
NO_TUMOUR = 7  # case 7 (site C) has no tumour


def phantom_case(k: int, n_z: int = N_Z, no_tumour: int | None = NO_TUMOUR) -> dict:
    """Case k: ``n_z`` phantom slices of site k % 5 (the site round-robin gives it), stacked in
    the canonical frame (rows posterior, columns patient-left, slices superior) at that site's
    pixel size; labels 0 background, 1 liver, 2 tumour, 3 kidney; none in the top slice. Case
    ``no_tumour`` has no tumour."""
    spec = SPECS[k % 5] if k != no_tumour else replace(SPECS[k % 5], prevalence=0.0)
    slices = [
        render_slice(100 + k, k % 5, "train", z, spec, SIZE, CFG.data.noise_ref_hu)
        for z in range(n_z)
    ]
    hu = np.stack([s.image for s in slices], axis=-1)
    tissue = np.stack([s.tissue for s in slices], axis=-1)
    mask = np.stack([s.mask for s in slices], axis=-1)
    label = np.zeros(hu.shape, np.float32)
    label[tissue == LABEL["liver"]], label[tissue == LABEL["kidney"]], label[mask == 1] = 1, 3, 2
    label[:, :, -1], mask[:, :, -1] = 0, 0  # the top slice lies above the labelled organs
    px = spec.fov_mm / SIZE
    affine = np.array([[0, -px, 0, 40.0], [-px, 0, 0, 25.0], [0, 0, DZ, -100.0], [0, 0, 0, 1]])
    return {"hu": hu, "mask": mask, "label": label, "affine": affine, "px": px}


def stored(arr: np.ndarray, affine: np.ndarray, axcodes, oblique_deg: float = 0.0):
    """``arr`` (canonical frame) stored with voxel axes ``axcodes`` (its affine follows), the
    world optionally rotated about the superior axis (an oblique acquisition)."""
    ornt = nio.ornt_transform(CANONICAL, nio.axcodes2ornt(axcodes))
    a = np.deg2rad(oblique_deg)
    rot = np.array(
        [[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    return nio.apply_orientation(arr, ornt), rot @ affine @ nio.inv_ornt_aff(ornt, arr.shape)


def save_nifti(path: Path, arr, affine, dtype=None) -> None:
    img = nib.Nifti1Image(arr.astype(np.float32), affine)
    if dtype is not None:  # nibabel picks scl_slope/scl_inter to store floats as int16
        img.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def write_dicom_series(folder: Path, hu: np.ndarray, affine: np.ndarray, seed: int) -> None:
    """One CT series, a file per slice, written in shuffled order under shuffled names; pixels
    stored as uint16 with RescaleSlope 0.5, RescaleIntercept -1024. ``affine``: the canonical
    frame's (rows posterior, columns left), so DICOM's row/column cosines are LPS +y and +x."""
    folder.mkdir(parents=True)
    uid, study, frame, px = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
        float(np.linalg.norm(affine[:3, 0])),
    )
    order = list(range(hu.shape[2]))
    random.Random(seed).shuffle(order)
    for n, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
            CTImageStorage,
            generate_uid(),
        )
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", uid, study
        # the patient and study modules a DICOM-SEG of the series copies (highdicom)
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = (
            "P1",
            "Phantom^Case",
            "",
            "O",
        )
        ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20240101", "", ""
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, n + 1
        ds.FrameOfReferenceUID = frame
        ds.Rows, ds.Columns = hu.shape[:2]
        ds.PixelSpacing = [px, px]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # RAS translation (x, y, z) is LPS (-x, -y, z)
        ds.ImagePositionPatient = [-affine[0, 3], -affine[1, 3], affine[2, 3] + z * DZ]
        ds.SliceThickness = DZ
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1024
        ds.PixelData = ((hu[:, :, z].astype(np.int32) + 1024) * 2).astype(np.uint16).tobytes()
        ds.save_as(folder / f"IM{n:04d}", enforce_file_format=True)


# segment number -> (SegmentLabel, the phantom labels it covers, SNOMED property type); the liver
# segment holds its tumour, as many real SEGs do, so segments overlap
SEGMENTS = {
    1: ("Liver", (1, 2), "Liver"),
    2: ("Tumour", (2,), "Neoplasm"),
    3: ("Kidney", (3,), "Kidney"),
}


def write_dicom_seg(
    folder: Path,
    label: np.ndarray,
    affine: np.ndarray,
    seed: int,
    source: Path | None = None,
    segments: dict = SEGMENTS,
) -> Path:
    """A DICOM-SEG (highdicom, BINARY) of ``label`` (canonical frame, as ``phantom_case``) on the
    CT series ``write_dicom_series`` wrote in ``source`` (default: ``folder``), saved in
    ``folder`` as ``mask-<seed>``; its frames then stored in shuffled order (per-frame groups and
    pixel data permuted alike), so only the frames' source references place them."""
    dss = [pydicom.dcmread(p) for p in sorted((source or folder).glob("IM*"))]
    zs = [round((float(ds.ImagePositionPatient[2]) - affine[2, 3]) / DZ) for ds in dss]
    pixels = np.stack(
        [
            np.stack([np.isin(np.rint(label[:, :, z]), labels) for z in zs])
            for _, labels, _ in segments.values()
        ],
        axis=-1,
    ).astype(np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="phantom", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue
            if n != 2
            else codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=getattr(codes.SCT, prop),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for n, (name, _, prop) in segments.items()
    ]
    seg = hd.seg.Segmentation(
        source_images=dss,
        pixel_array=pixels,
        segment_descriptions=descriptions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="phantom",
        software_versions="0",
        device_serial_number="0",
    )
    n, rows, cols = int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)
    assert rows * cols % 8 == 0  # BINARY frames are bit-packed: whole bytes per frame
    order = list(range(n))
    random.Random(seed).shuffle(order)
    per = rows * cols // 8
    data = bytes(seg.PixelData)
    seg.PixelData = b"".join(data[i * per : (i + 1) * per] for i in order) + data[n * per :]
    seg.PerFrameFunctionalGroupsSequence = [seg.PerFrameFunctionalGroupsSequence[i] for i in order]
    if "DimensionOrganizationType" in seg:  # "3D" would promise frames in spatial order
        del seg.DimensionOrganizationType
    path = folder / f"mask-{seed}"
    seg.save_as(path)
    return path


def write_layout(root: Path, layout: str, cases: list[dict], seg: bool = False) -> Path:
    """The cases in one layout, each with another storage: msd RAS voxel axes, int16 with
    scl_slope/scl_inter and dataset.json; lits LPS voxel axes; kits an oblique world; dicom a
    shuffled series with segmentation.nii.gz, or (``seg``) with a DICOM-SEG of shuffled
    frames."""
    src = root / layout
    for k, c in enumerate(cases):
        if layout == "msd":
            img, lab = (
                src / "imagesTr" / f"liver_{k:02d}.nii.gz",
                src / "labelsTr" / f"liver_{k:02d}.nii.gz",
            )
            save_nifti(img, *stored(c["hu"], c["affine"], ("R", "A", "S")), np.int16)
            save_nifti(lab, *stored(c["label"], c["affine"], ("R", "A", "S")))
        elif layout == "lits":
            save_nifti(src / f"volume-{k:02d}.nii", *stored(c["hu"], c["affine"], ("L", "P", "S")))
            save_nifti(
                src / f"segmentation-{k:02d}.nii", *stored(c["label"], c["affine"], ("L", "P", "S"))
            )
        elif layout == "kits":
            save_nifti(
                src / f"case_{k:05d}" / "imaging.nii.gz",
                *stored(c["hu"], c["affine"], ("R", "A", "S"), oblique_deg=12.0),
            )
            save_nifti(
                src / f"case_{k:05d}" / "segmentation.nii.gz",
                *stored(c["label"], c["affine"], ("R", "A", "S"), oblique_deg=12.0),
            )
        else:
            write_dicom_series(src / f"case{k:02d}", c["hu"], c["affine"], seed=k)
            if seg:
                write_dicom_seg(src / f"case{k:02d}", c["label"], c["affine"], seed=k)
            else:
                save_nifti(src / f"case{k:02d}" / "segmentation.nii.gz", c["label"], c["affine"])
    if layout == "msd":
        labels = {"0": "background", "1": "liver", "2": "cancer", "3": "kidney"}
        (src / "dataset.json").write_text(json.dumps({"name": "test", "labels": labels}))
    return src


def case_ids(layout: str, n: int = N_CASES) -> list[str]:
    fmt = {
        "msd": "liver_{:02d}",
        "lits": "volume-{:02d}",
        "kits": "case_{:05d}",
        "dicom": "case{:02d}",
    }[layout]
    return [fmt.format(k) for k in range(n)]


def imported_slices(out: Path) -> dict:
    """(case, z) -> (image, mask, site, split) of every imported slice, via the loader."""
    m = read_manifest(out)
    got = {}
    for split in m["splits"]:
        for site in m["site_names"]:
            images, masks, _, _ = load_arrays(out, split, site, m)
            recs = [
                r
                for e in m["shards"]
                if (e["split"], e["site"]) == (split, site)
                for r in e["samples"]
            ]
            for r, im, mk in zip(recs, images, masks, strict=True):
                got[(r["case"], r["z"])] = (im, mk, site, split)
    return got


def bench_on(root: Path, cfg, timeout: int) -> Path:
    """`fedonco bench --config cfg --data root/data --out root/runs` (cfg written to
    root/smoke.json); asserts it succeeded and returns its run directory."""
    return bench_ok(root, cfg, "--data", str(root / "data"), timeout=timeout)
