"""Training-step (or sliding-window inference) time and peak memory of SegMamba and LightM-UNet 3D (paper
configurations) against MONAI's SwinUNETR on 3D patches.

With ``--infer V``: sliding-window inference (MONAI ``sliding_window_inference``, ROI = the patch, ``--overlap``
0.5 as in segmamba_ct's inference.json, sw batch 1, no grad) of a (1, 1, V, V, V) volume; the time of one pass
after a warm-up pass. Every case runs with glibc keeping freed memory, as a bundle run does. One training step = forward + DiceCE loss + backward + SGD step on a (batch, 1, P, P, P) patch with 3 classes.
Each (model, patch, checkpointing) case runs in its own subprocess, so its peak resident memory (``getrusage``
maxrss; on CUDA also ``torch.cuda.max_memory_allocated``) is its own. Times are the median of ``--steps`` steps
after ``--warmup`` warm-up steps.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_3d.py --patch 96                 # CPU, both models
    .venv/bin/python scripts/bench_3d.py --patch 96 128 --models segmamba --checkpoint both
    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_3d.py --models lightm_unet segmamba swinunetr --patch 128 --infer 128
    .venv/bin/python scripts/bench_3d.py --device cuda --patch 128 --steps 5           # on a GPU
    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_3d.py --patch 128 --infer 128    # inference, 128^3 volume
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def build(model: str, checkpoint: bool) -> torch.nn.Module:
    """The paper configuration of ``model`` (1 input channel, 3 classes)."""
    if model == "segmamba":
        from monai_vlseg.nets.segmamba import SegMamba

        return SegMamba(1, 3, feature_size=(48, 96, 192, 384), hidden_size=768, use_checkpoint=checkpoint)
    if model == "swinunetr":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=1, out_channels=3, feature_size=48, use_checkpoint=checkpoint)
    if model == "lightm_unet":
        from monai_vlseg.nets.lightm_unet import LightMUNet

        if checkpoint:
            raise ValueError("lightm_unet has no activation checkpointing")
        return LightMUNet(3, 1, 3, init_filters=32, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), slice_axis=-1)
    raise ValueError(f"unknown model '{model}' (segmamba, swinunetr, lightm_unet)")


def run_infer(model: str, patch: int, volume: int, overlap: float, device: str) -> dict:
    """Sliding-window inference of a (1, 1, volume^3) input with ROI patch^3, in this process."""
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    dev = torch.device(device)
    net = build(model, False).to(dev).eval()
    x = torch.randn(1, 1, volume, volume, volume, device=dev)
    times = []
    with torch.no_grad():
        for _ in range(2):  # warm-up (scan kernel build, allocator), then the timed pass
            t0 = time.perf_counter()
            sliding_window_inference(x, (patch,) * 3, 1, net, overlap=overlap)
            times.append(time.perf_counter() - t0)
    return {
        "model": model,
        "patch": patch,
        "volume": volume,
        "overlap": overlap,
        "checkpoint": False,
        "device": str(dev),
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "infer_s": round(times[-1], 2),
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
    }


def run_case(model: str, patch: int, batch: int, device: str, steps: int, warmup: int, checkpoint: bool) -> dict:
    """Measure one case in this process."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    dev = torch.device(device)
    net = build(model, checkpoint).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x = torch.randn(batch, 1, patch, patch, patch, device=dev)
    y = torch.randint(0, 3, (batch, 1, patch, patch, patch), device=dev)
    times = []
    for i in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    out = {
        "model": model,
        "patch": patch,
        "batch": batch,
        "device": str(dev),
        "checkpoint": checkpoint,
        "params_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 3),
        "step_s": round(statistics.median(times), 3),
        "steps": steps,
        "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": torch.get_num_threads(),
        "loss": round(float(loss), 4),
    }
    if dev.type == "cuda":
        out["peak_cuda_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["segmamba", "swinunetr"])
    p.add_argument("--patch", type=int, nargs="+", default=[96])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--checkpoint", choices=["off", "on", "both"], default="off",
                   help="activation checkpointing (SegMamba: per ToM layer; SwinUNETR: its use_checkpoint)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per case")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--infer", type=int, default=0, help="time sliding-window inference of a volume of this size")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap of --infer")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    a = p.parse_args(argv)
    if a.case:
        from monai_vlseg.utils import keep_freed_memory

        keep_freed_memory()
        model, patch, ckpt = a.case.split(":")
        if a.infer:
            print(json.dumps(run_infer(model, int(patch), a.infer, a.overlap, a.device)))
        else:
            print(json.dumps(run_case(model, int(patch), a.batch, a.device, a.steps, a.warmup, ckpt == "1")))
        return 0
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[a.checkpoint]
    results = []
    for patch in a.patch:
        for model in a.models:
            for ck in ckpts:
                cmd = [sys.executable, os.path.abspath(__file__), "--case", f"{model}:{patch}:{int(ck)}",
                       "--batch", str(a.batch), "--device", a.device, "--steps", str(a.steps), "--warmup", str(a.warmup),
                       "--infer", str(a.infer), "--overlap", str(a.overlap)]  # fmt: skip
                t0 = time.perf_counter()
                try:
                    res = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                    if res.returncode == 0:
                        r = json.loads(res.stdout.strip().splitlines()[-1])
                    else:
                        err = (res.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
                        r = {"model": model, "patch": patch, "checkpoint": ck, "error": f"rc {res.returncode}: {err}"}
                except subprocess.TimeoutExpired:
                    r = {"model": model, "patch": patch, "checkpoint": ck, "error": f"timeout after {a.timeout} s"}
                r["wall_s"] = round(time.perf_counter() - t0, 1)
                results.append(r)
                print(json.dumps(r), flush=True)
    what = f"s/infer {a.infer}^3" if a.infer else "s/step"
    print(f"\n{'model':<10} {'patch':>5} {'ckpt':>5} {'params M':>9} {what:>8} {'peak RSS GiB':>13}")
    for r in results:
        if "error" in r:
            print(f"{r['model']:<10} {r['patch']:>5} {r['checkpoint']!s:>5}  {r['error']}")
        else:
            print(f"{r['model']:<10} {r['patch']:>5} {r['checkpoint']!s:>5} {r['params_M']:>9} "
                  f"{r['infer_s'] if a.infer else r['step_s']:>8} {r['peak_rss_GiB']:>13}")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
