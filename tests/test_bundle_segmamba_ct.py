"""The segmamba_ct bundle as model-zoo tests it: train / evaluate / inference workflows with a tiny SegMamba on a
tiny synthetic CT set (NIfTI and DICOM series input), verify_net_in_out, 2-process DDP training on CPU (gloo),
metadata fields; the ToM scan through the slices of a DICOM series as the bundle loads it; the documented switches."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser, verify_net_in_out
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from bundle_testing import BundleConfigs, check_bundle_layout, check_run_folder, run_ddp_training
from monai.data import MetaTensor
from test_dicom_io import RAMP_LEVEL, RAMP_ORIGIN, SLICES, ramp_mask, write_ramp_series

from monai_vlseg.io import DicomReadError
from monai_vlseg.io.series import write_dicom_series
from monai_vlseg.nets.segmamba import GSC, ToMLayer

from monai_vlseg.datasets.synthetic.ct import generate_demo_ct_dataset
from monai_vlseg.transforms.uncertainty import normalised_entropy

cfg = BundleConfigs("segmamba_ct")
CONFIGS, META, LOGGING = cfg.dir, cfg.meta, cfg.logging
TINY_NET = {
    "network_def#feature_size": [8, 16, 16, 32],
    "network_def#hidden_size": 32,
    "network_def#depths": [1, 1, 1, 1],
    "network_def#num_slices": None,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny CT demo set and a bundle root trained for one epoch."""
    tmp = tmp_path_factory.mktemp("segmamba_ct")
    datalist = generate_demo_ct_dataset(str(tmp / "data"), n_train=2, n_val=2, n_test=1, size=40, seed=1, fov_z_mm=60.0)
    overrides = {
        "bundle_root": str(tmp / "bundle"),
        "datalist": datalist,
        "pixdim": [3.0, 3.0, 3.0],
        "patch_size": [32, 32, 32],
        "num_samples": 1,
        "max_epochs": 1,
        "min_epochs": 0,
        "val_interval": 1,
        **TINY_NET,
    }
    cfg.run("train", "train.json", **overrides)
    return {"root": tmp, "datalist": datalist, "overrides": overrides}


def test_train_writes_checkpoint_and_logs(bundle):
    root = bundle["root"] / "bundle"
    ckpt = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.stages.0.0.mamba") for k in ckpt)
    check_run_folder(root, pixdim=[3.0, 3.0, 3.0], num_classes=3, slice_axis=-1)  # the record holds the slice axis


def test_evaluate_writes_metrics(bundle):
    cfg.run("eval", "train.json", "evaluate.json", **bundle["overrides"])
    out = bundle["root"] / "bundle" / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    assert {"val_mean_dice", "val_dice_liver", "val_dice_lesion", "val_mean_iou", "val_hd95"} <= set(summary)
    assert summary["num_images"] == 1 and 0.0 <= summary["val_dice_liver"] <= 1.0
    with open(out / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 2 and rows[1][0].endswith(".nii.gz")


@pytest.mark.parametrize("image_format", ["nifti", "dicom"])
def test_inference_writes_label_maps_in_input_geometry(bundle, tmp_path, image_format):
    datalist = bundle["datalist"]
    if image_format == "dicom":
        datalist = os.path.join(os.path.dirname(datalist), "datalist_dicom.json")
    overrides = dict(bundle["overrides"], datalist=datalist, output_dir=str(tmp_path / "out"))
    cfg.run("infer", "inference.json", **overrides)
    out = tmp_path / "out"
    segs = sorted(p for p in os.listdir(out) if p.endswith("_seg.nii.gz"))
    overlays = sorted(p for p in os.listdir(out) if p.endswith("_overlay.png") and "_uncertainty_" not in p)
    assert len(segs) == 1 and len(overlays) == 1
    src = nib.load(os.path.join(os.path.dirname(bundle["datalist"]), "imagesTs", "ct_test_000.nii.gz"))
    seg = nib.load(out / segs[0])
    assert seg.shape == src.shape  # back on the input's own voxel grid
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-3)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    with open(out / "report_review.csv", encoding="utf-8") as f:
        review = list(csv.DictReader(f))
    assert len(review) == 1 and "input" not in review[0]["report_warnings"]  # a CT in HU (Modality CT): no input flag
    # the probabilities (one channel per class) and their categorical entropy, on the same grid; the tiny untrained
    # network is unsure, and that alone flags it
    prob = nib.load(next(out.glob("*_prob.nii.gz")))
    unc = np.asarray(nib.load(next(out.glob("*_uncertainty.nii.gz"))).dataobj)
    assert prob.shape[:3] == unc.shape[:3] == src.shape and prob.shape[-1] == 3
    np.testing.assert_allclose(prob.affine, src.affine, atol=1e-3)
    p = torch.from_numpy(np.moveaxis(np.asarray(prob.dataobj).reshape(*src.shape, 3), -1, 0))
    # mapped on the network's grid, resampled with the probabilities: the entropy is concave, so the resampled map
    # lies below the entropy of the resampled probabilities, and close to it
    gap = normalised_entropy(p)[0].numpy() - unc.reshape(src.shape)
    assert gap.min() > -1e-4 and gap.mean() < 0.05
    with open(out / "manifest.csv", encoding="utf-8") as f:
        score = float(next(csv.DictReader(f))["uncertainty"])
    with open(os.path.join(CONFIGS, "inference.json"), encoding="utf-8") as f:
        threshold = json.load(f)["review_uncertainty"]
    assert (review[0]["needs_review"] == "True") == (score > threshold) and 0.0 < score <= 1.0
    assert next(out.glob("*_uncertainty_overlay.png")).is_file()


