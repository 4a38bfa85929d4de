"""Training-step time of a bundle's demo network on the CPU with other processes keeping cores busy, under torch's
default thread count and under ``torch_threads="auto"`` (:func:`monai_vlseg.utils.set_torch_threads`).

Every condition runs in its own subprocess, started after ``--hogs`` busy-looping processes have been running for a
second (so :func:`monai_vlseg.utils.free_cores` sees them); the subprocess builds the bundle's ``network_def`` with
``configs/demo.json`` and times ``--steps`` AdamW steps (forward + backward, random images and token ids, batch
``--batch``) after two warm-up steps. No ``OMP_NUM_THREADS`` is passed to it (the setting under test). The table
reports the median step time and the threads chosen.

    .venv/bin/python scripts/bench_threads.py                        # ua_vls, 0-2 hogs, default vs auto
    .venv/bin/python scripts/bench_threads.py --bundle vm_unet --steps 10 --out docs/threads.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CHILD = r"""
import json, os, statistics, sys, time
import torch
from monai.bundle import ConfigParser
from monai_vlseg.utils import set_torch_threads
bundle, setting, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
threads = set_torch_threads(None if setting == "default" else setting)
cfg = os.path.join(bundle, "configs")
p = ConfigParser()
p.read_config([os.path.join(cfg, "train.json"), os.path.join(cfg, "demo.json")])
p.read_meta(os.path.join(cfg, "metadata.json"))
p["bundle_root"] = bundle
net = p.get_parsed_content("network_def")
inputs = p["_meta_"]["network_data_format"]["inputs"]
size = p.get_parsed_content("image_size")
g = torch.Generator().manual_seed(0)
x = torch.rand(batch, inputs["image"]["num_channels"], *size, generator=g)
args = [x]
if "input_ids" in inputs:
    n = p.get_parsed_content("text_len")
    args += [torch.randint(1000, 2000, (batch, n), generator=g), torch.ones(batch, n, dtype=torch.long)]
opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], 1e-4)
times = []
for i in range(steps + 2):
    t = time.perf_counter()
    out = net(*args)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(out, dict):
        out = next(v for v in out.values() if torch.is_tensor(v) and v.requires_grad)
    out.float().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 2:
        times.append(time.perf_counter() - t)
print(json.dumps({"threads": threads, "median_s": statistics.median(times)}))
"""


def hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(bundle: str, setting: str, hogs: int, steps: int, batch: int) -> dict:
    procs = [hog() for _ in range(hogs)]
    try:
        time.sleep(1.0)
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        res = subprocess.run(
            [sys.executable, "-c", CHILD, bundle, setting, str(steps), str(batch)],
            capture_output=True, text=True, env=env, timeout=1800,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        return json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="ua_vls")
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the table as Markdown here")
    args = ap.parse_args()
    bundle = os.path.join(REPO, "bundles", args.bundle)
    load = os.getloadavg()
    rows = []
    for hogs in args.hogs:
        for setting in ("default", "auto"):
            r = measure(bundle, setting, hogs, args.steps, args.batch)
            rows.append((hogs, setting, r["threads"], r["median_s"]))
            print(f"hogs={hogs} {setting:7s} threads={r['threads']} step={r['median_s']:.3f} s", flush=True)
    cmd = "python scripts/bench_threads.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{cmd.strip()}` on {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average before the run {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}; {args.bundle} demo network, "
        f"batch {args.batch}, median of {args.steps} training steps.",
        "",
        "| busy processes | torch_threads | threads used | step (s) | vs. no load, default |",
        "|---:|---|---:|---:|---:|",
    ]
    base = next((s for h, st, _, s in rows if h == 0 and st == "default"), None)
    for hogs, setting, threads, sec in rows:
        ratio = f"{sec / base:.2f}x" if base else ""
        lines.append(f"| {hogs} | {setting} | {threads} | {sec:.3f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:  # replace the block between the markers when the file has them (docs/threads.md), else write it
        begin, end = "<!-- bench_threads -->\n", "<!-- /bench_threads -->\n"
        old = open(args.out, encoding="utf-8").read() if os.path.isfile(args.out) else ""
        if begin in old and end in old:
            text = old[: old.index(begin) + len(begin)] + text + old[old.index(end) :]
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
