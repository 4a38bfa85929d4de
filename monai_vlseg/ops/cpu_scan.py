"""The fused CPU selective-scan kernel (``csrc/selective_scan_cpu.cpp``): built on first use, called through ctypes.

Why this way: the kernel is a few hundred lines of plain C++ with no torch headers, so ``g++`` builds it in about
two seconds (a torch C++ extension takes a minute and ties the build to one torch ABI), with ``-march=native`` for
the machine it runs on. The shared library is cached under ``$MONAI_VLSEG_KERNEL_CACHE`` (default
``~/.cache/monai_vlseg/kernels``), keyed by the source, the compiler and the CPU, and built under a file lock, so
concurrent processes (DDP ranks, pytest workers) build it once. Where no compiler works, :func:`load_kernel` returns
``None``, :func:`monai_vlseg.ops.selective_scan` uses its PyTorch scan and says so once in a warning.

    python -m monai_vlseg.ops.cpu_scan     # build now and print where the library is and the update rate
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from monai_vlseg.files import file_lock

__all__ = ["KERNEL_CACHE_ENV", "kernel_unavailable_reason", "load_kernel", "fused_selective_scan", "update_rate"]

#: environment variable naming the folder of the built kernel (default ``~/.cache/monai_vlseg/kernels``).
KERNEL_CACHE_ENV = "MONAI_VLSEG_KERNEL_CACHE"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-pthread", "-fno-math-errno"]

_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cache_dir() -> str:
    env = os.environ.get(KERNEL_CACHE_ENV)
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "monai_vlseg", "kernels")


def _cpu_signature() -> str:
    """The CPU's model and feature flags (a library built with ``-march=native`` runs only where these match)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(("flags", "model name", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cxx: str, folder: str) -> str:
    """Compile the kernel into ``folder`` (once per source/compiler/CPU) and return the library path."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join(x.encode() if isinstance(x, str) else x for x in (
        source, version, " ".join(_FLAGS), platform.machine(), _cpu_signature()))).hexdigest()[:16]
    lib = os.path.join(folder, f"selective_scan_cpu-{key}.so")
    if os.path.isfile(lib):
        return lib
    os.makedirs(folder, exist_ok=True)
    with file_lock(os.path.join(folder, ".build.lock")):
        if os.path.isfile(lib):
            return lib
        fd, tmp = tempfile.mkstemp(prefix=".selective_scan_cpu-", suffix=".so", dir=folder)
        os.close(fd)
        try:
            errors = []
            # -march=native and OpenMP are not known to every compiler / target: try without them in turn
            for extra in (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []):
                res = subprocess.run([cxx, *_FLAGS, *extra, SOURCE, "-o", tmp], capture_output=True, text=True,
                                     timeout=600)
                if res.returncode == 0:
                    os.replace(tmp, lib)
                    return lib
                errors.append(res.stderr.strip()[-2000:])
            raise RuntimeError(f"{cxx} could not build {SOURCE}:\n" + "\n".join(errors))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def load_kernel() -> ctypes.CDLL | None:
    """The fused kernel's library, built on first use; ``None`` (reason: :func:`kernel_unavailable_reason`) when no
    C++ compiler can build it here. The result is cached for the process."""
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        lib, reason = None, None
        cxx = _compiler()
        if cxx is None:
            reason = "no C++ compiler found (set CXX, or install g++)"
        else:
            try:
                path = _build(cxx, _cache_dir())
                lib = ctypes.CDLL(path)
                _declare(lib)
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                lib, reason = None, f"{type(e).__name__}: {e}"
        _STATE["lib"], _STATE["reason"] = lib, reason
        return lib


def kernel_unavailable_reason() -> str | None:
    """Why :func:`load_kernel` returned ``None`` (``None`` when the kernel loaded or was not tried yet)."""
    return _STATE.get("reason")  # type: ignore[return-value]


def warn_unavailable_once() -> None:
    if not _STATE.get("warned"):
        _STATE["warned"] = True
        warnings.warn(
            "monai_vlseg: the fused CPU selective-scan kernel is unavailable "
            f"({kernel_unavailable_reason()}); using the slower PyTorch scan.",
            RuntimeWarning,
            stacklevel=3,
        )


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ssc_block.restype = i32
    lib.ssc_forward.argtypes = [p] * 12 + [i64] * 5 + [i32, i64, i32]
    lib.ssc_forward.restype = i32
    lib.ssc_backward.argtypes = [p] * 20 + [i64] * 5 + [i32, i64, i32]
    lib.ssc_backward.restype = i32
    lib.ssc_update_rate.argtypes = [i64, i32]
    lib.ssc_update_rate.restype = ctypes.c_double


def update_rate(threads: int | None = None, steps: int = 2_000_000) -> float:
    """Measured state updates per second of the bare recurrence arithmetic (exp, state FMA, output FMA; registers
    only) on ``threads`` threads: the arithmetic floor that ``scripts/bench_scan.py`` compares the kernel with."""
    lib = load_kernel()
    if lib is None:
        raise RuntimeError(f"the fused CPU kernel is unavailable: {kernel_unavailable_reason()}")
    threads = threads or torch.get_num_threads()
    lib.ssc_update_rate(steps // 10, threads)  # warm-up (clock ramp, page faults)
    return float(lib.ssc_update_rate(steps, threads))


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _slices(batch: int, dim: int, groups: int, items: int) -> int:
    """Channel slices per (batch, group) so that the kernel has about ``items`` work items (at most one channel each)."""
    return max(1, min(dim // groups, -(-items // (batch * groups))))


#: most gB/gC partial sums of the backward (each one holds a whole (b, G, L, N) buffer).
_MAX_GRAD_SLICES = 8


def _grad_slices(batch: int, dim: int, groups: int) -> int:
    """Channel slices of the backward: two work items per core of the machine, at most :data:`_MAX_GRAD_SLICES`.

    The gB/gC partial sums follow the slices, so they depend on the shapes and the machine, never on the thread
    count of the call: a run gives the same bits on 1 or 2 threads (a resumed run that ``torch_threads="auto"`` gave
    another count ends as the uninterrupted one).
    """
    return min(_MAX_GRAD_SLICES, _slices(batch, dim, groups, 2 * (os.cpu_count() or 1)))


class _FusedScanFn(torch.autograd.Function):
    """``(out, last_state)`` of the fused kernel; fp32 contiguous inputs, ``B``/``C`` as (b, G, L, N), N % 8 == 0."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, softplus: bool):  # type: ignore[override]
        lib = load_kernel()
        b, d, length = u.shape
        n, g = A.shape[1], B.shape[1]
        nblk = -(-length // lib.ssc_block())
        out, last = torch.empty_like(u), u.new_empty(b, d, n)
        need_grad = any(ctx.needs_input_grad[:8])
        ckpt = u.new_empty(b, d, nblk, n) if need_grad else None
        pre = torch.empty_like(u) if need_grad and z is not None else None  # y + D u before the gate, for dL/dz
        threads = torch.get_num_threads()
        rc = lib.ssc_forward(*map(_ptr, (u, delta, A, B, C, D, z, bias, out, last, ckpt, pre)), b, d, length, n, g,
                             int(softplus), _slices(b, d, g, 4 * threads), threads)
        if rc != 0:
            raise RuntimeError(f"fused selective scan: unsupported shapes u {tuple(u.shape)}, B {tuple(B.shape)}.")
        ctx.softplus, ctx.threads = softplus, threads
        ctx.save_for_backward(u, delta, A, B, C, D, z, bias, ckpt, pre)
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, glast):  # type: ignore[override]
        u, delta, A, B, C, D, z, bias, ckpt, pre = ctx.saved_tensors
        if gout is None and glast is None:
            return (None,) * 9
        b, d, length = u.shape
        n, g = A.shape[1], B.shape[1]
        threads = ctx.threads
        gout = torch.zeros_like(u) if gout is None else gout.contiguous().float()
        glast = None if glast is None else glast.contiguous().float()
        slices = _grad_slices(b, d, g)  # each slice holds a gB/gC partial sum
        gu, gdelta = torch.empty_like(u), torch.empty_like(u)
        gA, gD, gbias = u.new_empty(b, d, n), u.new_empty(b, d), u.new_empty(b, d)
        gB, gC = B.new_empty((slices, *B.shape)), C.new_empty((slices, *C.shape))
        gz = torch.empty_like(u) if z is not None else None
        rc = load_kernel().ssc_backward(
            *map(_ptr, (u, delta, A, B, C, D, z, bias, ckpt, pre, gout, glast, gu, gdelta, gA, gB, gC, gD, gbias, gz)),
            b, d, length, n, g, int(ctx.softplus), slices, threads,
        )
        if rc != 0:
            raise RuntimeError("fused selective scan backward: unsupported shapes.")
        return (
            gu,
            gdelta,
            gA.sum(0),
            gB.sum(0) if slices > 1 else gB[0],
            gC.sum(0) if slices > 1 else gC[0],
            None if D is None else gD.sum(0),
            gz,
            None if bias is None else gbias.sum(0),
            None,
        )


