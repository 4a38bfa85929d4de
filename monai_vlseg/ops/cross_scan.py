"""Multi-direction scan orders for 2D and 3D feature maps, and the inverse merge.

A selective scan reads a 1-D sequence; vision Mamba networks read a feature map along several orders and sum the
results back on the grid. VM-UNet's SS2D uses four 2D orders (row-major, column-major and both reversed; Liu et al.,
VMamba, "cross-scan"); SegMamba's tri-oriented Mamba uses three 3D orders (forward, backward and inter-slice).
Every order is a permutation of the row-major token index, so one gather scans all orders at once and one gather
plus a sum merges them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["CROSS_2D", "CROSS_3D", "scan_permutations", "cross_scan", "cross_merge"]

#: VM-UNet / VMamba order: row-major, column-major, row-major reversed, column-major reversed.
CROSS_2D: tuple[str, ...] = ("row", "col", "row_rev", "col_rev")
#: SegMamba order: forward, backward (reversed) and inter-slice (each in-plane position through the slices).
CROSS_3D: tuple[str, ...] = ("forward", "backward", "inter_slice")


def _order(spatial_shape: tuple[int, ...], direction: str, nslices: int | None) -> torch.Tensor:
    n = 1
    for s in spatial_shape:
        n *= s
    idx = torch.arange(n)
    if direction in ("row", "forward"):
        return idx
    if direction in ("row_rev", "backward"):
        return idx.flip(0)
    if direction in ("col", "col_rev"):
        if len(spatial_shape) != 2:
            raise ValueError(f"direction '{direction}' needs a 2D spatial shape, got {spatial_shape}.")
        h, w = spatial_shape
        col = idx.view(h, w).t().reshape(-1)
        return col if direction == "col" else col.flip(0)
    if direction == "inter_slice":
        # SegMamba: split the flattened volume into `nslices` contiguous blocks and interleave them, so consecutive
        # tokens are the same in-block position in consecutive blocks (with nslices = depth: through the slices).
        ns = spatial_shape[0] if nslices is None else nslices
        if n % ns:
            raise ValueError(f"inter_slice scan: {n} tokens are not divisible into {ns} slices.")
        return idx.view(ns, n // ns).t().reshape(-1)
    raise ValueError(f"unknown scan direction '{direction}'; known: {CROSS_2D + CROSS_3D}.")


@lru_cache(maxsize=64)
def _permutations(spatial_shape: tuple[int, ...], directions: tuple[str, ...], nslices: int | None):
    perm = torch.stack([_order(spatial_shape, d, nslices) for d in directions])  # (K, L): token read at step l
    inv = torch.argsort(perm, dim=1)  # (K, L): step at which token l was read
    n = perm.shape[1]
    offsets = torch.arange(len(directions)).unsqueeze(1) * n
    return perm, inv + offsets  # inverse indices into the (K*L) concatenation


def scan_permutations(
    spatial_shape: Sequence[int], directions: Sequence[str], nslices: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(perm, merge_index)``: ``perm[k, l]`` is the row-major token read at step ``l`` of order ``k``;
    ``merge_index`` indexes the concatenated (K * L) scan outputs back to row-major positions."""
    return _permutations(tuple(int(s) for s in spatial_shape), tuple(directions), nslices)


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
    if tuple(directions) in (("row",), ("forward",)):
        return x.reshape(b, 1, c, -1)
    perm, _ = scan_permutations(x.shape[2:], directions, nslices)
    k, n = perm.shape
    xs = torch.index_select(x.reshape(b, c, n), 2, perm.to(x.device).reshape(-1))
    return xs.view(b, c, k, n).transpose(1, 2)


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
    b, k, c, n = ys.shape
    if tuple(directions) in (("row",), ("forward",)):
        return ys[:, 0]
    _, merge_index = scan_permutations(spatial_shape, directions, nslices)
    flat = ys.transpose(1, 2).reshape(b, c, k * n)
    return torch.index_select(flat, 2, merge_index.to(ys.device).reshape(-1)).view(b, c, k, n).sum(2)
