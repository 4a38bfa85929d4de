"""CaCL soft targets, the soft InfoNCE against a direct computation, the paper's gradient formula, and the
false-negative property: a near-duplicate text is pushed away less than under hard InfoNCE."""

import pytest
import torch
import torch.nn.functional as F

from monai_vlseg.losses.cacl import CaCLLoss, InfoNCELoss, cacl_soft_targets, soft_info_nce


def _batch(seed=0, b=6, d=16):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, d, generator=g)
    text[1] = text[0] + 0.05 * torch.randn(d, generator=g)  # text 1 is a near-duplicate of text 0 (same template)
    image = torch.randn(b, d, generator=g)
    return image, text


def test_soft_targets_follow_the_definition():
    _, text = _batch()
    y = cacl_soft_targets(text, tau=0.07, rho=0.8)
    t = F.normalize(text, dim=-1)
    m = t @ t.T
    mp = torch.clamp(m - m.mean(1, keepdim=True), min=0)
    ref = 0.8 * torch.softmax(mp / 0.07, 1) + 0.2 * torch.eye(6)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(y.sum(1), torch.ones(6))
    assert y[0, 1] > 0.3 and y[0, 1] > 10 * y[0, 2:].max()  # the duplicate shares the anchor's target mass
    torch.testing.assert_close(cacl_soft_targets(text, rho=0.0), torch.eye(6))


def test_hard_infonce_equals_clip_cross_entropy():
    image, text = _batch(1)
    loss = InfoNCELoss(logit_temperature=0.1)(image, text)
    logits = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T / 0.1
    labels = torch.arange(6)
    ref = F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(CaCLLoss(rho=0.0, logit_temperature=0.1)(image, text), ref)


def test_gradient_matches_the_paper_and_weakens_false_negative_repulsion():
    image, text = _batch(2)
    b, t = 6, 0.07
    grads = {}
    for name, loss_fn in (("cacl", CaCLLoss()), ("hard", InfoNCELoss())):
        s = (F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T).requires_grad_(True)  # s_ij = v_i . l_j
        y = loss_fn.targets(text)
        soft_info_nce(s / t, y).backward()
        p_v2l, p_l2v = torch.softmax(s / t, 1), torch.softmax(s.T / t, 1).T  # P^{l->v}_ij: image i given text j
        torch.testing.assert_close(s.grad, ((p_v2l - y) + (p_l2v - y.T)) / (b * t), rtol=1e-4, atol=1e-6)
        grads[name] = s.grad
    # dL/ds_01 > 0 pushes s_01 down (repulsion of image 0 from text 1, the near-duplicate of its own text)
    assert grads["hard"][0, 1] > 0
    assert grads["cacl"][0, 1] < grads["hard"][0, 1]
    # a genuinely different text keeps (almost) the same repulsion
    assert grads["cacl"][0, 4].item() == pytest.approx(grads["hard"][0, 4].item(), rel=0.05, abs=1e-4)


def test_loss_decreases_when_training_an_image_projection():
    torch.manual_seed(0)
    _, text = _batch(3, b=8)
    image = torch.randn(8, 12)
    proj = torch.nn.Linear(12, 16)
    opt = torch.optim.Adam(proj.parameters(), lr=0.05)
    loss_fn = CaCLLoss()
    first = loss_fn(proj(image), text).item()
    for _ in range(50):
        opt.zero_grad()
        loss = loss_fn(proj(image), text)
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_bad_arguments():
    with pytest.raises(ValueError, match="rho"):
        CaCLLoss(rho=1.5)
    with pytest.raises(ValueError, match="same shape"):
        CaCLLoss()(torch.randn(4, 8), torch.randn(4, 6))
