"""Synthetic CT demo data: deterministic HU volumes, NIfTI and DICOM series of the same case load to the same
array and affine (directly and through the segmamba_ct bundle's transforms), DICOM geometry tags, the datalist
helper and the command line."""

import json
import os

import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_vlseg.datasets.synthetic.ct import (
    CT_LABELS,
    ensure_demo_ct_datalist,
    generate_demo_ct_dataset,
    main,
    synthesize_ct_case,
)
from monai_vlseg.io.dicom import dicom_files_in, load_dicom_series
from monai_vlseg.io.series import write_dicom_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "bundles", "segmamba_ct", "configs", "train.json")
SMALL = dict(n_train=1, n_val=1, n_test=1, size=40, fov_z_mm=40.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct") / "demo"
    return generate_demo_ct_dataset(str(root), seed=3, **SMALL)


def test_case_is_deterministic_and_ct_like():
    a, b = synthesize_ct_case([0, 0, 5], size=48), synthesize_ct_case([0, 0, 5], size=48)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert a.image.dtype == np.int16 and a.label.dtype == np.uint8
    assert a.image.min() <= -900 and a.image.max() > 150  # air and bone
    liver = a.image[a.label == CT_LABELS["liver"]]
    assert 40 < liver.mean() < 80  # soft-tissue HU
    assert not np.array_equal(a.image, synthesize_ct_case([0, 0, 6], size=48).image)
    cases = [synthesize_ct_case([1, 0, i], size=48) for i in range(4)]
    assert any((c.label == CT_LABELS["lesion"]).any() for c in cases)
    les = [c.image[c.label == 2].mean() - c.image[c.label == 1].mean() for c in cases if (c.label == 2).sum() > 20]
    assert les and all(abs(d) > 10 for d in les)  # lesions differ from the parenchyma


def test_nifti_and_dicom_series_load_identically_through_bundle_transforms(demo):
    root = os.path.dirname(demo)
    nii = json.load(open(demo))["training"][0]
    dcm = json.load(open(os.path.join(root, "datalist_dicom.json")))["training"][0]
    assert os.path.isdir(os.path.join(root, dcm["image"])) and dcm["label"] == nii["label"]
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser["pixdim"] = [2.0, 2.0, 2.5]
    parser["patch_size"] = [32, 32, 32]
    loader = Compose(parser.get_parsed_content("preprocessing_transforms"))
    out = [loader({"image": os.path.join(root, it["image"]), "label": os.path.join(root, it["label"])})
           for it in (nii, dcm)]  # fmt: skip
    a, b = out
    assert a["image"].shape == b["image"].shape
    np.testing.assert_allclose(np.asarray(a["image"]), np.asarray(b["image"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a["image"].affine), np.asarray(b["image"].affine), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0  # HU window scaled


def test_dicom_series_geometry_tags(demo, tmp_path):
    root = os.path.dirname(demo)
    folder = os.path.join(root, "dicom", "ct_train_000")
    files = dicom_files_in(folder)
    first, second = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    assert first.Modality == "CT" and first.InstanceNumber == 1
    assert second.ImagePositionPatient[2] < first.ImagePositionPatient[2]  # superior first, as scanners store them
    assert list(first.ImageOrientationPatient) == [1, 0, 0, 0, 1, 0]
    assert first.SeriesInstanceUID == second.SeriesInstanceUID and first.SOPInstanceUID != second.SOPInstanceUID
    assert first.FrameOfReferenceUID and first.StudyInstanceUID and float(first.RescaleIntercept) == -1024
    img = load_dicom_series(folder)
    case = synthesize_ct_case([3, 0, 0], size=40, fov_z_mm=40.0)
    np.testing.assert_array_equal(img.array, case.image)  # sorted by position, HU restored
    np.testing.assert_allclose(img.affine, case.affine, atol=1e-3)
    assert float(first.SliceThickness) == pytest.approx(case.spacing[2])
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([case.spacing[1], case.spacing[0]])
    with pytest.raises(ValueError, match="outside"):
        write_dicom_series(np.full((2, 2, 2), 5000, np.int16), (1, 1, 1), (0, 0, 0), tmp_path / "bad")


@pytest.mark.parametrize("kwargs", [{"plane": "coronal"}, {"rotate_180": True}])
def test_reformatted_series_read_back_to_the_axial_volume(tmp_path, kwargs):
    """A coronal reformat and a 180-degree rotated axial series hold the same patient-space volume: after orienting
    to RAS the voxels and the affine equal the plain axial series'."""
    from monai.transforms import Orientation

    case = synthesize_ct_case([5, 0, 1], size=24, fov_z_mm=30.0)
    write_dicom_series(case.image, case.spacing, case.origin_lps, tmp_path / "ax")
    paths = write_dicom_series(case.image, case.spacing, case.origin_lps, tmp_path / "other", **kwargs)
    ref, other = load_dicom_series(str(tmp_path / "ax")), load_dicom_series(str(tmp_path / "other"))
    first = pydicom.dcmread(paths[0])
    if kwargs.get("plane") == "coronal":
        assert list(first.ImageOrientationPatient) == [1, 0, 0, 0, 0, -1] and len(paths) == case.image.shape[1]
        assert [float(v) for v in first.PixelSpacing] == pytest.approx([case.spacing[2], case.spacing[0]])
    assert not np.array_equal(other.array, ref.array)  # stored another way round
    ras = Orientation(axcodes="RAS", labels=None)
    a, b = (ras(MetaTensor(im.array[None].astype(np.float32), affine=im.affine)) for im in (ref, other))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-3)
    with pytest.raises(ValueError, match="plane"):
        write_dicom_series(case.image, case.spacing, case.origin_lps, tmp_path / "bad", plane="sagittal")


def test_ensure_datalist_generates_once_and_picks_the_format(tmp_path):
    target = tmp_path / "set"
    path = ensure_demo_ct_datalist(target, **SMALL)
    assert path == str(target / "datalist.json")
    mtime = os.path.getmtime(path)
    assert ensure_demo_ct_datalist(target, **SMALL) == path and os.path.getmtime(path) == mtime
    dpath = ensure_demo_ct_datalist(target, image_format="dicom")
    assert dpath.endswith("datalist_dicom.json") and json.load(open(dpath))["image_format"] == "dicom"
    assert json.load(open(path))["meta"]["laterality"] == json.load(open(dpath))["meta"]["laterality"] == "patient"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".set.tmp")]  # no temporary folder left
    with pytest.raises(ValueError, match="image_format"):
        ensure_demo_ct_datalist(target, image_format="png")


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = [str(out), "--n-train", "1", "--n-val", "0", "--n-test", "0", "--size", "32", "--no-dicom"]
    assert main(args) == 0
    assert (out / "datalist.json").is_file() and not (out / "dicom").exists()
    assert main(args) == 1 and "not empty" in capsys.readouterr().err
