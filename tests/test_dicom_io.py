"""DICOM ingest on real files (pydicom-data's chest CR and CT, pydicom's CT_small) and a synthetic CT export
(shuffled names, a corrupt slice, a non-DICOM file, a DICOMDIR variant, CSV and SR report joins)."""

import csv
import json
import logging
import os
import random
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage, LoadImaged
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid

from monai_vlseg.datalist import load_datalist
from monai_vlseg.io import DicomReader, DicomReadError, build_dicom_datalist, load_dicom_image, load_dicom_series
from monai_vlseg.io.series import write_dicom_series

CT_UID = "1.2.826.0.1.3680043.8.498.1"  # prefix of the synthetic study


def data_file(name: str) -> str:
    """A file of pydicom's test data or of the pydicom-data package (the `test` extra installs it)."""
    path = get_testdata_file(name)
    assert path is not None and os.path.isfile(path), f"pydicom test file {name} missing: pip install pydicom-data"
    return path


RG1 = data_file("RG1_UNCI.dcm")
CT_SMALL = data_file("CT_small.dcm")


# ----------------------------------------------------------------------------------------------------------------
# synthetic CT series with real geometry tags


def rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def ct_slice(k: int, rows: int, cols: int) -> np.ndarray:
    """Stored values (HU + 1024) of slice k: distinct per slice, row and column."""
    r, c = np.mgrid[:rows, :cols]
    return (1024 + 100 * k + 3 * r + c - 40).astype(np.int16)


def make_ct_series(
    folder, n=8, rows=24, cols=20, pixel_spacing=(0.7, 0.9), dz=2.5, origin=(-10.0, 20.0, 30.0), angles=(0.5, 0.3, 0.2),
    study_uid=None, accession="ACC-CT-1", names=None,
):  # fmt: skip
    """Write an n-slice CT series (oblique orientation, SliceThickness != spacing) with shuffled file names.

    Returns dict with paths (slice order), geometry and the UIDs."""
    os.makedirs(folder, exist_ok=True)
    rot = rotation(*angles)
    row_dir, col_dir, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    study_uid = study_uid or generate_uid(prefix=CT_UID + ".")
    series_uid, for_uid = generate_uid(), generate_uid()
    rng = random.Random(0)
    names = names or [f"{rng.getrandbits(40):010x}" for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)  # instance numbers and file names unrelated to the position
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = pydicom.uid.CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", "SYN001", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", accession
        ds.ReferringPhysicianName, ds.Manufacturer, ds.PositionReferenceIndicator = "", "synthetic", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, order[k] + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * dz * normal]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in [*row_dir, *col_dir]]
        ds.PixelSpacing = [str(pixel_spacing[0]), str(pixel_spacing[1])]
        ds.SliceThickness = "5.0"  # not the spacing: the spacing must come from the positions
        ds.KVP, ds.AcquisitionNumber, ds.PatientPosition = "120", 1, "HFS"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = ct_slice(k, rows, cols).tobytes()
        path = os.path.join(folder, names[k])
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * pixel_spacing[1]
    affine_lps[:3, 1] = col_dir * pixel_spacing[0]
    affine_lps[:3, 2] = normal * dz
    affine_lps[:3, 3] = origin
    return {"paths": paths, "affine_ras": np.diag([-1, -1, 1, 1]) @ affine_lps, "study_uid": study_uid,
            "series_uid": series_uid, "shape": (cols, rows, n), "n": n, "rows": rows, "cols": cols}  # fmt: skip


def expected_volume(n: int, rows: int, cols: int) -> np.ndarray:
    return np.stack([ct_slice(k, rows, cols).astype(np.int32) - 1024 for k in range(n)], 0).transpose(2, 1, 0)