def fused_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor]:
    """``(out, last_state)`` in fp32 from the fused kernel (see :func:`monai_vlseg.ops.selective_scan`).

    ``B``/``C`` are (batch, d_state, L) or grouped (batch, G, d_state, L); inputs of any float dtype are read as fp32
    (bf16/fp16 accumulate in fp32). A state size that is not a multiple of 8 is padded with inert states (A = 0,
    B = C = 0). Autograd flows to every input through the dtype casts, the padding and the layout change.
    """
    b, d, length = u.shape
    n = A.shape[1]
    gb = 1 if B.dim() == 3 else B.shape[1]
    gc = 1 if C.dim() == 3 else C.shape[1]
    groups = math.lcm(gb, gc)

    def bc_layout(m: Tensor, gm: int) -> Tensor:  # (b, [G,] N, L) -> (b, groups, L, N_padded) contiguous fp32
        m = (m.unsqueeze(1) if m.dim() == 3 else m).float()
        if gm != groups:
            m = m.repeat_interleave(groups // gm, dim=1)
        m = m.transpose(-1, -2)
        return F.pad(m, (0, pad)).contiguous() if pad else m.contiguous()

    pad = -n % 8
    a = F.pad(A.float(), (0, pad)) if pad else A.float()
    out, last = _FusedScanFn.apply(
        u.float().contiguous(),
        delta.float().contiguous(),
        a.contiguous(),
        bc_layout(B, gb),
        bc_layout(C, gc),
        None if D is None else D.float().contiguous(),
        None if z is None else z.float().contiguous(),
        None if delta_bias is None else delta_bias.float().contiguous(),
        bool(delta_softplus),
    )
    return out, (last[..., :n] if pad else last)


if __name__ == "__main__":
    lib = load_kernel()
    if lib is None:
        print(f"fused CPU selective-scan kernel unavailable: {kernel_unavailable_reason()}")
        raise SystemExit(1)
    print(f"fused CPU selective-scan kernel: {lib._name}")
    for nt in sorted({1, torch.get_num_threads()}):
        print(f"bare recurrence arithmetic, {nt} thread(s): {update_rate(nt) / 1e9:.2f} G state updates/s")
