"""MONAI Label serves the UA-VLS bundle with the text in the request.

End to end, as a user runs it: the ``.venv-label`` environment (``make label``: monailabel 0.8.5, its own torch),
an app folder laid out by ``python -m monai_vlseg.label_app.prepare``, ``monailabel start_server`` on a free local
port with a studies folder of demo images (PNG, and a one-slice NIfTI), and ``POST /infer/ua_vls?image=<id>`` with
multipart ``params``.

The checkpoint is trained here, on a toy objective: the tiny UA-VLS of the bundle tests (the overrides below,
written into the app copy of ``inference.json`` by ``prepare --overrides``), 60 Adam steps on one demo image with
two texts, text A -> the left half, text B -> the right half. (At random init UA-VLS barely uses the text: two
reports move well under 1% of the pixels.) So the served masks must differ by text, and each must match what the
same network gives here: the test checks the serving path (text from the request or the ``.txt`` beside the
image, the bundle's tokeniser, the ``network(image, input_ids, attention_mask)`` call, the mask back in the image
grid), not segmentation quality.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from io import BytesIO

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from monai_vlseg.datasets.synthetic.ct import generate_demo_ct_dataset
from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset
from monai_vlseg.utils import trainable_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(ROOT, "bundles", "ua_vls")
LABEL_VENV = os.path.join(ROOT, ".venv-label")
LABEL_STAMP = os.path.join(LABEL_VENV, ".monailabel-installed")  # written by `make label`
READY_TIMEOUT_S = 180
TEXT_A = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
TEXT_B = "Unilateral pulmonary infection, one infected area, lower left lung."
# the tiny network of tests/test_bundle_ua_vls.py at 64 px
TINY = {
    "image_size": [64, 64],
    "network_def#vision_config": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    "network_def#text_config": {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
    },  # fmt: skip
}
# an image-only bundle served beside it: a tiny VM-UNet (untrained: the test is about serving, not accuracy)
TINY_VM_UNET = {
    "image_size": [64, 64], "network_def#dims": [8, 16, 32, 64], "network_def#depths": [1, 1, 1, 1],
    "network_def#depths_decoder": [1, 1, 1, 1],
}  # fmt: skip
# and the 3D CT bundle: a tiny SegMamba on a 3 mm grid (untrained)
TINY_SEGMAMBA = {
    "pixdim": [3.0, 3.0, 3.0], "patch_size": [32, 32, 32], "network_def#feature_size": [8, 16, 16, 32],
    "network_def#hidden_size": 32, "network_def#depths": [1, 1, 1, 1], "network_def#num_slices": None,
}  # fmt: skip


LABEL_ENV_GB = 6.0  # .venv-label measured 5.1 GB (torch 2.14.1 with its CUDA libraries: 4.4 GB) + pip's build room


def ensure_label_env() -> float:
    """Create .venv-label with `make label` unless its stamp exists; returns the seconds it took. Fails, saying so,
    before `make label` when the disk has no room for it (a full disk half-writes the env and says only ``OSError 28``)."""
    start = time.monotonic()
    if not os.path.isfile(LABEL_STAMP):
        free_gb = shutil.disk_usage(ROOT).free / 1e9
        assert free_gb >= LABEL_ENV_GB, (
            f"no room for .venv-label: {free_gb:.1f} GB free on {ROOT}, `make label` needs {LABEL_ENV_GB} GB"
        )
        res = subprocess.run(["make", "label"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        assert res.returncode == 0, f"make label failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert os.path.isfile(os.path.join(LABEL_VENV, "bin", "monailabel")), "make label did not install monailabel"
    return time.monotonic() - start


def tiny_parser(bundle_root: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE, "configs", "inference.json"))
    parser.read_meta(os.path.join(BUNDLE, "configs", "metadata.json"))
    parser["bundle_root"] = bundle_root
    for k, v in TINY.items():
        parser[k] = v
    return parser


def train_checkpoint(tmp: str, image: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Train the tiny UA-VLS for 60 Adam steps on one image with two texts (text A: the left half, text B: the right
    half), save its state dict as model.pt and return it with the network's own logits for A and B, zeroed where the
    bundle's report cut (``KeepReportedFindingsd``, zones from the texts) removes a component, as (H, W) arrays, the
    layout of the PNGs the server returns."""
    from monai_vlseg.transforms import KeepReportedFindingsd

    parser = tiny_parser(os.path.join(tmp, "bundle"))
    pre = parser.get_parsed_content("preprocessing")  # the bundle's own: load, resize, scale, TokenizeTextd
    items = [pre({"image": image, "text": t}) for t in (TEXT_A, TEXT_B)]
    img = torch.stack([d["image"].as_tensor() for d in items])
    ids = torch.stack([d["input_ids"] for d in items])
    mask = torch.stack([d["attention_mask"] for d in items])
    target = torch.zeros(2, 1, 64, 64)  # MONAI's (W, H) order: axis 2 is x
    target[0, :, :32], target[1, :, 32:] = 1, 1
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()  # eval: BatchNorm/dropout as at inference
    opt = torch.optim.Adam(trainable_parameters(net), lr=3e-3)
    for _ in range(60):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(img, ids, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = net(img, ids, mask)[:, 0]
    cut = KeepReportedFindingsd(keys="pred")
    kept = [cut({**d, "pred": (x > 0)[None].float()})["pred"][0].numpy() > 0 for x, d in zip(logits, items)]
    logit_a, logit_b = (np.where(k, x.numpy(), np.minimum(x.numpy(), -1.0)).T for x, k in zip(logits, kept))
    assert ((logit_a > 0) != (logit_b > 0)).mean() > 0.8, f"the tiny network did not learn the two texts (loss {loss.item():.3f})"
    path = os.path.join(tmp, "model.pt")
    torch.save(net.state_dict(), path)  # a bare state dict, as the bundle's CheckpointSaver writes it
    return path, logit_a, logit_b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 120):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def infer(base: str, image_id: str, params: dict, output: str = "image", model: str = "ua_vls"):
    """POST /infer/<model>?image=<id>&output=<output> with multipart form field `params` (JSON), as clients do."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    query = urllib.parse.urlencode({"image": image_id, "output": output})
    return http(f"{base}/infer/{model}?{query}", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def server_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a `monailabel start_server` subprocess, as after `source .venv-label/bin/activate` (the
    monailabel script runs the `python` on PATH), with its sessions under ``tmp_path`` and ``extra`` variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(
        PATH=os.path.join(LABEL_VENV, "bin") + os.pathsep + env.get("PATH", ""), VIRTUAL_ENV=LABEL_VENV,
        OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MONAI_LABEL_SESSION_PATH=str(tmp_path / "sessions"), **extra,
    )  # fmt: skip
    return env


def wait_ready(proc: subprocess.Popen, base: str, log: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"monailabel exited with {proc.returncode}:\n{open(log).read()[-5000:]}")
        try:
            status, _ = http(f"{base}/info/", timeout=5)
            if status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"monailabel not ready after {timeout} s:\n{open(log).read()[-5000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and anything it started
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


def test_monailabel_serves_text_guided_masks(tmp_path):
    install_s = ensure_label_env()

    # studies: one demo PNG with its text in <stem>.txt, and one without text
    datalist = generate_demo_dataset(str(tmp_path / "demo"), n_train=1, n_val=1, n_test=2, size=64, seed=0)
    with open(datalist) as f:
        test_items = json.load(f)["test"]
    studies = tmp_path / "studies"
    studies.mkdir()
    src = [os.path.join(os.path.dirname(datalist), it["image"]) for it in test_items]
    shutil.copy(src[0], studies / "cxr.png")
    (studies / "cxr.txt").write_text(TEXT_A + "\n")
    shutil.copy(src[1], studies / "notext.png")
    shutil.copy(src[1], studies / "other.png")  # a second radiograph with a text: active learning chooses
    (studies / "other.txt").write_text(TEXT_B + "\n")
    image = str(studies / "cxr.png")
    # the same radiograph as a one-slice volume with 0.5 mm pixels (what a DICOM series converted to NIfTI looks like)
    pixels = np.asarray(Image.open(image)).T[..., None].astype(np.float32)  # NIfTI's (x, y, z)
    nib.save(nib.Nifti1Image(pixels, np.diag([0.5, 0.5, 2.0, 1.0])), studies / "cxr_slice.nii.gz")

    t0, threads = time.monotonic(), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is several times faster on a shared machine
    try:
        ckpt, expected_a, expected_b = train_checkpoint(str(tmp_path), image)
    finally:
        torch.set_num_threads(threads)
    train_s = time.monotonic() - t0
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    app = tmp_path / "app"
    res = subprocess.run(
        [sys.executable, "-m", "monai_vlseg.label_app.prepare", "--bundle", BUNDLE, "--app", str(app),
         "--ckpt", ckpt, "--overrides", str(tmp_path / "tiny.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (app / "main.py").is_file() and (app / "lib" / "infers" / "text_bundle.py").is_file()
    assert (app / "model" / "ua_vls" / "models" / "model.pt").is_file()
    with open(app / "model" / "ua_vls" / "configs" / "inference.json") as f:
        app_cfg = json.load(f)
    assert app_cfg["network_def"]["vision_config"] == TINY["network_def#vision_config"]
    # the image-only bundles laid out into the same app: VM-UNet (2D) and SegMamba (3D CT)
    for name, values in (("vm_unet", TINY_VM_UNET), ("segmamba_ct", TINY_SEGMAMBA)):
        parser = ConfigParser()
        parser.read_config(os.path.join(ROOT, "bundles", name, "configs", "inference.json"))
        for k, v in values.items():
            parser[k] = v
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / f"{name}.pt")
        (tmp_path / f"tiny_{name}.json").write_text(json.dumps(values))
        res = subprocess.run(
            [sys.executable, "-m", "monai_vlseg.label_app.prepare", "--bundle", os.path.join(ROOT, "bundles", name),
             "--app", str(app), "--ckpt", str(tmp_path / f"{name}.pt"), "--overrides", str(tmp_path / f"tiny_{name}.json")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
    ct = generate_demo_ct_dataset(str(tmp_path / "ct"), n_train=1, n_val=1, n_test=1, size=40, seed=1, fov_z_mm=60.0)
    shutil.copy(os.path.join(os.path.dirname(ct), "imagesTs", "ct_test_000.nii.gz"), studies / "ct.nii.gz")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = server_env(tmp_path)
    cmd = [
        os.path.join(LABEL_VENV, "bin", "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
        "--conf", "models", "ua_vls,vm_unet,segmamba_ct", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    log = str(tmp_path / "server.log")
    with open(log, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        ready_s = wait_ready(proc, base, log, READY_TIMEOUT_S)
        status, body = http(f"{base}/info/")
        info = json.loads(body)
        model = info["models"]["ua_vls"]
        assert model["labels"] == {"lesion": 1} and model["dimension"] == 2 and "text" in model["config"]
        assert model["text_prompt"]["network_inputs"] == ["image", "input_ids", "attention_mask"]

        masks, infer_s = {}, []
        for key, text in (("a", TEXT_A), ("b", TEXT_B)):
            t0 = time.monotonic()
            status, body = infer(base, "cxr", {"text": text})
            infer_s.append(time.monotonic() - t0)
            assert status == 200, body[-2000:]
            masks[key] = np.asarray(Image.open(BytesIO(body)))

        for key, logit in (("a", expected_a), ("b", expected_b)):
            m = masks[key]
            assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 1}
            # the server runs the network trained here on another torch build: pixels whose logit is near the
            # threshold may flip; every confident pixel must agree, and nearly all pixels overall
            sure = np.abs(logit) > 0.5
            assert sure.mean() > 0.8 and (m == (logit > 0))[sure].all(), f"text {key}: served mask differs from the network's"
            assert (m == (logit > 0)).mean() > 0.95, f"text {key}: served mask differs from the network's"
        assert (masks["a"] != masks["b"]).mean() > 0.8, "the mask does not depend on the text"
        assert masks["a"][:, :32].mean() > 0.9 and masks["a"][:, 32:].mean() < 0.1  # text A: the left half

        # a one-slice NIfTI: same mask, written as a one-slice volume in the image's geometry
        status, body = infer(base, "cxr_slice", {"text": TEXT_A})
        assert status == 200, body[-2000:]
        (tmp_path / "slice_seg.nii.gz").write_bytes(body)
        seg = nib.load(tmp_path / "slice_seg.nii.gz")
        assert seg.shape == (64, 64, 1) and np.allclose(seg.affine, np.diag([0.5, 0.5, 2.0, 1.0]))
        np.testing.assert_array_equal(np.asarray(seg.dataobj)[..., 0].T, masks["a"])

        # no text in the request: cxr.txt beside the image is used
        status, body = infer(base, "cxr", {})
        assert status == 200, body[-2000:]
        np.testing.assert_array_equal(np.asarray(Image.open(BytesIO(body))), masks["a"])
        status, body = infer(base, "cxr", {"text": TEXT_B}, output="json")
        result = json.loads(body)
        assert status == 200 and result["text"] == TEXT_B and result["text_source"] == "request"
        assert result["label_names"] == {"lesion": 1}
        assert result["needs_review"] is False and result["report_zones"] == "lower left"
        status, body = infer(base, "cxr", {"text": "Verschattung im linken Unterfeld."}, output="json")
        result = json.loads(body)
        assert status == 200 and result["needs_review"] is True and "not in English" in result["report_warnings"]
        # no text anywhere: a clear client error, not a mask from the empty prompt
        status, body = infer(base, "notext", {})
        assert status == 400 and "no text prompt" in json.loads(body)["detail"]
        # the image-only bundle on the same server: no text asked for; its mask and uncertainty score come back
        vm = info["models"]["vm_unet"]
        assert "text_prompt" not in vm and "text" not in vm["config"] and vm["labels"] == {"lesion": 1}
        status, body = infer(base, "notext", {}, model="vm_unet")
        assert status == 200, body[-2000:]
        vm_mask = np.asarray(Image.open(BytesIO(body)))
        assert vm_mask.shape == (64, 64) and set(np.unique(vm_mask)) <= {0, 1}
        status, body = infer(base, "notext", {}, output="json", model="vm_unet")
        result = json.loads(body)
        assert status == 200 and "text" not in result and 0.0 <= result["uncertainty_score"] <= 1.0
        # a CT volume through SegMamba: the label map comes back on the scan's own grid
        assert info["models"]["segmamba_ct"]["dimension"] == 3
        status, body = infer(base, "ct", {}, model="segmamba_ct")
        assert status == 200, body[-2000:]
        (tmp_path / "ct_seg.nii.gz").write_bytes(body)
        seg, src_ct = nib.load(tmp_path / "ct_seg.nii.gz"), nib.load(studies / "ct.nii.gz")
        assert seg.shape == src_ct.shape and np.allclose(seg.affine, src_ct.affine, atol=1e-3)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}

        # active learning: /scoring/uncertainty stores each unlabelled image's score (those without a text are left
        # unscored), /activelearning/most_uncertain returns the image whose score is highest
        expected = {}
        for image_id in ("cxr", "other"):
            status, body = infer(base, image_id, {}, output="json")
            assert status == 200, body[-2000:]
            expected[image_id] = json.loads(body)["uncertainty_score"]
        assert expected["cxr"] != expected["other"]  # two images the strategy must tell apart
        deadline = time.monotonic() + 180  # the server also scores on its own at start-up (HTTP 429 meanwhile)
        while True:
            status, body = http(f"{base}/scoring/uncertainty?run_sync=true", b"{}", {"Content-Type": "application/json"})
            if status != 429 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert status == 200, body[-2000:]
        status, body = http(f"{base}/datastore/?output=all")
        images = json.loads(body)["objects"]
        stored = {k: v["image"]["info"].get("vlseg_uncertainty") for k, v in images.items()}
        assert stored["notext"] is None and stored["cxr_slice"] is None  # no text: not scored
        assert stored["cxr"] == pytest.approx(expected["cxr"]) and stored["other"] == pytest.approx(expected["other"])
        status, body = http(f"{base}/activelearning/most_uncertain", b"{}", {"Content-Type": "application/json"})
        chosen = json.loads(body)
        assert status == 200 and chosen["id"] == max(expected, key=expected.get), (chosen, expected)
        assert chosen["vlseg_uncertainty"] == pytest.approx(max(expected.values()))
    finally:
        stop(proc)
    assert proc.returncode is not None
    print(
        f"\n.venv-label check/install {install_s:.1f} s; tiny training {train_s:.1f} s; "
        f"server ready in {ready_s:.1f} s; /infer {infer_s[0]:.2f} s (first: loads the checkpoint and tokenizer), "
        f"then {infer_s[1]:.2f} s"
    )


def test_label_layer_requirements_leave_out_torch_and_keep_the_rest():
    """The layer installs monailabel's requirements itself, minus torch/torchvision (its own pinned builds), sam2 and
    triton, also as extras; read here from the installed monai's metadata."""
    from monai_vlseg.label_app.env import SKIP_REQUIREMENTS, layer_requirements

    reqs = layer_requirements(sys.executable, ("monai",))
    names = {r.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for r in reqs}
    assert "numpy" in names, reqs  # monai's own requirement stays
    assert not names & SKIP_REQUIREMENTS, reqs


