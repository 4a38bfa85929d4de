"""Multi-direction scan orders for 2D and 3D feature maps, and the inverse merge.

A selective scan reads a 1-D sequence; vision Mamba networks read a feature map along several orders and sum the
results back on the grid. VM-UNet's SS2D uses four 2D orders (row-major, column-major and both reversed; Liu et al.,
VMamba, "cross-scan"); SegMamba's tri-oriented Mamba uses three 3D orders (forward, backward and inter-slice), with
the slices along the first spatial axis as in the official (D, H, W) arrays (:class:`monai_vlseg.nets.segmamba.ToMLayer`
moves its ``slice_axis`` there).
Every order is a permutation of the row-major token index (:func:`scan_permutations`); each is also a transpose of a
2D view of the tokens and/or a flip, which is how :func:`cross_scan` and :func:`cross_merge` compute them (strided
copies rather than gathers).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["CROSS_2D", "CROSS_3D", "scan_permutations", "cross_scan", "cross_merge"]

#: VM-UNet / VMamba order: row-major, column-major, row-major reversed, column-major reversed.
CROSS_2D: tuple[str, ...] = ("row", "col", "row_rev", "col_rev")
#: SegMamba order: forward, backward (reversed) and inter-slice (each in-plane position through the slices of the
#: first spatial axis).
CROSS_3D: tuple[str, ...] = ("forward", "backward", "inter_slice")


Layout = tuple[tuple[int, int] | None, bool]


@lru_cache(maxsize=64)
def _layouts(
    spatial_shape: tuple[int, ...], directions: tuple[str, ...], nslices: int | None
) -> tuple[Layout, ...]:
    """``(grid, reverse)`` of every order: the row-major tokens viewed as a ``grid`` (r, s) matrix are read column by
    column (``None``: in row-major order), then reversed if ``reverse``."""
    n = 1
    for s in spatial_shape:
        n *= s
    out = []
    for d in directions:
        if d in ("row", "forward", "row_rev", "backward"):
            out.append((None, d in ("row_rev", "backward")))
        elif d in ("col", "col_rev"):
            if len(spatial_shape) != 2:
                raise ValueError(f"direction '{d}' needs a 2D spatial shape, got {spatial_shape}.")
            out.append(((spatial_shape[0], spatial_shape[1]), d == "col_rev"))
        elif d == "inter_slice":
            # SegMamba: split the flattened volume into `nslices` contiguous blocks and interleave them, so consecutive
            # tokens are the same in-block position in consecutive blocks (with nslices = depth: through the slices).
            ns = spatial_shape[0] if nslices is None else nslices
            if n % ns:
                raise ValueError(f"inter_slice scan: {n} tokens are not divisible into {ns} slices.")
            out.append(((ns, n // ns), False))
        else:
            raise ValueError(f"unknown scan direction '{d}'; known: {CROSS_2D + CROSS_3D}.")
    return tuple(out)


def _columns(x: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
    """(B, C, L) -> the same tokens read column by column of their (r, s) grid (one strided copy)."""
    if grid is None:
        return x
    b, c, n = x.shape
    return x.reshape(b, c, *grid).transpose(2, 3).reshape(b, c, n)


@lru_cache(maxsize=64)
def _permutations(spatial_shape: tuple[int, ...], directions: tuple[str, ...], nslices: int | None):
    n = 1
    for s in spatial_shape:
        n *= s
    perm = _scan(torch.arange(n).view(1, 1, n), _layouts(spatial_shape, directions, nslices))[0, :, 0]  # (K, L)
    inv = torch.argsort(perm, dim=1)  # (K, L): step at which token l was read
    offsets = torch.arange(len(directions)).unsqueeze(1) * n
    return perm, inv + offsets  # perm[k, l]: token read at step l; inverse indices into the (K*L) concatenation


def scan_permutations(
    spatial_shape: Sequence[int], directions: Sequence[str], nslices: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(perm, merge_index)``: ``perm[k, l]`` is the row-major token read at step ``l`` of order ``k``;
    ``merge_index`` indexes the concatenated (K * L) scan outputs back to row-major positions."""
    return _permutations(tuple(int(s) for s in spatial_shape), tuple(directions), nslices)


def _scan(flat: torch.Tensor, layouts: tuple[Layout, ...]) -> torch.Tensor:
    """(B, C, L) row-major -> (B, K, C, L): every order as a strided copy (a transpose of a 2D view and/or a flip),
    several times faster than a gather along the last dimension on CPU (scripts/bench_cross_scan.py)."""
    read: dict[tuple[int, int] | None, torch.Tensor] = {}
    seqs = []
    for grid, reverse in layouts:
        if grid not in read:
            read[grid] = _columns(flat, grid)
        seqs.append(read[grid].flip(-1) if reverse else read[grid])
    return torch.stack(seqs, 1)


def _merge(ys: torch.Tensor, layouts: tuple[Layout, ...]) -> torch.Tensor:
    """(B, K, C, L) -> (B, C, L) row-major sum over the orders, added in order k = 0, 1, ...: the floating-point sums
    of a gather + sum over K (and of index_add, the backward of a gather), so results do not depend on the method."""
    out = None
    for i, (grid, reverse) in enumerate(layouts):
        y = ys[:, i].flip(-1) if reverse else ys[:, i]
        y = y if grid is None else _columns(y, (grid[1], grid[0]))  # the inverse reads the transposed grid
        out = y if out is None else out + y
    return out


class _AdjointPair(torch.autograd.Function):
    """``op`` forward, ``adjoint`` backward: the scan and the merge are each other's adjoints (transposes)."""

    @staticmethod
    def forward(ctx, x, op, adjoint, layouts):
        ctx.adjoint, ctx.layouts = adjoint, layouts
        return op(x, layouts)

    @staticmethod
    def backward(ctx, grad):
        return ctx.adjoint(grad, ctx.layouts), None, None, None


def cross_scan(x: torch.Tensor, directions: Sequence[str] = CROSS_2D, nslices: int | None = None) -> torch.Tensor:
    """Read a feature map along several orders.

    Args:
        x: (B, C, *spatial) feature map.
        directions: scan orders, e.g. :data:`CROSS_2D` or :data:`CROSS_3D`.
        nslices: number of slices of the inter-slice order (default: the first spatial size).

    Returns:
        (B, K, C, L) sequences, K = len(directions), L = prod(spatial).
    """
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    directions = tuple(directions)
    if directions in (("row",), ("forward",)):
        return flat.unsqueeze(1)
    layouts = _layouts(tuple(int(s) for s in x.shape[2:]), directions, nslices)
    if torch.jit.is_tracing():  # torch.jit.trace cannot save a Python autograd.Function: record the plain ops
        return _scan(flat, layouts)
    return _AdjointPair.apply(flat, _scan, _merge, layouts)


def cross_merge(
    ys: torch.Tensor, spatial_shape: Sequence[int], directions: Sequence[str] = CROSS_2D, nslices: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`cross_scan`: put every order back in row-major position and sum over the orders.

    Args:
        ys: (B, K, C, L) scan outputs.
        spatial_shape: the spatial shape that was scanned.

    Returns:
        (B, C, L) row-major sum.
    """
    directions = tuple(directions)
    if directions in (("row",), ("forward",)):
        return ys[:, 0]
    layouts = _layouts(tuple(int(s) for s in spatial_shape), directions, nslices)
    if torch.jit.is_tracing():
        return _merge(ys, layouts)
    return _AdjointPair.apply(ys, _merge, _scan, layouts)