def make_sr(path, study_uid, texts, sop_class="1.2.840.10008.5.1.4.1.1.88.11"):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), "SR"
    ds.PatientID, ds.PatientName, ds.ContentDate, ds.ContentTime = "SYN001", "Test^Synthetic", "20240101", "130000"
    ds.CompletionFlag = "COMPLETE"
    ds.ValueType = "CONTAINER"
    items = []
    for meaning, text in texts:
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
        code = Dataset()
        code.CodeValue = {"Findings": "121071", "Impression": "121073"}[meaning]
        code.CodingSchemeDesignator, code.CodeMeaning = "DCM", meaning
        item.ConceptNameCodeSequence = [code]
        items.append(item)
    section = Dataset()
    section.RelationshipType, section.ValueType, section.ContentSequence = "CONTAINS", "CONTAINER", items
    ds.ContentSequence = [section]
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def ct_export(tmp_path_factory):
    """An export folder: a shuffled CT series + an SR in its study, the chest CR, a corrupt file and a text file."""
    root = tmp_path_factory.mktemp("export")
    series = make_ct_series(str(root / "study1" / "series1"))
    texts = [("Findings", "Nodule in the right upper lobe."), ("Impression", "Suspicious for malignancy.")]
    make_sr(str(root / "study1" / "report_sr"), series["study_uid"], texts)
    shutil.copy(RG1, root / "cr_image")  # no extension
    with open(series["paths"][0], "rb") as f:
        head = f.read(132)
    (root / "study1" / "corrupt.dcm").write_bytes(head + b"\x08\x00\x05\x00garbage" * 3)  # DICM marker, then junk
    (root / "notes.txt").write_text("not a DICOM file")
    return {"root": root, "series": series}


# ----------------------------------------------------------------------------------------------------------------
# pixels


def test_rg1_monochrome1_inverted_16bit_and_spacing_warning(caplog):
    raw = pydicom.dcmread(RG1).pixel_array
    with caplog.at_level(logging.WARNING):
        img = load_dicom_image(RG1)
    assert img.array.shape == (1841, 1955)  # (x = Columns, y = Rows)
    assert img.array.dtype == np.uint16
    np.testing.assert_array_equal(img.array.T, (2**15 - 1) - raw.astype(np.int32))  # 15 bits stored, inverted
    assert int(img.array.max()) > 255 * 4  # 16-bit range kept
    assert img.spacing == (1.0, 1.0)
    assert any("RG1_UNCI.dcm" in w and "PixelSpacing invalid" in w for w in img.warnings)
    assert "RG1_UNCI.dcm: PixelSpacing invalid" in caplog.text
    # VOI on request: the file's window (15000/30000), [0, 1], still inverted
    voi = load_dicom_image(RG1, voi=True).array
    assert voi.dtype == np.float32 and 0.0 <= voi.min() < voi.max() <= 1.0
    assert np.corrcoef(voi.ravel()[::97], img.array.ravel()[::97].astype(np.float64))[0, 1] > 0.99


def test_compressed_transfer_syntaxes_decode_losslessly(tmp_path):
    # pydicom-data names: *_UNCR is the uncompressed twin of the lossless *_J2KR, *_UNCI that of the lossy *_J2KI
    np.testing.assert_array_equal(load_dicom_image(data_file("RG1_J2KR.dcm")).array,
                                  load_dicom_image(data_file("RG1_UNCR.dcm")).array)  # fmt: skip
    np.testing.assert_array_equal(load_dicom_image(data_file("RG1_J2KI.dcm")).array, load_dicom_image(RG1).array)
    ref = pydicom.dcmread(data_file("emri_small.dcm")).pixel_array
    for name in ("emri_small_jpeg_ls_lossless.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        np.testing.assert_array_equal(pydicom.dcmread(data_file(name)).pixel_array, ref)
    jpeg_ll = load_dicom_image(data_file("JPEG-LL.dcm")).array  # JPEG lossless process 14 (SV1), signed 16 bit
    assert jpeg_ll.shape == (256, 1024) and jpeg_ll.std() > 0
    # encode CT_small with pydicom's encoders and read it back through the reader
    ref = load_dicom_image(CT_SMALL).array
    for uid in (JPEGLSLossless, RLELossless):
        ds = pydicom.dcmread(CT_SMALL)
        ds.compress(uid)
        ds.save_as(tmp_path / "c.dcm")
        np.testing.assert_array_equal(load_dicom_image(tmp_path / "c.dcm").array, ref)


@pytest.mark.parametrize("name", ["CT_small", "693_UNCI.dcm"])
def test_ct_slice_in_hu(name):
    path = CT_SMALL if name == "CT_small" else data_file(name)
    ds = pydicom.dcmread(path)
    img = load_dicom_image(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.array.T, hu)
    assert img.array.dtype == np.int16 and float(ds.RescaleIntercept) == -1024
    sr, sc = map(float, ds.PixelSpacing)
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:2]), [sc, sr], rtol=1e-6)
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.affine[:3, 3], ipp * [-1, -1, 1], atol=1e-4)  # RAS


