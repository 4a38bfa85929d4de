"""Selective scan (the Mamba S6 recurrence) with a fast chunked PyTorch backend and the mamba-ssm CUDA kernel.

The recurrence, per batch ``b``, channel ``d`` and state ``n``:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = sum_n C_t[n] h_t[n],
    out = (y + D * u) * silu(z),                               h_{-1} = 0.

Backends: ``"cuda"`` (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``), ``"cpu"`` (the fused C++
kernel of :mod:`monai_vlseg.ops.cpu_scan`, built on first use: the CPU default), ``"torch"`` (a two-level chunked
scan written as tensor operations, with a hand-written, segment-recomputing backward; any device; the CPU fallback
where no compiler can build the kernel) and ``"ref"`` (a plain loop over the sequence, for debugging only). Under
tracing (TorchScript / ONNX export) a two-level chunked scan of plain tensor operations is recorded instead
(:func:`selective_scan_traceable`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from monai_vlseg.ops import cpu_scan

__all__ = [
    "SCAN_BACKEND_ENV",
    "SCAN_BACKENDS",
    "mamba_ssm_available",
    "resolve_scan_backend",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_traceable",
]

#: environment variable that forces a backend (``"cpu"``, ``"torch"``, ``"cuda"``, ``"ref"`` or ``"auto"``).
SCAN_BACKEND_ENV = "MONAI_VLSEG_SCAN_BACKEND"
SCAN_BACKENDS = ("auto", "cpu", "torch", "cuda", "ref")

#: default chunk length T of the intra-chunk loop (see ``scripts/bench_scan.py``).
DEFAULT_CHUNK_SIZE = 16
#: default bound, in elements, of one (segment, batch, dim, d_state) work buffer (2**20 floats = 4 MiB in fp32):
#: the torch backend holds three such buffers, so a segment's working set stays cache-sized (fastest on CPU).
DEFAULT_SEGMENT_ELEMENTS = 1 << 20
#: the same bound on accelerators (no cache to fit; fewer, larger kernels); there the chunk length defaults to
#: about sqrt(segment length), which minimises the number of kernel launches.
DEFAULT_SEGMENT_ELEMENTS_GPU = 1 << 26

_MAMBA_LOCK = threading.Lock()
_MAMBA_CACHE: dict[str, Any] = {}


def _mamba_scan_fn() -> Callable | None:
    """Import ``mamba_ssm``'s ``selective_scan_fn`` once (lazily) and cache it; ``None`` when it cannot be imported."""
    with _MAMBA_LOCK:
        if "fn" not in _MAMBA_CACHE:
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

                _MAMBA_CACHE["fn"], _MAMBA_CACHE["error"] = selective_scan_fn, None
            except ImportError as e:  # mamba_ssm (or its CUDA extension) missing
                _MAMBA_CACHE["fn"], _MAMBA_CACHE["error"] = None, e
            except Exception as e:  # noqa: BLE001 - broken builds raise OSError/RuntimeError etc. at import
                _MAMBA_CACHE["fn"], _MAMBA_CACHE["error"] = None, e
        return _MAMBA_CACHE["fn"]


def mamba_ssm_available() -> bool:
    """Whether ``mamba_ssm``'s CUDA selective scan can be imported (the result is cached)."""
    return _mamba_scan_fn() is not None