@pytest.mark.parametrize("case", ["missing", "irregular", "duplicate"])
def test_inference_mask_lines_up_with_each_slice_of_an_off_grid_series(tmp_path, case):
    """inference.json's pre- and postprocessing around a stand-in network (a threshold of the analytic object) on a
    series with a missing slice, irregular spacing or a slice stored twice: the NIfTI mask, read at each source slice's
    patient position, holds the object's cross-section there."""
    offsets = SLICES["regular" if case == "duplicate" else case]
    folder = tmp_path / "series" / case
    write_ramp_series(folder, offsets, duplicate=4 if case == "duplicate" else None)
    parser = ConfigParser()
    parser.read_config(cfg("inference.json"))
    parser.update({"output_dir": str(tmp_path / "out"), "overlay": False, "pixdim": [1.0, 1.0, 1.0]})
    d = parser.get_parsed_content("preprocessing")({"image": str(folder)})
    lo, hi = parser.get_parsed_content("hu_window")
    obj = d["image"][0] > (RAMP_LEVEL - lo) / (hi - lo)  # the HU window scaled to [0, 1]
    d["pred"] = MetaTensor(torch.stack([~obj, obj, torch.zeros_like(obj)]).float(), meta=d["image"].meta)
    d = parser.get_parsed_content("postprocessing")(d)
    nii = nib.load(tmp_path / "out" / f"{case}_seg.nii.gz")
    seg, inv = np.asarray(nii.dataobj), np.linalg.inv(nii.affine)
    planes = np.arange(seg.shape[2]) * abs(nii.affine[2, 2])
    i, j = np.mgrid[:32, :32]
    for z in offsets:
        ras = np.stack([-(RAMP_ORIGIN[0] + i), -(RAMP_ORIGIN[1] + j), np.full(i.shape, RAMP_ORIGIN[2] + z)], -1)
        vox = np.rint(ras @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        assert (vox >= 0).all() and (vox < seg.shape).all()
        frame = seg[vox[..., 0], vox[..., 1], vox[..., 2]] == 1
        # the ramp grows with z: the mask lies between its cross-sections at z -/+ (the distance to the mask's nearest
        # plane + half the 1 mm pixdim the stand-in network saw)
        h = float(np.min(np.abs(planes - z))) + 0.5 + 1e-4
        assert not (ramp_mask(z - h) & ~frame).any() and not (frame & ~ramp_mask(z + h)).any(), z
    if case == "missing":  # the config's reader option refuses the series instead
        parser["irregular_slices"] = "error"
        with pytest.raises(RuntimeError, match="LoadImaged") as err:  # MONAI's Compose names the transform
            parser.get_parsed_content("preprocessing", lazy=False)({"image": str(folder)})
        assert isinstance(err.value.__cause__, DicomReadError) and "gap of 4.000 mm" in str(err.value.__cause__)


def test_verify_net_in_out(bundle):
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=cfg("inference.json"), n=1, any=32, **TINY_NET)


