"""The hospital loop against a real PACS: Orthanc (DICOMweb) -> MONAI Label -> the bundles -> a SEG back in Orthanc ->
training on the saved label -> the most uncertain series next.

As a user runs it: ``make label``, an app folder from ``python -m monai_vlseg.label_app.prepare`` (a tiny UA-VLS and
a tiny SegMamba, untrained: the test is about the loop, not accuracy), and ``monailabel start_server --studies
http://127.0.0.1:PORT/dicom-web``. Orthanc holds the chest CR RG1 (MONOCHROME1, 16 bit) with a DICOM SR report in its
study, two CT series (reports in a CSV keyed by AccessionNumber) and a model's proposal SEG over the CR (AUTOMATIC:
not a label).
"""

import csv
import hashlib
import json
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pydicom
import requests
import torch
from dicomweb_client.api import DICOMwebClient
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from orthanc_testing import running_orthanc
from test_dicom_io import RG1, make_ct_series, make_sr
from test_monailabel import (
    LABEL_VENV,
    READY_TIMEOUT_S,
    ROOT,
    TINY,
    TINY_SEGMAMBA,
    ensure_label_env,
    free_port,
    infer,
    server_env,
    stop,
    wait_ready,
)

from monai_vlseg.io import load_dicom_series, write_dicom_seg

# the report-guided CT bundle, tiny and untrained (a 3D text-guided model served with the study's report)
TINY_REPORT_CT = {
    "pixdim": [4.0, 4.0, 4.0], "patch_size": [32, 32, 32], "network_def#feature_size": [8, 16, 16, 32],
    "network_def#hidden_size": 32, "network_def#depths": [1, 1, 1, 1], "network_def#num_slices": None,
}  # fmt: skip
REPORT = ("Findings", "RG1 CompressedSamples, seen on 26/08/2004. Consolidation in the lower left lung.")
CT_REPORTS = {"ACC-CT-1": "Hypodense lesion in the right hepatic lobe.", "ACC-CT-2": "Two liver lesions."}


def upload(base: str, paths) -> None:
    for path in paths:
        with open(path, "rb") as f:
            r = requests.post(f"{base}/instances", data=f.read(), timeout=60)
        assert r.ok, r.text


def tiny_checkpoint(bundle: str, values: dict, path) -> str:
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", bundle, "configs", "inference.json"))
    for k, v in values.items():
        parser[k] = v
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return str(path)


