"""The C2Seg bundle as model-zoo tests it, both stages: CaCL pretraining writes the encoder checkpoint, stage-2
training loads it (encoder in its own optimizer group, text tower frozen), evaluate / inference workflows,
verify_net_in_out, 2-process DDP training on CPU (gloo), and the metadata fields."""

import csv
import json
import logging
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out
from PIL import Image

from bundle_testing import (
    BundleConfigs, check_bundle_layout, check_checkpoint_kept, check_run_folder, run_ddp_training,
)  # fmt: skip

from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset
from monai_vlseg.errors import InputError, find_one_line_error

cfg = BundleConfigs("c2seg")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#features": [4, 8, 8, 16, 16],
    "network_def#kan_layers": 1,
    "network_def#text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny demo data set, a 2-epoch CaCL pretraining and a 2-epoch stage-2 training on it."""
    tmp = tmp_path_factory.mktemp("c2seg")
    datalist = generate_demo_dataset(str(tmp / "data"), n_train=8, n_val=4, n_test=4, size=128, seed=1)
    overrides = {
        "bundle_root": str(tmp / "bundle"),
        "datalist": datalist,
        "image_size": [64, 64],
        "batch_size": 4,
        "max_epochs": 2,
        "min_epochs": 0,
        "pretrain_batch_size": 4,
        "pretrain_epochs": 2,
        **TINY_NET,
    }
    cfg.run("train", "pretrain.json", check=False, **overrides)
    wf = cfg.workflow("train", "train.json", **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    optimizer = wf.parser.get_parsed_content("optimizer")
    wf.run()
    wf.finalize()
    return {"root": tmp, "datalist": datalist, "overrides": overrides, "optimizer": optimizer}


def test_pretraining_writes_the_encoder_and_training_loads_it(bundle):
    models = bundle["root"] / "bundle" / "models"
    enc = torch.load(models / "encoder.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("stages.4.1.kans") for k in enc)  # the KAN stage of the hybrid encoder
    assert not any(k.startswith(("text_encoder", "decoder", "image_proj")) for k in enc)
    parser = ConfigParser()
    parser.read_config(cfg("train.json"))
    parser.update(bundle["overrides"])
    net = parser.get_parsed_content("network")  # load_encoder_checkpoint(network_def, pretrained_encoder)
    for k, v in net.encoder.state_dict().items():
        torch.testing.assert_close(v, enc[k], msg=k)
    model = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("fusions.4.attn.l_key") for k in model)  # BCAM with KAN projections
    # each stage ran in its own run folder and put its checkpoint in models/, with the record of its configuration
    stage1 = check_run_folder(bundle["root"] / "bundle", "encoder.pt", image_size=[64, 64], text_len=34)
    assert check_run_folder(bundle["root"] / "bundle", "model.pt", image_size=[64, 64]) != stage1


def test_pretraining_keeps_an_encoder_it_did_not_write(bundle, tmp_path):
    """models/encoder.pt, which stage 2 loads, is protected like models/model.pt."""
    overrides = {k: v for k, v in bundle["overrides"].items() if k not in ("bundle_root", "pretrain_epochs")}
    check_checkpoint_kept(cfg, tmp_path, "encoder.pt", "p", "pretrain.json", check=False, pretrain_epochs=1, **overrides)


def test_optimizer_groups_small_encoder_lr_and_frozen_text(bundle):
    groups = bundle["optimizer"].param_groups
    assert [g["initial_lr"] for g in groups] == [3e-05, 3e-04]  # encoder first, at the small learning rate
    parser = ConfigParser()
    parser.read_config(cfg("train.json"))
    parser.update(dict(bundle["overrides"], require_pretrained_encoder=False, pretrained_encoder=None))
    net = parser.get_parsed_content("network_def")
    opt = parser.get_parsed_content("optimizer")
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(opt.param_groups[0]["params"]) == ids(net.encoder.parameters())
    assert not ids(net.text_encoder.parameters()) & ids(p for g in opt.param_groups for p in g["params"])
    assert ids(opt.param_groups[1]["params"]) == ids(p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("encoder."))


def test_training_without_stage1_fails_and_names_the_stage1_command(bundle, tmp_path):
    """Stage 2 without models/encoder.pt stops before training (no random encoder at the small encoder learning rate)
    with one line that names the missing file, the stage-1 command and the switch to go on without it."""
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "b"), max_epochs=1)
    wf = cfg.workflow("train", "train.json", **overrides)
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    brief = find_one_line_error(info.value)
    assert isinstance(brief, InputError), info.value
    message = str(brief)
    assert message.startswith(str(tmp_path / "b" / "models" / "encoder.pt") + ": stage-1 encoder checkpoint not found")
    assert "python -m monai.bundle run pretraining --config_file bundles/c2seg/configs/pretrain.json" in message
    assert "--require_pretrained_encoder false" in message and "\n" not in message
    assert not (tmp_path / "b" / "models").exists()  # nothing trained


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_training_without_stage1_runs_when_switched_off_and_says_so(bundle, tmp_path):
    """`--require_pretrained_encoder false` (a string on the command line) trains stage 2 from a random encoder and
    says so loudly: a WARNING log banner and a UserWarning."""
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "b"), max_epochs=1, require_pretrained_encoder="false")
    seen = _Records()  # on the package's logger: the bundle's logging.conf replaces the root logger's handlers
    logging.getLogger("monai_vlseg").addHandler(seen)
    try:
        with pytest.warns(UserWarning, match="WITHOUT STAGE 1"):
            cfg.run("train", "train.json", **overrides)
    finally:
        logging.getLogger("monai_vlseg").removeHandler(seen)
    banner = [r.getMessage() for r in seen.records if "RANDOMLY INITIALISED image encoder" in r.getMessage()]
    assert len(banner) == 1 and banner[0].startswith("=" * 20)
    assert (tmp_path / "b" / "models" / "model.pt").is_file()