def test_bad_inputs_raise_with_file_and_reason(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with open(CT_SMALL, "rb") as f:
        (tmp_path / "truncated.dcm").write_bytes(f.read()[:20000])
    (tmp_path / "text.dcm").write_text("hello")
    cases = {
        "nopixels.dcm": "no pixel data",
        "truncated.dcm": "pixel data cannot be decoded",
        "text.dcm": "not a DICOM file",
    }
    for name, reason in cases.items():
        with pytest.raises(DicomReadError) as err:
            load_dicom_image(tmp_path / name)
        assert name in str(err.value) and reason in str(err.value), str(err.value)
    with pytest.raises(DicomReadError, match=r"SC_rgb.dcm: PhotometricInterpretation RGB: only grey"):
        load_dicom_image(data_file("SC_rgb.dcm"))
    with pytest.raises(DicomReadError, match=r"multi-frame image \(2 frames\)"):
        load_dicom_image(data_file("OBXXXX1A_2frame.dcm"))


# ----------------------------------------------------------------------------------------------------------------
# MONAI reader


def test_reader_with_loadimage_dicom_png_and_series(tmp_path, ct_export):
    load = LoadImaged("image", reader="monai_vlseg.io.DicomReader", image_only=True, ensure_channel_first=True)
    img = load({"image": RG1})["image"]
    assert tuple(img.shape) == (1, 1841, 1955) and img.meta["Modality"] == "CR"
    assert float(img.max()) == 31964.0  # 32767 - 803: inverted 15-bit values, no 8-bit truncation
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.arange(12 * 7, dtype=np.uint8).reshape(7, 12)).save(png)
    assert tuple(load({"image": str(png)})["image"].shape) == (1, 12, 7)  # PNG: MONAI's PIL reader, (W, H)
    series = ct_export["series"]
    vol = LoadImage(reader=DicomReader(), image_only=True)(os.path.dirname(series["paths"][0]))
    assert tuple(vol.shape) == series["shape"]
    np.testing.assert_allclose(vol.affine.numpy(), series["affine_ras"], atol=1e-4)
    np.testing.assert_array_equal(vol.numpy(), expected_volume(series["n"], series["rows"], series["cols"]))


def test_series_sorting_spacing_and_gap(tmp_path):
    s = make_ct_series(str(tmp_path / "s"), n=6)
    vol = load_dicom_series(list(reversed(s["paths"])))
    assert vol.spacing == pytest.approx((0.9, 0.7, 2.5))  # not SliceThickness (5.0)
    np.testing.assert_allclose(vol.affine, s["affine_ras"], atol=1e-4)
    assert vol.paths == s["paths"] and not vol.warnings
    os.remove(s["paths"][3])  # a missing slice -> a gap is reported, naming the slice after it
    gap = load_dicom_series(os.path.dirname(s["paths"][0]))
    assert any("gap of 5.000 mm" in w and os.path.basename(s["paths"][4]) in w for w in gap.warnings)


