"""The TIFCMamba bundle as model-zoo tests it, plus what makes it text-SUPERVISED: training reads image + text only
(broken label paths train fine; no label reaches the network or the loss), evaluation reads the masks."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import verify_net_in_out
from PIL import Image
from bundle_testing import REPO_ROOT, BundleConfigs, check_bundle_layout, check_run_folder, press_ctrl_c, run_ddp_training
from test_tifcmamba import TINY_CLIP

from monai_vlseg.bundle import check_text_supervision
from monai_vlseg.datasets.synthetic.polyp import generate_polyp_demo
from monai_vlseg.errors import InputError, find_one_line_error

cfg = BundleConfigs("tifcmamba")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#dims": [8, 16],
    "network_def#depths": [1, 1],
    "network_def#feature_dim": 8,
    "network_def#text_hidden": 8,
    "network_def#d_state": 4,
    "clip_config": TINY_CLIP,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny polyp demo set whose TRAINING label paths are broken, and a bundle trained on it (CLIP stage 1 epoch,
    segmentation stage 2 epochs) while checking every batch and loss call."""
    tmp = tmp_path_factory.mktemp("tifc")
    datalist = generate_polyp_demo(
        str(tmp / "data"), n_train=8, n_val=2, n_test=4, size=48, seed=1
    )
    with open(datalist) as f:
        dl = json.load(f)
    for item in dl["training"]:
        item["label"] = "does/not/exist.png"
    with open(datalist, "w") as f:
        json.dump(dl, f)
    # the demo's descriptions are written from the scene that draws the mask (text_source "synthetic"): train.json
    # runs on them without the switch, with a warning that its results are not text-supervised
    overrides = {
        "bundle_root": str(tmp / "bundle"), "datalist": datalist, "image_size": [32, 32], "batch_size": 4,
        "max_epochs": 2, "clip_pretrain_epochs": 1, **TINY_NET,
    }  # fmt: skip
    wf = cfg.workflow("train", "train.json", **overrides)
    with pytest.warns(UserWarning, match="8 of its 8 texts are synthetic demo texts.*not text-supervised"):
        wf.initialize()
    assert wf.check_properties() == []
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = {"batches": 0, "keys": set()}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check(engine):
        seen["batches"] += 1
        batch = (
            engine.state.batch
        )  # decollated after the iteration: a list of per-item dicts
        for item in batch if isinstance(batch, list) else [batch]:
            seen["keys"] |= set(item)
        outputs = engine.state.output
        for out in outputs if isinstance(outputs, list) else [outputs]:
            assert out.get("label") is None  # the loss was called with target None

    wf.run()
    wf.finalize()
    return {"root": tmp, "datalist": datalist, "overrides": overrides, "seen": seen}


def test_training_reads_no_labels(bundle):
    seen = bundle["seen"]
    assert (
        seen["batches"] == 4
    )  # 2 epochs x 2 batches, despite every training label path being broken
    assert (
        "label" not in seen["keys"]
        and {"image", "input_ids", "keyword_ids"} <= seen["keys"]
    )
    root = bundle["root"] / "bundle"
    ckpt = torch.load(
        root / "models" / "model.pt", map_location="cpu", weights_only=True
    )
    assert any(k.startswith("image_segmenter.fuse.0") for k in ckpt) and any(
        k.startswith("clip.") for k in ckpt
    )
    clip = torch.load(
        root / "models" / "clip.pt", map_location="cpu", weights_only=True
    )
    torch.testing.assert_close(
        clip["model.logit_scale"], ckpt["clip.model.logit_scale"]
    )  # frozen after stage 1
    # both stages in one run folder, both checkpoints put in models/ at its end
    run_dir = check_run_folder(root, "model.pt", image_size=[32, 32], in_channels=3)
    assert check_run_folder(root, "clip.pt") == run_dir