def test_multi_gpu_config_runs_ddp_on_cpu(bundle, tmp_path):
    overrides = dict(bundle["overrides"], bundle_root=str(tmp_path / "ddp"))
    run_ddp_training(cfg("train.json", "multi_gpu_train.json"), META, LOGGING, overrides, str(tmp_path))


def test_bundle_files_metadata_and_paper_defaults():
    meta = check_bundle_layout(os.path.dirname(CONFIGS))
    fmt = meta["network_data_format"]
    assert list(fmt["inputs"]) == ["image"] and list(fmt["outputs"]) == ["pred"]
    assert len(fmt["inputs"]["image"]["spatial_shape"]) == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver", "2": "lesion"}
    for name in ("train.json", "inference.json"):  # the default network is the paper configuration
        parser = ConfigParser()
        parser.read_config(os.path.join(CONFIGS, name))
        net = parser.get("network_def")
        assert net["feature_size"] == [48, 96, 192, 384] and net["hidden_size"] == 768
        assert net["depths"] == [2, 2, 2, 2] and net["num_slices"] == [64, 32, 16, 8]
        assert parser.get("patch_size") == [128, 128, 128]
        # the scan runs through z, the slices of the RAS (X, Y, Z) arrays, and the record says so
        assert net["slice_axis"] == "@slice_axis" and parser.get("slice_axis") == -1
        assert parser.get("model_config#slice_axis") == "@slice_axis"


def _scan_orders(layer: ToMLayer, shape) -> torch.Tensor:
    """(K, L): the voxel (row-major index into a ``shape`` map) that ``layer``'s own forward pass reads at step l of
    order k: token ids through an identity norm and input projection, caught at the conv1d the scans feed."""
    layer = layer.double()
    layer.norm = torch.nn.Identity()  # LayerNorm would normalise the ids away
    m = layer.mamba
    with torch.no_grad():
        m.in_proj.weight.zero_()
        m.in_proj.weight[0, 0] = 1.0  # channel 0 of the scanned sequences = the token id
    seen = []
    hook = m.conv1d.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    x = torch.zeros(1, m.in_proj.in_features, *shape, dtype=torch.float64)
    x[0, 0] = torch.arange(x[0, 0].numel(), dtype=torch.float64).view(shape)
    with torch.no_grad():
        layer(x)
    hook.remove()
    return seen[0][0, :: m.d_inner].round().long()  # (K, L), K = forward, backward, inter-slice


