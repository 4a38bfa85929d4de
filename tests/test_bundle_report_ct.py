"""The report_ct bundle as model-zoo tests it: train / evaluate (right and shuffled reports, count and laterality
agreement) / inference workflows with a tiny ReportSegMamba on a tiny report-guided CT set (NIfTI, and DICOM series
with the report from the CSV or the SR), verify_net_in_out, metadata fields."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_testing import BundleConfigs, check_bundle_layout, check_run_folder, run_ddp_training
from monai.bundle import verify_net_in_out

from monai_vlseg.datasets.synthetic.ct_reports import generate_report_ct_dataset

cfg = BundleConfigs("report_ct")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#feature_size": [8, 16, 16, 32],
    "network_def#hidden_size": 32,
    "network_def#depths": [1, 1, 1, 1],
    "network_def#num_slices": None,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny report-guided CT set and a bundle root trained for one epoch."""
    tmp = tmp_path_factory.mktemp("report_ct")
    # two validation volumes: the DDP test's two ranks take one each
    datalist = generate_report_ct_dataset(str(tmp / "data"), n_train=2, n_val=2, n_test=2, size=48, variants=2,
                                          fov_z_mm=60.0)  # fmt: skip
    overrides = {
        "bundle_root": str(tmp / "bundle"), "datalist": datalist, "pixdim": [4.0, 4.0, 4.0],
        "patch_size": [32, 32, 32], "num_samples": 1, "max_epochs": 1, "min_epochs": 0, "val_interval": 1,
        "batch_size": 2, **TINY_NET,
    }  # fmt: skip
    cfg.run("train", "train.json", **overrides)
    return {"root": tmp, "datalist": datalist, "overrides": overrides}


def test_train_writes_checkpoint_with_its_text_config(bundle):
    root = bundle["root"] / "bundle"
    ckpt = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("text_enc.3.attn") for k in ckpt) and any(k.startswith("text_dec.1.") for k in ckpt)
    check_run_folder(root, pixdim=[4.0, 4.0, 4.0], num_classes=2, text_len=112, text_model="default")


def test_evaluate_right_and_shuffled_reports(bundle):
    cfg.run("eval", "train.json", "evaluate.json", **bundle["overrides"])
    out = bundle["root"] / "bundle" / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["conditions"]) == {"right", "shuffled"}
    for cond in ("right", "shuffled"):
        metrics = summary["conditions"][cond]
        assert {"val_mean_dice", "val_hd95", "val_count_agreement", "val_laterality_agreement"} <= set(metrics) | set(
            metrics["absent"])
        assert metrics["num_images"] == 2
    with open(out / "val_count_agreement_raw.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 3 and rows[1][0].endswith(".nii.gz")


def test_coronal_series_gives_the_axial_volumes_dice(bundle):
    """The test volumes stored as coronal DICOM series, scored against the axial NIfTI labels: the size check runs after
    both are oriented to RAS, and each volume's Dice equals the NIfTI run's."""
    def per_volume(out):
        with open(out / "val_mean_dice_raw.csv") as f:
            return {os.path.basename(r[0]).split(".")[0].replace("_r0", ""): r[2] for r in list(csv.reader(f))[1:]}

    base = bundle["root"] / "bundle" / "eval"
    for fmt, datalist in (("nifti", "datalist.json"), ("dicom_coronal", "datalist_dicom_coronal.json")):
        overrides = {**bundle["overrides"], "image_format": fmt, "text_conditions": ["right"],
                     "datalist": os.path.join(os.path.dirname(bundle["datalist"]), datalist)}  # fmt: skip
        cfg.run("eval", "train.json", "evaluate.json", **overrides)
    axial, coronal = per_volume(base / "test"), per_volume(base / "test_dicom_coronal")
    assert len(axial) == 2 and coronal == axial


@pytest.mark.parametrize("image_format", ["nifti", "dicom"])
def test_inference_in_input_geometry_with_the_report(bundle, tmp_path, image_format):
    datalist = bundle["datalist"]
    if image_format == "dicom":
        datalist = os.path.join(os.path.dirname(datalist), "datalist_dicom.json")
    overrides = dict(bundle["overrides"], datalist=datalist, output_dir=str(tmp_path / "out"))
    cfg.run("infer", "inference.json", **overrides)
    out = tmp_path / "out"
    segs = sorted(out.glob("*_seg.nii.gz"))
    assert len(segs) == 2
    src = nib.load(os.path.join(os.path.dirname(bundle["datalist"]), "imagesTs", "ctr_test_000.nii.gz"))
    seg = nib.load(segs[0])
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-3)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    with open(out / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["written", "written"] and all("FINDINGS" in r["text"] for r in rows)


def test_verify_net_in_out_and_layout():
    check_bundle_layout(os.path.dirname(CONFIGS))
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=cfg("inference.json"), n=1, any=32,
                      **TINY_NET)  # fmt: skip


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    """torchrun with 2 CPU processes (gloo): the validation's once-per-volume text encoding reaches through DDP."""
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"))
    ckpt = run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))
    assert any(k.startswith("text_dec.0.") for k in ckpt)


def _two_lesion_logits() -> dict:
    """Logits (2, 24, 24, 24) on a 3 mm grid: a 6x6x6-voxel lesion (5832 mm3) and a 2x2x2-voxel fragment (216 mm3)."""
    from monai.data import MetaTensor

    fg = torch.zeros(24, 24, 24)
    fg[2:8, 2:8, 2:8] = 1
    fg[16:18, 16:18, 16:18] = 1
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0]))
    logits = MetaTensor(torch.stack([1 - fg, fg]) * 4 - 2, affine=affine)
    return {"pred": logits, "label": MetaTensor((fg[None] > 0).float(), affine=affine)}


@pytest.mark.parametrize(("min_mm3", "kept"), [(0, 216 + 8), (500, 216)])
def test_evaluate_postprocessing_removes_lesions_below_min_lesion_mm3(min_mm3, kept):
    """evaluate.json's post-processing: components below ``min_lesion_mm3`` (mm3 of the 3 mm grid) are dropped;
    0 keeps every component."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(cfg("train.json", "evaluate.json"))
    parser.update({"min_lesion_mm3": min_mm3})
    post = parser.get_parsed_content("validate#postprocessing")
    out = post(_two_lesion_logits())
    assert out["pred"].shape == (2, 24, 24, 24)
    assert int(out["pred"][1].sum()) == kept and torch.equal(out["pred"].sum(0), torch.ones(24, 24, 24))


def test_choose_min_lesion_scores_count_after_removal():
    """scripts/choose_min_lesion.py's scoring: the fragment breaks the count at 0 mm3, not at 500 mm3."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "choose_min_lesion", os.path.join(os.path.dirname(CONFIGS), "..", "..", "scripts", "choose_min_lesion.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = _two_lesion_logits()
    onehot = torch.stack([d["pred"][0] > 0, d["pred"][1] > 0]).float()
    pred = d["pred"].clone()
    pred[:] = onehot
    label = torch.stack([1 - d["label"][0], d["label"][0]])
    label[1, 16:18, 16:18, 16:18] = 0  # the fragment is not a named lesion
    label[0, 16:18, 16:18, 16:18] = 1
    kept = [(pred, label, 1, "right")]  # RAS x >= 0 everywhere: the patient's right
    at0, at500 = mod.score(kept, 0, [3.0, 3.0, 3.0]), mod.score(kept, 500, [3.0, 3.0, 3.0])
    assert at0["count"] == 0.0 and at500["count"] == 1.0
    assert at500["dice"] == pytest.approx(1.0) and at0["dice"] < 1.0 and at500["laterality"] == 1.0