# ----------------------------------------------------------------------------------------------------------------
# series whose slices are not on one regular grid: a missing slice, irregular spacing, a slice stored twice

RAMP_ORIGIN = np.array([-16.0, -20.0, -30.0])  # LPS mm of pixel (0, 0) of the first slice
RAMP_LEVEL = 40.5  # HU: the "object" is where the ramp is above it (never equal to a stored integer HU)
#: slice offsets (mm from the first slice) of the test series
SLICES = {
    "regular": np.arange(0.0, 21.0, 2.0),
    "missing": np.array([0, 2, 4, 6, 8, 12, 14, 16, 18, 20.0]),  # a 4 mm gap in a 2 mm series
    "irregular": np.cumsum([0, 2, 2, 3, 3, 2, 1.5, 2, 2]),
}


def ramp_hu(lps: np.ndarray) -> np.ndarray:
    """The analytic object, HU at LPS positions (..., 3): linear in z, so that linear interpolation along the slice
    normal is exact and any placement error shows (8 HU per mm)."""
    d = np.asarray(lps, dtype=np.float64) - RAMP_ORIGIN
    return 8.0 * d[..., 2] + 4.0 * d[..., 0] - 2.0 * d[..., 1] - 100.0


def ramp_slice(z: float, size: int = 32) -> np.ndarray:
    """The object (x, y) on the axial slice ``z`` mm above RAMP_ORIGIN (1 mm pixels)."""
    i, j = np.mgrid[:size, :size]
    return ramp_hu(np.stack([RAMP_ORIGIN[0] + i, RAMP_ORIGIN[1] + j, np.full(i.shape, RAMP_ORIGIN[2] + z)], -1))


def ramp_mask(z: float, size: int = 32) -> np.ndarray:
    """The object's cross-section (x, y) on the slice ``z`` mm above RAMP_ORIGIN."""
    return ramp_slice(z, size) > RAMP_LEVEL


def write_ramp_series(folder, offsets, size: int = 32, duplicate: int | None = None, changed: bool = False):
    """A CT series of the ramp (1 mm pixels, axial) with slices at ``offsets`` mm above RAMP_ORIGIN; slice
    ``duplicate`` is stored a second time as IM_COPY (``changed``: with other pixel values). Returns the paths in slice
    order (without the copy)."""
    vol = np.stack([np.rint(ramp_slice(z, size)) for z in offsets], -1).astype(np.int16)
    paths = write_dicom_series(vol, (1.0, 1.0, 2.0), RAMP_ORIGIN, folder, superior_first=False)
    for path, z in zip(paths, offsets, strict=True):  # the slices' true positions
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [float(v) for v in RAMP_ORIGIN + [0.0, 0.0, z]]
        ds.SliceLocation = float(RAMP_ORIGIN[2] + z)
        del ds.SpacingBetweenSlices
        ds.save_as(path, enforce_file_format=True)
    if duplicate is not None:
        ds = pydicom.dcmread(paths[duplicate])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = 999
        if changed:
            ds.PixelData = (ds.pixel_array + 1).astype(np.uint16).tobytes()
        ds.save_as(os.path.join(folder, "IM_COPY"), enforce_file_format=True)
    return paths


def voxel_lps(affine_ras: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """LPS position of every voxel (x, y, z, 3) of a volume with a RAS affine."""
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1).astype(np.float64)
    ras = ijk @ affine_ras[:3, :3].T + affine_ras[:3, 3]
    return ras * [-1.0, -1.0, 1.0]