@pytest.mark.parametrize("num_slices", [None, 7])
def test_tom_scan_steps_through_the_slices_of_a_dicom_series(tmp_path, num_slices):
    """A CT series (stored superior slice first) whose slice k holds one HU value, loaded as the bundle loads it
    (LoadImaged with the DICOM reader, channel first, RAS): the ToM layer with the bundle's ``slice_axis`` reads its
    inter-slice order through consecutive ImagePositionPatient slices at each in-plane position, and its forward order
    one whole slice after the next; slice_axis 0 (the scan before the fix: x of the (X, Y, Z) array) does neither."""
    nx, ny, nz = 6, 5, 7
    hu = 100 + 10 * np.arange(nz)
    paths = write_dicom_series(np.broadcast_to(hu, (nx, ny, nz)).astype(np.int16), (0.8, 0.7, 2.5),
                               (-20.0, -30.0, 40.0), tmp_path / "series")  # fmt: skip
    ipp_z = {}  # HU of a slice -> its ImagePositionPatient z, from the files
    for path in paths:
        ds = pydicom.dcmread(path)
        ipp_z[float(ds.pixel_array[0, 0]) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)] = float(
            ds.ImagePositionPatient[2]
        )
    positions = sorted(ipp_z.values())
    assert len(positions) == nz and np.allclose(np.diff(positions), 2.5)
    parser = ConfigParser()
    parser.read_config(cfg("inference.json"))
    steps = (LoadImaged, EnsureChannelFirstd, Orientationd)
    load = Compose([t for t in parser.get_parsed_content("preprocessing").transforms if isinstance(t, steps)])
    assert len(load.transforms) == 3
    image = load({"image": str(tmp_path / "series")})["image"][0].numpy()
    assert image.shape == (nx, ny, nz)
    z = np.vectorize(ipp_z.__getitem__)(image).ravel()  # the ImagePositionPatient z of every voxel's slice
    plane = np.arange(image.size) // nz  # in-plane position (x, y) of every voxel of the (X, Y, Z) array

    def slice_by_slice(slice_axis) -> tuple[bool, bool]:
        layer = ToMLayer(2, num_slices, d_state=4, slice_axis=slice_axis)
        forward, backward, inter = _scan_orders(layer, image.shape).numpy()
        assert (backward == forward[::-1]).all()
        inter, forward = inter.reshape(nx * ny, nz), forward.reshape(nz, nx * ny)
        through = all(len(set(plane[r])) == 1 and np.array_equal(z[r], positions) for r in inter)
        per_slice = all((z[r] == positions[k]).all() and len(set(plane[r])) == nx * ny for k, r in enumerate(forward))
        return through, per_slice

    assert slice_by_slice(parser.get_parsed_content("network_def#slice_axis")) == (True, True)
    assert slice_by_slice(0) == (False, False)


def test_documented_switches():
    """The README's one-line overrides: the paper's GSC product and the official code's cross-entropy loss."""
    readme = open(os.path.join(os.path.dirname(CONFIGS), "docs", "README.md")).read()
    parser = ConfigParser()
    parser.read_config(cfg("train.json"))
    for override in ("--network_def#gsc_fusion mul", "--loss#lambda_dice 0"):
        assert override in readme, override
    parser.update({**TINY_NET, "network_def#gsc_fusion": "mul", "loss#lambda_dice": 0.0})
    net = parser.get_parsed_content("network_def")
    assert {m.fusion for m in net.modules() if isinstance(m, GSC)} == {"mul"}
    logits, label = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 1, 4, 4, 4)).float()
    loss = parser.get_parsed_content("loss")
    torch.testing.assert_close(loss(logits, label), F.cross_entropy(logits, label[:, 0].long()))


def test_lightm_unet_3d_variant_trains_evaluates_and_infers(bundle, tmp_path):
    """lightm_unet_3d.json, given last, swaps SegMamba for LightM-UNet 3D (its RVM layers read the slice axis
    slowest) and keeps its checkpoint in models/lightm_unet_3d/."""
    overrides = {k: v for k, v in bundle["overrides"].items() if k not in TINY_NET}
    overrides.update(bundle_root=str(tmp_path / "bundle"), **{"network_def#init_filters": 8,
                                                              "network_def#blocks_down": [1, 1, 1, 1]})  # fmt: skip
    wf = cfg.run("train", "train.json", "lightm_unet_3d.json", **overrides)
    net = wf.parser.get_parsed_content("network_def")
    assert type(net).__name__ == "LightMUNet" and net.spatial_dims == 3
    assert {m.slice_axis for m in net.modules() if hasattr(m, "parts")} == {-1}
    assert os.path.isfile(tmp_path / "bundle" / "models" / "lightm_unet_3d" / "model.pt")
    cfg.run("eval", "train.json", "evaluate.json", "lightm_unet_3d.json", **overrides)
    summary = json.loads((tmp_path / "bundle" / "eval" / "test" / "summary.json").read_text())
    assert 0.0 <= summary["val_dice_liver"] <= 1.0
    out = tmp_path / "out"
    cfg.run("infer", "inference.json", "lightm_unet_3d.json", **dict(overrides, output_dir=str(out)))
    segs = [p for p in os.listdir(out) if p.endswith("_seg.nii.gz")]
    assert len(segs) == 1
    src = nib.load(os.path.join(os.path.dirname(bundle["datalist"]), "imagesTs", "ct_test_000.nii.gz"))
    assert nib.load(out / segs[0]).shape == src.shape  # back on the scan's own voxel grid
