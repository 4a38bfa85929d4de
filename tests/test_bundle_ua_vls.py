"""The UA-VLS bundle as model-zoo tests it: train / evaluate / inference workflows with a tiny network on a tiny
demo data set, verify_net_in_out, TorchScript / ONNX export, and 2-process DDP training on CPU (gloo)."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import verify_net_in_out
from PIL import Image

from bundle_testing import BundleConfigs, check_bundle_layout, run_ddp_training

from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset
from monai_vlseg.export import export_network, load_bundle_network

cfg = BundleConfigs("ua_vls")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#vision_config": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    "network_def#text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


def save_tiny_checkpoint(path, seed=0):
    """Write the state dict of the untrained tiny UA-VLS that inference.json + TINY_NET builds (tests of geometry and
    I/O, not accuracy)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(CONFIGS, "inference.json"))
    parser.update(TINY_NET)
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny demo data set and a bundle root trained for 2 epochs."""
    tmp = tmp_path_factory.mktemp("ua_vls")
    datalist = generate_demo_dataset(str(tmp / "data"), n_train=8, n_val=4, n_test=4, size=128, seed=1)
    overrides = {
        "bundle_root": str(tmp / "bundle"),
        "datalist": datalist,
        "image_size": [64, 64],
        "batch_size": 4,
        "max_epochs": 2,
        "min_epochs": 0,
        **TINY_NET,
    }
    cfg.run("train", "train.json", **overrides)
    return {"root": tmp, "datalist": datalist, "overrides": overrides}


def test_train_writes_checkpoint_and_logs(bundle):
    root = bundle["root"] / "bundle"
    ckpt = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    # one object in save_dict: ignite stores its state dict unnested (what CheckpointLoader and MONAI Label read)
    assert any(k.startswith("decoder.0.modab") for k in ckpt)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(root / "eval"))


def test_evaluate_writes_metrics(bundle):
    cfg.run("eval", "train.json", "evaluate.json", **bundle["overrides"])
    out = bundle["root"] / "bundle" / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    metrics = {"val_mean_dice", "val_mean_iou", "val_hd95", "val_count_accuracy", "val_laterality_accuracy"}
    assert metrics <= set(summary) and summary["num_images"] == 4
    assert 0.0 <= summary["val_mean_dice"] <= 1.0
    assert (out / "val_laterality_accuracy_raw.csv").is_file()  # per-image text-mask consistency
    with open(out / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 4 and rows[1][0].endswith(".png")
    # one run, four texts: the reworded reports read to the same findings, so they give the very same masks
    cond = summary["conditions"]
    assert set(cond) == {"right", "shuffled", "reworded", "negated"} and summary["not_available"] == []
    assert cond["reworded"]["val_mean_dice"] == cond["right"]["val_mean_dice"] == summary["val_mean_dice"]
    assert all(c["num_images"] == 4 for c in cond.values())
    assert 0.0 <= cond["negated"]["val_negated_area"] <= 1.0 or "val_negated_area" in cond["negated"]["absent"]
    assert "val_negated_area" in cond["right"]["absent"]  # no negated findings: absent, not 0.0
    assert summary["val_empty_predictions"] >= 0 and (out / "negated" / "val_negated_area_raw.csv").is_file()


@pytest.mark.parametrize("mode", ["datalist", "folder_one_text"])
def test_inference_writes_masks_in_input_geometry(bundle, tmp_path, mode):
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"))
    if mode == "folder_one_text":
        src = tmp_path / "in"
        src.mkdir()
        img = (np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)
        Image.fromarray(img).convert("RGB").save(src / "case one.png")  # grey image stored as RGB, odd size
        Image.fromarray(img).save(src / "case2.png")
        (src / "case2.txt").write_text("Unilateral pulmonary infection, one infected area, upper left lung.")
        overrides.update(input_dir=str(src), text="Bilateral pulmonary infection, two infected areas.")
    cfg.run("infer", "inference.json", **overrides)
    out = tmp_path / "out"
    masks = sorted(p for p in os.listdir(out) if p.endswith("_seg.png"))
    overlays = sorted(p for p in os.listdir(out) if p.endswith("_overlay.png"))
    expected = 4 if mode == "datalist" else 2
    assert len(masks) == expected and len(overlays) == expected
    for m in masks:
        arr = np.asarray(Image.open(out / m))
        assert set(np.unique(arr)) <= {0, 255}
        if mode == "folder_one_text":
            assert arr.shape == (50, 70)  # back in the input's own pixel grid
        else:
            assert arr.shape == (128, 128)
    assert np.asarray(Image.open(out / overlays[0])).shape[-1] == 3
    with open(out / "report_review.csv", encoding="utf-8") as f:
        review = {os.path.basename(r["image"]): r for r in csv.DictReader(f)}
    assert len(review) == expected
    if mode == "folder_one_text":  # the shared text names no lung zone: flagged; the .txt beside case2 names one
        assert review["case one.png"]["needs_review"] == "True" and "no lung zone" in review["case one.png"]["report_warnings"]
        assert review["case2.png"]["needs_review"] == "False" and review["case2.png"]["report_zones"] == "upper left"
    else:
        assert all(r["needs_review"] == "False" for r in review.values())


def test_inference_missing_text_is_an_error(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src / "notext.png")
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), input_dir=str(src))
    wf = cfg.workflow("infer", "inference.json", **overrides)
    with pytest.raises(RuntimeError) as err:  # MONAI's config parser wraps the cause
        wf.initialize()
        wf.run()
    causes, e = [], err.value
    while e is not None:
        causes.append(e)
        e = e.__cause__
    assert any(isinstance(c, ValueError) and "no text for 1 image" in str(c) and "notext.png" in str(c) for c in causes)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_verify_net_in_out(bundle):
    verify_net_in_out(
        net_id="network_def", meta_file=META, config_file=cfg("inference.json"), n=1, any=32, **TINY_NET
    )


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_with_text_inputs_matches_eager(bundle, tmp_path, fmt):
    overrides = {"bundle_root": str(bundle["root"] / "bundle"), **TINY_NET}
    path = export_network(cfg("inference.json"), str(tmp_path / f"model.{fmt}"), fmt, **overrides)
    net, parser = load_bundle_network(cfg("inference.json"), **overrides)
    from monai_vlseg.export import example_inputs

    inputs = example_inputs(parser, "Unilateral pulmonary infection, one infected area, lower right lung.")
    inputs["image"] = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        ref = net(*inputs.values()).numpy()
    if fmt == "torchscript":
        out = torch.jit.load(path)(*inputs.values()).detach().numpy()
    else:
        import onnxruntime

        sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        out = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"), max_epochs=1)
    run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))


def test_bundle_files_and_metadata_schema_fields():
    """The model-zoo layout and the metadata fields that meta_schema_20240725 requires (the schema itself is a
    release asset that cannot be downloaded here)."""
    meta = check_bundle_layout(os.path.dirname(CONFIGS))
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"])[0] == "image" and list(fmt["outputs"]) == ["pred"]
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "lesion"}


def test_inference_datalist_finds_extensionless_dicom(tmp_path):
    """PACS exports often name files IM0001 with no extension: found by their content, DICOMDIR and PNGs kept apart."""
    import shutil

    from monai_vlseg.bundle import inference_datalist
    from test_dicom_io import RG1

    shutil.copy(RG1, tmp_path / "IM0001")
    (tmp_path / "IM0001.txt").write_text("Unilateral pulmonary infection, one infected area, upper left lung.")
    (tmp_path / "notes").write_text("not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "series").mkdir()
    shutil.copy(RG1, tmp_path / "series" / "1")
    items = inference_datalist(input_dir=str(tmp_path), text="fallback")
    names = sorted(os.path.basename(it["image"]) for it in items)
    assert names == ["IM0001", "a.png", "series"]
    texts = {os.path.basename(it["image"]): it["text"] for it in items}
    assert texts["IM0001"].startswith("Unilateral") and texts["a.png"] == "fallback"


def test_command_line_switches_read_as_bools():
    from monai_vlseg.bundle import as_flag

    assert [as_flag(v) for v in (True, "true", "True", "1", 1, "yes")] == [True] * 6
    assert [as_flag(v) for v in (False, "false", "False", "0", 0, "no", "")] == [False] * 7
    with pytest.raises(ValueError, match="switch"):
        as_flag("maybe")