def _marked_copy(bundle, source):
    """The fixture's datalist with every text marked ``source`` (``None``: unmarked, and no meta), written beside it."""
    with open(bundle["datalist"]) as f:
        dl = json.load(f)
    dl.pop("meta")  # its text_source would mark the items left unmarked
    for key in ("training", "validation", "test"):
        for item in dl[key]:
            item.pop("text_source")
            if source is not None:
                item["text_source"] = source
    path = os.path.join(os.path.dirname(bundle["datalist"]), f"datalist_{source}.json")
    with open(path, "w") as f:
        json.dump(dl, f)
    return path


@pytest.mark.parametrize("source", ["mask_derived", "unknown", None])
def test_training_refuses_mask_derived_texts_by_default(bundle, tmp_path, source):
    """Without the switch, text-supervised training stops before its run starts on texts that carry the mask
    (a preparer's template, MedVLSM's p6) or say nothing of where they came from, with one line naming the
    datalist, the count and the switch. (The project's own synthetic demo texts run, with a warning: the fixture.)"""
    datalist = _marked_copy(bundle, source)
    overrides = dict(bundle["overrides"], datalist=datalist, bundle_root=str(tmp_path), allow_mask_derived_text=False)
    wf = cfg.workflow("train", "train.json", **overrides)
    with pytest.raises(Exception) as info:
        wf.initialize()
    brief = find_one_line_error(info.value)
    assert isinstance(brief, InputError), info.value
    message = str(brief)
    assert message.startswith(f"{datalist}: section 'training': 8 of its 8 texts") and "\n" not in message
    label = source or "unmarked"
    assert f"({label} 8)" in message and "--allow_mask_derived_text true" in message
    assert ("derived from the ground-truth mask" in message) == (source == "mask_derived")
    assert not (tmp_path / "runs").exists()  # refused before the run folder is made


def test_training_takes_texts_written_without_the_mask_and_the_switch(bundle, tmp_path):
    """Captions, reports and class-name templates pass; with ``--allow_mask_derived_text true`` mask-derived texts
    pass too, with a warning; the fully
    supervised variant, which learns from the masks anyway, is not checked."""
    for source in ("caption", "report", "template"):
        overrides = dict(bundle["overrides"], datalist=_marked_copy(bundle, source), bundle_root=str(tmp_path / source),
                         allow_mask_derived_text=False)  # fmt: skip
        cfg.workflow("train", "train.json", **overrides).initialize()
    derived = _marked_copy(bundle, "mask_derived")
    overrides = dict(bundle["overrides"], datalist=derived, bundle_root=str(tmp_path / "allowed"),
                     allow_mask_derived_text="true")  # fmt: skip  (as the command line passes it)
    with pytest.warns(UserWarning, match="8 of its 8 texts are derived from the ground-truth mask .* not text-supervised"):
        cfg.workflow("train", "train.json", **overrides).initialize()
    overrides = dict(bundle["overrides"], datalist=derived, bundle_root=str(tmp_path / "sup"), allow_mask_derived_text=False)
    cfg.workflow("train", "train.json", "supervised.json", **overrides).initialize()
    assert bundle["seen"]["batches"] == 4  # the fixture trained on synthetic descriptions without the switch


def test_evaluation_refuses_mask_derived_texts_by_default(bundle):
    """The model reads the text at test time too: evaluate.json refuses a test section of mask-derived texts
    unless told otherwise (demo.json tells it)."""
    overrides = dict(bundle["overrides"], datalist=_marked_copy(bundle, "mask_derived"), allow_mask_derived_text=False)
    with pytest.raises(Exception) as info:
        cfg.workflow("eval", "train.json", "evaluate.json", **overrides).initialize()
    assert "section 'test': 4 of its 4 texts are derived" in str(find_one_line_error(info.value))


