"""Where a bundle network's CPU time goes: ``torch.profiler`` over its forward pass (and, with ``--train``, a training
step) at the size ``scripts/benchmark.py`` measures (the paper's input size; ``--shape`` overrides it).

Prints the operators with the most self time, and the share of the selective scan, the cross-scan copies and the
layout changes (``copy_`` / ``contiguous`` / ``permute``), so what dominates after the fused scan is named, not
guessed.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/profile_nets.py --nets vm_unet tifcmamba ua_vls
    OMP_NUM_THREADS=2 .venv/bin/python scripts/profile_nets.py --nets segmamba_ct --shape 64 64 64
    OMP_NUM_THREADS=2 .venv/bin/python scripts/profile_nets.py --nets vm_unet --train
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from benchmark import _scalar, build_bundle  # noqa: E402

#: how a profiler event is classed in the summary (first match by substring of its name).
CLASSES = (
    ("selective scan", ("_FusedScanFn", "_ChunkedScanFn", "selective_scan")),
    ("cross-scan / merge", ("_AdjointPair",)),
    ("copies / layout", ("copy_", "contiguous", "clone", "permute", "transpose", "flip", "cat", "stack")),
    ("conv", ("conv", "mkldnn_convolution")),
    ("matmul / linear", ("addmm", "mm", "bmm", "linear", "matmul", "einsum")),
    ("norm", ("norm",)),
)


def classify(name: str) -> str:
    for label, keys in CLASSES:
        if any(k in name for k in keys):
            return label
    return "other"


def profile(name: str, shape: list[int] | None, train: bool, repeats: int) -> None:
    from monai_vlseg.utils import keep_freed_memory

    keep_freed_memory()  # as in a bundle run
    net, inputs, desc = build_bundle(name)
    if shape:
        image = inputs[0]
        inputs = (torch.rand(1, image.shape[1], *shape), *inputs[1:])
        desc = f"{image.shape[1]}x{'x'.join(map(str, shape))}" + desc[desc.find(" +") :] if " +" in desc else ""
    net.train(train)
    params = [p for p in net.parameters() if p.requires_grad]

    def step() -> None:
        if train:
            for p in params:
                p.grad = None
            _scalar(net(*inputs)).backward()
        else:
            with torch.no_grad():
                net(*inputs)

    step()  # warm-up (kernel build, allocator)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    wall = (time.perf_counter() - t0) / repeats
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_class: dict[str, float] = {}
    for e in events:
        by_class[classify(e.key)] = by_class.get(classify(e.key), 0.0) + e.self_cpu_time_total
    mode = "training step (fwd + bwd)" if train else "forward (no grad)"
    print(f"\n## {name}: {mode}, input {desc or tuple(inputs[0].shape)}, {torch.get_num_threads()} threads, "
          f"{wall * 1e3:.0f} ms per pass (mean of {repeats}), load average {os.getloadavg()[0]:.1f}")
    print("| class | share of self time |\n|---|---|")
    for label, t in sorted(by_class.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {100 * t / total:.1f}% |")
    print("\n| operator | self ms | share | calls |\n|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"| {e.key[:60]} | {e.self_cpu_time_total / 1e3:.1f} | {100 * e.self_cpu_time_total / total:.1f}% "
              f"| {e.count} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=["vm_unet", "tifcmamba", "ua_vls", "segmamba_ct"])
    parser.add_argument("--shape", nargs="+", type=int, help="spatial size instead of the paper's")
    parser.add_argument("--train", action="store_true", help="profile a training step instead of inference")
    parser.add_argument("--repeats", type=int, default=2)
    a = parser.parse_args()
    for name in a.nets:
        profile(name, a.shape, a.train, a.repeats)


if __name__ == "__main__":
    main()