@pytest.mark.parametrize("case", ["missing", "irregular"])
def test_series_off_grid_is_resampled_at_the_true_positions(tmp_path, case):
    folder = tmp_path / case
    paths = write_ramp_series(folder, SLICES[case])
    vol = load_dicom_series(folder)
    # every voxel holds the object's value at the voxel's patient position (the ramp is linear: interpolation is exact)
    np.testing.assert_allclose(vol.array, ramp_hu(voxel_lps(vol.affine, vol.array.shape)), atol=1e-3)
    span = SLICES[case][-1]
    n = vol.array.shape[2]
    assert vol.spacing[2] == pytest.approx(span / (n - 1)) and abs(vol.spacing[2] - 2.0) < 0.1
    np.testing.assert_allclose(vol.affine[:3, 3], RAMP_ORIGIN * [-1, -1, 1])  # first slice, never extrapolated
    last = vol.affine[:3, 3] + (n - 1) * vol.affine[:3, 2]
    np.testing.assert_allclose(last, (RAMP_ORIGIN + [0, 0, span]) * [-1, -1, 1])  # the last slice
    np.testing.assert_allclose(vol.source_positions, SLICES[case])
    assert vol.paths == paths and any("resampled" in w for w in vol.warnings)
    if case == "missing":  # grid slices on a source slice are that slice, unchanged; the missing one is between
        assert n == 11
        stored = np.stack([pydicom.dcmread(p).pixel_array.T.astype(np.int32) - 1024 for p in paths], -1)
        np.testing.assert_array_equal(vol.array[..., [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]], stored)
        assert any("gap of 4.000 mm" in w and os.path.basename(paths[5]) in w for w in vol.warnings)
    meta = LoadImage(reader=DicomReader(), image_only=True)(str(folder)).meta
    assert [float(v) for v in meta["source_slice_positions"].split()] == pytest.approx(SLICES[case])


def test_series_gap_wider_than_max_slice_gap_and_error_mode(tmp_path):
    folder = tmp_path / "series_a"
    write_ramp_series(folder, SLICES["missing"])
    refuse = LoadImage(reader=DicomReader(irregular_slices="error"), image_only=True)  # not handed on to ITK's reader
    for call in (lambda: load_dicom_series(folder, irregular_slices="error"), lambda: refuse(str(folder))):
        with pytest.raises(DicomReadError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(f"{folder}: slices are not on a regular grid: gap of 4.000 mm between IM0005 and "
                              "IM0006 (slice spacing 2.000 mm)"), msg  # fmt: skip
    regular = tmp_path / "regular"
    write_ramp_series(regular, SLICES["regular"])
    assert load_dicom_series(regular, irregular_slices="error").array.shape == (32, 32, 11)
    with pytest.raises(ValueError, match="irregular_slices"):
        DicomReader(irregular_slices="nearest")
    # two missing slices (6 mm in a 2 mm series): refused unless max_slice_gap allows it
    wide = tmp_path / "series_b"
    write_ramp_series(wide, np.array([0, 2, 4, 6, 12, 14, 16, 18.0]))
    with pytest.raises(DicomReadError, match=r"series_b: gap of 6.000 mm between IM0004 and IM0005 is wider than "
                                             r"max_slice_gap 2 x the slice spacing 2.000 mm"):  # fmt: skip
        load_dicom_series(wide)
    vol = load_dicom_series(wide, max_slice_gap=3)
    assert vol.array.shape == (32, 32, 10)
    np.testing.assert_allclose(vol.array, ramp_hu(voxel_lps(vol.affine, vol.array.shape)), atol=1e-3)


def test_series_duplicate_slices(tmp_path):
    same, other = tmp_path / "same", tmp_path / "other"
    paths = write_ramp_series(same, SLICES["regular"], duplicate=4)
    vol = load_dicom_series(same)  # the same image twice: one slice, and a warning naming the copy
    assert vol.array.shape == (32, 32, 11) and vol.paths == paths
    np.testing.assert_array_equal(vol.array, np.rint(ramp_hu(voxel_lps(vol.affine, vol.array.shape))))
    assert any("IM_COPY" in w and "dropped as a duplicate" in w and "IM0005" in w for w in vol.warnings)
    assert not vol.skipped and getattr(vol, "source_positions", None) is None  # not a file error, not resampled
    write_ramp_series(other, SLICES["regular"], duplicate=4, changed=True)
    with pytest.raises(DicomReadError) as err:  # different pixels at one position: never a silent pick
        load_dicom_series(other)
    assert str(err.value).startswith(f"{other}: IM_COPY and IM0005 are at the same slice position with different "
                                     "pixel data")  # fmt: skip
    assert {os.path.basename(p) for p, _ in err.value.details} == {"IM_COPY", "IM0005"}


# ----------------------------------------------------------------------------------------------------------------
# export folder -> datalist


def check_ct_item(item, series):
    assert item["modality"] == "CT" and item["series_instance_uid"] == series["series_uid"]
    assert [os.path.basename(p) for p in item["dicom_sources"]] == [os.path.basename(p) for p in series["paths"]]
    nii = nib.load(item["image"])
    assert nii.shape == series["shape"]
    np.testing.assert_allclose(nii.affine, series["affine_ras"], atol=1e-4)
    np.testing.assert_allclose(nii.header.get_zooms(), (0.9, 0.7, 2.5), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), expected_volume(series["n"], series["rows"], series["cols"]))