def put_label(base: str, image_id: str, label_file, params: dict) -> requests.Response:
    with open(label_file, "rb") as f:
        return requests.put(
            f"{base}/datastore/label", params={"image": image_id, "tag": "final"},
            files={"label": (os.path.basename(str(label_file)), f)}, data={"params": json.dumps(params)}, timeout=120,
        )  # fmt: skip


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_orthanc_monailabel_loop(tmp_path):
    ensure_label_env()
    cr = pydicom.dcmread(RG1, stop_before_pixels=True)
    # the CR's report: an SR in its study (with the patient's name and a date in it, as real reports have)
    sr = make_sr(str(tmp_path / "sr.dcm"), str(cr.StudyInstanceUID), [REPORT])
    ds = pydicom.dcmread(sr)
    ds.PatientID, ds.PatientName = cr.PatientID, cr.PatientName
    ds.save_as(sr)
    cts = [make_ct_series(str(tmp_path / f"ct{i}"), n=n, rows=rows, cols=cols, accession=f"ACC-CT-{i}")
           for i, (n, rows, cols) in ((1, (8, 24, 20)), (2, (6, 20, 16)))]  # fmt: skip
    with open(tmp_path / "reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["AccessionNumber", "report"])
        w.writerows(CT_REPORTS.items())
    # a model's proposal over the CR, as scripts/pacs_infer.py stores it: AUTOMATIC segments, not a reader's label
    proposal = write_dicom_seg(np.ones((int(cr.Rows), int(cr.Columns)), bool), RG1, tmp_path / "proposal.dcm")

    app = tmp_path / "app"
    for name, values in (("ua_vls", TINY), ("segmamba_ct", TINY_SEGMAMBA), ("report_ct", TINY_REPORT_CT)):
        (tmp_path / f"{name}.json").write_text(json.dumps(values))
        res = subprocess.run(
            [sys.executable, "-m", "monai_vlseg.label_app.prepare", "--bundle", os.path.join(ROOT, "bundles", name),
             "--app", str(app), "--ckpt", tiny_checkpoint(name, values, tmp_path / f"{name}.pt"),
             "--overrides", str(tmp_path / f"{name}.json")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
    model_pt = app / "model" / "ua_vls" / "models" / "model.pt"
    before = sha(model_pt)

    with running_orthanc(tmp_path / "orthanc") as pacs:
        upload(pacs["base"], [RG1, sr, proposal, *cts[0]["paths"], *cts[1]["paths"]])
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = server_env(tmp_path, MONAI_LABEL_DICOMWEB_CACHE_PATH=str(tmp_path / "cache"),
                         MONAI_LABEL_AUTO_UPDATE_SCORING="false")  # fmt: skip
        cmd = [
            os.path.join(LABEL_VENV, "bin", "monailabel"), "start_server", "--app", str(app),
            "--studies", pacs["dicomweb"], "--conf", "models", "ua_vls,segmamba_ct,report_ct",
            "--conf", "reports_csv", str(tmp_path / "reports.csv"), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        log = str(tmp_path / "server.log")
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_ready(proc, base, log, READY_TIMEOUT_S)
            info = requests.get(f"{base}/info/", timeout=30).json()
            assert set(info["trainers"]) == {"ua_vls", "segmamba_ct", "report_ct"}
            # the image series of the PACS, listed through MONAI Label; the SR and the proposal SEG are not images,
            # and the proposal does not make the CR "labelled"
            stats = requests.get(f"{base}/datastore/", params={"output": "stats"}, timeout=60).json()
            assert stats["total"] == 3 and stats["completed"] == 0, stats
            cr_id, ct_ids = str(cr.SeriesInstanceUID), [c["series_uid"] for c in cts]

            # UA-VLS on the CR, the report found in the study's SR (de-identified before it is used)
            status, body = infer(base, cr_id, {}, output="json")
            assert status == 200, body[-3000:]
            result = json.loads(body)
            assert result["text_source"].endswith(f"{cr_id}.txt")
            assert "Consolidation in the lower left lung." in result["text"]
            assert "CompressedSamples" not in result["text"] and "2004" not in result["text"], result["text"]
            score_before = result["uncertainty_score"]
            status, body = infer(base, cr_id, {"text": "Opacity in the upper right lung."})
            assert status == 200, body[-3000:]
            (tmp_path / "cr_mask.nii.gz").write_bytes(body)
            mask = nib.load(tmp_path / "cr_mask.nii.gz")  # the radiograph's own grid: (columns, rows[, 1])
            assert mask.shape[:2] == (int(cr.Columns), int(cr.Rows))
            # SegMamba on a CT series (oblique, 8 slices): the label map on the series' own grid
            status, body = infer(base, ct_ids[0], {}, model="segmamba_ct")
            assert status == 200, body[-3000:]
            (tmp_path / "ct_mask.nii.gz").write_bytes(body)
            ct_mask = nib.load(tmp_path / "ct_mask.nii.gz")
            assert ct_mask.shape == cts[0]["shape"]
            np.testing.assert_allclose(ct_mask.affine, cts[0]["affine_ras"], atol=1e-3)
            # the report-guided CT bundle on the same series: the report from the CSV (AccessionNumber ACC-CT-1)
            status, body = infer(base, ct_ids[0], {}, output="json", model="report_ct")
            assert status == 200, body[-3000:]
            assert json.loads(body)["text"] == CT_REPORTS["ACC-CT-1"]
            status, body = infer(base, ct_ids[0], {}, model="report_ct")
            assert status == 200, body[-3000:]
            (tmp_path / "ct_report_mask.nii.gz").write_bytes(body)
            assert nib.load(tmp_path / "ct_report_mask.nii.gz").shape == cts[0]["shape"]

            # a reader's label for the CR, saved through /datastore: a DICOM SEG in Orthanc over the radiograph
            label = np.zeros(mask.shape[:2], np.uint8)
            label[300:900, 1000:1500] = 1  # (x, y): columns 300-899, rows 1000-1499
            nib.save(nib.Nifti1Image(label[..., None], mask.affine), tmp_path / "label.nii.gz")
            bad = tmp_path / "bad.nii.gz"
            nib.save(nib.Nifti1Image(label[:-5, :, None], mask.affine), bad)
            r = put_label(base, cr_id, bad, {"model": "ua_vls"})
            assert r.status_code == 400 and "does not fit the image" in r.text, r.text
            r = put_label(base, cr_id, tmp_path / "label.nii.gz", {"model": "ua_vls"})
            assert r.ok, r.text
            client = DICOMwebClient(url=pacs["dicomweb"])
            study = str(cr.StudyInstanceUID)
            segs = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})
            assert len(segs) == 2  # the proposal and the label
            kinds = {}
            for s in segs:
                series = s["0020000E"]["Value"][0]
                inst = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)[0]
                seg = client.retrieve_instance(study, series, inst["00080018"]["Value"][0])
                kinds[seg.SegmentSequence[0].SegmentAlgorithmType] = seg
            assert set(kinds) == {"AUTOMATIC", "SEMIAUTOMATIC"}
            seg = kinds["SEMIAUTOMATIC"]
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == cr_id
            assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
                cr.SOPInstanceUID
            assert seg.SegmentSequence[0].SegmentLabel == "lesion" and seg.StudyInstanceUID == cr.StudyInstanceUID
            np.testing.assert_array_equal(seg.pixel_array, label.T)  # frame (rows, columns) over the radiograph
            stats = requests.get(f"{base}/datastore/", params={"output": "stats"}, timeout=60).json()
            assert stats["completed"] == 1, stats

            # one short epoch of the bundle's own training on that label, with the study's report as the text
            t0 = time.monotonic()
            r = requests.post(f"{base}/train/ua_vls", params={"run_sync": "true"},
                              json={"max_epochs": 1, "val_split": 0.0}, timeout=900)  # fmt: skip
            train_s = time.monotonic() - t0
            assert r.ok, r.text[-3000:]
            run = r.json()
            assert run["training"] == 1 and run["validation"] == 1
            with open(run["datalist"]) as f:
                item = json.load(f)["training"][0]
            assert item["text"] == result["text"] and item["label"].endswith(f"{cr_id}.nii.gz")
            assert sha(model_pt) != before
            record = json.loads((model_pt.parent / "model.json").read_text())
            assert os.path.basename(record["run_dir"]).startswith("monailabel-")
            assert record["model_config"]["image_size"] == TINY["image_size"]
            # the infer task serves the new checkpoint
            status, body = infer(base, cr_id, {}, output="json")
            assert status == 200, body[-3000:]
            assert json.loads(body)["uncertainty_score"] != score_before
            assert "Reload model" in open(log).read()

            # next: the unlabelled series the model is least sure of (the two CT series, scored with SegMamba)
            expected = {}
            for ct_id in ct_ids:
                status, body = infer(base, ct_id, {}, output="json", model="segmamba_ct")
                assert status == 200, body[-3000:]
                expected[ct_id] = json.loads(body)["uncertainty_score"]
            assert expected[ct_ids[0]] != expected[ct_ids[1]]
            r = requests.post(f"{base}/scoring/uncertainty", params={"run_sync": "true"},
                              json={"model": "segmamba_ct"}, timeout=300)  # fmt: skip
            assert r.ok, r.text[-3000:]
            r = requests.post(f"{base}/activelearning/most_uncertain", json={}, timeout=60)
            assert r.ok and r.json()["id"] == max(expected, key=expected.get), (r.text, expected)

            # a label made outside MONAI Label (a MANUAL SEG of liver + lesion, e.g. from 3D Slicer) stored straight
            # to the PACS: read from there, onto the series' grid, and trained on by SegMamba
            ct_labels = np.zeros(cts[0]["shape"], np.uint8)
            ct_labels[4:16, 5:20, 1:7] = 1
            ct_labels[8:12, 9:14, 3:5] = 2
            ct_vol = load_dicom_series(cts[0]["paths"])
            manual = write_dicom_seg(
                MetaTensor(torch.as_tensor(ct_labels[None]), affine=torch.as_tensor(ct_vol.affine)), cts[0]["paths"],
                tmp_path / "manual.dcm", segment_label=["liver", "lesion"], algorithm_type="MANUAL",
            )  # fmt: skip
            upload(pacs["base"], [manual])
            stats = requests.get(f"{base}/datastore/", params={"output": "stats"}, timeout=60).json()
            assert stats["completed"] == 2, stats
            r = requests.post(f"{base}/train/segmamba_ct", params={"run_sync": "true"},
                              json={"max_epochs": 1, "val_split": 0.0}, timeout=900)  # fmt: skip
            assert r.ok, r.text[-3000:]
            with open(r.json()["datalist"]) as f:
                items = json.load(f)["training"]
            assert [os.path.basename(i["image"]) for i in items] == [f"{ct_ids[0]}.nii.gz"]
            read_back = nib.load(items[0]["label"])
            np.testing.assert_array_equal(np.asarray(read_back.dataobj), ct_labels)
            np.testing.assert_allclose(read_back.affine, ct_vol.affine, atol=1e-4)
        finally:
            stop(proc)
    print(f"\none epoch of UA-VLS training through /train: {train_s:.1f} s")
