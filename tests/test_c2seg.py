"""C2Seg network pieces: BCAM against a per-token reference of the paper's formulas, K-Gate, the ablation switches,
the CLIP text-tower path, the empty prompt, and the stage-1 encoder checkpoint hand-over."""

import math

import pytest
import torch

from monai_vlseg.errors import InputError
from monai_vlseg.nets.blocks import FrozenTextEncoder
from monai_vlseg.nets.c2seg import BCAM, C2Seg, C2SegEncoder, C2SegPretrainNet, KGate
from monai_vlseg.nets.c2seg import load_encoder_checkpoint
from monai_vlseg.nets.blocks.kan import TokenizedKANBlock

CLIP_TINY = {"model_type": "clip_text_model", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 32, "vocab_size": 64, "max_position_embeddings": 16}  # fmt: skip
TINY = dict(features=(4, 8, 8, 16, 16), text_config=CLIP_TINY, text_len=8)


def _text(b=2, n=8, pad_from=5):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, pad_from:] = 0
    return ids, mask


def test_bcam_matches_the_paper_formulas_token_by_token():
    torch.manual_seed(0)
    bcam = BCAM(channels=6, text_dim=5, key_dim=4)
    v, l = torch.randn(2, 7, 6), torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    f_v, f_l = bcam(v, l, mask)
    assert f_v.shape == f_l.shape == (2, 7, 6)
    for b in range(2):
        vn, ln = bcam.norm_v(v[b]), bcam.norm_l(l[b])
        vk, vv, lk, lv = bcam.v_key(vn), bcam.v_value(vn), bcam.l_key(ln), bcam.l_value(ln)
        keep = mask[b]
        a = vk @ lk[keep].T / math.sqrt(4)  # A = V_key L_key^T / sqrt(d), valid tokens only
        torch.testing.assert_close(f_v[b], torch.softmax(a, 1) @ lv[keep], rtol=1e-5, atol=1e-6)
        ref = torch.zeros(7, 6)
        for n in range(int(keep.sum())):  # each token's spatial weights (softmax over P) applied to V_value
            ref += torch.softmax(a[:, n], 0)[:, None] * vv
        torch.testing.assert_close(f_l[b], ref * 7 / keep.sum(), rtol=1e-5, atol=1e-6)


def test_kgate_is_bounded_reweighting():
    torch.manual_seed(0)
    gate = KGate(6, 3)
    f = torch.randn(2, 5, 6)
    out = gate(f)
    ratio = out / f
    assert out.shape == f.shape and ratio.abs().max() <= 1.0 + 1e-6  # g = tanh(.) in [-1, 1]


@pytest.mark.parametrize("fusion,k_gate", [("bcam", True), ("bcam", False), ("duala", True), ("duala", False), ("none", True)])
def test_ablation_switches_shapes_gradients_and_text_use(fusion, k_gate):
    torch.manual_seed(0)
    net = C2Seg(fusion=fusion, k_gate=k_gate, **TINY)
    ids, mask = _text()
    x = torch.rand(2, 1, 32, 32)
    y = net(x, ids, mask)
    assert y.shape == (2, 1, 32, 32)
    y.square().mean().backward()
    assert all(p.grad is None for p in net.text_encoder.parameters())  # frozen tower
    assert net.encoder.stages[0][0].conv.weight.grad.abs().sum() > 0
    with torch.no_grad():  # train mode: BatchNorm rescales the (small, at init) deep path by batch statistics
        other = net(x, torch.roll(ids, 1, dims=1), mask)
        same = net(x, ids, mask)
    changed = bool((other - same).abs().max() > 1e-4)
    assert changed == (fusion != "none")  # vision-only ignores the text
    assert (fusion == "none") == (len(net.fusions) == 0)


def test_empty_prompt_for_missing_text_and_padding_invariance():
    torch.manual_seed(0)
    net = C2Seg(**TINY).eval()
    x = torch.rand(2, 1, 32, 32)
    ids, mask = _text()
    with torch.no_grad():
        no_text = net(x)
        zero_mask = net(x, ids, torch.zeros_like(mask))
        torch.testing.assert_close(no_text, zero_mask)
        ids2 = ids.clone()
        ids2[1, 5:] = 3  # padding tokens' ids do not matter beyond the mask... except through CLIP's causal mask
        a, b = net(x, ids, mask), net(x, ids2, mask)
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.rand(1, 1, 40, 40))
    with pytest.raises(ValueError, match="built for 8"):
        net(x, ids[:, :6], mask[:, :6])


def test_clip_text_tower_is_loaded_as_clip_text_model(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in CLIP_TINY.items() if k != "model_type"}
    CLIPTextModel(CLIPTextConfig(**cfg)).save_pretrained(tmp_path / "clip")  # a local CLIP-text folder
    enc = FrozenTextEncoder(str(tmp_path / "clip"))
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.hidden_size == 16
    assert not any(p.requires_grad for p in enc.parameters())
    ids, mask = _text()
    feats, _ = enc(ids, mask)
    assert feats.shape == (2, 8, 16)
    default = FrozenTextEncoder("default")  # anything else: the foundation's FrozenTextEncoder path
    assert type(default.model).__name__ == "BertModel"


def test_hybrid_encoder_stage_types_and_resolutions():
    enc = C2SegEncoder(1, (4, 8, 8, 16, 16), kan_stages=2)
    kinds = [isinstance(s[-1], TokenizedKANBlock) if isinstance(s, torch.nn.Sequential) else False for s in enc.stages]
    assert kinds == [False, False, False, True, True]  # CNN for the first three stages, KAN for the last two
    feats = enc(torch.rand(1, 1, 32, 32))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2] and [f.shape[1] for f in feats] == [4, 8, 8, 16, 16]
    assert not any(isinstance(m, TokenizedKANBlock) for m in C2SegEncoder(1, (4, 8, 8, 16, 16), kan_stages=0).modules())
    with pytest.raises(ValueError, match="kan_stages"):
        C2SegEncoder(1, (4, 8, 8, 16, 16), kan_stages=5)


def test_pretrain_view_and_encoder_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = C2Seg(**TINY)
    pre = C2SegPretrainNet(net)
    ids, mask = _text()
    out = pre(torch.rand(2, 1, 32, 32), ids, mask)
    assert out.shape == (2, 2, 16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 2))
    path = tmp_path / "encoder.pt"
    torch.save(pre.encoder.state_dict(), path)
    torch.manual_seed(1)
    other = load_encoder_checkpoint(C2Seg(**TINY), str(path))
    for (k, a), b in zip(net.encoder.state_dict().items(), other.encoder.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    with pytest.raises(InputError, match=r"missing\.pt: stage-1 encoder checkpoint not found.*run stage 1 first"):
        load_encoder_checkpoint(C2Seg(**TINY), str(tmp_path / "missing.pt"))  # required by default
    with pytest.raises(InputError, match="not set"):
        load_encoder_checkpoint(C2Seg(**TINY), None)
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED image encoder"):
        load_encoder_checkpoint(C2Seg(**TINY), str(tmp_path / "missing.pt"), required=False)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_encoder_checkpoint(C2Seg(**TINY), str(tmp_path / "bad.pt"))