def test_export_folder_to_datalist_sr_text_and_errors(ct_export, tmp_path):
    root, series = ct_export["root"], ct_export["series"]
    res = build_dicom_datalist(str(root), str(tmp_path / "out"))
    by_mod = {it["modality"]: it for it in res.items}
    assert sorted(by_mod) == ["CR", "CT"] and len(res.items) == 2
    check_ct_item(by_mod["CT"], series)
    assert by_mod["CT"]["text"] == "Nodule in the right upper lobe. Suspicious for malignancy."  # SR join
    assert by_mod["CT"]["text_source"] == "report"  # a clinical report, written without any mask
    cr = by_mod["CR"]
    assert "text" not in cr and "text_source" not in cr and cr["dicom_sources"] == [str(root / "cr_image")]
    assert nib.load(cr["image"]).shape == (1841, 1955) and nib.load(cr["image"]).get_data_dtype() == np.uint16
    reasons = {os.path.basename(e["path"]): e["reason"] for e in res.errors}
    assert set(reasons) == {"corrupt.dcm", "notes.txt"}
    assert "not a DICOM file" in reasons["notes.txt"] and "unreadable DICOM" in reasons["corrupt.dcm"]
    assert any("cr_image: PixelSpacing invalid" in w for w in res.warnings)
    # the datalist loads with MONAI (relative image paths resolved) and the report file lists the errors
    items = load_datalist(res.datalist_path, split="test")
    assert {os.path.realpath(it["image"]) for it in items} == {os.path.realpath(it["image"]) for it in res.items}
    assert json.loads(open(res.datalist_path).read())["meta"]["laterality"] == "patient"  # DICOM: reports name the patient's side
    report = json.loads(open(res.report_path).read())
    assert report["items"] == 2 and len(report["errors"]) == 2
    loaded = LoadImaged("image", image_only=True)(items[0])["image"]
    assert loaded.ndim in (2, 3)


