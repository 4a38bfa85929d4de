"""Forward + backward cost of the selective scan: the fused CPU kernel, the chunked torch scan, the sequential
reference and mambapy's pscan, beside the arithmetic floor.

Every measurement runs in its own subprocess (with glibc keeping freed memory, as in a bundle run:
``monai_vlseg.utils.keep_freed_memory``), so its peak resident memory (``getrusage`` maxrss) is its own; the
table also gives the growth of the resident set over the inputs.  Times are the median of ``--repeats`` runs
after one warm-up.  The reference (``selective_scan(..., backend="ref")``, one autograd step per position, linear
in L; ``--indexed-ref`` adds the textbook loop that indexes full tensors per step, quadratic in L) runs
at the full length, or at ``--ref-length`` steps scaled linearly (its cost grows faster than linearly with L, so
the scaled figure is a lower bound).

The floor row: a forward + backward pass must do at least two state updates per (batch, channel, step, state) —
the forward one (exp of delta*A, the state FMA, the output FMA) and its adjoint — so its time is
``2 * b * d * L * N / rate``, where ``rate`` is the update rate of the bare forward arithmetic with the state in
registers and no memory traffic (``monai_vlseg.ops.cpu_scan.update_rate``), measured on the same threads in the
same run. The fused kernel also recomputes the forward states in its backward pass (a third update), so 1.5x the
floor is its own limit.

    .venv/bin/python scripts/bench_scan.py --threads 2               # 2D (2, 192, 3136, 16) and 3D (1, 96, 32768, 16)
    .venv/bin/python scripts/bench_scan.py --sizes 3d --ref-length 4096 --chunk-sizes 16 32 64
    .venv/bin/python scripts/bench_scan.py --device cuda      # our torch backend vs the mamba-ssm kernel
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SIZES = {"2d": (2, 192, 3136, 16), "3d": (1, 96, 32768, 16)}  # (batch, d_inner, L, d_state)


def make_inputs(batch: int, dim: int, length: int, n: int, device: str) -> list[torch.Tensor]:
    """Mamba-like inputs: A = -exp(log(1..N)), softplus(delta + bias) in ~[0.001, 0.1]."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5 - 4.0
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1)
    B = torch.randn(batch, n, length, generator=g)
    C = torch.randn(batch, n, length, generator=g)
    D = torch.ones(dim)
    z = torch.randn(batch, dim, length, generator=g)
    delta_bias = torch.rand(dim, generator=g) * 0.5
    return [x.to(device).requires_grad_() for x in (u, delta, A, B, C, D, z, delta_bias)]


def scan_ours(backend: str):
    from monai_vlseg.ops import selective_scan

    def fn(u, delta, A, B, C, D, z, delta_bias, chunk_size=None):
        return selective_scan(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend=backend, chunk_size=chunk_size
        )

    return fn


def scan_mambapy(u, delta, A, B, C, D, z, delta_bias):
    """mambapy's Blelloch scan over materialised (batch, L, dim, N) decays and inputs."""
    from mambapy.pscan import pscan

    delta = F.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (b, L, d)
    delta_a = torch.exp(delta.unsqueeze(-1) * A)  # (b, L, d, N)
    delta_b_u = (delta * u.transpose(1, 2)).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    hs = pscan(delta_a, delta_b_u)  # h_t = A_t h_{t-1} + X_t
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)  # (b, d, L)
    return (y + D[:, None] * u) * F.silu(z)