def test_check_text_supervision_counts_mixed_sections(tmp_path):
    path = tmp_path / "d.json"
    items = [{"image": f"{i}.png", "text": "a polyp", "text_source": s}
             for i, s in enumerate(["caption", "caption", "mask_derived", "template"])]  # fmt: skip
    path.write_text(json.dumps({"training": [*items, {"image": "x.png", "text": "t"}, {"image": "y.png"}]}))
    with pytest.raises(InputError) as info:
        check_text_supervision(str(path))
    assert str(info.value) == (
        f"{path}: section 'training': 1 of its 5 texts are derived from the ground-truth mask (mask_derived 1) and 1 of "
        "its 5 texts do not say where they came from (unmarked 1); text-supervised training would learn the mask "
        "through the text. Use texts written without the mask (text_source caption, report or template; a preparer's "
        "--texts-csv F --texts-source caption), or set --allow_mask_derived_text true (results are then not "
        "text-supervised)"
    )
    counts = {"caption": 2, "mask_derived": 1, "template": 1, "unmarked": 1}
    with pytest.warns(UserWarning, match="running on them anyway"):
        assert check_text_supervision(str(path), allow_mask_derived_text=True) == counts
    assert check_text_supervision(str(path), text_supervised=False) == counts
    path.write_text(json.dumps({"training": items[:2], "meta": {"text_source": "caption"}}))
    assert check_text_supervision(str(path)) == {"caption": 2}
    with pytest.raises(InputError, match="no 'validation' section"):
        check_text_supervision(str(path), "validation")


def _train(overrides, stop_at_iteration=None):
    """Run train.json (optionally stopped by SIGINT after segmentation iteration ``stop_at_iteration``); returns the
    epochs the CLIP and the segmentation trainers started."""
    wf = cfg.workflow("train", "train.json", **overrides)
    wf.initialize()
    epochs = {"clip": [], "train": []}
    for stage in epochs:
        trainer = wf.parser.get_parsed_content(f"{stage}#trainer")
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e, s=stage: epochs[s].append(e.state.epoch))
    if stop_at_iteration is None:
        wf.run()
        return epochs
    stop = Events.ITERATION_COMPLETED(once=stop_at_iteration)
    trainer.add_event_handler(stop, press_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    return epochs


def test_resume_reuses_the_clip_stage_and_ends_as_an_uninterrupted_run(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path), max_epochs=3, torch_threads=1)
    # one thread count for both runs: torch's own reductions (matmul, conv) differ in the last bits between counts,
    # and "auto" picks the cores free at each start
    assert _train(dict(overrides, run_name="straight")) == {"clip": [1], "train": [1, 2, 3]}
    _train(dict(overrides, run_name="stopped"), stop_at_iteration=2 + 1)
    with pytest.warns(UserWarning, match="was kept"):
        assert _train(dict(overrides, run_name="stopped", resume=True)) == {"clip": [], "train": [2, 3]}
    a, b = (
        torch.load(tmp_path / "runs" / run / "model.pt", map_location="cpu", weights_only=True)
        for run in ("straight", "stopped")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_keeps_clip_and_model_checkpoints_it_did_not_write(bundle, tmp_path):
    """models/clip.pt (which supervised.json loads) and models/model.pt are protected."""
    theirs = {}
    for name in ("clip.pt", "model.pt"):
        theirs[name] = tmp_path / "models" / name
        theirs[name].parent.mkdir(exist_ok=True)
        torch.save({"w": torch.ones(1)}, theirs[name])
    before = {k: v.read_bytes() for k, v in theirs.items()}
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path), run_name="r", max_epochs=1)
    with pytest.warns(UserWarning, match="clip.pt was kept"):
        cfg.run("train", "train.json", **overrides)
    assert {k: v.read_bytes() for k, v in theirs.items()} == before
    assert (tmp_path / "runs" / "r" / "clip.pt").is_file() and (tmp_path / "runs" / "r" / "model.pt").is_file()


def test_evaluate_reads_masks_and_writes_metrics(bundle):
    cfg.run("eval", "train.json", "evaluate.json", **bundle["overrides"])
    out = bundle["root"] / "bundle" / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    assert {
        "val_mean_dice",
        "val_mean_iou",
        "val_hd95",
        "val_count_accuracy",
        "val_laterality_accuracy",
    } <= set(summary)
    assert summary["num_images"] == 4 and 0.0 <= summary["val_mean_dice"] <= 1.0
    assert (out / "val_mean_dice_raw.csv").is_file()


