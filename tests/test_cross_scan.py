import math

import pytest
import torch

from monai_vlseg.ops.cross_scan import CROSS_2D, CROSS_3D, cross_merge, cross_scan, scan_permutations


def test_cross_scan_2d_orders():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0,1,2],[3,4,5]]
    xs = cross_scan(x, CROSS_2D)
    assert xs.shape == (1, 4, 1, 6)
    assert xs[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]  # row-major
    assert xs[0, 1, 0].tolist() == [0, 3, 1, 4, 2, 5]  # column-major
    assert xs[0, 2, 0].tolist() == [5, 4, 3, 2, 1, 0]
    assert xs[0, 3, 0].tolist() == [5, 2, 4, 1, 3, 0]


def test_cross_scan_3d_orders():
    x = torch.arange(8.0).view(1, 1, 2, 2, 2)  # depth 2, 4 tokens per slice
    xs = cross_scan(x, CROSS_3D)
    assert xs[0, 0, 0].tolist() == list(range(8))
    assert xs[0, 1, 0].tolist() == list(range(7, -1, -1))
    # inter-slice: each in-plane position through both slices
    assert xs[0, 2, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize(
    "shape,directions,nslices",
    [((5, 7), CROSS_2D, None), ((4, 3, 6), CROSS_3D, None), ((4, 3, 6), CROSS_3D, 2), ((9,), ("forward",), None)],
)
def test_merge_inverts_scan(shape, directions, nslices):
    x = torch.randn(2, 3, *shape, requires_grad=True)
    xs = cross_scan(x, directions, nslices)
    merged = cross_merge(xs, shape, directions, nslices)
    torch.testing.assert_close(merged, x.flatten(2) * len(directions))
    # each direction alone inverts exactly
    for k in range(len(directions)):
        only_k = torch.zeros_like(xs)
        only_k[:, k] = xs[:, k]
        torch.testing.assert_close(cross_merge(only_k, shape, directions, nslices), x.flatten(2))
    merged.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, float(len(directions))))


def test_bad_direction_and_slices():
    with pytest.raises(ValueError, match="unknown scan direction"):
        cross_scan(torch.zeros(1, 1, 2, 2), ("diagonal",))
    with pytest.raises(ValueError, match="not divisible"):
        cross_scan(torch.zeros(1, 1, 3, 2, 2), CROSS_3D, nslices=5)
    with pytest.raises(ValueError, match="2D spatial shape"):
        cross_scan(torch.zeros(1, 1, 2, 2, 2), ("col",))


def _reference_order(shape, direction, nslices):
    """Token read at each step, from the definitions (row-major index arithmetic, independent of the module)."""
    n = math.prod(shape)
    if direction in ("row", "forward", "row_rev", "backward"):
        order = list(range(n))
    elif direction in ("col", "col_rev"):
        h, w = shape
        order = [i * w + j for j in range(w) for i in range(h)]
    else:  # inter_slice: block b of nslices contiguous blocks, position p inside it -> step p * nslices + b
        ns = nslices or shape[0]
        order = [b * (n // ns) + p for p in range(n // ns) for b in range(ns)]
    if direction.endswith("_rev") or direction == "backward":
        order = order[::-1]
    return torch.tensor(order)


@pytest.mark.parametrize(
    "shape,directions,nslices",
    [((5, 7), CROSS_2D, None), ((7, 5), ("col_rev", "row"), None), ((4, 3, 6), CROSS_3D, None),
     ((4, 3, 6), CROSS_3D, 3), ((4, 3, 6), ("inter_slice", "backward"), 8)],
)  # fmt: skip
def test_strided_orders_equal_the_permutation_gather(shape, directions, nslices):
    """cross_scan / cross_merge (strided views and flips, hand-written adjoints) against the definition: gather by
    scan_permutations and scatter-add back over k = 0, 1, ... -- the same floating-point sums, so exactly equal --
    and the gradients of both against autograd through the gather."""
    x = torch.randn(2, 3, *shape, requires_grad=True)
    perm = torch.stack([_reference_order(shape, d, nslices) for d in directions])
    torch.testing.assert_close(scan_permutations(shape, directions, nslices)[0], perm, rtol=0, atol=0)
    flat = x.flatten(2)
    ref = torch.stack([flat[..., p] for p in perm], 1)
    out = cross_scan(x, directions, nslices)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    up = torch.randn_like(ref)
    (g,) = torch.autograd.grad((out * up).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * up).sum(), x)
    torch.testing.assert_close(g, g_ref)
    ys = torch.randn_like(ref, requires_grad=True)
    merged = torch.zeros_like(flat)
    for k, p in enumerate(perm):
        merged[..., p] += ys[:, k]
    out = cross_merge(ys, shape, directions, nslices)
    torch.testing.assert_close(out, merged, rtol=0, atol=0)
    up = torch.randn_like(merged)
    (g,) = torch.autograd.grad((out * up).sum(), ys)
    (g_ref,) = torch.autograd.grad((merged * up).sum(), ys)
    torch.testing.assert_close(g, g_ref)