def resolve_scan_backend(backend: str | None = None, device: torch.device | str | None = None) -> str:
    """Backend that :func:`selective_scan` uses: ``backend`` if given, else ``$MONAI_VLSEG_SCAN_BACKEND``, else auto.

    Auto picks ``"cuda"`` when ``mamba_ssm`` imports and ``device`` is a CUDA device, ``"cpu"`` (the fused kernel)
    for CPU tensors when the kernel builds here, otherwise ``"torch"`` (warning once that the kernel is missing).

    Raises:
        ValueError: unknown backend name.
        RuntimeError: ``"cuda"`` forced but ``mamba_ssm`` cannot be imported or ``device`` is not CUDA; ``"cpu"``
            forced but the kernel cannot be built or ``device`` is not the CPU.
    """
    name = backend if backend is not None else os.environ.get(SCAN_BACKEND_ENV, "")
    name = (name or "auto").strip().lower()
    if name not in SCAN_BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r}, expected one of {SCAN_BACKENDS}.")
    is_cuda = device is not None and torch.device(device).type == "cuda"
    is_cpu = device is not None and torch.device(device).type == "cpu"
    if name == "auto":
        if is_cuda and mamba_ssm_available():
            return "cuda"
        if is_cpu:
            if cpu_scan.load_kernel() is not None:
                return "cpu"
            cpu_scan.warn_unavailable_once()
        return "torch"
    if name == "cpu":
        if cpu_scan.load_kernel() is None:
            raise RuntimeError(
                "selective-scan backend 'cpu' was requested but the fused CPU kernel cannot be built "
                f"({cpu_scan.kernel_unavailable_reason()}); install a C++ compiler (g++) or use backend='torch'."
            )
        if device is not None and not is_cpu:
            raise RuntimeError(f"selective-scan backend 'cpu' needs CPU tensors, got tensors on {device}.")
    if name == "cuda":
        if not mamba_ssm_available():
            raise RuntimeError(
                "selective-scan backend 'cuda' was requested but mamba_ssm's CUDA kernel cannot be imported "
                f"({_MAMBA_CACHE.get('error')!r}); install mamba-ssm with its CUDA extension or use backend='torch'."
            )
        if device is not None and not is_cuda:
            raise RuntimeError(f"selective-scan backend 'cuda' needs CUDA tensors, got tensors on {device}.")
    return name


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D, z, delta_bias) -> None:
    if A.is_complex():
        raise ValueError("selective_scan supports real A only (complex A is not implemented).")
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}.")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}.")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, d_state), got {tuple(A.shape)}.")
    n = A.shape[1]
    for name, m in (("B", B), ("C", C)):
        if m.is_complex():
            raise ValueError(f"{name} must be real.")
        if m.dim() == 2:
            ok = m.shape == (dim, n)
        elif m.dim() == 3:
            ok = m.shape == (batch, n, length)
        elif m.dim() == 4:
            ok = m.shape[0] == batch and m.shape[2:] == (n, length) and m.shape[1] > 0 and dim % m.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be (batch, d_state, L), (batch, groups, d_state, L) with dim % groups == 0, or "
                f"(dim, d_state); got {tuple(m.shape)} for u {tuple(u.shape)} and d_state {n}."
            )
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None and v.shape != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(v.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}.")


def _as_groups(m: Tensor, batch: int, length: int) -> Tensor:
    """B or C as (batch, G, d_state, L): 3D gets G=1, a time-invariant (dim, d_state) matrix gets G=dim."""
    if m.dim() == 3:
        return m.unsqueeze(1)
    if m.dim() == 2:
        return m[None, :, :, None].expand(batch, m.shape[0], m.shape[1], length)
    return m


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str | None = None,
    *,
    chunk_size: int | None = None,
    segment_elements: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan with the semantics of ``mamba_ssm``'s ``selective_scan_fn`` (real ``A``).

    ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = <C_t, h_t>``, ``out = (y + D u) * silu(z)``, with
    ``delta = softplus(delta + delta_bias)`` when requested.

    Args:
        u: input, (batch, dim, L).
        delta: time steps, (batch, dim, L).
        A: state matrix, (dim, d_state), real (typically ``-exp(A_log)``).
        B: input matrix, (batch, d_state, L) or grouped (batch, G, d_state, L) (group g serves channels
            ``[g*dim/G, (g+1)*dim/G)``) or time-invariant (dim, d_state).
        C: output matrix, same layouts as ``B``.
        D: skip connection, (dim,).
        z: gate, (batch, dim, L); the output is multiplied by ``silu(z)``.
        delta_bias: added to ``delta`` before the softplus, (dim,).
        delta_softplus: apply ``softplus`` to ``delta``.
        return_last_state: also return the final state ``h_{L-1}``, (batch, dim, d_state), float32.
        backend: ``"cpu"`` (fused C++ kernel, computes in fp32), ``"torch"``, ``"cuda"`` (mamba-ssm kernel),
            ``"ref"`` (slow loop, debugging) or ``"auto"``/None (``$MONAI_VLSEG_SCAN_BACKEND``, else ``"cuda"`` for CUDA
            tensors when mamba-ssm imports, ``"cpu"`` for CPU tensors when the kernel builds, else ``"torch"``; fp64
            inputs and a time-invariant (dim, d_state) ``B``/``C`` go to ``"torch"``).
        chunk_size: chunk length of the torch backend (default :data:`DEFAULT_CHUNK_SIZE`).
        segment_elements: bound on the elements of one (segment, batch, dim, d_state) buffer of the torch backend
            (default :data:`DEFAULT_SEGMENT_ELEMENTS`); longer inputs are processed in segments and recomputed
            segment by segment in the backward pass.

    Returns:
        ``out`` (batch, dim, L) in ``u``'s dtype, or ``(out, last_state)`` when ``return_last_state``.
        Unlike mamba-ssm's kernel, the torch backend also propagates gradients through ``last_state``.

    Raises:
        ValueError: complex ``A`` or inconsistent shapes; RuntimeError: ``"cuda"`` forced but unavailable.
    """
    # tensor subclasses (MONAI's MetaTensor from a transform pipeline) would carry metadata through every chunk op
    u, delta, A, B, C, D, z, delta_bias = (
        t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) and type(t) is not torch.Tensor else t
        for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if torch.jit.is_tracing():
        # Tracing (TorchScript / ONNX export) cannot record a Python autograd.Function, a ctypes call or in-place
        # chunk buffers: record a scan of plain tensor operations instead.
        return selective_scan_traceable(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    name = resolve_scan_backend(backend, u.device)
    if name == "cpu":
        forced = ((backend if backend is not None else os.environ.get(SCAN_BACKEND_ENV)) or "auto").strip() != "auto"
        if B.dim() == 2 or C.dim() == 2:  # time-invariant B/C: the kernel reads (b, G, L, N) rows
            if forced:
                raise ValueError("the fused CPU scan needs time-varying B and C; use backend='torch' for (dim, d_state).")
            name = "torch"
        elif u.dtype == torch.float64 and not forced:
            name = "torch"  # an exact fp64 scan was asked for by the dtype; the kernel computes in fp32
    if name == "cpu":
        out, last = cpu_scan.fused_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        out = out.to(u.dtype)
        return (out, last) if return_last_state else out
    if name == "cuda":
        return _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    dtype_in = u.dtype
    cdtype = torch.float64 if dtype_in == torch.float64 else torch.float32
    batch, _, length = u.shape
    with torch.autocast(device_type=u.device.type, enabled=False):
        uc = u.to(cdtype)
        dc = delta.to(cdtype)
        if delta_bias is not None:
            dc = dc + delta_bias.to(cdtype)[:, None]
        if delta_softplus:
            dc = F.softplus(dc)
        y, last = _ChunkedScanFn.apply(
            uc,
            dc,
            A.to(cdtype),
            _as_groups(B.to(cdtype), batch, length),
            _as_groups(C.to(cdtype), batch, length),
            chunk_size or (DEFAULT_CHUNK_SIZE if u.device.type == "cpu" else 0),
            segment_elements or (DEFAULT_SEGMENT_ELEMENTS if u.device.type == "cpu" else DEFAULT_SEGMENT_ELEMENTS_GPU),
        )
        out = y if D is None else torch.addcmul(y, uc, D.to(cdtype)[:, None])
        if z is not None:
            out = out * F.silu(z.to(cdtype))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """Call mamba-ssm's kernel with the dtypes it requires.

    ``u``, ``delta``, ``z`` and time-varying ``B``/``C`` share one input dtype (fp32/fp16/bf16, the promotion of
    ``u`` and ``delta``); ``A``, ``D``, ``delta_bias`` and time-invariant ``B``/``C`` are fp32. ``out`` is cast back
    to ``u``'s dtype.
    """
    fn = _mamba_scan_fn()
    if fn is None:  # pragma: no cover - guarded by resolve_scan_backend
        raise RuntimeError("mamba_ssm selective_scan_fn is unavailable.")
    dtype_in = u.dtype
    itype = torch.promote_types(u.dtype, delta.dtype)
    if itype not in (torch.float32, torch.float16, torch.bfloat16):
        itype = torch.float32

    def _bc(m: Tensor) -> Tensor:
        return m.to(itype) if m.dim() >= 3 else m.float()

    with torch.autocast(device_type=u.device.type, enabled=False):
        res = fn(
            u.to(itype),
            delta.to(itype),
            A.float(),
            _bc(B),
            _bc(C),
            None if D is None else D.float(),
            None if z is None else z.to(itype),
            None if delta_bias is None else delta_bias.float(),
            delta_softplus,
            return_last_state,
        )
    if return_last_state:
        return res[0].to(dtype_in), res[1]
    return res.to(dtype_in)


def _plain_inputs(u, delta, A, B, C, delta_bias, delta_softplus: bool, dtype: torch.dtype):
    """``u``, ``delta`` (bias added, softplus applied), ``A`` and B/C as (batch, G, N, L) groups, in ``dtype``."""
    batch, _, length = u.shape
    u, delta = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A.to(dtype), _as_groups(B.to(dtype), batch, length), _as_groups(C.to(dtype), batch, length)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential reference of :func:`selective_scan` (one step per position; slow, for debugging only)."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    batch, dim, length = u.shape
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, bg, cg = _plain_inputs(u, delta, A, B, C, delta_bias, delta_softplus, torch.float32)
        gb, gc, n = bg.shape[1], cg.shape[1], A.shape[1]
        # unbind (not indexing) keeps the backward linear in L: one stack instead of a full-size zero tensor per step
        ds, us, bs, cs = delta.unbind(-1), u.unbind(-1), bg.unbind(-1), cg.unbind(-1)
        h = u.new_zeros(batch, dim, n)
        ys = []
        for t in range(length):
            dt = ds[t].unsqueeze(-1)
            x = ((dt * us[t].unsqueeze(-1)).view(batch, gb, dim // gb, 1) * bs[t].unsqueeze(2)).view(batch, dim, n)
            h = torch.exp(dt * A) * h + x
            ys.append((h.view(batch, gc, dim // gc, n) * cs[t].unsqueeze(2)).sum(-1).view(batch, dim))
        y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
        out = y if D is None else y + u * D.float()[:, None]
        if z is not None:
            out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def selective_scan_traceable(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`selective_scan` as plain tensor operations that trace into a compact graph (TorchScript / ONNX).

    The sequence is cut into ``nc`` chunks of ``T ~ sqrt(L)`` steps (and fewer than ``T`` remaining steps, scanned one
    by one at the end). Step ``t`` of every chunk is one operation, so
    the chunk-local states ``h_loc`` and decays ``P`` (products of ``exp(delta A)`` from the chunk's start) take ``T``
    steps; the states entering the chunks, ``hin[c+1] = P[c, T-1] hin[c] + h_loc[c, T-1]``, take ``nc`` small steps;
    then ``h = h_loc + P hin``. The traced graph has ``O(sqrt(L))`` steps instead of ``L`` (the recurrence unrolled),
    the work stays linear in ``L``, and only products of decays (never their inverses) are formed.
    """
    dtype_in = u.dtype
    batch, dim, length = u.shape
    n = A.shape[1]
    with torch.autocast(device_type=u.device.type, enabled=False):
        cdt = torch.float64 if dtype_in == torch.float64 else torch.float32
        u, delta, A, bg, cg = _plain_inputs(u, delta, A, B, C, delta_bias, delta_softplus, cdt)
        gb, gc = bg.shape[1], cg.shape[1]
        t_len = max(1, math.isqrt(length))
        nc, main = length // t_len, length // t_len * t_len  # nc chunks of T steps, then length - main < T steps

        def chunks(x: Tensor) -> Tensor:  # (..., L) -> (..., nc, T) over the first `main` steps
            return x[..., :main].reshape(*x.shape[:-1], nc, t_len)

        def step_input(t: int) -> tuple[Tensor, Tensor]:  # exp(delta_t A), delta_t u_t B_t: (b, d, N)
            at = torch.exp(delta[:, :, t, None] * A)
            xt = (delta[:, :, t] * u[:, :, t]).view(batch, gb, dim // gb, 1) * bg[:, :, None, :, t]
            return at, xt.view(batch, dim, n)

        ys, last = [], u.new_zeros(batch, dim, n)
        if nc > 0:
            dl = chunks(delta)  # (b, d, nc, T)
            a = torch.exp(dl[:, :, None] * A[None, :, :, None, None])  # (b, d, N, nc, T)
            bb = chunks(bg).unsqueeze(2)  # (b, Gb, 1, N, nc, T)
            x = ((dl * chunks(u)).view(batch, gb, dim // gb, 1, nc, t_len) * bb).view(a.shape)
            hs, ps = [x[..., 0]], [a[..., 0]]
            for t in range(1, t_len):  # chunk-local states and decays, all chunks at once
                hs.append(a[..., t] * hs[-1] + x[..., t])
                ps.append(a[..., t] * ps[-1])
            h_loc, p = torch.stack(hs, -1), torch.stack(ps, -1)  # (b, d, N, nc, T)
            hin = [last]
            for c in range(nc - 1):  # states entering the chunks
                hin.append(p[:, :, :, c, -1] * hin[-1] + h_loc[:, :, :, c, -1])
            h = h_loc + p * torch.stack(hin, -1).unsqueeze(-1)
            cc = chunks(cg).unsqueeze(2)  # (b, Gc, 1, N, nc, T)
            ys.append((h.view(batch, gc, dim // gc, n, nc, t_len) * cc).sum(3).reshape(batch, dim, main))
            last = h[:, :, :, -1, -1]
        for t in range(main, length):  # the last length - main < T steps, one by one
            at, xt = step_input(t)
            last = at * last + xt
            ys.append((last.view(batch, gc, dim // gc, n) * cg[:, :, None, :, t]).sum(-1).view(batch, dim, 1))
        y = torch.cat(ys, -1) if ys else u.new_zeros(u.shape)
        out = y if D is None else y + u * D.to(cdt)[:, None]
        if z is not None:
            out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, last) if return_last_state else out


# ----------------------------------------------------------------------------------------------------------------
# torch backend: two-level chunked scan.
#
# A segment of Ls steps is laid out time-major as (T, nc, batch, G, N, dim/G) with position l = c * T + t, so the
# states of step t of all chunks form one contiguous slice (G: the groups of B/C; channel d = g * dim/G + j).
# Forward of a segment entering with state h0:
#   1. a = exp(delta A), x = delta u B;
#   2. chunk-end states with zero entry state, keeping only a running (nc, ...) state: T whole-slice ops;
#   3. chunk entry states: hin[c+1] = P[c] hin[c] + hend[c], P[c] = exp(A sum_t delta[t, c]): nc tiny ops;
#   4. all states, in place over x: h[t] = a[t] h[t-1] + x[t] with h[-1] = hin (T ops); y = <C, h> as one bmm.
# The backward runs the adjoint scan r[t] = C[t] gy[t] + a[t+1] r[t+1] with the same two-level structure; the
# states are recomputed segment by segment from the saved segment entry states.  Every exponent is delta * A
# (no exp(-cumsum) form), so large delta / strongly negative A only underflow to 0.  exp(x) is evaluated as
# exp2(x log2(e)), several times faster on CPU.
# ----------------------------------------------------------------------------------------------------------------

_LOG2E = 1.4426950408889634


def _plan_segments(length: int, step_elems: int, chunk: int, seg_elems: int) -> list[tuple[int, int, int, int]]:
    """Split ``[0, length)`` into segments ``(start, stop, T, nc)`` with ``T * nc >= stop - start`` (minimal pad).

    Segments hold at most ``seg_elems // step_elems`` steps (at least one chunk); ``chunk <= 0`` picks the chunk
    length ``~sqrt(segment length)``.
    """
    if length <= 0:
        return []
    max_steps = max(1, int(seg_elems) // max(1, step_elems))
    if chunk <= 0:
        chunk = max(1, math.isqrt(min(max_steps, max(length, 1))))
    max_steps = max(chunk, max_steps // chunk * chunk)
    nseg = max(1, math.ceil(length / max_steps))
    seg_len = math.ceil(math.ceil(length / nseg) / chunk) * chunk
    plan = []
    for start in range(0, length, seg_len):
        stop = min(length, start + seg_len)
        nc = math.ceil((stop - start) / chunk)
        t_len = math.ceil((stop - start) / nc)
        plan.append((start, stop, t_len, nc))
    return plan


def _time_major(x: Tensor, start: int, stop: int, t_len: int, nc: int) -> Tensor:
    """(batch, ..., L) slice ``[start, stop)`` -> contiguous (T, nc, batch, ...), zero-padded to T * nc steps."""
    seg = x[..., start:stop]
    pad = t_len * nc - (stop - start)
    if pad:
        seg = F.pad(seg, (0, pad))
    seg = seg.unflatten(-1, (nc, t_len))
    nd = seg.dim()
    return seg.permute(nd - 1, nd - 2, *range(nd - 2)).contiguous()


def _groups_time_major(m: Tensor, groups: int, start: int, stop: int, t_len: int, nc: int) -> Tensor:
    """(batch, g, N, L) -> (T, nc, batch, groups, N), each of the g groups repeated ``groups // g`` times."""
    tm = _time_major(m, start, stop, t_len, nc)
    g = m.shape[1]
    if g == groups:
        return tm
    tm = tm.unsqueeze(4).expand(*tm.shape[:4], groups // g, tm.shape[-1])
    return tm.reshape(*tm.shape[:3], groups, -1).contiguous()


def _store_time_major(dst: Tensor, src: Tensor, start: int, stop: int) -> None:
    """Write time-major ``src`` (T, nc, batch, ...) into ``dst[..., start:stop]`` of a (batch, ..., L) tensor."""
    if src.dim() == 5 and dst.shape[1] != src.shape[3]:  # (T, nc, b, G, N) summed back to dst's groups
        g = dst.shape[1]
        src = src.view(*src.shape[:3], g, src.shape[3] // g, src.shape[4]).sum(4)
    nd = src.dim()
    dst[..., start:stop].copy_(src.permute(*range(2, nd), 1, 0).flatten(-2)[..., : stop - start])


class _Workspace:
    """Reusable (segment, ...) state buffers: fresh large CPU allocations cost page faults on every call."""

    def __init__(self, numel: int, like: Tensor) -> None:
        self.numel, self.like, self.bufs = numel, like, {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        if name not in self.bufs:
            self.bufs[name] = self.like.new_empty(self.numel)
        return self.bufs[name][: math.prod(shape)].view(shape)


def _decay(ws: _Workspace, dl: Tensor, a2: Tensor) -> Tensor:
    """``a = exp(delta A) = exp2(delta A log2(e))``, (T, nc, b, G, N, dim/G); ``a2`` = A log2(e) as (G, N, dim/G)."""
    t_len, nc, b, _ = dl.shape
    g, n, dg = a2.shape
    a = ws.get("a", (t_len, nc, b, g, n, dg))
    torch.mul(dl.view(t_len, nc, b, g, 1, dg), a2, out=a)
    return a.exp2_()


def _segment_states(
    ws: _Workspace, a: Tensor, dl: Tensor, du: Tensor, a2: Tensor, bm: Tensor, h0: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """States of one time-major segment: returns ``(h, hin, p)``.

    ``a`` = exp(delta A) (T, nc, b, G, N, dim/G); ``dl``/``du`` (T, nc, b, dim) hold delta and delta*u, ``bm`` is
    (T, nc, b, G, N); ``h`` (like ``a``) are all states, ``hin`` (nc, b, G, N, dim/G) the states entering each chunk
    and ``p`` (like ``hin``) the decay over each chunk.
    """
    t_len, nc, b, g, n, dg = a.shape
    h = ws.get("h", a.shape)
    torch.mul(du.view(t_len, nc, b, g, 1, dg), bm.unsqueeze(-1), out=h)
    p = torch.exp2(dl.sum(0).view(nc, b, g, 1, dg) * a2)
    hin = h.new_empty(h.shape[1:])
    if h0 is None:
        hin[0].zero_()
    else:
        hin[0].copy_(h0)
    hs, as_ = h.unbind(0), a.unbind(0)
    if nc > 1:
        run = hs[0] if t_len == 1 else torch.addcmul(hs[1], as_[1], hs[0])
        nxt = torch.empty_like(run)
        for t in range(2, t_len):  # chunk-end states with zero entry state
            torch.addcmul(hs[t], as_[t], run, out=nxt)
            run, nxt = nxt, run
        for c in range(nc - 1):  # chunk entry states
            torch.addcmul(run[c], p[c], hin[c], out=hin[c + 1])
    if nc > 1 or h0 is not None:
        hs[0].addcmul_(as_[0], hin)
    for t in range(1, t_len):  # all states, every chunk at once
        hs[t].addcmul_(as_[t], hs[t - 1])
    return h, hin, p


class _ChunkedScanFn(torch.autograd.Function):
    """``(y, h_last)`` of the scan for fp32/fp64 ``u, delta`` (b, d, L), ``A`` (d, N), ``B, C`` (b, G, N, L)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk: int, seg_elems: int):  # type: ignore[override]
        b, d, length = u.shape
        n = A.shape[1]
        g = math.lcm(B.shape[1], C.shape[1])
        dg = d // g
        a2 = (A * _LOG2E).view(g, dg, n).transpose(1, 2).contiguous()
        plan = _plan_segments(length, b * d * n, chunk, seg_elems)
        ws = _Workspace(max((t * c for _, _, t, c in plan), default=0) * b * d * n, u)
        y = u.new_empty(u.shape)
        h0s: list[Tensor | None] = []
        h_last = None
        for start, stop, t_len, nc in plan:
            h0s.append(h_last)
            dl = _time_major(delta, start, stop, t_len, nc)
            du = dl * _time_major(u, start, stop, t_len, nc)
            bm = _groups_time_major(B, g, start, stop, t_len, nc)
            cm = _groups_time_major(C, g, start, stop, t_len, nc)
            h, _, _ = _segment_states(ws, _decay(ws, dl, a2), dl, du, a2, bm, h_last)
            h_last = h[t_len - 1, nc - 1].clone()  # padded steps have a = 1, x = 0
            k = t_len * nc * b * g
            yt = torch.bmm(cm.view(k, 1, n), h.view(k, n, dg)).view(t_len, nc, b, d)
            _store_time_major(y, yt, start, stop)
        last = u.new_zeros((b, d, n)) if h_last is None else h_last.transpose(-1, -2).reshape(b, d, n)
        ctx.plan, ctx.h0s, ctx.groups = plan, h0s, g
        ctx.save_for_backward(u, delta, A, B, C)
        ctx.set_materialize_grads(False)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_last):  # type: ignore[override]
        u, delta, A, B, C = ctx.saved_tensors
        b, d, length = u.shape
        n, g = A.shape[1], ctx.groups
        dg = d // g
        if (gy is None and g_last is None) or length == 0:
            return None, None, None, None, None, None, None
        # every position of these is written below (gC stays zero without gy)
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gB, gC = torch.empty_like(B), torch.zeros_like(C) if gy is None else torch.empty_like(C)
        a_t = A.view(g, dg, n).transpose(1, 2).contiguous()  # (G, N, dg)
        a2 = a_t * _LOG2E
        ga = torch.zeros_like(a_t)
        plan = ctx.plan
        ws = _Workspace(max(t * c for _, _, t, c in plan) * b * d * n, u)
        carry = None  # dL/dh at the end of the current segment, (b, G, N, dg)
        if g_last is not None:
            carry = g_last.to(u.dtype).view(b, g, dg, n).transpose(-1, -2)
        with torch.autocast(device_type=u.device.type, enabled=False):
            for i in range(len(plan) - 1, -1, -1):
                start, stop, t_len, nc = plan[i]
                k = t_len * nc * b * g
                dl, ut = _time_major(delta, start, stop, t_len, nc), _time_major(u, start, stop, t_len, nc)
                du = dl * ut
                bm = _groups_time_major(B, g, start, stop, t_len, nc)
                cm = _groups_time_major(C, g, start, stop, t_len, nc)
                a = _decay(ws, dl, a2)
                h, hin, p = _segment_states(ws, a, dl, du, a2, bm, ctx.h0s[i])
                # adjoint r[t] = dL/dh[t] = C[t] gy[t] + a[t+1] r[t+1]; rin[c] = dL/dh at the end of chunk c
                r = ws.get("r", a.shape)
                gyt = None
                if gy is None:
                    r.zero_()
                else:
                    gyt = _time_major(gy, start, stop, t_len, nc).view(t_len, nc, b, g, 1, dg)
                    torch.mul(gyt, cm.unsqueeze(-1), out=r)
                rin = r.new_empty(r.shape[1:])
                if carry is None:
                    rin[nc - 1].zero_()
                else:
                    rin[nc - 1].copy_(carry)
                rs, as_ = r.unbind(0), a.unbind(0)
                if nc > 1:
                    run = rs[0] if t_len == 1 else torch.addcmul(rs[t_len - 2], as_[t_len - 1], rs[t_len - 1])
                    nxt = torch.empty_like(run)
                    for t in range(t_len - 3, -1, -1):  # chunk-start adjoints with zero carry
                        torch.addcmul(rs[t], as_[t + 1], run, out=nxt)
                        run, nxt = nxt, run
                    q = run * as_[0]
                    for c in range(nc - 1, 0, -1):
                        torch.addcmul(q[c], p[c], rin[c], out=rin[c - 1])
                if nc > 1 or carry is not None:
                    rs[t_len - 1].add_(rin)
                for t in range(t_len - 2, -1, -1):
                    rs[t].addcmul_(as_[t + 1], rs[t + 1])
                carry = a[0, 0] * r[0, 0]  # dL/dh0 of this segment
                # w = dL/d(delta A) = r[t] a[t] h[t-1]
                w = a
                w[1:].mul_(h[:-1])
                w[0].mul_(hin)
                if gyt is not None:  # h is free after this
                    _store_time_major(gC, h.mul_(gyt).sum(-1), start, stop)
                gdu = torch.bmm(bm.view(k, 1, n), r.view(k, n, dg)).view(t_len, nc, b, d)
                gbt = torch.mul(r, du.view(t_len, nc, b, g, 1, dg), out=h).sum(-1)
                _store_time_major(gB, gbt, start, stop)
                w.mul_(r)
                gdl = torch.mul(w, a_t, out=h).sum(-2).view(t_len, nc, b, d)
                gdl.addcmul_(gdu, ut)
                ga += w.mul_(dl.view(t_len, nc, b, g, 1, dg)).view(-1, g, n, dg).sum(0)
                _store_time_major(gdelta, gdl, start, stop)
                _store_time_major(gu, gdu.mul_(dl), start, stop)
        return gu, gdelta, ga.transpose(1, 2).reshape(d, n), gB, gC, None, None
