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
from monai_vlseg.errors import find_one_line_error

cfg = BundleConfigs("lcpdn")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#unet_config": {"channels": [8, 16, 16], "attention_levels": [False, False, True], "num_res_blocks": 1,
                                "num_head_channels": 8, "norm_num_groups": 8, "resblock_updown": False},
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
                 "max_epochs": 2, **TINY_NET}  # fmt: skip
    cfg.run("train", "train.json", "pretrain_diffusion.json", pretrain_epochs=1, pretrain_batch_size=3, **overrides)
    stage1 = torch.load(tmp / "bundle" / "models" / "diffusion.pt", map_location="cpu", weights_only=True)
    # without stage 1: a one-line error saying to run it (the frozen UNet would be random), or, asked for, a warning
    nothing = dict(overrides, bundle_root=str(tmp / "nothing"))
    with pytest.raises(Exception) as err:  # noqa: PT011 - MONAI's parser wraps it; the one-line error is inside
        cfg.workflow("train", "train.json", **nothing).initialize()
    brief = find_one_line_error(err.value)
    assert isinstance(brief, FileNotFoundError) and "frozen UNet would be random" in str(brief)
    assert "configs/pretrain_diffusion.json" in str(brief) and "--require_stage1 false" in str(brief)
    with pytest.warns(UserWarning, match="not found: the frozen UNet is random"):
        cfg.workflow("train", "train.json", **dict(nothing, require_stage1=False)).initialize()
    # every other run reads this stage-1 output (a DDP run in another bundle root too)
    overrides["diffusion_ckpt"] = str(tmp / "bundle" / "models" / "diffusion.pt")
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
    stage1 = check_run_folder(bundle["root"] / "bundle", "diffusion.pt", image_size=[32, 32], text_len=34)
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
    # CPRFL reads the stage-1 UNet's own features; stage 2 refuses to start without the stage-1 checkpoint
    assert parser.get("vision_model") == "unet" and parser.get("require_stage1") is True
    for name in ("train.json", "multi_gpu_train.json"):
        assert LOAD_STAGE1 in ConfigParser.load_config_file(cfg(name)[0])["initialize"], name


LOAD_STAGE1 = (
    "$@network_def.load_diffusion_checkpoint(@diffusion_ckpt, required=monai_vlseg.bundle.as_flag(@require_stage1))"
)


def test_text_len_fits_every_chest_report():
    """text_len 34: the longest sentence the chest parser hands on (all six zones) fits the default tokenizer, so no
    report loses a zone; TextDiff's 10 cut even the shortest one (one zone) before its location."""
    from monai_vlseg.transforms.report import CHEST_ZONES, PrepareReportd, chest_zone_sentence

    parser = ConfigParser()
    parser.read_config(cfg("train.json"))
    text_len = parser.get("text_len")
    assert text_len == 34 and ConfigParser.load_config_file(cfg("inference.json")[0])["text_len"] == text_len
    count = PrepareReportd(tokenizer=parser.get("text_model")).token_count
    assert count(chest_zone_sentence(list(CHEST_ZONES))) == text_len
    assert count(chest_zone_sentence(["upper left"])) > 10


def _demo_network(*extra: str, seed: int, **overrides):
    parser = ConfigParser()
    parser.read_config(cfg("train.json", *extra, "demo.json"))
    parser.update(overrides)
    torch.manual_seed(seed)
    return parser.get_parsed_content("trained_module" if extra else "network_def")


def test_default_network_has_no_frozen_random_weights(tmp_path):
    """No frozen random network in the default: every frozen weight is either loaded from a pretrained file when the
    network is built (the text tower) or filled from the stage-1 checkpoint that stage 2 requires (the UNet, whose
    features are also CPRFL's image tokens); there is no CLIP tower of random weights."""
    nets = [_demo_network(seed=s) for s in (1, 2)]
    a, b = (dict(n.named_parameters()) for n in nets)
    frozen = {k for k, p in a.items() if not p.requires_grad}
    random_at_construction = {k for k in frozen if not torch.equal(a[k], b[k])}
    assert random_at_construction and all(k.startswith("diffusion.unet.") for k in random_at_construction)
    assert nets[0].diffusion.vision is None and not any(".vision." in k for k in a)
    # the frozen text tower holds the packaged model's weights
    from transformers import AutoModel

    from monai_vlseg.utils import load_pretrained

    packaged = load_pretrained(AutoModel, None).state_dict()
    tower = nets[0].diffusion.text_encoder.model.state_dict()
    assert all(torch.equal(v, packaged[k]) for k, v in tower.items())
    # a stage-1 output (what pretrain_diffusion.json saves: the state of network_def.diffusion) fills every one
    stage1 = _demo_network("pretrain_diffusion.json", seed=3)
    torch.save({"model": stage1.state_dict()}, tmp_path / "diffusion.pt")
    for n in nets:
        n.load_diffusion_checkpoint(str(tmp_path / "diffusion.pt"))
    a, b = (dict(n.named_parameters()) for n in nets)
    assert all(torch.equal(a[k], b[k]) for k in frozen)
    state = stage1.state_dict()
    assert all(torch.equal(a[k], state[k.removeprefix("diffusion.")]) for k in random_at_construction)


def test_paper_clip_image_encoder_is_one_override_away(tmp_path):
    """--vision_model PATH (or a HuggingFace id in the local cache) puts the paper's frozen CLIP image encoder back
    in CPRFL; here a tiny CLIP saved from a transformers config (nothing downloaded)."""
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 16}  # fmt: skip
    vision = {"hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    clip.save_pretrained(tmp_path / "clip")
    net = _demo_network(seed=0, vision_model=str(tmp_path / "clip"))
    tower = net.diffusion.vision
    assert tower is not None and net.diffusion.cprfl.w_k.in_features == 24
    saved = clip.vision_model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in tower.vision_model.state_dict().items())  # loaded, not random
    assert all(not p.requires_grad for p in tower.parameters())
    ids = torch.randint(1000, 2000, (1, 34))
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64), ids, torch.ones_like(ids)).shape == (1, 1, 64, 64)


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
