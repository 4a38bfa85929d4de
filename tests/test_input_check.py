"""Inputs unlike a bundle's training data are flagged for review, never segmented silently (issue 18.5): DICOM
Modality and BodyPartExamined against metadata.json, CT Hounsfield units given to a radiograph model (and the
reverse), a colour photograph given to a grey-scale model. Real files from pydicom's test data."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image
from pydicom.data import get_testdata_file

from monai_vlseg.transforms import CheckInputd, InputSpec, PrepareReportd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def meta_of(bundle: str) -> str:
    return os.path.join(ROOT, "bundles", bundle, "configs", "metadata.json")


def load(path: str, bundle: str = "ua_vls", on_mismatch: str = "flag") -> dict:
    chain = Compose([
        LoadImaged("image", reader="monai_vlseg.io.DicomReader", image_only=True),
        EnsureChannelFirstd("image"),
        CheckInputd("image", metadata=meta_of(bundle), on_mismatch=on_mismatch),
    ])  # fmt: skip
    return chain({"image": path})


def test_every_bundle_states_the_modality_it_was_trained_on():
    for bundle in ("ua_vls", "c2seg", "lcpdn", "tifcmamba", "vm_unet", "segmamba_ct"):
        spec = InputSpec(meta_of(bundle))
        assert spec.modalities, bundle
    assert InputSpec(meta_of("segmamba_ct")).format == "hounsfield" and InputSpec(meta_of("ua_vls")).body_parts


def test_chest_radiograph_passes():
    d = load(get_testdata_file("RG1_UNCI.dcm"))  # CR, BodyPartExamined CHEST
    assert "needs_review" not in d and "input_warnings" not in d


@pytest.mark.parametrize(
    "name, reasons",
    [
        ("CT_small.dcm", ["DICOM Modality CT", "look like CT Hounsfield units"]),
        ("MR_small.dcm", ["DICOM Modality MR"]),
        ("RG3_UNCI.dcm", ["BodyPartExamined EXTREMITY"]),  # a CR of a hand: right modality, wrong body part
    ],
)
def test_other_modalities_and_body_parts_are_flagged(name, reasons, caplog):
    with caplog.at_level(logging.WARNING, logger="monai_vlseg"):
        d = load(get_testdata_file(name))
    assert d["needs_review"] is True
    for r in reasons:
        assert r in d["input_warnings"]
    assert any(name in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


def test_ct_model_flags_a_volume_without_hounsfield_units():
    d = load(get_testdata_file("MR_small.dcm"), bundle="segmamba_ct")
    assert "DICOM Modality MR" in d["input_warnings"] and "not a CT in Hounsfield units" in d["input_warnings"]
    assert "needs_review" not in load(get_testdata_file("CT_small.dcm"), bundle="segmamba_ct")


def test_nifti_ct_given_to_a_radiograph_model_is_flagged():
    hu = MetaTensor(torch.full((1, 16, 16), -1000.0), meta={"filename_or_obj": "slice.nii.gz"})
    hu[:, 4:12, 4:12] = 40.0
    d = CheckInputd("image", metadata=meta_of("c2seg"))({"image": hu})
    assert d["needs_review"] and "Hounsfield" in d["input_warnings"]


def test_colour_photo_to_grey_model_flagged_grey_stored_as_rgb_not(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "photo.png")
    grey = (rng.random((24, 24)) * 255).astype(np.uint8)
    Image.fromarray(grey).convert("RGB").save(tmp_path / "grey_rgb.png")
    assert "a colour image" in load(str(tmp_path / "photo.png"))["input_warnings"]
    assert "needs_review" not in load(str(tmp_path / "grey_rgb.png"))
    assert "needs_review" not in load(str(tmp_path / "photo.png"), bundle="tifcmamba")  # an RGB endoscopy model


def test_error_mode_names_the_file_and_off_mode_passes():
    path = get_testdata_file("CT_small.dcm")
    with pytest.raises(RuntimeError) as err:  # Compose wraps the ValueError
        load(path, on_mismatch="error")
    assert "CT_small.dcm: DICOM Modality CT" in str(err.value.__cause__)
    assert "needs_review" not in load(path, on_mismatch="off")
    with pytest.raises(ValueError, match="on_mismatch"):
        CheckInputd("image", metadata=meta_of("ua_vls"), on_mismatch="warn")


def test_report_preparation_keeps_the_input_flag():
    prep = PrepareReportd("text", parser="chest")
    d = prep({"text": "Opacity in the lower left lung.", "needs_review": True, "input_warnings": "DICOM Modality CT"})
    assert d["needs_review"] is True and d["report_zones"] == "lower left"
    assert prep({"text": "Opacity in the lower left lung."})["needs_review"] is False