def test_text_mask_script_reports_phi_t(bundle, tmp_path):
    """scripts/tifc_text_mask.py on the trained tiny bundle: Phi_T's M_T against the keyword selector's tokens."""
    spec = importlib.util.spec_from_file_location("tifc_text_mask", os.path.join(REPO_ROOT, "scripts", "tifc_text_mask.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps(bundle["overrides"]))
    ckpt = bundle["root"] / "bundle" / "models" / "model.pt"
    out = mod.main(["--config", *cfg("train.json"), str(overrides), "--ckpt", str(ckpt), "--json", str(tmp_path / "t.json")])
    assert out["descriptions"] == 4 and out["content_tokens"] > 4 * 5
    assert 0 < out["keyword_fraction"] < 1  # the keyword is a strict subset of each description
    assert 0.0 <= out["auc"] <= 1.0 and 0.0 <= out["f1"] <= 1.0
    assert json.loads((tmp_path / "t.json").read_text())["auc"] == out["auc"]
    with pytest.raises(SystemExit, match="no checkpoint"):
        mod.main(["--config", *cfg("train.json"), str(overrides), "--ckpt", str(tmp_path / "missing.pt")])


def test_evaluate_trivial_prior(bundle):
    """The whole-image prior scores Dice = 2|M| / (|M| + |image|) on each image."""
    prior = {"_target_": "monai_vlseg.nets.tifcmamba.TrivialPrior", "kind": "whole"}
    overrides = dict(bundle["overrides"], network_def=prior, output_dir=str(bundle["root"] / "prior"))
    # no checkpoint is loaded: the network_def that differs from the one models/model.pt records only warns
    overrides.update({"validate#handlers#0#_disabled_": True, "config_mismatch": "warn"})
    with pytest.warns(UserWarning, match="network_def monai_vlseg.nets.tifcmamba.TIFCMamba .* there"):
        cfg.run("eval", "train.json", "evaluate.json", **overrides)
    summary = json.loads((bundle["root"] / "prior" / "summary.json").read_text())
    with open(bundle["datalist"]) as f:
        dl = json.load(f)
    base = os.path.dirname(bundle["datalist"])
    dices = []
    for item in dl["test"]:
        m = np.asarray(Image.open(os.path.join(base, item["label"]))) > 0
        m = (
            np.asarray(
                Image.fromarray(m.astype(np.uint8)).resize((32, 32), Image.NEAREST)
            )
            > 0
        )
        dices.append(2 * m.sum() / (m.sum() + m.size))
    assert abs(summary["val_mean_dice"] - np.mean(dices)) < 0.02


def test_inference_writes_masks_in_input_geometry(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(
        (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    ).save(src / "frame.png")
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), input_dir=str(src),
                     text="A small red round polyp in the upper left.")  # fmt: skip
    cfg.run("infer", "inference.json", **overrides)
    arr = np.asarray(Image.open(tmp_path / "out" / "frame_seg.png"))
    assert arr.shape == (40, 56) and set(np.unique(arr)) <= {0, 255}
    assert (tmp_path / "out" / "frame_overlay.png").is_file()


def test_verify_net_in_out():
    verify_net_in_out(
        net_id="network_def",
        meta_file=META,
        config_file=cfg("inference.json"),
        n=1,
        any=32,
        **TINY_NET,
    )


def test_paper_configuration_builds():
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(cfg("train.json"))
    net = p.get_parsed_content("network_def")
    assert len(net.image_segmenter.encoder) == 4 and net.image_segmenter.encoder[0][
        0
    ].norm.normalized_shape == (96,)
    assert sum(p.numel() for p in net.segmenter_parameters()) > 4e7


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"), max_epochs=1)
    run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))


def test_bundle_files_and_metadata_schema_fields():
    meta = check_bundle_layout(os.path.dirname(CONFIGS), extra_files=["configs/supervised.json"])
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == [
        "image",
        "input_ids",
        "attention_mask",
        "keyword_ids",
        "keyword_mask",
    ]
    with open(cfg("train.json")[0]) as f:
        train = json.load(f)
    assert train["training"] == "%run" and "label" not in json.dumps(
        train["train"]
    )  # train.json never reads masks
