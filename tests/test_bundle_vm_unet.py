"""The VM-UNet bundle as model-zoo tests it: train / evaluate / inference workflows with a tiny network on the tiny
demo data set (grey, repeated to RGB) and on a 3-channel PNG/JPG fixture without text, verify_net_in_out,
TorchScript / ONNX export of the image-only network, and 2-process DDP training on CPU (gloo)."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out
from PIL import Image

from bundle_testing import BundleConfigs, causes, check_bundle_layout, check_run_folder, run_ddp_training

from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset
from monai_vlseg.export import export_network, load_bundle_network
from monai_vlseg.nets.vm_unet import VMUNet

cfg = BundleConfigs("vm_unet")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#dims": [8, 16, 32, 64],
    "network_def#depths": [1, 1, 1, 1],
    "network_def#depths_decoder": [1, 1, 1, 1],
    "network_def#d_state": 4,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny demo data set (grey chest-X-ray-like PNGs with report text) and a bundle root trained for 2 epochs."""
    tmp = tmp_path_factory.mktemp("vm_unet")
    datalist = generate_demo_dataset(str(tmp / "data"), n_train=8, n_val=4, n_test=4, size=96, seed=1)
    overrides = {
        "bundle_root": str(tmp / "bundle"),
        "datalist": datalist,
        "image_size": [32, 32],
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
    assert any(k.startswith("encoder.0.blocks.0.ss2d") for k in ckpt)  # unnested state dict, as CheckpointLoader reads
    assert ckpt["patch_embed.proj.weight"].shape[1] == 3  # grey demo images repeated to the configured 3 channels
    check_run_folder(root, image_size=[32, 32], in_channels=3)


def test_evaluate_writes_metrics_with_text_consistency(bundle):
    cfg.run("eval", "train.json", "evaluate.json", **bundle["overrides"])
    out = bundle["root"] / "bundle" / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    metrics = {"val_mean_dice", "val_mean_iou", "val_hd95", "val_count_accuracy", "val_laterality_accuracy"}
    assert metrics <= set(summary) and summary["num_images"] == 4
    assert 0.0 <= summary["val_mean_dice"] <= 1.0
    with open(out / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1 + 4 and rows[1][0].endswith(".png")


def test_inference_writes_masks_in_input_geometry(bundle, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((50, 70, 3)) * 255).astype(np.uint8)).save(src / "rgb case.png")
    Image.fromarray((rng.random((40, 60)) * 255).astype(np.uint8)).save(src / "grey.jpg")
    for mode, extra, expected in (("datalist", {}, 4), ("folder", {"input_dir": str(src)}, 2)):
        out = tmp_path / f"out_{mode}"
        cfg.run("infer", "inference.json", **dict(bundle["overrides"], output_dir=str(out), **extra))
        masks = sorted(p for p in os.listdir(out) if p.endswith("_seg.png"))
        overlays = sorted(p for p in os.listdir(out) if p.endswith("_overlay.png") and "_uncertainty_" not in p)
        assert len(masks) == expected and len(overlays) == expected, mode
        shapes = {m: np.asarray(Image.open(out / m)).shape for m in masks}
        for m in masks:
            assert set(np.unique(np.asarray(Image.open(out / m)))) <= {0, 255}
        if mode == "folder":
            assert shapes == {"grey_seg.png": (40, 60), "rgb case_seg.png": (50, 70)}  # the inputs' own pixel grids
        else:
            assert set(shapes.values()) == {(96, 96)}


def _rgb_dataset(root):
    """Six 3-channel 64x64 PNG 'dermoscopy' images (a coloured blob on skin tone) with 0/255 masks, no text."""
    rng = np.random.default_rng(3)
    os.makedirs(root / "img")
    os.makedirs(root / "mask")
    items = []
    yy, xx = np.mgrid[:64, :64]
    for i in range(6):
        cy, cx, r = rng.integers(20, 44), rng.integers(20, 44), rng.integers(8, 14)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r**2
        img = np.empty((64, 64, 3), np.float32)
        img[:] = (220, 170, 140)
        img[mask] = (110, 60, 40)
        img += rng.normal(0, 8, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / "img" / f"isic_{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask" / f"isic_{i}.png")
        items.append({"image": f"img/isic_{i}.png", "label": f"mask/isic_{i}.png"})
    datalist = {"training": items[:4], "validation": items[4:], "test": items[4:]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return str(root / "datalist.json")


def test_rgb_images_without_text_train_evaluate_infer(tmp_path):
    datalist = _rgb_dataset(tmp_path / "rgb")
    overrides = {
        "bundle_root": str(tmp_path / "bundle"),
        "datalist": datalist,
        "image_size": [32, 32],
        "batch_size": 2,
        "max_epochs": 2,
        "min_epochs": 0,
        "augmentation": [],
        **TINY_NET,
    }
    cfg.run("train", "train.json", **overrides)
    cfg.run("eval", "train.json", "evaluate.json", **overrides)
    summary = json.loads((tmp_path / "bundle" / "eval" / "test" / "summary.json").read_text())
    assert summary["num_images"] == 2 and 0.0 <= summary["val_mean_dice"] <= 1.0
    assert "val_count_accuracy" not in summary  # no report text: the text-mask checks switch themselves off
    out = tmp_path / "out"
    cfg.run("infer", "inference.json", **dict(overrides, output_dir=str(out)))
    masks = sorted(p for p in os.listdir(out) if p.endswith("_seg.png"))
    assert masks == ["isic_4_seg.png", "isic_5_seg.png"]
    assert np.asarray(Image.open(out / masks[0])).shape == (64, 64)


def test_verify_net_in_out(bundle):
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=cfg("inference.json"), n=1, any=32, **TINY_NET)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_image_only_matches_eager(tmp_path, fmt):
    # tracing runs the plain recurrence unrolled over the tokens: a two-stage net at 16x16 keeps that small
    net_args = {"dims": [8, 16], "depths": [1, 1], "depths_decoder": [1, 1], "d_state": 4}
    overrides = {
        "bundle_root": str(tmp_path),
        "_meta_#network_data_format#inputs#image#spatial_shape": [16, 16],
        **{f"network_def#{k}": v for k, v in net_args.items()},
    }
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": VMUNet(3, 1, **net_args).state_dict()}, ckpt)
    path = export_network(cfg("inference.json"), str(tmp_path / f"model.{fmt}"), fmt, str(ckpt), **overrides)
    net, _ = load_bundle_network(cfg("inference.json"), str(ckpt), **overrides)
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = net(image).numpy()
    if fmt == "torchscript":
        out = torch.jit.load(path)(image).detach().numpy()
    else:
        import onnxruntime

        sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ["image"]
        out = sess.run(None, {"image": image.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"), max_epochs=1)
    run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))


def test_bundle_files_and_metadata_schema_fields():
    """The model-zoo layout and the metadata fields that meta_schema_20240725 requires."""
    meta = check_bundle_layout(os.path.dirname(CONFIGS))
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]  # image only
    train = json.load(open(os.path.join(CONFIGS, "train.json")))
    assert fmt["inputs"]["image"]["num_channels"] == train["in_channels"]
    assert fmt["inputs"]["image"]["spatial_shape"] == train["image_size"]
    assert train["training"] == "%run" and train["network_def"]["dims"] == [96, 192, 384, 768]