def scan_reference_indexed(u, delta, A, B, C, D, z, delta_bias):
    """Textbook loop (as in mamba-ssm's ``selective_scan_ref``): full (b, d, N, L) decays/inputs indexed per step.

    Indexing one step of a saved tensor makes autograd allocate a full-size gradient per step: quadratic backward.
    """
    delta = F.softplus(delta + delta_bias[:, None])
    delta_a = torch.exp(delta.unsqueeze(2) * A.unsqueeze(-1))  # (b, d, N, L)
    delta_b_u = (delta * u).unsqueeze(2) * B.unsqueeze(1)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = delta_a[..., t] * h + delta_b_u[..., t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return (torch.stack(ys, dim=-1) + D[:, None] * u) * F.silu(z)


IMPLS = {
    "reference": scan_ours("ref"),
    "ref-indexed": scan_reference_indexed,
    "fused": scan_ours("cpu"),
    "torch": scan_ours("torch"),
    "mambapy": scan_mambapy,
    "ours-torch": scan_ours("torch"),
    "mamba-ssm": scan_ours("cuda"),
}


def current_rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def worker(args: argparse.Namespace) -> None:
    """One measurement; prints a JSON line."""
    from monai_vlseg.utils import keep_freed_memory

    keep_freed_memory()  # as in every bundle run, for every implementation
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "floor":
        from monai_vlseg.ops.cpu_scan import update_rate

        rates = [update_rate(torch.get_num_threads()) for _ in range(args.warmup + args.repeats)][args.warmup :]
        rate = statistics.median(rates)
        t = 2 * args.batch * args.dim * args.length * args.d_state / rate
        print(json.dumps({"times": [t], "median": t, "rate": rate}))
        return
    fn = IMPLS[args.worker]
    if args.chunk:
        fn = functools.partial(fn, chunk_size=args.chunk)
    inputs = make_inputs(args.batch, args.dim, args.length, args.d_state, args.device)
    grad = torch.randn(args.batch, args.dim, args.length, generator=torch.Generator().manual_seed(1))
    grad = grad.to(args.device)
    cuda = args.device.startswith("cuda")

    def step() -> float:
        for x in inputs:
            x.grad = None
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*inputs).backward(grad)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    rss0 = current_rss_kb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    times = [step() for _ in range(args.warmup + args.repeats)][args.warmup :]
    out = {"times": times, "median": statistics.median(times)}
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_growth_mb"] = out["maxrss_mb"] - rss0 / 1024
    if cuda:
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - mem0) / 2**20
    print(json.dumps(out))


