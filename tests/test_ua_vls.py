import math

import numpy as np
import pytest
import torch

from monai_vlseg.losses import SEULoss
from monai_vlseg.nets import UAVLS, MoDAB, SSMix
from monai_vlseg.utils import trainable_parameters

TINY_VISION = {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_net(**kw):
    torch.manual_seed(0)
    return UAVLS(vision_config=TINY_VISION, text_config=TINY_TEXT, **kw)


def tokens(batch, length=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.ones(batch, length, dtype=torch.long)


def test_ssmix_shapes_and_token_projection():
    mix = SSMix(d_model=16, in_tokens=24, out_tokens=9)
    out = mix(torch.randn(2, 24, 16))
    assert out.shape == (2, 9, 16)
    out.sum().backward()
    assert mix.ssm.A_log.grad is not None and mix.token_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("residual", ["paper", "official"])
def test_modab_residual_forms(residual):
    torch.manual_seed(0)
    block = MoDAB(channels=16, text_dim=32, in_tokens=24, out_tokens=12, residual=residual).eval()
    x, t = torch.randn(2, 49, 16), torch.randn(2, 24, 32)
    out = block(x, t)
    assert out.shape == x.shape
    # eq. 12: with alpha = 0 the block returns X (paper) or X_SA (official)
    with torch.no_grad():
        block.alpha.zero_()
    out0 = block(x, t)
    if residual == "paper":
        torch.testing.assert_close(out0, x)
    else:
        assert not torch.allclose(out0, x)
    with pytest.raises(ValueError, match="residual"):
        MoDAB(16, 32, residual="other")


def test_uavls_forward_backward_and_text_dependence():
    net = tiny_net()
    x = torch.rand(2, 1, 64, 64)
    ids, am = tokens(2)
    y = net(x, ids, am)
    assert y.shape == (2, 1, 64, 64)
    loss = SEULoss()(y, (torch.rand_like(y) > 0.5).float())
    loss.backward()
    assert all(p.grad is None for p in net.text_encoder.parameters())
    assert all(not p.requires_grad for p in net.text_encoder.parameters())
    trainable = list(trainable_parameters(net))
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable) > 0.9 * len(trainable)
    net.eval()
    with torch.no_grad():
        other = net(x, *tokens(2, seed=1))
        assert not torch.allclose(net(x, ids, am), other)  # the text changes the mask


def test_uavls_empty_prompt_rows_match_imageonly():
    net = tiny_net().eval()
    x = torch.rand(3, 1, 64, 64)
    ids, am = tokens(3)
    am[1] = 0  # no text for sample 1
    with torch.no_grad():
        mixed = net(x, ids, am)
        image_only = net(x)
    torch.testing.assert_close(mixed[1], image_only[1])
    assert not torch.allclose(mixed[0], image_only[0])


def test_uavls_rgb_and_input_errors():
    net = tiny_net(in_channels=3)
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="3-channel"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.rand(1, 3, 48, 40))
    with pytest.raises(ValueError, match="tokens"):
        net(torch.rand(1, 3, 32, 32), *tokens(1, length=16))
    with pytest.raises(ValueError, match="in_channels"):
        tiny_net(in_channels=2)


def test_paper_configuration_size():
    """Trainable parameters of the 224x224 paper configuration against the paper's 39.9M (within 10%)."""
    net = UAVLS(text_config=TINY_TEXT)  # ConvNeXt-Tiny; a tiny random text tower keeps the test fast
    text_proj = sum(m.text_proj[0].weight.numel() for m in (s.modab for s in net.decoder))
    # the paper's 768-d CXR-BERT: the three text projections take 768 inputs instead of 32
    n = sum(p.numel() for p in trainable_parameters(net)) + text_proj // 32 * (768 - 32)
    n -= net.empty_prompt.numel()
    assert abs(n / 39.9e6 - 1) < 0.10, n