#: the lightweight networks served as network_def variants of this bundle (docs/README.md "Lightweight variants"),
#: each with a tiny override of its own network arguments.
VARIANTS = {
    "lightm_unet.json": ("LightMUNet", {"network_def#init_filters": 8, "network_def#blocks_down": [1, 1, 1, 1]}),
    "ultralight.json": ("UltraLightVMUNet", {"network_def#c_list": [4, 8, 8, 8, 8, 16]}),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lightweight_variant_trains_evaluates_and_infers(bundle, tmp_path, variant):
    """Each variant file, given last, swaps the network and keeps its checkpoint apart (models/<variant>/), so the
    bundle's own model.pt is untouched; evaluation and inference load the variant's checkpoint and check its record."""
    cls, tiny = VARIANTS[variant]
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "bundle"), max_epochs=1, **tiny)
    for k in TINY_NET:
        overrides.pop(k)
    wf = cfg.run("train", "train.json", variant, **overrides)
    assert type(wf.parser.get_parsed_content("network_def")).__name__ == cls
    models = tmp_path / "bundle" / "models"
    assert os.listdir(models) == [variant.removesuffix(".json")]
    ckpt = models / variant.removesuffix(".json") / "model.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(".mamba.ssm.A_log" in k for k in state)
    cfg.run("eval", "train.json", "evaluate.json", variant, **overrides)
    summary = json.loads((tmp_path / "bundle" / "eval" / "test" / "summary.json").read_text())
    assert 0.0 <= summary["val_mean_dice"] <= 1.0
    out = tmp_path / "out"
    cfg.run("infer", "inference.json", variant, **dict(overrides, output_dir=str(out)))
    masks = [p for p in os.listdir(out) if p.endswith("_seg.png")]
    assert len(masks) == 4
    # the VM-UNet configuration refuses the variant's checkpoint (its record names another network)
    with pytest.raises(RuntimeError) as err:  # MONAI's config parser wraps the ValueError
        cfg.run("infer", "inference.json", **dict(bundle["overrides"], bundle_root=str(tmp_path / "bundle"),
                                                 ckpt_path=str(ckpt), output_dir=str(tmp_path / "refused")))  # fmt: skip
    assert any(isinstance(c, ValueError) and "another configuration" in str(c) for c in causes(err.value))


@pytest.mark.parametrize(
    "variant,folder,generator",
    [(None, "demo_polyp", "ensure_polyp_demo_datalist"), ("ultralight.json", "demo_polyp", "ensure_polyp_demo_datalist"),
     ("lightm_unet.json", "demo", "ensure_demo_datalist")],
)
def test_demo_data_of_vm_unet_and_its_variants(tmp_path, variant, folder, generator):
    """VM-UNet and UltraLight read the RGB lesion demo (the papers' ISIC setting); LightM-UNet 2D the chest X-ray one."""
    parser = ConfigParser()
    parser.read_config(cfg("train.json", "demo.json", *([variant] if variant else [])))
    parser["bundle_root"] = str(tmp_path)
    assert parser.get_parsed_content("dataset_dir").endswith(f"data/{folder}")
    assert parser["datalist"].startswith(f"$monai_vlseg.datasets.synthetic.{generator}(")
    assert parser.get_parsed_content("in_channels") == 3