def measure(
    impl: str,
    batch: int,
    dim: int,
    length: int,
    n: int,
    args: argparse.Namespace,
    repeats: int,
    chunk: int = 0,
    warmup: int | None = None,
) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--device", args.device, "--chunk", str(chunk)]
    cmd += ["--batch", str(batch), "--dim", str(dim), "--length", str(length), "--d-state", str(n)]
    warmup = args.warmup if warmup is None else warmup
    cmd += ["--repeats", str(repeats), "--warmup", str(warmup), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def check_agreement(args: argparse.Namespace) -> str:
    """Max relative difference of ours and mambapy vs the reference on a short input."""
    inputs = make_inputs(2, 16, 300, 16, "cpu")
    ref = IMPLS["reference"](*inputs)
    scale = ref.abs().max().item()
    parts = []
    for name in ("fused", "torch", "mambapy", "ref-indexed"):
        try:
            parts.append(f"{name} {(IMPLS[name](*inputs) - ref).abs().max().item() / scale:.1e}")
        except ImportError:
            parts.append(f"{name} n/a")
    return "max |out - ref| / max |ref| at (2, 16, 300, 16): " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["2d", "3d"], help="2d, 3d or b,d,L,N tuples")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--ref-length", type=int, default=0, help="time the reference at this length and scale linearly (0: full L)"
    )
    parser.add_argument("--no-mambapy", action="store_true")
    parser.add_argument(
        "--indexed-ref", action="store_true", help="also time the textbook (indexing, quadratic-backward) reference"
    )
    parser.add_argument(
        "--chunk-sizes", type=int, nargs="*", default=[], help="also time our scan with these chunk sizes T"
    )
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=sorted(IMPLS) + ["floor"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d-state", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from monai_vlseg.ops import mamba_ssm_available

    threads = args.threads or torch.get_num_threads()
    from monai_vlseg.ops.selective_scan import DEFAULT_CHUNK_SIZE

    print(f"torch {torch.__version__}, device {args.device}, {threads} threads, {os.cpu_count()} CPUs, ", end="")
    print(f"load average {os.getloadavg()[0]:.1f}; our default chunk size T={DEFAULT_CHUNK_SIZE}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("CUDA is not available: nothing to time.")
            return
        impls = ["ours-torch"] + (["mamba-ssm"] if mamba_ssm_available() else [])
        if "mamba-ssm" not in impls:
            print("mamba_ssm's CUDA kernel cannot be imported: timing our torch backend only.")
    else:
        impls = ["floor", "fused", "torch", "reference"] + (["ref-indexed"] if args.indexed_ref else [])
        try:
            import mambapy.pscan  # noqa: F401

            impls += [] if args.no_mambapy else ["mambapy"]
        except ImportError:
            print("mambapy is not installed: no pscan column.")
        print(check_agreement(args))
    widths = (20, 11, 10, 8, 11, 13)
    cols = ("size (b, d, L, N)", "impl", "fwd+bwd s", "vs fused", "peak RSS MB", "RSS growth MB")
    if args.device == "cuda":
        cols = cols[:4] + ("peak CUDA MB", "-")

    def line(cells: tuple[str, ...], note: str = "") -> str:
        body = [f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(body) + f" | {note}"

    print(line(cols, "note"))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|------")
    for size in args.sizes:
        b, d, length, n = SIZES[size] if size in SIZES else tuple(int(v) for v in size.split(","))
        rows = {}
        for impl in impls + [f"torch T={t}" for t in args.chunk_sizes]:
            note, run_len, reps = "", length, args.repeats
            if impl in ("reference", "ref-indexed") and 0 < args.ref_length < length:
                run_len = args.ref_length
                note = f"timed at L={run_len}, scaled x{length / run_len:.2f} (linear, a lower bound)"
                note += f"; memory at L={run_len}"
            if impl.startswith("torch T="):
                res = measure("torch", b, d, run_len, n, args, reps, chunk=int(impl.split("=")[1]))
            elif impl in ("reference", "ref-indexed"):  # slow: one run, no warm-up
                res = measure(impl, b, d, run_len, n, args, 1, warmup=0)
                note = (note + "; " if note else "") + "1 run"
            else:
                res = measure(impl, b, d, run_len, n, args, reps)
            if impl == "floor" and "rate" in res:
                note = f"2 updates x b*d*L*N at {res['rate'] / 1e9:.2f} G updates/s (bare arithmetic, same threads)"
            if "error" in res:
                rows[impl] = (None, res, f"failed: {res['error']}")
            else:
                rows[impl] = (res["median"] * length / run_len, res, note)
        ours_t = rows.get("fused", rows.get("ours-torch", (None,)))[0]
        for impl, (t, res, note) in rows.items():
            mem = res.get("cuda_peak_mb", res.get("maxrss_mb"))
            cells = (
                f"{b}, {d}, {length}, {n}",
                impl,
                f"{t:.3f}" if t else "-",
                f"{t / ours_t:.1f}x" if t and ours_t else "-",
                f"{mem:.0f}" if mem is not None else "-",
                f"{res['rss_growth_mb']:.0f}" if "rss_growth_mb" in res and "cuda_peak_mb" not in res else "-",
            )
            if impl == "floor":
                cells = cells[:4] + ("-", "-")
            print(line(cells, note), flush=True)
        floor_t, torch_t = rows.get("floor", (None,))[0], rows.get("torch", (None,))[0]
        if ours_t and (floor_t or torch_t):
            parts = [f"fused / floor = {ours_t / floor_t:.2f}x" if floor_t else "",
                     f"torch / fused = {torch_t / ours_t:.2f}x" if torch_t else ""]
            print(f"  {b}, {d}, {length}, {n}: " + "; ".join(p for p in parts if p), flush=True)
    if args.device == "cuda":
        print("memory columns on CUDA: peak allocated by the step (torch.cuda.max_memory_allocated).")


if __name__ == "__main__":
    main()