def _seu_reference(logits, target, lf=0.3, le=0.1, eps=1e-5):
    p = torch.sigmoid(logits.double())
    g = target.double()
    b = p.shape[0]
    dice = torch.stack([1 - (2 * (p[i] * g[i]).sum() + eps) / (p[i].sum() + g[i].sum() + eps) for i in range(b)])
    fp = torch.fft.fft2(p, norm="ortho").abs()
    fg = torch.fft.fft2(g, norm="ortho").abs()
    spec = ((fp - fg) ** 2).flatten(1).mean(1)
    q = torch.stack([p, 1 - p], 1)
    ent = -(q * torch.log(q + 1e-8)).sum(1).flatten(1).mean(1)
    return (dice + lf * spec + le * ent).mean()


def test_seu_matches_equations():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 16, 16)
    target = (torch.rand(3, 1, 16, 16) > 0.6).float()
    torch.testing.assert_close(SEULoss()(logits, target).double(), _seu_reference(logits, target), rtol=1e-5, atol=1e-6)


def test_seu_perfect_prediction_and_components():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 3:6] = 1
    perfect = (target * 2 - 1) * 30
    assert SEULoss()(perfect, target) < 1e-4
    uncertain = torch.zeros_like(target)  # p = 0.5 everywhere: entropy log 2
    only_entropy = SEULoss(lambda_spectral=0.0)(uncertain, target) - SEULoss(lambda_spectral=0, lambda_entropy=0)(
        uncertain, target
    )
    assert math.isclose(float(only_entropy), 0.1 * math.log(2), rel_tol=1e-4)


def test_seu_softmax_onehot_and_training_signal():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 8, 8))
    logits = torch.zeros(2, 3, 8, 8, requires_grad=True)
    loss_fn = SEULoss(sigmoid=False, softmax=True, to_onehot_y=True, include_background=False)
    opt = torch.optim.Adam([logits], lr=0.1)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, labels)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss)
    assert float(loss) < 0.5 * first
    with pytest.raises(ValueError, match="exactly one"):
        SEULoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="shape"):
        SEULoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


@pytest.mark.parametrize("softmax, channels, size", [(False, 1, (16, 16)), (False, 1, (12, 20)), (True, 3, (8, 8))])
def test_seu_spectral_term_scale_against_eq28(softmax, channels, size):
    """Eq. 28 as printed is the squared L2 norm of the difference of the unnormalised Fourier magnitudes; the default
    (the official code's mean over the orthonormal spectrum) is exactly eq. 28 / (C * (HW)^2), so the default
    lambda_F = 0.3 is eq. 28 with lambda_F = 0.3 / (C * (HW)^2)."""
    torch.manual_seed(1)
    logits = torch.randn(2, channels, *size, dtype=torch.float64)
    target = (torch.rand(2, channels, *size) > 0.6).double()
    kw = dict(sigmoid=not softmax, softmax=softmax, lambda_entropy=0.0)

    def spectral(**extra):  # the spectral term alone: the loss with it minus the loss without it, per image
        with_term = SEULoss(**kw, reduction="none", **extra)(logits, target)
        return with_term - SEULoss(**kw, reduction="none", lambda_spectral=0.0)(logits, target)

    p = torch.softmax(logits, 1) if softmax else torch.sigmoid(logits)
    eq28 = np.array([  # NumPy's unnormalised 2D FFT, summed over channels and frequencies
        sum(((np.abs(np.fft.fft2(p[b, c].numpy())) - np.abs(np.fft.fft2(target[b, c].numpy()))) ** 2).sum()
            for c in range(channels))
        for b in range(2)
    ])  # fmt: skip
    scale = channels * (size[0] * size[1]) ** 2
    np.testing.assert_allclose(spectral(lambda_spectral=1.0, spectral_reduction="sum").numpy(), eq28, rtol=1e-5)  # float32 loss
    np.testing.assert_allclose(spectral(lambda_spectral=1.0).numpy(), eq28 / scale, rtol=1e-5)
    # the documented equivalence: the default weight 0.3 == eq. 28 at 0.3 / (C (HW)^2), the whole loss alike
    torch.testing.assert_close(
        SEULoss(sigmoid=not softmax, softmax=softmax)(logits, target),
        SEULoss(sigmoid=not softmax, softmax=softmax, spectral_reduction="sum", lambda_spectral=0.3 / scale)(logits, target),
    )
    with pytest.raises(ValueError, match="spectral_reduction"):
        SEULoss(spectral_reduction="max")
