"""SegMamba network: shapes and gradients, the tri-oriented Mamba layer against a direct re-implementation of the
official three-order scan (mamba-ssm ``bimamba_type="v3"``) on the official (D, H, W) layout, the slice axis of
MONAI's (X, Y, Z) maps as that layout permuted, the paper configuration's parameter count against the official
module layout, checkpointing, errors. (The scan through the slices of a DICOM series: test_bundle_segmamba_ct.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F

from monai_vlseg.nets.segmamba import GSC, SegMamba, ToMLayer
from monai_vlseg.ops.selective_scan import selective_scan_ref

TINY = dict(feature_size=(8, 16, 16, 32), hidden_size=32, depths=(1, 1, 1, 1), num_slices=None)


def test_forward_shape_and_gradients():
    torch.manual_seed(0)
    net = SegMamba(1, 3, **TINY)
    x = torch.randn(2, 1, 32, 32, 16)
    y = net(x)
    assert y.shape == (2, 3, 32, 32, 16)
    y.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.encoder.stages[0][0].mamba.ssm.A_log.grad.abs().sum() > 0  # the scan is on the gradient path
    assert {m.slice_axis for m in net.modules() if isinstance(m, ToMLayer)} == {-1}  # z of MONAI's (X, Y, Z) maps
    assert {m.slice_axis for m in SegMamba(1, 3, **TINY, slice_axis=0).modules() if isinstance(m, ToMLayer)} == {0}


def test_loss_goes_down():
    torch.manual_seed(0)
    net = SegMamba(1, 2, **TINY)
    x = torch.randn(2, 1, 32, 32, 32)
    target = (x > 0.5).long()[:, 0]
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def _reference_tom(layer: ToMLayer, x: torch.Tensor) -> torch.Tensor:
    """x + ToM(LN(x)) written as the official mamba-ssm v3 block does it on a (B, C, D, H, W) map (D the slices):
    three separately parameterised causal Mamba passes over the forward, flipped and slice-interleaved (chunk + stack)
    sequences, each gated by its own re-ordered z, undone, summed, then out_proj; the sequential reference scan."""
    m = layer.mamba
    b = x.shape[0]
    n = x.shape[2:].numel()
    ns = layer.num_slices or x.shape[2]
    tokens = layer.norm(x.flatten(2).transpose(1, 2))
    xz = m.in_proj(tokens).transpose(1, 2)  # (B, 2*di, L)
    di, ssm = m.d_inner, m.ssm

    def interleave(t):  # official: torch.stack(t.chunk(ns, -1), -1).flatten(-2)
        return torch.stack(t.chunk(ns, dim=-1), dim=-1).flatten(-2)

    def deinterleave(t):  # official: reshape(b, d, L/ns, ns).permute(0, 1, 3, 2).flatten(-2)
        return t.reshape(b, di, n // ns, ns).permute(0, 1, 3, 2).flatten(-2)

    orders = [(lambda t: t, lambda t: t), (lambda t: t.flip(-1), lambda t: t.flip(-1)), (interleave, deinterleave)]
    total = 0
    for k, (fwd, inv) in enumerate(orders):
        u, z = fwd(xz).chunk(2, dim=1)
        w = m.conv1d.weight[k * di : (k + 1) * di]
        bias = m.conv1d.bias[k * di : (k + 1) * di]
        u = F.silu(F.conv1d(u, w, bias, padding=w.shape[-1] - 1, groups=di)[..., :n])
        dbl = torch.einsum("bdl,cd->bcl", u, ssm.x_proj_weight[k])
        dt, bb, cc = torch.split(dbl, [ssm.dt_rank, ssm.d_state, ssm.d_state], dim=1)
        dt = torch.einsum("brl,dr->bdl", dt, ssm.dt_proj_weight[k])
        a = -torch.exp(ssm.A_log[k * di : (k + 1) * di])
        y = selective_scan_ref(u, dt, a, bb, cc, ssm.D[k * di : (k + 1) * di], z=z,
                               delta_bias=ssm.dt_proj_bias[k], delta_softplus=True)  # fmt: skip
        total = total + inv(y)
    out = m.out_proj(total.transpose(1, 2))
    return x + out.transpose(1, 2).reshape(x.shape)


def _perturbed_tom(num_slices, slice_axis) -> ToMLayer:
    torch.manual_seed(0)
    layer = ToMLayer(8, num_slices=num_slices, d_state=4, slice_axis=slice_axis)
    with torch.no_grad():
        for p in layer.parameters():  # break symmetries so that a wrong order or parameter slice shows
            p.add_(0.1 * torch.randn_like(p))
    return layer.double()


@pytest.mark.parametrize("num_slices", [None, 4])
def test_tom_layer_matches_official_three_order_scan(num_slices):
    # slice_axis=0 reads the map as stored: the official code's (D, H, W) arrays, whose first axis holds the slices
    layer = _perturbed_tom(num_slices, slice_axis=0)
    x = torch.randn(2, 8, 4, 6, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference_tom(layer, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("num_slices", [None, 4])
@pytest.mark.parametrize("slice_axis", [-1, 1])
def test_slice_axis_is_the_official_layout_permuted(slice_axis, num_slices):
    """A ToM layer scanning through ``slice_axis`` of a (B, C, X, Y, Z) map (-1: z, MONAI's slices) equals the same
    weights on the map permuted to the official layout (slices first: (B, C, Z, X, Y) for z), permuted back."""
    layer, official = _perturbed_tom(num_slices, slice_axis), _perturbed_tom(num_slices, 0)
    official.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 4, 6, 5, dtype=torch.float64)  # three sizes: a wrong axis cannot pass by symmetry
    d = 2 + slice_axis % 3
    out = layer(x)
    torch.testing.assert_close(out, official(x.movedim(d, 2)).movedim(2, d), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, _reference_tom(official, x.movedim(d, 2)).movedim(2, d), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(out, official(x), atol=1e-3)  # the axis changes the result (the old scan ran along x)


def _official_param_count(cin: int, cout: int, dims=(48, 96, 192, 384), hidden=768, depths=(2, 2, 2, 2)) -> int:
    """Parameters of ge-xing/SegMamba's ``SegMamba`` counted from its module definitions (mamba-ssm v3 Mamba with
    d_state 16, d_conv 4, expand 2, three directions; MONAI Unetr blocks with instance norm, res_block)."""

    def conv(i, o, k):
        return i * o * k**3 + o

    def mamba(d):
        di, r, n = 2 * d, math.ceil(d / 16), 16
        per_dir = (di * 4 + di) + (r + 2 * n) * di + (r * di + di) + di * n + di  # conv1d, x_proj, dt_proj, A, D
        return d * 2 * di + 3 * per_dir + di * d  # in_proj, 3 directions, out_proj (no biases)

    enc = conv(cin, dims[0], 7) + sum(conv(dims[i], dims[i + 1], 2) for i in range(3))
    enc += sum(2 * conv(d, d, 3) + 2 * conv(d, d, 1) for d in dims)  # GSC
    enc += sum(depths[i] * (2 * dims[i] + mamba(dims[i])) for i in range(4))  # LayerNorm + Mamba
    enc += sum(conv(d, 2 * d, 1) + conv(2 * d, d, 1) for d in dims)  # MlpChannel

    def basic(i, o):  # UnetResBlock: conv3 (no bias), conv3 (no bias), 1x1 conv3 when i != o (no bias); IN no affine
        return i * o * 27 + o * o * 27 + (i * o if i != o else 0)

    def up(i, o):  # transposed conv k2 (no bias) + UnetResBlock(2o -> o)
        return i * o * 8 + basic(2 * o, o)

    dec = basic(cin, dims[0]) + basic(dims[0], dims[1]) + basic(dims[1], dims[2]) + basic(dims[2], dims[3])
    dec += basic(dims[3], hidden) + up(hidden, dims[3]) + up(dims[3], dims[2]) + up(dims[2], dims[1])
    dec += up(dims[1], dims[0]) + basic(dims[0], dims[0]) + conv(dims[0], cout, 1)
    return enc + dec


@pytest.mark.parametrize("cin,cout", [(4, 4), (1, 3)])
def test_paper_configuration_parameter_count(cin, cout):
    net = SegMamba(cin, cout)  # defaults are the paper configuration
    count = sum(p.numel() for p in net.parameters())
    assert count == _official_param_count(cin, cout)
    assert 67.3e6 < count < 67.5e6  # BraTS (4 -> 4): 67.42M; CT (1 -> 3): 67.36M


def test_checkpointing_gives_the_same_result():
    torch.manual_seed(0)
    a = SegMamba(1, 2, **TINY)
    b = SegMamba(1, 2, **TINY, use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gsc_fusions_and_residual():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6, 6)
    add, mul = GSC(4, fusion="add"), GSC(4, fusion="mul")
    mul.load_state_dict(add.state_dict())
    assert not torch.allclose(add(x), mul(x))
    with torch.no_grad():
        for blk in (add.proj4,):
            blk[0].weight.zero_()
            blk[0].bias.fill_(-1.0)  # ReLU(InstanceNorm(const)) = 0: only the residual is left
    torch.testing.assert_close(add(x), x)
    with pytest.raises(ValueError, match="fusion"):
        GSC(4, fusion="gate")


def test_clear_errors():
    net = SegMamba(1, 2, **TINY)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, 1, 40, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 32, 32, 32))
    paper_slices = SegMamba(1, 2, feature_size=(8, 16, 16, 32), hidden_size=32, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="num_slices=16"):  # stage 3 of a 48^3 patch: 6^3 tokens
        paper_slices(torch.randn(1, 1, 48, 48, 48))
    with pytest.raises(ValueError, match="slice_axis=3 is not an axis of a 3D map"):
        SegMamba(1, 2, **TINY, slice_axis=3)
    with pytest.raises(ValueError, match="slice_axis=-4 is not an axis of a 3D spatial map"):
        ToMLayer(8, slice_axis=-4)(torch.randn(1, 8, 2, 2, 2))
