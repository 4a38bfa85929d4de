"""The LCPDN bundle as model-zoo tests it, with a tiny network on a tiny demo set: stage 1 (prompted DDPM) writes
diffusion.pt, stage 2 loads it and trains, evaluate (right and shuffled text) writes metrics, inference writes masks in
the input geometry, verify_net_in_out, the low-data override, 2-process DDP on CPU (gloo), metadata fields."""

import json
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

cfg = BundleConfigs("lcpdn")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#unet_config": {"channels": [8, 16, 16], "attention_levels": [False, False, True], "num_res_blocks": 1,
                                "num_head_channels": 8, "norm_num_groups": 8, "resblock_updown": False},
    "network_def#vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
    "network_def#text_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64},
    "network_def#prompt_dim": 16,
    "network_def#blocks": [1, 3, 4],
    "network_def#fusion_channels": 8,
    "network_def#classifier_channels": [8, 4],
}  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """Tiny demo set; stage 1 for 1 epoch, then stage 2 for 2 epochs."""
    tmp = tmp_path_factory.mktemp("lcpdn")
    datalist = generate_demo_dataset(str(tmp / "data"), n_train=6, n_val=3, n_test=3, size=96, seed=1)
    overrides = {"bundle_root": str(tmp / "bundle"), "datalist": datalist, "image_size": [32, 32], "batch_size": 2,
                 "max_epochs": 2, "text_len": 12, **TINY_NET}  # fmt: skip
    cfg.run("train", "train.json", "pretrain_diffusion.json", pretrain_epochs=1, pretrain_batch_size=3, **overrides)
    stage1 = torch.load(tmp / "bundle" / "models" / "diffusion.pt", map_location="cpu", weights_only=True)
    with pytest.warns(UserWarning, match="not found: the frozen UNet is random"):  # without stage 1
        cfg.workflow("train", "train.json", **dict(overrides, bundle_root=str(tmp / "nothing"))).initialize()
    wf = cfg.run("train", "train.json", **overrides)
    return {"root": tmp, "datalist": datalist, "overrides": overrides, "stage1": stage1, "train_wf": wf}


def test_stage1_checkpoint_is_loaded_by_stage2_and_unet_stays_frozen(bundle):
    stage1 = bundle["stage1"]
    assert any(k.startswith("unet.") for k in stage1) and any(k.startswith("cprfl.") for k in stage1)
    ckpt = torch.load(bundle["root"] / "bundle" / "models" / "model.pt", map_location="cpu", weights_only=True)
    for k, v in stage1.items():
        if k.startswith("unet."):  # stage 2 loaded the stage-1 UNet and did not change it
            torch.testing.assert_close(ckpt["diffusion." + k], v)
    # the UNet was trained in stage 1: its zero-initialised output convs moved
    assert stage1["unet.out.2.conv.weight"].abs().sum() > 0
    assert any(k.startswith("ltfr.0.") for k in ckpt) and any(k.startswith("classifier.") for k in ckpt)
    stage1 = check_run_folder(bundle["root"] / "bundle", "diffusion.pt", image_size=[32, 32], text_len=12)
    assert check_run_folder(bundle["root"] / "bundle", "model.pt", image_size=[32, 32]) != stage1


def test_stage1_keeps_a_diffusion_checkpoint_it_did_not_write(bundle, tmp_path):
    """models/diffusion.pt, which stage 2 loads, is protected like models/model.pt."""
    overrides = {k: v for k, v in bundle["overrides"].items() if k not in ("bundle_root", "pretrain_epochs")}
    run_dir = check_checkpoint_kept(
        cfg, tmp_path, "diffusion.pt", "ddpm", "train.json", "pretrain_diffusion.json", pretrain_epochs=1,
        pretrain_batch_size=3, **overrides,
    )  # fmt: skip
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))


def test_evaluate_right_and_shuffled_text(bundle):
    for shuffle in (False, True):
        cfg.run("eval", "train.json", "evaluate.json", shuffle_text=shuffle, **bundle["overrides"])
        out = bundle["root"] / "bundle" / "eval" / ("test_shuffled_text" if shuffle else "test")
        summary = json.loads((out / "summary.json").read_text())
        assert {"val_mean_dice", "val_mean_iou", "val_hd95", "val_count_accuracy", "val_laterality_accuracy"} <= set(
            summary
        )
        assert summary["num_images"] == 3 and summary["shuffle_text"] is shuffle
        assert (out / "val_mean_dice_raw.csv").is_file()


def test_inference_writes_masks_in_input_geometry(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img = (np.random.default_rng(0).random((50, 70)) * 255).astype(np.uint8)
    Image.fromarray(img).save(src / "case.png")
    cfg.run("infer", "inference.json", **dict(bundle["overrides"], output_dir=str(tmp_path / "out"),
                 input_dir=str(src), text="Unilateral pulmonary infection, one infected area, upper left lung."))  # fmt: skip
    mask = np.asarray(Image.open(tmp_path / "out" / "case_seg.png"))
    assert mask.shape == (50, 70) and set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "out" / "case_overlay.png").is_file()


def test_verify_net_in_out():
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=cfg("inference.json"), n=1, any=32, **TINY_NET)


def test_low_data_config_takes_first_n_training_images(bundle):
    parser = ConfigParser()
    parser.read_config(cfg("train.json", "low_data.json"))
    parser.update({"datalist": bundle["datalist"], "num_train_images": 4})
    data = parser.get_parsed_content("train#dataset#data")
    assert len(data) == 4


def test_paper_configuration_in_train_json():
    parser = ConfigParser()
    parser.read_config(cfg("train.json"))
    net = parser.get("network_def")
    assert net["timesteps"] == [50, 150, 250] and net["blocks"] == [4, 6, 8, 12] and net["unet_config"] is None
    assert parser.get("batch_size") == 1 and parser.get("learning_rate") == 1e-4 and parser.get("max_epochs") == 50
    assert parser.get("image_size") == [256, 256]


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"), max_epochs=1)
    run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))


def test_bundle_files_and_metadata_schema_fields():
    meta = check_bundle_layout(os.path.dirname(CONFIGS), ("configs/pretrain_diffusion.json", "configs/low_data.json"))
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image", "input_ids", "attention_mask"] and list(fmt["outputs"]) == ["pred"]
    parser = ConfigParser()
    parser.read_config(cfg("inference.json"))
    assert fmt["inputs"]["input_ids"]["spatial_shape"] == [parser.get("text_len")]
    assert fmt["inputs"]["image"]["spatial_shape"] == parser.get("image_size")
