"""Cost of every bundle's full-size ``network_def`` beside MONAI's UNet and SwinUNETR at the same input size.

Every bundle under ``bundles/*/configs/train.json`` is found; its ``network_def`` (the paper's architecture with the offline default towers by
default; ``--variant demo`` adds ``configs/demo.json``) is instantiated with MONAI's ``ConfigParser`` and fed
example inputs built from ``configs/metadata.json`` ``network_data_format.inputs``: the image at its
``num_channels`` x ``spatial_shape`` (the demo ``image_size`` for ``--variant demo``) and, when listed, the token
inputs ``input_ids`` / ``attention_mask`` of an example report tokenised with the bundle's ``text_model``
(:class:`monai_vlseg.transforms.TokenizeText`). MONAI's UNet and SwinUNETR are measured at each distinct input
size (2D and 3D) in the same run.

Per network: trainable and total parameters; GFLOPs of one forward pass at batch 1
(``torch.utils.flop_counter``: 2 FLOPs per multiply-add; matmul, convolution and attention only — element-wise
work such as the selective scan's recurrence is not counted); median latency at batch 1 (inference, no grad);
training-step throughput (forward + backward + AdamW step, images/s at ``--batch``, ``--batch-3d`` for 3D) and
peak memory (CUDA: ``max_memory_allocated``; CPU: the peak resident set of the measuring process, which includes
the ~0.3-0.5 GiB of the Python/torch runtime). ``--precision amp`` (or ``--amp``) runs the timed passes under bf16
autocast, ``--precision both`` measures every network twice (fp32 and AMP; the default on CUDA). Each network
is measured in its own subprocess (own peak memory, a failure or time-out is reported, not fatal).

    .venv/bin/python scripts/benchmark.py                                  # every bundle + baselines
    .venv/bin/python scripts/benchmark.py --nets ua_vls,unet --repeats 3
    .venv/bin/python scripts/benchmark.py --out docs/benchmarks.md --plot docs/benchmarks.png
    .venv/bin/python scripts/benchmark.py --device cuda --out docs/benchmarks_cuda.md   # fp32 and AMP rows

``--nets`` takes bundle names, network variants of a bundle (``vm_unet/ultralight``: ``configs/ultralight.json``
after train.json) and ``unet`` / ``swin_unetr`` (baselines at every bundle input size among the
selected bundles, or 1x224x224 when no bundle is selected). ``--plot`` draws Dice on the demo data (from
``docs/demo_accuracy.json``, written by ``scripts/demo_accuracy.py``) against GFLOPs and parameters.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE_TEXT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
EXAMPLE_KEYWORDS = "infection upper left lung lower right lung"
BASELINES = ("unet", "swin_unetr")
#: the papers' own figures for their paper configuration (from the method descriptions the bundles implement).
PAPER_FIGURES = {
    "ua_vls": "39.9M trainable, 17.87 GFLOPs",
    "c2seg": "18.92M",
    "lcpdn": "4.52M",
    "vm_unet/ultralight": "0.049M, 0.060 GFLOPs (thop at 3x256x256; its Mamba is not counted)",
    "vm_unet/lightm_unet": "1.09M (2D; the released code builds 5.01M: see bundles/vm_unet/docs)",
    "segmamba_ct/lightm_unet_3d": "3D count not found; the released code builds 5.02M",
}
TOKEN_KEYS = ("input_ids", "attention_mask")


def discover_bundles(root: str = REPO) -> list[str]:
    """Names of the bundles with a ``configs/train.json``, each followed by its network variants
    ``<bundle>/<file stem>``: the other config files that define a whole ``network_def`` (e.g.
    ``vm_unet/ultralight``, given after train.json and demo.json)."""
    names = []
    for train in sorted(glob.glob(os.path.join(root, "bundles", "*", "configs", "train.json"))):
        cfg = os.path.dirname(train)
        bundle = os.path.basename(os.path.dirname(cfg))
        names.append(bundle)
        for f in sorted(glob.glob(os.path.join(cfg, "*.json"))):
            if os.path.basename(f) in ("train.json", "inference.json", "metadata.json"):
                continue
            with open(f, encoding="utf-8") as fh:
                if "network_def" in json.load(fh):
                    names.append(f"{bundle}/{os.path.splitext(os.path.basename(f))[0]}")
    return names


def _meta(bundle: str) -> dict[str, Any]:
    with open(os.path.join(REPO, "bundles", bundle.split("/")[0], "configs", "metadata.json"), encoding="utf-8") as f:
        return json.load(f)


def _parser(bundle: str, variant: str):
    from monai.bundle import ConfigParser

    bundle, _, network = bundle.partition("/")
    cfg = os.path.join(REPO, "bundles", bundle, "configs")
    files = [os.path.join(cfg, "train.json")]
    if variant == "demo" and os.path.isfile(os.path.join(cfg, "demo.json")):
        files.append(os.path.join(cfg, "demo.json"))
    if network:
        files.append(os.path.join(cfg, f"{network}.json"))  # last: it replaces the network_def
    parser = ConfigParser()
    parser.read_config(files)
    parser.read_meta(os.path.join(cfg, "metadata.json"))
    return parser


def image_input(bundle: str, variant: str = "paper", parser: Any = None) -> tuple[int, tuple[int, ...]]:
    """``(channels, spatial shape)`` of the bundle's image input: metadata ``spatial_shape``; where that is
    symbolic (``"32*n"``, sliding-window bundles) or ``variant="demo"``, the config's ``patch_size`` /
    ``roi_size`` / ``image_size`` of the same dimension."""
    inputs = _meta(bundle)["network_data_format"]["inputs"]
    image = inputs.get("image") or next(iter(inputs.values()))
    raw = list(image["spatial_shape"])
    fixed = all(isinstance(v, int) or (isinstance(v, str) and v.isdigit()) for v in raw)
    shape = tuple(int(v) for v in raw) if fixed else None
    if variant == "demo" or shape is None:
        parser = parser or _parser(bundle, variant)
        for key in ("patch_size", "roi_size", "image_size"):
            if key in parser:
                size = parser.get_parsed_content(key)
                if isinstance(size, (list, tuple)) and len(size) == len(raw):
                    shape = tuple(int(v) for v in size)
                    break
    if shape is None:
        raise ValueError(f"{bundle}: spatial_shape {raw} is symbolic and the config has no patch_size/roi_size/image_size")
    return int(image["num_channels"]), shape


def build_bundle(bundle: str, variant: str = "paper") -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], str]:
    """(network, example inputs at batch 1, description of the inputs) of one bundle."""
    parser = _parser(bundle, variant)
    net = parser.get_parsed_content("network_def", instantiate=True)
    inputs = _meta(bundle)["network_data_format"]["inputs"]
    channels, shape = image_input(bundle, variant, parser)
    args: list[torch.Tensor] = []
    desc = [f"{channels}x{'x'.join(map(str, shape))}"]
    args.append(torch.rand(1, channels, *shape))  # the image comes first, as in every bundle's forward
    token_keys = [k for k, v in inputs.items() if k != "image" and str(v.get("type", "")) == "tokens"]
    if token_keys:
        from monai_vlseg.transforms import TokenizeText

        text_model = parser.get_parsed_content("text_model") if "text_model" in parser else None
        tokens: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # ids key -> (ids, mask)
        for key in token_keys:  # metadata order is the forward order, as in every bundle
            if "mask" in key:
                prefix = key[: -len("_mask")] if key.endswith("_mask") else "input"
                ids_key = f"{prefix}_ids" if f"{prefix}_ids" in tokens else "input_ids"
                if ids_key not in tokens:
                    raise ValueError(f"{bundle}: metadata input '{key}' has no token-id input before it")
                args.append(tokens[ids_key][1][None])
                continue
            length = int(inputs[key]["spatial_shape"][-1])
            text = EXAMPLE_KEYWORDS if key.startswith("keyword") else EXAMPLE_TEXT
            ids, mask = TokenizeText(tokenizer=text_model, max_length=length)(text)
            tokens[key] = (ids, mask)
            args.append(ids[None])
            desc.append(f"{length} {key.replace('_ids', '').replace('input', 'text')} tokens")
    return net, tuple(args), " + ".join(desc)


def build_baseline(name: str, channels: int, shape: tuple[int, ...]) -> tuple[torch.nn.Module, tuple[torch.Tensor], str]:
    """MONAI UNet (32-512 channels in 2D, 16-256 in 3D, 2 residual units) or SwinUNETR (feature size 48)."""
    dims = len(shape)
    if name == "unet":
        from monai.networks.nets import UNet

        chans = (32, 64, 128, 256, 512) if dims == 2 else (16, 32, 64, 128, 256)
        net = UNet(dims, channels, 1, channels=chans, strides=(2, 2, 2, 2), num_res_units=2)
        note = f"MONAI UNet {chans[0]}-{chans[-1]}, 2 res units"
    elif name == "swin_unetr":
        from monai.networks.nets import SwinUNETR

        if any(s % 32 for s in shape):
            raise ValueError(f"SwinUNETR needs sizes divisible by 32, got {shape}")
        net = SwinUNETR(in_channels=channels, out_channels=1, feature_size=48, spatial_dims=dims)
        note = "MONAI SwinUNETR, feature size 48"
    else:
        raise ValueError(f"unknown baseline '{name}'; expected one of {BASELINES}")
    return net, (torch.rand(1, channels, *shape),), note + f" ({channels}x{'x'.join(map(str, shape))})"


def _scalar(out: Any) -> torch.Tensor:
    """A scalar from any network output (tensor, tuple/list, dict) for the backward pass."""
    if isinstance(out, torch.Tensor):
        return out.float().sigmoid().mean() if out.is_floating_point() else out.float().sum() * 0
    if isinstance(out, Mapping):  # a dict, or a mapping-like output such as TIFCOutput
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [_scalar(o) for o in out if isinstance(o, (torch.Tensor, list, tuple, Mapping))]
        return torch.stack(parts).sum() if parts else torch.zeros(())
    return torch.zeros(())


def measure(spec: dict[str, Any], repeats: int, batch: int, device: str, amp: bool) -> dict[str, Any]:
    """Measure one network (see the module docstring); ``spec``: ``{"kind": "bundle", "name", "variant"}`` or
    ``{"kind": "unet" | "swin_unetr", "channels", "shape"}``."""
    from torch.utils.flop_counter import FlopCounterMode

    from monai_vlseg.utils import keep_freed_memory

    keep_freed_memory()  # as every bundle run does (set_torch_threads); applied to the baselines alike
    torch.manual_seed(0)
    t_build = time.perf_counter()
    if spec["kind"] == "bundle":
        net, args, desc = build_bundle(spec["name"], spec.get("variant", "paper"))
        note = ("`network_def` (full size with the default towers; variant `paper`)" if spec.get("variant", "paper") == "paper"
                else f"`network_def` (variant `{spec['variant']}`)")
    else:
        net, args, note = build_baseline(spec["kind"], spec["channels"], tuple(spec["shape"]))
        desc = f"{spec['channels']}x{'x'.join(map(str, spec['shape']))}"
    build_s = time.perf_counter() - t_build
    dev = torch.device(device)
    net = net.to(dev)
    args = tuple(a.to(dev) for a in args)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(*args)
    gflops = fc.get_total_flops() / 1e9

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync()
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                net(*args)
            sync()
            if i:  # the first call is the warm-up
                times.append(time.perf_counter() - t)
    latency = statistics.median(times)

    net.train()
    bargs = tuple(a.expand(batch, *a.shape[1:]).contiguous() for a in args)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps: list[float] = []
    train_error = None
    try:
        for i in range(max(2, repeats // 2) + 1):
            sync()
            t = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss = _scalar(net(*bargs))
            if opt is not None:
                opt.zero_grad()
                loss.backward()
                opt.step()
            sync()
            if i:
                steps.append(time.perf_counter() - t)
    except (MemoryError, RuntimeError) as e:  # out of memory (the --mem-limit-gb cap, or the GPU's): keep the rest
        if "memory" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        train_error = f"training step out of memory at batch {batch} ({str(e).splitlines()[0][:120]})"
    step = statistics.median(steps) if steps else float("nan")
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    if train_error:
        note += f"; {train_error}"
    return {
        "trainable_M": trainable / 1e6, "total_M": total / 1e6, "gflops": gflops, "latency_ms": latency * 1e3,
        "train_img_per_s": batch / step, "peak_mem_MiB": peak, "batch": batch, "note": note, "build_s": build_s,
        "input": desc, "dims": len(args[0].shape) - 2,
    }  # fmt: skip


def plan(names: list[str], variant: str, default_size: tuple[int, tuple[int, ...]] = (1, (224, 224))) -> list[dict[str, Any]]:
    """Measurement specs: the selected bundles, then the baselines at each distinct bundle input size
    (``default_size`` when no bundle is selected)."""
    bundles = [n for n in names if n not in BASELINES]
    specs: list[dict[str, Any]] = []
    sizes: list[tuple[int, tuple[int, ...]]] = []
    for b in bundles:
        spec: dict[str, Any] = {"kind": "bundle", "name": b, "variant": variant}
        try:
            size = image_input(b, variant)
            spec["size"] = [size[0], list(size[1])]
            if size not in sizes:
                sizes.append(size)
        except Exception as e:  # noqa: BLE001 - a broken bundle is reported in its row, not fatal
            spec["error"] = f"metadata: {type(e).__name__}: {e}"
        specs.append(spec)
    if not sizes:
        sizes = [default_size]
    for base in (n for n in names if n in BASELINES):
        for ch, shape in sizes:
            specs.append({"kind": base, "name": base, "channels": ch, "shape": list(shape)})
    return specs


def run_spec(spec: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Measure one spec in a subprocess; a failure or time-out becomes the row's ``error``."""
    row = {"name": spec["name"], "kind": "bundle" if spec["kind"] == "bundle" else "baseline", "spec": spec}
    if "error" in spec:
        row["error"] = spec["error"]
        return row
    dims = len(spec["shape"]) if "shape" in spec else len(spec.get("size", [0, [0, 0]])[1])
    batch = a.batch_3d if dims == 3 else a.batch
    amp = spec.get("precision", "fp32") == "amp"
    limit = getattr(a, "mem_limit_gb", None)
    if limit is None and hasattr(os, "sysconf"):
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 / 2
    cmd = [sys.executable, __file__, "--_one", json.dumps(spec), "--repeats", str(a.repeats), "--batch", str(batch),
           "--device", a.device, "--mem-limit-gb", str(limit or 0)] + (["--amp"] if amp else [])  # fmt: skip
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {a.timeout:.0f} s"
        return row
    if res.returncode:
        lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        row["error"] = (lines[-1] if lines else f"exit code {res.returncode}")[:300]
        return row
    row.update(json.loads(res.stdout.strip().splitlines()[-1]))
    row["measured"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    row["load"] = round(os.getloadavg()[0], 1)
    return row


def _label(r: dict[str, Any]) -> str:
    s = r["spec"]
    amp = " [AMP]" if s.get("precision") == "amp" else ""
    if r["kind"] == "bundle":
        return r["name"] + amp
    return f"{r['name']} ({len(s['shape'])}D {s['channels']}x{'x'.join(map(str, s['shape']))}){amp}"


def _num(v: float) -> str:
    return "—" if v != v else f"{v:.2f}"  # NaN: not measured


def _scan_backend(device: str) -> str:
    from monai_vlseg.ops import resolve_scan_backend

    return resolve_scan_backend(None, torch.device(device))


def markdown(rows: list[dict[str, Any]], a: argparse.Namespace, command: str) -> str:
    """The table with its provenance line."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    if a.device.startswith("cuda") and torch.cuda.is_available():
        cpu = torch.cuda.get_device_name(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Benchmarks: bundles' full-size `network_def`s beside MONAI baselines",
        "",
        "\"Variant `paper`\" below (the script's name for it) means `configs/train.json`'s `network_def` as it stands: the "
        "paper's architecture at the paper's input size, with the offline default towers (the packaged all-MiniLM-L6-v2 "
        "text encoder, vision encoders with random weights or, for tifcmamba, the small CLIP of its CLIP stage), not the "
        "paper's pretrained towers. The parameter counts with the paper's towers are in each bundle's docs (\"Default vs "
        "the paper's own components\", `python scripts/paper_components.py`). \"Paper's figure\" is the paper's own "
        "number (paper, not reproduced here).",
        "",
        f"{now} · {cpu} · {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()} · load average at the "
        f"end {load:.1f} · torch {torch.__version__} · device {a.device} · precision {a.precision} (AMP = bf16 autocast) · "
        f"variant `{a.variant}` · `{command}`",
        "",
        "GFLOPs: one forward pass at batch 1 (`torch.utils.flop_counter`, 2 per multiply-add; matmul/conv/attention "
        "only, so element-wise work such as the selective-scan recurrence is not counted). Latency: median of "
        f"{a.repeats} forward passes at batch 1. Training: forward + backward + AdamW step at batch {a.batch} "
        f"(3D: {a.batch_3d}). Peak memory: "
        + ("CUDA `max_memory_allocated`." if a.device.startswith("cuda") else
           "peak resident set of the measuring process (includes ~0.3-0.5 GiB of Python/torch runtime).")
        + " Timings on a shared machine are under load from other jobs. Mamba networks run the selective scan "
        f"backend `{_scan_backend(a.device)}` (the default for this device; `cpu` = the fused kernel of "
        "`monai_vlseg.ops.cpu_scan`), and every network (baselines too) runs with glibc keeping freed memory "
        "(`monai_vlseg.utils.keep_freed_memory`, as in every bundle run).",
        "",
        "| network | input | trainable (M) | total (M) | GFLOPs (fwd, bs 1) | latency bs 1 (ms) | train img/s | "
        "peak mem (MiB) | paper's figure | measured (UTC, load avg) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        s = r["spec"]
        inp = r.get("input") or (
            f"{s['size'][0]}x{'x'.join(map(str, s['size'][1]))}" if "size" in s else
            f"{s['channels']}x{'x'.join(map(str, s['shape']))}" if "shape" in s else "?")  # fmt: skip
        paper = PAPER_FIGURES.get(r["name"], "—") if r["kind"] == "bundle" else "—"
        if "error" in r:
            lines.append(f"| {_label(r)} | {inp} | — | — | — | — | — | — | {paper} | — | failed: {r['error'].replace('|', '/')} |")
            continue
        lines.append(
            f"| {_label(r)} | {inp} | {r['trainable_M']:.2f} | {r['total_M']:.2f} | {r['gflops']:.2f} | "
            f"{r['latency_ms']:.0f} | {_num(r['train_img_per_s'])} (bs {r['batch']}) | {r['peak_mem_MiB']:.0f} | {paper} | "
            f"{r.get('measured', '?')}, {r.get('load', '?')} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str, accuracy_json: str) -> str:
    """Two panels: demo-data Dice vs GFLOPs (bundles with a demo-accuracy row; marker area ~ trainable params),
    and latency vs GFLOPs for every measured network (baselines included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc: dict[str, Any] = {}
    if os.path.isfile(accuracy_json):
        with open(accuracy_json, encoding="utf-8") as f:
            acc = json.load(f).get("rows", {})
    ok = [r for r in rows if "error" not in r]
    if any(r["spec"].get("precision", "fp32") == "fp32" for r in ok):  # one point per network: fp32 when measured
        ok = [r for r in ok if r["spec"].get("precision", "fp32") == "fp32"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    pts = [(r, acc[r["name"]]["test"]["val_mean_dice"]) for r in ok
           if r["kind"] == "bundle" and "test" in acc.get(r["name"], {})]  # fmt: skip
    for r, dice in pts:
        ax.scatter(r["gflops"], dice, s=20 + 8 * r["trainable_M"], alpha=0.7)
        ax.annotate(f"{r['name']} ({r['trainable_M']:.1f}M)", (r["gflops"], dice), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("GFLOPs (forward, batch 1, measured config)")
    ax.set_ylabel("Dice on demo test split (small-demo config)")
    ax.set_title("accuracy vs. cost" + ("" if pts else " (no demo_accuracy.json rows yet)"), fontsize=10)
    if pts:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for r in ok:
        mk = "o" if r["kind"] == "bundle" else "s"
        ax.scatter(r["gflops"], r["latency_ms"], marker=mk, s=20 + 4 * r["trainable_M"], alpha=0.7)
        ax.annotate(_label(r), (r["gflops"], r["latency_ms"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if ok:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("GFLOPs (forward, batch 1)")
    ax.set_ylabel("latency at batch 1 (ms)")
    ax.set_title("cost: bundles (o) and MONAI baselines (s); area ~ trainable params", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default=None, help="comma-separated bundle names and/or unet,swin_unetr (default: all)")
    p.add_argument("--variant", default="paper", choices=("paper", "demo"), help="network_def of train.json (paper) "
                   "or with demo.json merged (demo)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="timed forward passes (training steps: half, at least 2)")
    p.add_argument("--batch", type=int, default=2, help="batch of the 2D training-step measurement")
    p.add_argument("--batch-3d", type=int, default=1, help="batch of the 3D training-step measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "amp", "both"), default=None,
                   help="fp32, bf16 autocast (amp) or both rows per network (default: fp32 on CPU, both on CUDA)")
    p.add_argument("--amp", action="store_true", help="same as --precision amp")  # fmt: skip
    p.add_argument("--timeout", type=float, default=1800, help="seconds per network before it is reported as timed out")
    p.add_argument("--out", default=None, help="write the markdown table (with date, machine, command) here")
    p.add_argument("--json", default=None, help="write the raw rows here (default: beside --out)")
    p.add_argument("--plot", default=None, help="write the accuracy-vs-cost PNG here")
    p.add_argument("--merge", action="store_true", help="keep the rows of the --json file (default: beside --out) "
                   "for networks not measured in this run; re-measured ones are replaced")  # fmt: skip
    p.add_argument("--accuracy", default=os.path.join(REPO, "docs", "demo_accuracy.json"),
                   help="demo-accuracy rows for --plot (scripts/demo_accuracy.py)")  # fmt: skip
    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="address-space cap of each CPU measuring process (default: half the machine's memory), so an "
                   "oversized case fails alone instead of waking the OOM killer on a shared machine")
    p.add_argument("--baseline-input", default="1x224x224",
                   help="CxHxW[xD] of the baselines when no bundle is selected")  # fmt: skip
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.precision is None:
        a.precision = "amp" if a.amp else ("both" if a.device.startswith("cuda") else "fp32")
    if a._one:
        if a.mem_limit_gb and not a.device.startswith("cuda"):
            lim = int(a.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        print(json.dumps(measure(json.loads(a._one), a.repeats, a.batch, a.device, a.precision == "amp")))
        return 0
    available = discover_bundles()
    names = a.nets.split(",") if a.nets else [*available, *BASELINES]
    unknown = [n for n in names if n not in available and n not in BASELINES]
    if unknown:
        print(f"error: unknown networks {unknown}; bundles: {available}, baselines: {list(BASELINES)}", file=sys.stderr)
        return 2
    command = " ".join(["python", "scripts/benchmark.py"] + [shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv)])
    rows = []
    precisions = ["fp32", "amp"] if a.precision == "both" else [a.precision]
    c, *shape = (int(v) for v in a.baseline_input.lower().split("x"))
    specs = [{**sp, "precision": pr} for sp in plan(names, a.variant, (c, tuple(shape))) for pr in precisions]
    for spec in specs:
        t = time.perf_counter()
        row = run_spec(spec, a)
        rows.append(row)
        status = row.get("error") or (
            f"{row['trainable_M']:.2f}M trainable / {row['total_M']:.2f}M, {row['gflops']:.2f} GFLOPs, "
            f"{row['latency_ms']:.0f} ms, {row['train_img_per_s']:.2f} img/s, {row['peak_mem_MiB']:.0f} MiB")
        print(f"[{time.perf_counter() - t:6.1f} s] {_label(row)}: {status}", flush=True)  # fmt: skip
    js = a.json or (os.path.splitext(a.out)[0] + ".json" if a.out else None)
    if a.merge and js and os.path.isfile(js):
        with open(js, encoding="utf-8") as f:
            old = json.load(f).get("rows", [])
        new = {_label(r): r for r in rows}
        merged = [new.pop(_label(r), r) for r in old]
        rows = merged + list(new.values())
        command += " (rows of earlier runs kept: see the measured column)"
    text = markdown(rows, a, command)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(a.out + ".tmp", a.out)
    if js:
        with open(js + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"command": command, "device": a.device, "precision": a.precision, "variant": a.variant, "rows": rows}, f, indent=2)
        os.replace(js + ".tmp", js)
    if a.plot:
        print(f"plot: {plot(rows, a.plot, a.accuracy)}")
    failed = [r["name"] for r in rows if "error" in r]
    if failed:
        print(f"{len(failed)} network(s) failed to build or run: {', '.join(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