def test_export_csv_join_dicomdir_and_bad_slice(tmp_path):
    from pydicom.fileset import FileSet

    s = make_ct_series(str(tmp_path / "src"), n=5, accession="ACC-9")
    rg1 = pydicom.dcmread(RG1)
    bad = pydicom.dcmread(s["paths"][2])  # one slice whose pixel data is missing
    del bad.PixelData
    bad.save_as(s["paths"][2])
    fs = FileSet()
    for p in [*s["paths"], RG1]:
        fs.add(p)
    fs.write(str(tmp_path / "cd"))
    reports = tmp_path / "reports.csv"
    with open(reports, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["acc", "report"])
        w.writerow(["ACC-9", "Bilateral ground-glass opacities."])
        w.writerow([rg1.AccessionNumber, "Right lower lobe consolidation."])
    res = build_dicom_datalist(str(tmp_path / "cd"), str(tmp_path / "out"), reports=str(reports), key_column="acc")
    assert len(res.items) == 2
    texts = {it["modality"]: it["text"] for it in res.items}
    assert texts == {"CT": "Bilateral ground-glass opacities.", "CR": "Right lower lobe consolidation."}
    ct = next(it for it in res.items if it["modality"] == "CT")
    nii = nib.load(ct["image"])  # the undecodable slice leaves a gap: interpolated, never closed up
    assert nii.shape == (s["cols"], s["rows"], 5) and len(ct["dicom_sources"]) == 4
    np.testing.assert_allclose(nii.affine, s["affine_ras"], atol=1e-4)
    assert any("resampled" in w for w in res.warnings)
    assert any("no pixel data" in e["reason"] for e in res.errors) and len(res.errors) == 1
    assert all("/cd/" in p.replace(os.sep, "/") for p in ct["dicom_sources"])  # files of the DICOMDIR tree
    with pytest.raises(ValueError, match="reports.csv: no column 'AccessionNumber'"):
        build_dicom_datalist(str(tmp_path / "cd"), str(tmp_path / "out2"), reports=str(reports))


def test_export_bad_inputs_reported_not_fatal(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(data_file("SC_rgb.dcm"), src / "rgb.dcm")
    shutil.copy(data_file("liver.dcm"), src / "seg.dcm")
    ds = pydicom.dcmread(RG1)
    del ds.PixelData
    ds.save_as(src / "cr_nopixels.dcm")
    ct = pydicom.dcmread(CT_SMALL)
    ct.SeriesInstanceUID, ct.SOPInstanceUID = generate_uid(), generate_uid()
    ct.save_as(src / "ct_truncated.dcm")
    (src / "ct_truncated.dcm").write_bytes((src / "ct_truncated.dcm").read_bytes()[:20000])
    shutil.copy(CT_SMALL, src / "ct_ok.dcm")
    res = build_dicom_datalist(str(src), str(tmp_path / "out"))
    reasons = {os.path.basename(e["path"]): e["reason"] for e in res.errors}
    assert "PhotometricInterpretation RGB" in reasons["rgb.dcm"]
    assert "Modality SEG" in reasons["seg.dcm"]
    assert "no pixel data" in reasons["cr_nopixels.dcm"]
    assert "pixel data cannot be decoded" in reasons["ct_truncated.dcm"]
    assert [it["modality"] for it in res.items] == ["CT"] and len(res.items[0]["dicom_sources"]) == 1


def test_cli(ct_export, tmp_path, capsys):
    from monai_vlseg.io.ingest import main

    out = tmp_path / "cli"
    assert main([str(ct_export["root"]), str(out)]) == 0
    captured = capsys.readouterr()
    assert "2 item(s) (1 with text)" in captured.out and "notes.txt: not a DICOM file" in captured.err
    assert json.loads((out / "datalist.json").read_text())["test"][0]["image"].startswith("images/")
    assert main([str(tmp_path / "missing"), str(out)]) == 2


def test_export_report_text_is_deidentified_before_the_datalist(tmp_path):
    """The study's patient fields, and names / IDs / dates in the report, never reach the datalist."""
    root = tmp_path / "export"
    series = make_ct_series(str(root / "study" / "series"))
    text = "Synthetic Test (SYN001), seen 01.01.2024 by Dr. Miller: nodule in the right upper lobe, MRN 4455667."
    make_sr(str(root / "study" / "sr"), series["study_uid"], [("Findings", text)])
    res = build_dicom_datalist(str(root), str(tmp_path / "out"))
    (item,) = res.items
    assert "nodule in the right upper lobe" in item["text"]
    with open(res.datalist_path, encoding="utf-8") as f:
        stored = f.read()
    for secret in ("Synthetic", "SYN001", "2024", "Miller", "4455667"):
        assert secret not in item["text"] and secret not in stored, secret