def test_prepare_refuses_a_checkpoint_trained_with_another_configuration(tmp_path):
    """The app is laid out only when its configuration is the one the checkpoint records (as inference.json
    refuses it, issue 18.1); the record goes into the app beside model.pt."""
    from monai_vlseg.label_app.prepare import prepare_app

    ckpt = tmp_path / "run" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")  # not read: the check compares the record beside it
    record = {"run": "r1", "model_config": {"image_size": [96, 96], "in_channels": 1, "text_len": 34}}
    (tmp_path / "run" / "model.json").write_text(json.dumps(record))
    app = tmp_path / "app"
    with pytest.raises(ValueError, match=r"image_size \[96, 96\] there, \[64, 64\] here"):
        prepare_app(BUNDLE, str(app), ckpt=str(ckpt), values=TINY)
    assert not (app / "model").exists()  # nothing half-made
    with pytest.warns(UserWarning, match="another configuration"):
        dst = prepare_app(BUNDLE, str(app), ckpt=str(ckpt), values=TINY, config_mismatch="warn")
    assert json.loads((tmp_path / "app" / "model" / "ua_vls" / "models" / "model.json").read_text()) == record
    record["model_config"]["image_size"] = [64, 64]
    (tmp_path / "run" / "model.json").write_text(json.dumps(record))
    prepare_app(BUNDLE, str(app), ckpt=str(ckpt), values=TINY, force=True)  # the same configuration: laid out
    assert os.path.isfile(os.path.join(dst, "models", "model.pt"))
