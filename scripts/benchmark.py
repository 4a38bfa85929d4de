"""Cost of the bundles' paper configurations beside MONAI baselines at the same input size.

For each network: trainable and total parameters, GFLOPs of one forward pass at batch 1
(``torch.utils.flop_counter``: 2 FLOPs per multiply-add, matmul/conv/attention only), CPU (or CUDA) latency at
batch 1 (median), training-step throughput and peak memory. Each network runs in its own subprocess so its peak
resident memory is its own.

    .venv/bin/python scripts/benchmark.py                       # all networks, markdown table
    .venv/bin/python scripts/benchmark.py --nets ua_vls --repeats 5 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE_TEXT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def build(name: str):
    """(network, example forward args at batch 1, note). Paper configurations with offline defaults."""
    if name == "ua_vls":
        from monai_vlseg.nets import UAVLS
        from monai_vlseg.transforms import TokenizeText

        net = UAVLS()  # ConvNeXt-Tiny (random init), default text tower, 224x224
        ids, mask = TokenizeText(max_length=24)(EXAMPLE_TEXT)
        return net, (torch.rand(1, 1, 224, 224), ids[None], mask[None]), "paper config, text tower frozen"
    if name == "unet":
        from monai.networks.nets import UNet

        net = UNet(2, 1, 1, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2), num_res_units=2)
        return net, (torch.rand(1, 1, 224, 224),), "MONAI UNet 32-512, 2 res units"
    if name == "swin_unetr":
        from monai.networks.nets import SwinUNETR

        net = SwinUNETR(in_channels=1, out_channels=1, feature_size=48, spatial_dims=2)
        return net, (torch.rand(1, 1, 224, 224),), "MONAI SwinUNETR 2D, feature 48"
    raise ValueError(f"unknown network '{name}'")


NETS = ("ua_vls", "unet", "swin_unetr")


def measure(name: str, repeats: int, batch: int, device: str, amp: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net, args, note = build(name)
    dev = torch.device(device)
    net = net.to(dev)
    args = tuple(a.to(dev) for a in args)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            net(*args)
    gflops = fc.get_total_flops() / 1e9

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp else torch.no_grad
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync()
            t = time.perf_counter()
            with ctx():
                net(*args)
            sync()
            if i:  # first call is warm-up
                times.append(time.perf_counter() - t)
    latency = statistics.median(times)

    net.train()
    bargs = tuple(a.expand(batch, *a.shape[1:]).contiguous() for a in args)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    steps = []
    for i in range(max(2, repeats // 2) + 1):
        sync()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = net(*bargs)
            loss = out.float().sigmoid().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i:
            steps.append(time.perf_counter() - t)
    step = statistics.median(steps)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "name": name, "note": note, "trainable_M": trainable / 1e6, "total_M": total / 1e6, "gflops": gflops,
        "latency_ms": latency * 1e3, "train_img_per_s": batch / step, "peak_mem_MiB": peak, "batch": batch,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=2, help="batch of the training-step measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._one:
        print(json.dumps(measure(a._one, a.repeats, a.batch, a.device, a.amp)))
        return 0
    rows = []
    for name in a.nets.split(","):
        cmd = [sys.executable, __file__, "--_one", name, "--repeats", str(a.repeats), "--batch", str(a.batch),
               "--device", a.device] + (["--amp"] if a.amp else [])  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            return res.returncode
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    head = (
        f"{datetime.date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} CPU cores · "
        f"torch {torch.__version__} · device {a.device}{' (bf16 autocast)' if a.amp else ''} · "
        f"`{' '.join(['python', 'scripts/benchmark.py'] + sys.argv[1:])}`"
    )
    lines = [
        head, "",
        "| network | trainable (M) | total (M) | GFLOPs (fwd, bs 1) | latency bs 1 (ms) | train img/s (bs %d) | peak mem (MiB) | note |"
        % a.batch,
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['trainable_M']:.2f} | {r['total_M']:.2f} | {r['gflops']:.2f} | {r['latency_ms']:.0f} | "
            f"{r['train_img_per_s']:.2f} | {r['peak_mem_MiB']:.0f} | {r['note']} |"
        )
    text = "\n".join(lines)
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
