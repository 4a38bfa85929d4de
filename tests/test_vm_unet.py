"""VM-UNet: paper configuration size, shapes and gradients, the SS2D four-direction scan against an independent
reference written the official way (transposes and flips), the patch expanding layout, bad input, and learning."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from monai.data import MetaTensor
from monai.losses import DiceCELoss
from monai.networks.nets.swin_unetr import PatchMergingV2
from torch import nn

from monai_vlseg.nets.blocks.mamba import SS2D
from monai_vlseg.nets.vm_unet import PatchExpand2D, VMUNet
from monai_vlseg.ops.selective_scan import selective_scan_ref

TINY = {"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1), "depths_decoder": (1, 1, 1, 1), "d_state": 4}


def test_paper_configuration_matches_paper_parameter_count():
    """VM-UNet paper (ISIC17/18, Table 1): 27.43 M parameters; the official code's ISIC settings give 27,427,561."""
    net = VMUNet(in_channels=3, out_channels=1)
    n = sum(p.numel() for p in net.parameters())
    assert n == 27_427_561
    assert abs(n / 1e6 - 27.43) < 0.005
    assert [len(s.blocks) for s in net.encoder] == [2, 2, 2, 2]
    assert [len(s.blocks) for s in net.decoder] == [2, 2, 2, 1]
    assert net.patch_embed.proj.kernel_size == (4, 4) and net.patch_embed.proj.out_channels == 96
    ss2d = net.encoder[0].blocks[0].ss2d
    assert ss2d.d_inner == 192 and ss2d.conv2d.kernel_size == (3, 3) and ss2d.ssm.d_state == 16
    assert ss2d.ssm.dt_rank == 6  # ceil(96 / 16)
    # drop path: linear to 0.2 over the encoder blocks, reversed over the decoder blocks
    assert net.encoder[3].blocks[1].drop_path.drop_prob == pytest.approx(0.2)
    assert net.decoder[0].blocks[0].drop_path.drop_prob == pytest.approx(0.2)
    assert isinstance(net.decoder[3].blocks[0].drop_path, torch.nn.Identity)


@pytest.mark.parametrize("in_channels,out_channels", [(1, 1), (3, 2)])
def test_shapes_and_gradients(in_channels, out_channels):
    torch.manual_seed(0)
    net = VMUNet(in_channels, out_channels, **TINY)
    x = torch.rand(2, in_channels, 32, 64)
    y = net(x)
    assert y.shape == (2, out_channels, 32, 64)
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every skip and every stage takes part: a non-zero gradient reaches the first and the deepest blocks
    assert net.encoder[0].blocks[0].ss2d.in_proj.weight.grad.abs().sum() > 0
    assert net.decoder[0].blocks[0].ss2d.out_proj.weight.grad.abs().sum() > 0


def test_metatensor_input_and_eval_determinism():
    net = VMUNet(3, 1, **TINY).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a, b = net(x), net(MetaTensor(x.clone()))
    torch.testing.assert_close(a, torch.as_tensor(b))


def test_bad_input_is_a_clear_error():
    net = VMUNet(3, 1, **TINY)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        net(torch.rand(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="one encoder and one decoder depth"):
        VMUNet(dims=(8, 16), depths=(1, 1, 1))


def _ss2d_reference(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D computed as the official code lays it out: row-major and column-major (transposed) sequences and their
    flips, one scan per direction with its own parameters, flipped/transposed back and summed."""
    b, h, w, _ = x.shape
    d, n_state, r = m.d_inner, m.ssm.d_state, m.ssm.dt_rank
    u, z = m.in_proj(x).chunk(2, dim=-1)
    u = F.silu(m.conv2d(u.permute(0, 3, 1, 2)))  # (B, D, H, W)
    row = u.reshape(b, d, h * w)
    col = u.transpose(2, 3).reshape(b, d, h * w)
    seqs = [row, col, row.flip(-1), col.flip(-1)]
    a_all = -torch.exp(m.ssm.A_log.float()).view(4, d, n_state)
    outs = []
    for k, s in enumerate(seqs):
        dbl = torch.einsum("bdl,cd->bcl", s, m.ssm.x_proj_weight[k])
        dt, bb, cc = torch.split(dbl, [r, n_state, n_state], dim=1)
        dt = torch.einsum("brl,dr->bdl", dt, m.ssm.dt_proj_weight[k])
        y = selective_scan_ref(
            s, dt, a_all[k], bb, cc, m.ssm.D.view(4, d)[k], delta_bias=m.ssm.dt_proj_bias[k], delta_softplus=True
        )
        outs.append(y)
    y_row, y_col, y_row_rev, y_col_rev = outs
    y_col = y_col.view(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)
    y_col_rev = y_col_rev.flip(-1).view(b, d, w, h).transpose(2, 3).reshape(b, d, h * w)
    y = y_row + y_col + y_row_rev.flip(-1) + y_col_rev
    y = m.out_norm(y.transpose(1, 2).reshape(b, h, w, d)) * F.silu(z)
    return m.out_proj(y)


def test_ss2d_matches_official_layout_reference():
    torch.manual_seed(0)
    m = SS2D(d_model=6, d_state=4).eval()
    x = torch.randn(2, 3, 5, 6)  # H != W catches a swapped transpose
    with torch.no_grad():
        torch.testing.assert_close(m(x), _ss2d_reference(m, x), rtol=1e-4, atol=1e-5)


def test_patch_expand_and_merging_layouts():
    torch.manual_seed(0)
    up = PatchExpand2D(8, 2, scale=4)
    x = torch.randn(1, 3, 5, 8)
    ref = up.norm(rearrange(up.expand(x), "b h w (p1 p2 c) -> b (h p1) (w p2) c", p1=4, p2=4, c=2))
    torch.testing.assert_close(up(x), ref)


def test_patch_merging_is_monai_and_equals_the_official_computation():
    """VMUNet's merging is MONAI's PatchMergingV2 (2D); with the weights copied it equals VM-UNet/VMamba's
    PatchMerging2D: x0=[0::2, 0::2], x1=[1::2, 0::2], x2=[0::2, 1::2], x3=[1::2, 1::2] concatenated, LayerNorm(4C),
    Linear(4C, 2C) without bias, so official checkpoints map key for key."""
    torch.manual_seed(0)
    net = VMUNet(1, 1, **TINY)
    assert all(isinstance(m, PatchMergingV2) for m in net.downsample)
    merge = net.downsample[1]
    dim = TINY["dims"][1]
    norm, reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)  # the official module's layers
    with torch.no_grad():
        for p in (*merge.parameters(), *norm.parameters(), *reduction.parameters()):
            p.uniform_(-1, 1)
    norm.load_state_dict(merge.norm.state_dict())
    reduction.load_state_dict(merge.reduction.state_dict())
    x = torch.randn(2, 4, 6, dim)  # channels-last, H != W
    x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    ref = reduction(norm(torch.cat([x0, x1, x2, x3], -1)))
    assert torch.equal(merge(x), ref)
    assert sorted(merge.state_dict()) == ["norm.bias", "norm.weight", "reduction.weight"]
    with pytest.raises(ValueError, match="double"):
        VMUNet(1, 1, dims=(8, 24), depths=(1, 1), depths_decoder=(1, 1))


def test_learns_a_mask():
    torch.manual_seed(0)
    net = VMUNet(1, 1, **TINY)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    label = (((yy - 12) ** 2 + (xx - 20) ** 2) < 36).float()[None, None].repeat(2, 1, 1, 1)
    image = label * 0.6 + 0.2 * torch.rand_like(label)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = loss_fn(net(image), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses
