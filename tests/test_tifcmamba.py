"""TIFCMamba network and text-supervised losses: shapes, where gradients flow (segmenters yes, frozen CLIP no),
BiDF ablation switches, the soft text mask, the trivial priors and the losses against hand-written references."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from monai.data import decollate_batch

from monai_vlseg.losses.text_supervised import (
    CLIPContrastiveLoss,
    TextSupervisedLoss,
    colour_affinity_loss,
    info_nce,
    rgb_to_lab,
)
from monai_vlseg.nets.tifcmamba import (
    SMALL_CLIP,
    BiDF,
    CLIPTowers,
    TIFCMamba,
    TIFCOutput,
    TrivialPrior,
)

TINY_CLIP = copy.deepcopy(SMALL_CLIP)
TINY_CLIP["projection_dim"] = 16
TINY_CLIP["text_config"].update(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
)
TINY_CLIP["vision_config"].update(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
TINY = {
    "size": "T",
    "dims": (8, 16),
    "depths": (1, 1),
    "clip_config": TINY_CLIP,
    "feature_dim": 8,
    "text_hidden": 8,
    "d_state": 4,
    "drop_path": 0.0,
}


def tokens(b=2, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (b, n), generator=g)
    ids[:, 0] = 101
    lengths = [n - 1 - i for i in range(b)]
    am = torch.zeros(b, n, dtype=torch.long)
    for i, L in enumerate(lengths):
        ids[i, L] = 102
        ids[i, L + 1 :] = 0
        am[i, : L + 1] = 1
    kw_ids, kw_am = ids.clone(), am.clone()
    kw_ids[:, 4:] = 0
    kw_ids[:, 3] = 102
    kw_am[:, 4:] = 0
    return ids, am, kw_ids, kw_am


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TIFCMamba(**TINY)


def test_eval_logits_and_image_only(net):
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x, *tokens())
        assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
        assert net(x).shape == (
            2,
            1,
            32,
            32,
        )  # no text: learned empty prompt (verify_net_in_out path)
        other = net(x, *tokens(seed=5))
    assert not torch.allclose(out, other)  # the mask depends on the text
    with pytest.raises(ValueError, match="divisible"):
        net(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="channels"):
        net(torch.rand(1, 1, 32, 32))


def test_text_supervised_gradients_reach_segmenters_not_clip(net):
    net.train()
    net.zero_grad()
    out = net(torch.rand(4, 3, 32, 32), *tokens(4))
    assert set(out) >= {
        "pred",
        "mask_image",
        "mask_text",
        "fg_image",
        "bg_image",
        "fg_text",
        "fg_region",
    }
    assert isinstance(out, TIFCOutput) and out.mask_text.shape == (4, 12) and out.pred.shape == (4, 1, 32, 32)
    assert out["mask_text"] is out.mask_text and len(out) == len(set(out)) == 13  # a mapping for MONAI's engines
    items = decollate_batch({"pred": out}, detach=True)  # what SupervisedTrainer does after each iteration
    assert len(items) == 4 and torch.equal(items[1]["pred"]["mask_image"], out.mask_image[1].detach())
    with pytest.raises(TypeError, match="TIFCOutput"):
        TextSupervisedLoss()(dict(out))
    TextSupervisedLoss()(out).backward()
    assert all(p.grad is None for p in net.clip.parameters())  # frozen towers
    assert not any(p.requires_grad for p in net.clip.parameters())
    for part in (net.image_segmenter, net.text_segmenter, net.image_proj):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), part.__class__.__name__
    assert (
        net.text_segmenter.head.weight.grad.abs().sum() > 0
    )  # Phi_T learns through T-hat
    # the CLIP towers stay in eval mode inside a training parent
    assert not net.clip.model.training and net.image_segmenter.training
    names = {id(p) for p in net.segmenter_parameters()}
    assert not any(id(p) in names for p in net.clip.parameters())
    net.eval()


def test_switches_must_be_booleans():
    with pytest.raises(TypeError, match="fusion_spatial must be a boolean"):
        TIFCMamba(**TINY, fusion_spatial="false")


def test_supervised_mode_returns_logits():
    torch.manual_seed(0)
    sup = TIFCMamba(**TINY, text_supervised=False).train()
    out = sup(torch.rand(2, 3, 32, 32), *tokens())
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 32, 32)


@pytest.mark.parametrize(
    "spatial, channel", [(True, True), (True, False), (False, True), (False, False)]
)
def test_bidf_ablation_switches(spatial, channel):
    torch.manual_seed(0)
    m = BiDF(8, 6, spatial=spatial, channel=channel, d_state=4)
    assert hasattr(m, "ss2d") == spatial and hasattr(m, "channel_scan") == channel
    x = torch.rand(2, 8, 4, 4, requires_grad=True)
    t, tm = torch.rand(2, 5, 6), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    y = m(x, t, tm)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    # padding tokens do not change F_fuse
    t2 = t.clone()
    t2[0, 3:] = 100.0
    assert torch.allclose(m(x, t2, tm)[0], y[0], atol=1e-5)


def test_clip_text_soft_mask_matches_hf_and_is_differentiable():
    torch.manual_seed(0)
    clip = CLIPTowers(None, TINY_CLIP, frozen=True)
    ids, am, _, _ = tokens()
    emb, _ = clip.encode_text(ids, am)
    ref = clip.model.get_text_features(input_ids=ids, attention_mask=am)
    ref = getattr(ref, "pooler_output", ref)
    torch.testing.assert_close(
        emb, ref, atol=1e-5, rtol=1e-4
    )  # our path == HF's CLIP text tower
    w = torch.full(ids.shape, 0.5, requires_grad=True)
    e2, _ = clip.encode_text(ids, am, token_weights=w)
    e2.sum().backward()
    assert w.grad.abs().sum() > 0 and not torch.allclose(e2, emb)
    img = torch.rand(2, 3, 40, 40)  # resized to the tower's size
    g, p = clip.encode_image(img)
    assert g.shape == (2, 16) and p.shape == (2, 16, 16)
    assert clip(img, ids, am).shape == (2, 2)
    _, _, kw, kw_am = tokens()
    both = clip(img, ids, am, kw, kw_am)  # CLIP stage with keyword pairs: description and keyword logits
    assert both.shape == (2, 2, 2)
    torch.testing.assert_close(both[0], clip(img, ids, am))


def test_losses_against_references():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    ref = 0.5 * (
        F.cross_entropy(logits, torch.arange(4))
        + F.cross_entropy(logits.t(), torch.arange(4))
    )
    torch.testing.assert_close(CLIPContrastiveLoss()(logits, None), ref)
    with pytest.raises(ValueError, match="square"):
        CLIPContrastiveLoss()(torch.randn(2, 3))
    other = torch.randn(4, 4)
    torch.testing.assert_close(  # (N, B, B): the mean of the N pairings' CLIP losses
        CLIPContrastiveLoss()(torch.stack([logits, other])),
        0.5 * (CLIPContrastiveLoss()(logits) + CLIPContrastiveLoss()(other)),
    )
    q, k = torch.randn(3, 5), torch.randn(6, 5)
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    manual = -sum(torch.log_softmax(qn[i] @ kn.t() / 0.1, 0)[i] for i in range(3)) / 3
    torch.testing.assert_close(info_nce(q, k, 0.1), manual)
    with pytest.raises(TypeError, match="text_supervised"):
        TextSupervisedLoss()(torch.rand(2, 1, 8, 8))


def test_text_supervised_objective_decreases():
    """A few Adam steps on a fixed batch lower the text-only objective (no labels anywhere)."""
    torch.manual_seed(0)
    m = TIFCMamba(**TINY).train()
    loss_fn = TextSupervisedLoss()
    opt = torch.optim.Adam(m.segmenter_parameters(), lr=3e-3)
    x, toks = torch.rand(4, 3, 32, 32), tokens(4)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # same random background fill every step
        loss = loss_fn(m(x, *toks))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05 and math.isfinite(losses[-1])
    assert set(loss_fn.last) == {
        "contrast",
        "mutual",
        "map",
        "area",
        "binary",
        "pairwise",
        "keyword",
        "text_sparsity",
    }


def keyword_batch(b, n=12, k=3, seed=0):
    """Descriptions of random words and keywords of ``k`` of their words taken anywhere in the text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (b, n), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    kw = torch.zeros(b, k + 2, dtype=torch.long)
    kw[:, 0], kw[:, -1] = 101, 102
    for i in range(b):
        kw[i, 1:-1] = ids[i, 1 + torch.randperm(n - 2, generator=g)[:k]]
    return ids, torch.ones_like(ids), kw, torch.ones_like(kw)


def test_text_segmenter_finds_the_keyword_words_in_unseen_descriptions():
    """Phi_T trained on the keyword-membership target alone marks the keyword's words in new descriptions, wherever
    they stand (the CLIP hidden state of a word depends on its context; the word-embedding match does not)."""
    torch.manual_seed(0)
    m = TIFCMamba(**TINY).train()
    opt = torch.optim.Adam(m.text_segmenter.parameters(), lr=1e-2)
    for step in range(60):
        m_t, member = m.text_mask(*keyword_batch(16, seed=step))
        loss = F.binary_cross_entropy(m_t[:, 1:-1], member[:, 1:-1].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        m_t, member = m.text_mask(*keyword_batch(64, seed=1000))
    assert member.sum(1).ge(1).all() and not member[:, [0, -1]].any()  # specials are never keyword tokens
    pred = m_t[:, 1:-1] > 0.5
    assert (pred == member[:, 1:-1]).float().mean() > 0.97


def test_rgb_to_lab_reference_values():
    """CIE L*a*b* (D65) of sRGB white, black and primaries from the standard tables; mid-grey's L*."""
    rgb = torch.tensor([[1.0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]).t()[None, :, :, None]
    ref = torch.tensor([[100.0, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86]])
    torch.testing.assert_close(rgb_to_lab(rgb)[0, :, :, 0].t(), ref, atol=0.05, rtol=0)
    grey = torch.full((1, 1, 2, 2), 0.5)
    assert rgb_to_lab(grey).shape == (1, 1, 2, 2) and abs(rgb_to_lab(grey)[0, 0, 0, 0].item() - 53.39) < 0.05


def test_colour_affinity_prefers_masks_that_follow_colour_edges():
    """Left half red, right half green: the left-half mask costs ~0, a mask cutting the red half costs more, and the
    gradient reaches the mask."""
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0, :, :8] = 0.8
    img[:, 1, :, 8:] = 0.8
    follows = torch.zeros(1, 1, 16, 16)
    follows[..., :8] = 1.0
    cuts = torch.zeros(1, 1, 16, 16)
    cuts[..., :8, :] = 1.0
    assert colour_affinity_loss(follows.clamp(1e-4, 1 - 1e-4), img) < 1e-3
    soft = cuts.clamp(0.05, 0.95).requires_grad_()
    loss = colour_affinity_loss(soft, img)
    assert loss > 0.1
    loss.backward()
    assert soft.grad.abs().sum() > 0


def test_seed_map_loss_rewards_the_patch_clip_points_at():
    """Seeds from CLIP's region-text map: a mask on the most similar patch costs less than one on a background patch,
    and a mask covering the low-similarity patches costs more still."""
    loss = TextSupervisedLoss(map_mode="seeds", seed_fg=1, seed_bg=0.5)
    sim = torch.tensor([[0.9, 0.5, 0.1, -0.2]])  # 2 x 2 CLIP patch grid: top-left is the described object

    def seed_loss(rows, cols):
        m = torch.full((1, 1, 8, 8), 0.01)
        m[..., rows, cols] = 0.99
        return loss._seed_loss(m, sim).item()

    on_seed, on_middle, on_bg = seed_loss(slice(0, 4), slice(0, 4)), seed_loss(slice(0, 4), slice(4, 8)), seed_loss(
        slice(4, 8), slice(0, 8))
    assert on_seed < 0.05 < on_middle < on_bg
    with pytest.raises(ValueError, match="map_mode"):
        TextSupervisedLoss(map_mode="peaks")


def test_area_prior_is_a_hinge_on_the_range():
    """The area term is 0 for a binary mask covering a fraction inside ``area_range``; above the range it is the log
    excess; a uniformly faint mask pays ``-log`` of its value (the described object must be somewhere)."""
    loss = TextSupervisedLoss(area_range=(0.05, 0.2))
    g = torch.Generator().manual_seed(0)

    def area_term(fraction, value=1.0):
        m = torch.zeros(1, 1, 20, 20)
        m.view(-1)[: round(fraction * 400)] = value
        e = lambda *s: torch.randn(*s, generator=g)
        out = TIFCOutput(pred=torch.logit(m.clamp(1e-6, 1 - 1e-6)), mask_image=m, image=torch.rand(1, 3, 20, 20, generator=g),
                         region_sim=e(1, 4), fg_image=e(1, 8), bg_image=e(1, 8), fg_text=e(1, 8), text=e(1, 8),
                         fg_region=e(1, 8), bg_region=e(1, 8), mask_text=torch.rand(1, 5, generator=g),
                         token_mask=torch.ones(1, 5), keyword_tokens=torch.ones(1, 5))
        return loss.terms(out)["area"].item()

    assert area_term(0.1) == 0.0 and area_term(0.06) == 0.0
    assert area_term(0.5) == pytest.approx(math.log(0.5 / 0.2), abs=1e-4)
    assert area_term(1.0, value=0.1) == pytest.approx(-math.log(0.1), abs=1e-4)
    assert area_term(0.025) > 5.0  # half of the top 5 % of pixels are 0
    with pytest.raises(ValueError, match="area_range"):
        TextSupervisedLoss(area_range=(0.3, 0.1))


def test_trivial_priors():
    x = torch.rand(2, 3, 20, 20)
    whole = TrivialPrior("whole")(x)
    assert (whole > 0).all() and whole.shape == (2, 1, 20, 20)
    disc = TrivialPrior("disc", radius=0.25)(x) > 0
    assert (
        abs(disc[0, 0].float().mean().item() - math.pi * 0.25**2) < 0.02
        and disc[0, 0, 10, 10]
    )
    with pytest.raises(ValueError):
        TrivialPrior("square")