@pytest.mark.parametrize("shuffle", [False, True])
def test_evaluate_writes_metrics_and_consistency(bundle, shuffle):
    cfg.run("eval", "train.json", "evaluate.json", **dict(bundle["overrides"], shuffle_text=shuffle))
    out = bundle["root"] / "bundle" / "eval" / ("test_shuffled_text" if shuffle else "test")
    summary = json.loads((out / "summary.json").read_text())
    metrics = {"val_mean_dice", "val_mean_iou", "val_hd95", "val_count_accuracy", "val_laterality_accuracy"}
    assert metrics <= set(summary) and summary["num_images"] == 4 and summary["shuffle_text"] == shuffle
    assert summary["laterality"] == "patient"  # the chest demo datalist's meta.laterality
    assert 0.0 <= summary["val_mean_dice"] <= 1.0 and 0.0 <= summary["val_count_accuracy"] <= 1.0
    assert (out / "val_count_accuracy_raw.csv").is_file()
    with open(out / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 4 and rows[1][0].endswith(".png")


def test_inference_writes_masks_in_input_geometry(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img = (np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)
    Image.fromarray(img).save(src / "case1.png")
    (src / "case1.txt").write_text("Unilateral pulmonary infection, one infected area, upper left lung.")
    overrides = dict(bundle["overrides"], output_dir=str(tmp_path / "out"), input_dir=str(src))
    cfg.run("infer", "inference.json", **overrides)
    out = tmp_path / "out"
    mask = np.asarray(Image.open(out / "case1_seg.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / "case1_overlay.png")).shape[-1] == 3


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=cfg("inference.json"), n=1, any=16, **TINY_NET)


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"), max_epochs=1)
    overrides["pretrained_encoder"] = str(bundle["root"] / "bundle" / "models" / "encoder.pt")
    overrides["require_pretrained_encoder"] = True
    run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))


def test_pretrain_and_train_build_the_same_encoder():
    shapes = []
    for name in ("pretrain.json", "train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(cfg(name))
        shapes.append(parser.get("network_def"))
    assert shapes[0] == shapes[1] == shapes[2]  # paper configuration everywhere; one demo.json overrides both stages
    demo = json.load(open(os.path.join(CONFIGS, "demo.json")))
    assert {"pretrain_epochs", "max_epochs", "network_def#features"} <= set(demo)


def test_bundle_files_and_metadata_schema_fields():
    meta = check_bundle_layout(os.path.dirname(CONFIGS), ("configs/pretrain.json",))
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image", "input_ids", "attention_mask"] and list(fmt["outputs"]) == ["pred"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_with_text_inputs_matches_eager(bundle, tmp_path, fmt):
    """monai_vlseg.export traces with image + token inputs and verifies the exported model against eager."""
    from monai_vlseg.export import export_network

    overrides = {"bundle_root": str(bundle["root"] / "bundle"), **TINY_NET}
    path = export_network(cfg("inference.json"), str(tmp_path / f"model.{fmt}"), fmt, **overrides)
    assert os.path.getsize(path) > 0
