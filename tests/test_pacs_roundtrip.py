"""PACS round trip against a real Orthanc with its DICOMweb plug-in: upload the chest CR, run
scripts/pacs_infer.py (QIDO -> WADO-RS -> UA-VLS with a tiny untrained checkpoint -> STOW-RS), then read the SEG back
from the server and check that it references the radiograph and carries the frame the script wrote.

Orthanc: tests/orthanc_testing.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from test_bundle_ua_vls import TINY_NET, save_tiny_checkpoint
from orthanc_testing import free_port, running_orthanc
from test_dicom_io import RG1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "pacs_infer.py")
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as urls:
        yield urls


@pytest.fixture(scope="module")
def tiny_bundle_files(tmp_path_factory):
    """An untrained tiny UA-VLS checkpoint and the override file that builds the same network."""
    tmp = tmp_path_factory.mktemp("tiny_ua_vls")
    save_tiny_checkpoint(tmp / "model.pt")
    # the untrained network is unsure everywhere, which alone would flag every mask (tested in test_bundle_ua_vls);
    # here the report decides what is stored
    (tmp / "tiny.json").write_text(json.dumps({**TINY_NET, "image_size": [64, 64], "review_uncertainty": 1.0}))
    return {"ckpt": str(tmp / "model.pt"), "overrides": str(tmp / "tiny.json")}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_pacs_round_trip_stores_seg_over_radiograph(orthanc, tiny_bundle_files, tmp_path):
    with open(RG1, "rb") as f:
        up = requests.post(f"{orthanc['base']}/instances", data=f.read(), timeout=30)
    assert up.ok and up.json()["Status"] in ("Success", "AlreadyStored"), up.text
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    study = str(src.StudyInstanceUID)

    bundle_args = ["--url", orthanc["dicomweb"], "--study", study, "--bundle", "bundles/ua_vls",
                   "--config_overrides", tiny_bundle_files["overrides"], "--ckpt", tiny_bundle_files["ckpt"]]  # fmt: skip
    client = DICOMwebClient(url=orthanc["dicomweb"])
    # a report that names no lung zone: the mask is not what the text asked for, so nothing reaches the PACS
    res = run_script(*bundle_args, "--text", "Bilateral pulmonary infection, two infected areas.")
    assert res.returncode == 1 and "need review" in res.stderr and "no lung zone" in res.stderr, res.stderr[-2000:]
    assert [s["00080060"]["Value"][0] for s in client.search_for_series(study_instance_uid=study)] == ["CR"]

    out = tmp_path / "out"
    text = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    res = run_script(*bundle_args, "--text", text, "--output_dir", str(out))
    assert res.returncode == 0, res.stderr[-4000:]
    with open(out / "report_review.csv", encoding="utf-8") as f:
        review = f.read()
    assert "False" in review and "upper left; lower right" in review and text not in review
    printed = res.stdout.split()  # the binary SEG and, beside it, the probability map as a FRACTIONAL SEG
    assert len(printed) == 2 and all(pydicom.uid.UID(u).is_valid for u in printed), res.stdout
    local = pydicom.dcmread(out / f"{src.SOPInstanceUID}_seg.dcm")
    local_prob = pydicom.dcmread(out / f"{src.SOPInstanceUID}_prob_seg.dcm")
    assert sorted(printed) == sorted([local.SOPInstanceUID, local_prob.SOPInstanceUID])

    series = client.search_for_series(study_instance_uid=study)
    modalities = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in series}
    assert sorted(modalities.values()) == ["CR", "SEG", "SEG"]
    seg_series, uid = _seg_series_and_uid(client, study, local.SOPInstanceUID)
    instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=seg_series)
    assert [i["00080018"]["Value"][0] for i in instances] == [uid]
    prob = client.retrieve_instance(study, *_seg_series_and_uid(client, study, local_prob.SOPInstanceUID))
    assert prob.SegmentationType == "FRACTIONAL" and prob.StudyInstanceUID == study
    assert prob.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(prob.pixel_array, local_prob.pixel_array)
    seg = client.retrieve_instance(study, seg_series, uid)
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.StudyInstanceUID == study
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    frame = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert frame.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert (seg.Rows, seg.Columns, int(seg.NumberOfFrames)) == (src.Rows, src.Columns, 1)
    np.testing.assert_array_equal(seg.pixel_array, local.pixel_array)  # the frame the script wrote, bit for bit
    assert not str(seg.SeriesDescription).startswith("NEEDS REVIEW")

    # asked for, a flagged mask is stored, marked for review in its series description
    res = run_script(*bundle_args, "--text", "Opacity in the left lung.", "--store-flagged")
    assert res.returncode == 0, res.stderr[-2000:]
    flagged = client.retrieve_instance(study, *_seg_series_and_uid(client, study, res.stdout.split()[0]))
    assert str(flagged.SeriesDescription).startswith("NEEDS REVIEW")

    # clear errors naming the server and the UID
    res = run_script("--url", orthanc["dicomweb"], "--study", "1.2.3.4.5.6789", "--text", "x")
    assert res.returncode == 1, res.stderr
    assert f"study 1.2.3.4.5.6789 not found on {orthanc['dicomweb']}" in res.stderr, res.stderr
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    res = run_script("--url", dead, "--study", study, "--text", "x")
    assert res.returncode == 1 and f"DICOMweb server {dead} is unreachable" in res.stderr, res.stderr


def _seg_series_and_uid(client: DICOMwebClient, study: str, sop_uid: str) -> tuple[str, str]:
    """(series UID, SOP instance UID) of the stored instance ``sop_uid`` of ``study``."""
    for inst in client.search_for_instances(study_instance_uid=study):
        if inst["00080018"]["Value"][0] == sop_uid:
            return inst["0020000E"]["Value"][0], sop_uid
    raise AssertionError(f"{sop_uid} not stored in study {study}")


def test_pacs_round_trip_of_the_report_guided_ct_bundle(orthanc, tmp_path):
    """report_ct on a CT series whose report is a DICOM SR in the study: the SR text is read, the tiny untrained
    network runs on the series; its mask, which disagrees with the report, is refused by the report check, and with
    the check off the SEG stored in the study references every slice of it."""
    from monai_vlseg.datasets.synthetic.ct_reports import generate_report_ct_dataset

    generate_report_ct_dataset(str(tmp_path / "data"), n_train=0, n_val=0, n_test=1, size=40, fov_z_mm=45.0)
    folder = tmp_path / "data" / "dicom" / "ctr_test_000"
    slices = sorted(str(p) for p in folder.iterdir())
    for path in [*slices, str(tmp_path / "data" / "dicom" / "ctr_test_000_report.dcm")]:
        with open(path, "rb") as f:
            assert requests.post(f"{orthanc['base']}/instances", data=f.read(), timeout=30).ok
    src = pydicom.dcmread(slices[0], stop_before_pixels=True)
    tiny = {"pixdim": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "network_def#feature_size": [8, 16, 16, 32],
            "network_def#hidden_size": 32, "network_def#depths": [1, 1, 1, 1], "network_def#num_slices": None,
            "review_uncertainty": 1.0}  # fmt: skip
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", "report_ct", "configs", "inference.json"))
    for k, v in tiny.items():
        parser[k] = v
    import torch

    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    args = ("--url", orthanc["dicomweb"], "--accession", "ctr_test_000", "--bundle", "bundles/report_ct",
            "--ckpt", str(tmp_path / "model.pt"))  # fmt: skip
    # the untrained network's mask disagrees with the report's count: flagged by the report check, not stored
    res = run_script(*args, "--config_overrides", str(tmp_path / "tiny.json"), "--output_dir", str(tmp_path / "o1"))
    assert res.returncode != 0 and "the report names" in res.stderr, res.stderr[-4000:]
    (tmp_path / "unchecked.json").write_text(json.dumps({**tiny, "report_check": False}))
    unchecked = str(tmp_path / "unchecked.json")
    res = run_script(*args, "--config_overrides", unchecked, "--output_dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-4000:]
    client = DICOMwebClient(url=orthanc["dicomweb"])
    uid = res.stdout.split()[0]
    seg = client.retrieve_instance(str(src.StudyInstanceUID), *_seg_series_and_uid(client, str(src.StudyInstanceUID), uid))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in slices}
    assert int(seg.NumberOfFrames) == len(slices)
