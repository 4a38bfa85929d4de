"""Shared Mamba blocks: the multi-direction layer equals independent single-direction Mamba mixers on re-ordered
tokens, SS2D equals a hand-written four-direction composition, and everything trains."""

import math

import pytest
import torch
import torch.nn.functional as F

from monai_vlseg.nets.blocks import SS2D, MambaLayer, SelectiveSSM, VSSBlock
from monai_vlseg.ops.cross_scan import CROSS_3D, cross_scan
from monai_vlseg.ops.selective_scan import selective_scan


def test_selective_ssm_init_follows_mamba():
    ssm = SelectiveSSM(d_inner=32, d_state=16, d_model=48, num_directions=2)
    assert ssm.dt_rank == math.ceil(48 / 16)
    torch.testing.assert_close(-torch.exp(ssm.A_log[0]), -torch.arange(1, 17, dtype=torch.float32))  # S4D-real
    dt = F.softplus(ssm.dt_proj_bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6  # log-uniform in [dt_min, dt_max]
    assert torch.all(ssm.D == 1)
    assert ssm.x_proj_weight.shape == (2, ssm.dt_rank + 32, 32)


def _single_direction(layer: MambaLayer, k: int, x: torch.Tensor, spatial) -> torch.Tensor:
    """Direction k of a MambaLayer written out as the original Mamba mixer (before gating / out_proj)."""
    b, n, _ = x.shape
    d = layer.d_inner
    u, _ = layer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    us = cross_scan(u.reshape(b, d, *spatial), layer.directions, layer.nslices)[:, k]
    w = layer.conv1d.weight[k * d : (k + 1) * d]
    bias = layer.conv1d.bias[k * d : (k + 1) * d]
    us = F.silu(F.conv1d(us, w, bias, padding=w.shape[-1] - 1, groups=d)[..., :n])
    ssm = layer.ssm
    dbl = torch.einsum("bdl,cd->bcl", us, ssm.x_proj_weight[k])
    dt, bb, cc = torch.split(dbl, [ssm.dt_rank, ssm.d_state, ssm.d_state], 1)
    dt = torch.einsum("brl,dr->bdl", dt, ssm.dt_proj_weight[k])
    sl = slice(k * d, (k + 1) * d)
    return selective_scan(
        us, dt, -torch.exp(ssm.A_log[sl]), bb, cc, ssm.D[sl], delta_bias=ssm.dt_proj_bias[k], delta_softplus=True
    )


def test_mamba_layer_multi_direction_equals_separate_mixers():
    torch.manual_seed(0)
    spatial = (4, 3, 5)
    layer = MambaLayer(d_model=8, d_state=4, directions=CROSS_3D)
    x = torch.randn(2, math.prod(spatial), 8)
    out = layer(x, spatial)
    # reference: each direction separately, back to row-major, summed, gated, projected
    ys = []
    for k in range(3):
        y = _single_direction(layer, k, x, spatial)
        perm = cross_scan(torch.arange(math.prod(spatial)).view(1, 1, *spatial).float(), CROSS_3D)[0, k, 0].long()
        back = torch.empty_like(y)
        back[..., perm] = y
        ys.append(back)
    _, z = layer.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    ref = layer.out_proj(((ys[0] + ys[1] + ys[2]) * F.silu(z)).transpose(1, 2))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_mamba_layer_is_causal_in_forward_order():
    torch.manual_seed(0)
    layer = MambaLayer(d_model=8, d_state=4)
    x = torch.randn(1, 20, 8)
    y = layer(x)
    x2 = x.clone()
    x2[:, 12:] += torch.randn_like(x2[:, 12:])
    torch.testing.assert_close(layer(x2)[:, :12], y[:, :12])  # the past does not see the future


def test_ss2d_reads_the_whole_grid_and_trains():
    torch.manual_seed(0)
    block = VSSBlock(hidden_dim=8, d_state=4)
    x = torch.randn(2, 6, 7, 8, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    # four directions: the output at the top-left corner depends on the bottom-right input
    g = torch.autograd.grad(y[0, 0, 0].sum(), x)[0]
    assert g[0, -1, -1].abs().sum() > 0 and g[1].abs().sum() == 0
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    target = torch.randn(2, 6, 7, 8)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.mse_loss(block(x.detach()), target)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_ss2d_matches_explicit_four_scans():
    torch.manual_seed(0)
    ss2d = SS2D(d_model=6, d_state=4)
    x = torch.randn(1, 3, 5, 6)
    u, z = ss2d.in_proj(x).chunk(2, dim=-1)
    u = F.silu(ss2d.conv2d(u.permute(0, 3, 1, 2)))  # (1, D, 3, 5)
    d = ss2d.d_inner
    flat = u.flatten(2)
    col = u.transpose(2, 3).flatten(2)
    orders = [flat, col, flat.flip(-1), col.flip(-1)]
    outs = []
    for k, seq in enumerate(orders):
        ssm = ss2d.ssm
        dbl = torch.einsum("bdl,cd->bcl", seq, ssm.x_proj_weight[k])
        dt, bb, cc = torch.split(dbl, [ssm.dt_rank, ssm.d_state, ssm.d_state], 1)
        dt = torch.einsum("brl,dr->bdl", dt, ssm.dt_proj_weight[k])
        sl = slice(k * d, (k + 1) * d)
        outs.append(
            selective_scan(seq, dt, -torch.exp(ssm.A_log[sl]), bb, cc, ssm.D[sl], delta_bias=ssm.dt_proj_bias[k], delta_softplus=True)
        )
    back_col = lambda y: y.view(1, d, 5, 3).transpose(2, 3).flatten(2)  # noqa: E731
    merged = outs[0] + back_col(outs[1]) + outs[2].flip(-1) + back_col(outs[3].flip(-1))
    y = merged.transpose(1, 2).reshape(1, 3, 5, d)
    ref = ss2d.out_proj(ss2d.out_norm(y) * F.silu(z))
    torch.testing.assert_close(ss2d(x), ref, rtol=1e-4, atol=1e-5)


def test_clip_towers_one_module_for_both_networks():
    """TIFCMamba's CLIPTowers and LCPDN's CLIPImageEncoder are one implementation (nets/blocks/clip.py): the image
    tower alone gives the same tokens as the image tower of the two-tower model with the same weights."""
    from monai_vlseg.nets import CLIPImageEncoder as NetsImageEncoder
    from monai_vlseg.nets import CLIPTowers as NetsTowers
    from monai_vlseg.nets.blocks.clip import SMALL_CLIP, CLIPImageEncoder, CLIPTowers

    assert NetsTowers is CLIPTowers and NetsImageEncoder is CLIPImageEncoder
    vis = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
           "image_size": 32, "patch_size": 8}  # fmt: skip
    cfg = {**SMALL_CLIP, "projection_dim": 8, "vision_config": vis,
           "text_config": {**SMALL_CLIP["text_config"], "hidden_size": 16, "intermediate_size": 32,
                           "num_hidden_layers": 1, "num_attention_heads": 2}}  # fmt: skip
    torch.manual_seed(0)
    both = CLIPTowers(None, cfg, frozen=True)
    image_only = CLIPImageEncoder(None, vis)
    assert image_only.hidden_size == both.hidden_size == 16 and image_only.image_size == 32
    assert not any(p.requires_grad for p in image_only.parameters()) and not image_only.train().model.training
    image_only.model.load_state_dict(both.vision_model.state_dict())
    x = torch.rand(2, 1, 20, 24)  # grey, not CLIP's size: expanded to RGB and resized
    torch.testing.assert_close(image_only(x), both.image_tokens(x))  # eager vs default attention: float rounding
    assert image_only(x).shape == (2, 1 + 16, 16)
    with pytest.raises(AttributeError, match="no text tower"):
        image_only.encode_text(torch.ones(1, 4, dtype=torch.long))
    # frozen towers: no parameter gradients, but the gradient reaches the input (TIFCMamba's I-hat)
    x.requires_grad_(True)
    both.encode_image(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and all(p.grad is None for p in both.parameters())
