"""The UA-VLS bundle as model-zoo tests it: train / evaluate / inference workflows with a tiny network on a tiny
demo data set, verify_net_in_out, TorchScript / ONNX export, and 2-process DDP training on CPU (gloo)."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import verify_net_in_out
from PIL import Image

from bundle_testing import BundleConfigs, causes, check_bundle_layout, press_ctrl_c, run_ddp_training

from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset
from monai_vlseg.export import export_network, load_bundle_network
from monai_vlseg.transforms.uncertainty import normalised_entropy, uncertainty_score

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
    # the run's own folder: its best model (published above), training logs, the whole state of its last epochs and
    # the configuration it was trained with; models/model.json names the run
    (run,) = os.listdir(root / "runs")
    run_dir = root / "runs" / run
    assert (run_dir / "model.pt").read_bytes() == (root / "models" / "model.pt").read_bytes()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    record = json.loads((root / "models" / "model.json").read_text())
    assert record["run_dir"] == str(run_dir) and record["checkpoint"] == "model.pt"
    config = record["model_config"]
    assert config["image_size"] == [64, 64] and config["text_len"] == 34 and config["in_channels"] == 1
    assert config["network_def"]["class"] == "monai_vlseg.nets.ua_vls.UAVLS"
    assert json.loads((run_dir / "config.json").read_text())["model_config"] == config
    assert sorted(f for f in os.listdir(run_dir) if f.startswith("checkpoint_")) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"
    ]  # fmt: skip
    state = torch.load(run_dir / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert set(state) == {"model", "optimizer", "lr_scheduler", "early_stop", "best_model", "trainer", "random"}
    assert state["trainer"]["iteration"] == 2 * 2 and state["lr_scheduler"]["last_epoch"] == 2
    assert state["random"]["transforms"]  # the augmentations' own random states


def test_evaluate_writes_metrics(bundle):
    cfg.run("eval", "train.json", "evaluate.json", **bundle["overrides"])
    out = bundle["root"] / "bundle" / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    metrics = {"val_mean_dice", "val_mean_iou", "val_hd95", "val_count_accuracy", "val_laterality_accuracy"}
    assert metrics <= set(summary) and summary["num_images"] == 4
    assert 0.0 <= summary["val_mean_dice"] <= 1.0
    assert 0.0 < summary["val_calibration_error"] < 1.0  # the probabilities' ECE, beside the masks' Dice
    for name in ("val_uncertainty_auroc", "val_uncertainty_spearman"):  # NaN (absent) when all 4 are poor or good
        assert name in summary.get("absent", []) or -1.0 <= summary[name] <= 1.0, name
    assert (out / "val_laterality_accuracy_raw.csv").is_file()  # per-image text-mask consistency
    with open(out / "val_uncertainty_raw.csv") as f:  # per-image scores, beside the per-image Dice
        scores = [float(r[1]) for r in list(csv.reader(f))[1:]]
    assert len(scores) == 4 and all(0.0 <= v <= 1.0 for v in scores)
    assert summary["val_uncertainty"] == pytest.approx(sum(scores) / 4, abs=1e-4)
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
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), review_uncertainty=0.0)  # flag all scored
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
    overlays = sorted(p for p in os.listdir(out) if p.endswith("_overlay.png") and "_uncertainty_" not in p)
    expected = 4 if mode == "datalist" else 2
    assert len(masks) == expected and len(overlays) == expected
    with open(out / "manifest.csv", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f))
    for row in manifest:  # probability and uncertainty in the input's grid; the map is the probabilities' entropy
        prob, unc, mask = (np.asarray(Image.open(row[c])) for c in ("probability", "uncertainty_map", "mask"))
        assert prob.dtype == unc.dtype == np.uint16 and prob.shape == unc.shape == mask.shape
        p = torch.from_numpy(prob.astype(np.float32) / 65535)[None]
        h = torch.from_numpy(unc.astype(np.float32) / 65535)[None]
        # mapped on the network's grid, resampled with the probabilities: the entropy is concave, so the resampled
        # map lies below the entropy of the resampled probabilities (up to the 16-bit steps), and close to it
        gap = normalised_entropy(p) - h
        assert gap.min() > -1e-3 and gap.mean() < 0.05
        score = float(row["uncertainty"])  # scored on the network's grid, as evaluate.json scores
        assert 0.0 < score <= 1.0 and score == pytest.approx(uncertainty_score(h, torch.from_numpy(mask > 0)[None], prob=p), abs=0.2)
        assert row["needs_review"] == "True"  # review_uncertainty 0: every scored output
        assert np.asarray(Image.open(row["uncertainty_overlay"])).shape == mask.shape + (3,)
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
        assert review["case2.png"]["report_zones"] == "upper left"
        assert "no lung zone" not in review["case2.png"]["report_warnings"]
    else:
        assert all("no lung zone" not in r["report_warnings"] for r in review.values())
    for r in review.values():  # the report's reasons and the uncertainty's, in one column
        assert (r["needs_review"] == "True") == bool(r["report_warnings"])


def test_inference_missing_text_is_an_error(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(src / "notext.png")
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), input_dir=str(src))
    wf = cfg.workflow("infer", "inference.json", **overrides)
    with pytest.raises(RuntimeError) as err:  # MONAI's config parser wraps the cause
        wf.initialize()
        wf.run()
    assert any(
        isinstance(c, ValueError) and "no text for 1 image" in str(c) and "notext.png" in str(c)
        for c in causes(err.value)
    )
    assert not (tmp_path / "out").exists()  # nothing half-written


def _train(overrides, stop_at_iteration=None, epochs_seen=None):
    """Run train.json; optionally stop it with SIGINT after iteration ``stop_at_iteration``, and record the epochs the
    trainer started in ``epochs_seen``."""
    wf = cfg.workflow("train", "train.json", **overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    if epochs_seen is not None:
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_seen.append(e.state.epoch))
    if stop_at_iteration is not None:
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=stop_at_iteration), press_ctrl_c
        )
        with pytest.raises(KeyboardInterrupt):
            wf.run()
        return wf
    wf.run()
    wf.finalize()
    return wf


def test_resume_after_sigint_gives_the_weights_of_an_uninterrupted_run(bundle, tmp_path):
    """3 epochs straight vs. stopped by SIGINT in epoch 2 and resumed: the same weights, optimizer and scheduler
    state and best model, bit for bit; the resumed run trains epochs 2 and 3 only."""
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path), max_epochs=3, torch_threads=1)
    # one thread count for both runs: torch's own reductions (matmul, conv) differ in the last bits between counts,
    # and "auto" picks the cores free at each start
    _train(dict(overrides, run_name="straight"))
    _train(dict(overrides, run_name="stopped"), stop_at_iteration=2 + 1)  # 8 images in batches of 4: 2 per epoch
    stopped = tmp_path / "runs" / "stopped"
    assert sorted(f for f in os.listdir(stopped) if f.startswith("checkpoint_")) == ["checkpoint_epoch=1.pt"]
    epochs = []
    with pytest.warns(UserWarning, match="was kept"):  # models/model.pt is the straight run's
        _train(dict(overrides, run_name="stopped", resume=True), epochs_seen=epochs)
    assert epochs == [2, 3]
    a = torch.load(tmp_path / "runs" / "straight" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    b = torch.load(stopped / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for name in ("optimizer", "lr_scheduler", "early_stop", "best_model", "trainer"):
        assert str(a[name]).replace("straight", "stopped") == str(b[name]), name
    assert (stopped / "model.pt").read_bytes() == (tmp_path / "runs" / "straight" / "model.pt").read_bytes()
    # resuming with another configuration, or starting a new run in a run's folder, is refused before training
    wf = cfg.workflow("train", "train.json", **dict(overrides, run_name="stopped", resume=True, image_size=[96, 96]))
    with pytest.raises(RuntimeError) as err:
        wf.initialize()
    assert any("image_size [64, 64] there, [96, 96] here" in str(c) for c in causes(err.value))
    wf = cfg.workflow("train", "train.json", **dict(overrides, run_name="stopped"))
    with pytest.raises(RuntimeError) as err:
        wf.initialize()
    assert any(isinstance(c, FileExistsError) and "--resume true" in str(c) for c in causes(err.value))


def test_training_keeps_a_model_pt_it_did_not_write(bundle, tmp_path):
    """A model.pt that no run wrote (or another run wrote) stays; --overwrite true replaces it."""
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path), max_epochs=1)
    good = save_tiny_checkpoint(tmp_path / "models" / "model.pt", seed=7)
    before = good.read_bytes()
    with pytest.warns(UserWarning, match="was kept") as warned:
        _train(dict(overrides, run_name="first"))
    assert good.read_bytes() == before and not (tmp_path / "models" / "model.json").exists()
    assert any("--ckpt_dir" in str(w.message) and "first" in str(w.message) for w in warned)
    assert (tmp_path / "runs" / "first" / "model.pt").is_file()
    _train(dict(overrides, run_name="second", overwrite=True))
    assert good.read_bytes() == (tmp_path / "runs" / "second" / "model.pt").read_bytes() != before
    assert json.loads((tmp_path / "models" / "model.json").read_text())["run"] == "second"


@pytest.mark.parametrize(
    "kind, override, phrase",
    [
        ("eval", {"image_size": [96, 96]}, "image_size [64, 64] there, [96, 96] here: add --image_size '[64, 64]'"),
        ("infer", {"image_size": [96, 96]}, "image_size [64, 64] there, [96, 96] here: add --image_size '[64, 64]'"),
        ("infer", {"text_len": 16}, "text_len 34 there, 16 here: add --text_len '34'"),
        (
            "eval",
            {"network_def#vision_config": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 2, 1]}},
            "network_def monai_vlseg.nets.ua_vls.UAVLS",
        ),
    ],
)
def test_evaluate_and_inference_refuse_another_configuration(bundle, tmp_path, kind, override, phrase):
    """The configuration recorded beside models/model.pt is compared before anything runs."""
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), **override)
    names = ("train.json", "evaluate.json") if kind == "eval" else ("inference.json",)
    wf = cfg.workflow(kind, *names, **overrides)
    with pytest.raises(RuntimeError) as err:
        wf.initialize()
    (cause,) = [c for c in causes(err.value) if isinstance(c, ValueError)]
    assert phrase in str(cause) and "models/model.json" in str(cause) and "\n" not in str(cause)
    assert not (tmp_path / "out").exists()


def test_inference_warns_on_another_configuration_when_told_and_on_a_checkpoint_without_record(bundle, tmp_path):
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), config_mismatch="warn", image_size=[96, 96])
    with pytest.warns(UserWarning, match=r"image_size \[64, 64\] there, \[96, 96\] here"):
        cfg.run("infer", "inference.json", **overrides)
    assert len([p for p in os.listdir(tmp_path / "out") if p.endswith("_seg.png")]) == 4
    ckpt = save_tiny_checkpoint(tmp_path / "elsewhere" / "model.pt")
    wf = cfg.workflow("infer", "inference.json", **dict(bundle["overrides"], ckpt_path=str(ckpt)))
    with pytest.warns(UserWarning, match="has no record of the configuration it was trained with"):
        wf.initialize()


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
