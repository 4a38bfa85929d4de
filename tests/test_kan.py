"""KANLinear (B-spline basis against SciPy, shapes, gradients), the KAN-vs-MLP fitting property and the U-KAN style
tokenised block."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.interpolate import BSpline

from monai_vlseg.nets.blocks.kan import KAN, KANLinear, OverlapPatchEmbed, TokenizedKANBlock


def test_basis_matches_scipy_bspline_and_is_a_partition_of_unity():
    layer = KANLinear(3, 2)  # grid size 5, cubic, range [-1, 1]
    assert layer.grid.shape == (3, 5 + 2 * 3 + 1)
    x = torch.rand(64, 3) * 2 - 1
    basis = layer.b_splines(x)
    assert basis.shape == (64, 3, 8)
    knots = layer.grid[0].numpy()
    for k in range(8):
        coef = np.zeros(8)
        coef[k] = 1.0
        ref = np.nan_to_num(BSpline(knots, coef, 3, extrapolate=False)(x[:, 1].numpy()))
        np.testing.assert_allclose(basis[:, 1, k].numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(basis.sum(-1).numpy(), 1.0, atol=1e-5)  # inside the grid range


def test_forward_is_base_plus_spline_and_has_gradients():
    torch.manual_seed(0)
    layer = KANLinear(4, 3, bias=True)
    x = torch.randn(2, 5, 4, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 5, 3)
    flat = x.reshape(-1, 4)
    ref = torch.einsum("mi,oi->mo", nn.functional.silu(flat), layer.base_weight)
    ref = ref + torch.einsum("mik,oik->mo", layer.b_splines(flat), layer.spline_weight * layer.spline_scaler[..., None])
    torch.testing.assert_close(y.reshape(-1, 3), ref + layer.bias, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and layer.spline_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expects 4 input features"):
        layer(torch.randn(2, 5))
    with pytest.raises(ValueError, match="grid_range"):
        KANLinear(2, 2, grid_range=(1.0, -1.0))


def test_kan_fits_a_1d_function_better_than_an_mlp_of_equal_size():
    x = torch.linspace(-1, 1, 256)[:, None]
    y = torch.sin(3 * torch.pi * x) * torch.exp(-(x**2))

    def fit(net, steps=300):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = ((net(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return loss.item()

    torch.manual_seed(0)
    kan = KAN([1, 4, 1])
    n_kan = sum(p.numel() for p in kan.parameters())
    hidden = (n_kan - 1) // 3
    mlp = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, 1))
    n_mlp = sum(p.numel() for p in mlp.parameters())
    assert abs(n_kan - n_mlp) <= 3  # equal size (80 vs 79)
    kan_mse, mlp_mse = fit(kan), fit(mlp)
    assert kan_mse < 1e-3 and kan_mse < 0.1 * mlp_mse, (kan_mse, mlp_mse)


def test_tokenized_kan_block_and_patch_embed():
    torch.manual_seed(0)
    embed = OverlapPatchEmbed(3, 8)
    block = TokenizedKANBlock(8, num_layers=2)
    x = torch.randn(2, 3, 16, 12, requires_grad=True)
    y = block(embed(x))
    assert y.shape == (2, 8, 8, 6)
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0
    # depthwise convolutions see the pixel grid: a change in one pixel reaches its neighbours only
    block.eval()
    z = torch.randn(1, 8, 8, 8)
    z2 = z.clone()
    z2[0, :, 0, 0] += 1.0
    diff = (block(z2) - block(z)).abs().sum(1)[0]
    assert diff[0, 0] > 0 and diff[:3, :3].sum() == diff.sum()  # 2 layers of 3x3: radius 2
