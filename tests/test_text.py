"""Text tower and text transforms: offline loading, frozen behaviour, "no text" convention, tokenization."""

from __future__ import annotations

import io
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from monai_vlseg.nets.blocks.text_encoder import FrozenTextEncoder
from monai_vlseg.transforms import RandTextDropoutd, SetTextd, TokenizeText, TokenizeTextd
from monai_vlseg.utils import PretrainedNotFoundError, load_pretrained, resolve_pretrained, trainable_parameters

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
MISSING = "microsoft/BiomedVLP-CXR-BERT-specialized"


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def minilm() -> FrozenTextEncoder:
    return FrozenTextEncoder()


@pytest.fixture(scope="module")
def tokenize() -> TokenizeText:
    t = TokenizeText(max_length=24, empty_text="empty")
    t.tokenizer  # noqa: B018 - load once for the module
    return t


def tiny_encoder(frozen: bool = True) -> FrozenTextEncoder:
    torch.manual_seed(0)
    return FrozenTextEncoder(frozen=frozen, random_init=True, config_overrides=TINY)


class Wrapper(nn.Module):
    def __init__(self, encoder: FrozenTextEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.hidden_size, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(input_ids, attention_mask)[0])


def batch(b: int = 3, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 2000, (b, n), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(b, n, dtype=torch.int64)
    mask[1] = 0  # no text
    mask[2, 5:] = 0  # padding
    return ids, mask


def test_resolve_pretrained(tmp_path):
    default = resolve_pretrained(None)
    assert resolve_pretrained("default") == default
    assert os.path.isfile(os.path.join(default, "config.json"))
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained(MISSING) == MISSING


def test_real_minilm(minilm, tokenize):
    assert minilm.hidden_size == 384
    assert 22e6 < sum(p.numel() for p in minilm.parameters()) < 23.5e6
    ids, mask = tokenize("left lung nodule")
    assert ids.shape == mask.shape == (24,) and ids.dtype == mask.dtype == torch.int64
    empty_ids, empty_mask = tokenize(None)
    feats, out_mask = minilm(torch.stack([ids, empty_ids]), torch.stack([mask, empty_mask]))
    assert feats.shape == (2, 24, 384) and torch.equal(out_mask[1], empty_mask)
    assert torch.isfinite(feats).all()
    assert feats[0].abs().sum() > 0 and torch.all(feats[1] == 0)


def test_padding_truncation(tokenize):
    pad, sep = tokenize.tokenizer.pad_token_id, tokenize.tokenizer.sep_token_id
    ids, mask = tokenize("tumour")
    n = int(mask.sum())
    assert 2 < n < 24 and torch.all(mask[:n] == 1) and torch.all(mask[n:] == 0)
    assert torch.all(ids[n:] == pad) and ids[n - 1] == sep
    ids, mask = tokenize(" ".join(["large irregular mass in the left upper lobe"] * 10))
    assert torch.all(mask == 1) and ids[-1] == sep
    # one-element list (e.g. JSON list) is the same text
    assert all(torch.equal(a, b) for a, b in zip(tokenize(["tumour"]), tokenize("tumour")))


def test_frozen_eval_and_no_grad():
    net = Wrapper(tiny_encoder(frozen=True))
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert list(trainable_parameters(net)) == list(net.proj.parameters())
    net.train()
    assert net.training and net.proj.training and not net.encoder.model.training
    assert not any(m.training for m in net.encoder.model.modules())
    net(*batch()).sum().backward()
    assert net.proj.weight.grad is not None
    assert all(p.grad is None for p in net.encoder.parameters())


def test_trainable_encoder():
    net = Wrapper(tiny_encoder(frozen=False)).train()
    assert net.encoder.model.training
    net(*batch()).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())


def test_no_text_rows():
    enc = tiny_encoder()
    ids, mask = batch()
    feats, out_mask = enc(ids, mask)
    assert feats.shape == (3, 8, 32) and out_mask is mask
    assert torch.isfinite(feats).all() and torch.all(feats[1] == 0) and feats[2].abs().sum() > 0
    # other rows are unaffected by the empty row
    single, _ = enc(ids[2:], mask[2:])
    assert torch.allclose(single[0], feats[2], atol=1e-5)
    # mask=None means all tokens
    assert torch.allclose(enc(ids)[0], enc(ids, torch.ones_like(ids))[0])


def test_trace_and_onnx_equivalence():
    net = Wrapper(tiny_encoder()).eval()
    ids, mask = batch()
    other_mask = torch.ones_like(mask)
    other_mask[0] = 0
    other_mask[1, 3:] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, (ids, mask))
        buf = io.BytesIO()
        torch.onnx.export(net, (ids, mask), buf, input_names=["ids", "mask"], output_names=["out"], dynamo=False)
    import onnxruntime

    session = onnxruntime.InferenceSession(buf.getvalue())
    for m in (mask, other_mask):
        expected = net(ids, m)
        assert torch.allclose(traced(ids, m), expected, atol=1e-5)
        onnx_out = session.run(None, {"ids": ids.numpy(), "mask": m.numpy()})[0]
        np.testing.assert_allclose(onnx_out, expected.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("make", [lambda: FrozenTextEncoder(MISSING), lambda: TokenizeText(MISSING)("tumour")])
def test_missing_model(make):
    with pytest.raises(PretrainedNotFoundError) as info:
        make()
    err = info.value
    assert isinstance(err, FileNotFoundError)
    assert MISSING in str(err) and "\n" not in str(err) and f"hf download {MISSING}" in str(err)
    assert err.__cause__ is None and err.__suppress_context__


def test_missing_local_folder(tmp_path):
    from transformers import AutoConfig

    with pytest.raises(PretrainedNotFoundError, match="config.json") as info:
        load_pretrained(AutoConfig, tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PretrainedNotFoundError, match="does not exist") as info:
        load_pretrained(AutoConfig, tmp_path / "nope")
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("text", ["", "   ", None, float("nan"), []])
def test_empty_text_policies(tokenize, text):
    strict = TokenizeTextd(empty_text="error")
    strict.tokenize._tokenizer = tokenize.tokenizer  # share the module's tokenizer
    with pytest.raises(ValueError, match="case_007.nii.gz.*missing or empty"):
        strict({"image": "/data/case_007.nii.gz", "text": text})
    lenient = TokenizeTextd(empty_text="empty")
    lenient.tokenize._tokenizer = tokenize.tokenizer
    out = lenient({"image": "/data/case_007.nii.gz", "text": text})
    assert torch.all(out["input_ids"] == tokenize.tokenizer.pad_token_id) and torch.all(out["attention_mask"] == 0)
    assert out["input_ids"].dtype == torch.int64 and out["input_ids"].shape == (24,)


def test_missing_key(tokenize):
    t = TokenizeTextd(empty_text="error")
    t.tokenize._tokenizer = tokenize.tokenizer
    with pytest.raises(ValueError, match="case_1.png"):
        t({"image": "case_1.png"})
    t = TokenizeTextd(empty_text="error", allow_missing_keys=True)
    assert t({"image": "case_1.png"}) == {"image": "case_1.png"}


def test_tokenize_dict_keys():
    t = TokenizeTextd(
        ["text", "report"],
        max_length=10,
        input_ids_key=["ids", "report_ids"],
        attention_mask_key=["mask", "report_mask"],
    )
    out = t({"text": "left kidney", "report": ["no findings"]})
    assert {"ids", "mask", "report_ids", "report_mask"} <= set(out)
    assert out["ids"].shape == (10,) and not torch.equal(out["ids"], out["report_ids"])
    with pytest.raises(ValueError, match="distinct"):
        TokenizeTextd(["text", "report"])


def test_pickle_drops_tokenizer():
    t = TokenizeTextd(max_length=12)
    before = t({"text": "liver tumour"})
    assert t.tokenize._tokenizer is not None
    blob = pickle.dumps(t)
    assert len(blob) < 4096
    clone = pickle.loads(blob)
    assert clone.tokenize._tokenizer is None
    after = clone({"text": "liver tumour"})
    assert torch.equal(before["input_ids"], after["input_ids"])
    assert torch.equal(before["attention_mask"], after["attention_mask"])


def test_rand_text_dropout():
    items = [{"text": f"prompt {i}"} for i in range(50)]

    def run(seed: int) -> list[str]:
        drop = RandTextDropoutd(keys="text", prob=0.3).set_random_state(seed=seed)
        return [drop(d)["text"] for d in items]

    first = run(0)
    assert first == run(0)
    assert 0 < first.count("") < 50 and items[0]["text"] == "prompt 0"
    assert all(d["text"] == "" for d in map(RandTextDropoutd(keys="text", prob=1.0), items))
    assert RandTextDropoutd(keys="text", prob=0.0)(items[0]) == items[0]
    # after tokenisation: the attention mask is zeroed (the networks' "no text" convention), ids untouched
    tok = {"input_ids": torch.tensor([101, 7, 102, 0]), "attention_mask": torch.tensor([1, 1, 1, 0])}
    out = RandTextDropoutd(prob=1.0)(tok)
    assert out["attention_mask"].tolist() == [0, 0, 0, 0] and out["input_ids"].tolist() == [101, 7, 102, 0]


def test_set_text():
    fill = SetTextd(text="liver")
    assert fill({})["text"] == "liver"
    assert fill({"text": float("nan")})["text"] == "liver"
    assert fill({"text": "  "})["text"] == "liver"
    assert fill({"text": "kidney"})["text"] == "kidney"
    assert SetTextd(text="liver", override=True)({"text": "kidney"})["text"] == "liver"


def test_several_reports_per_image_become_batch_rows(tokenize):
    """group_reports -> TokenizeTextd(multiple) -> RandPickReportsd -> ReportsPrepareBatch: each batch row pairs the
    image with one report's tokens and that report's own mask."""
    from monai.data import list_data_collate

    from monai_vlseg.datalist import group_reports
    from monai_vlseg.engines import ReportsPrepareBatch
    from monai_vlseg.transforms import RandPickReportsd

    items = [{"image": "a.nii", "label": f"a{i}.nii", "text": f"lesion {w}", "named_count": i, "site": "x"}
             for i, w in enumerate(["liver", "spleen", "left kidney"])]  # fmt: skip
    items.append({"image": "b.nii", "label": "b0.nii", "text": "no focal lesion", "named_count": 0, "site": "y"})
    groups = group_reports(items)
    assert [g["image"] for g in groups] == ["a.nii", "b.nii"]
    assert groups[0]["label"] == ["a0.nii", "a1.nii", "a2.nii"] and groups[0]["text"][2] == "lesion left kidney"
    assert "named_count" not in groups[0] and groups[0]["site"] == "x" and groups[1]["named_count"] == 0
    with pytest.raises(ValueError, match="has no"):
        group_reports([{"image": "c.nii", "label": "c.nii"}])

    tok = TokenizeTextd(max_length=12, multiple=True)
    tok.tokenize._tokenizer = tokenize.tokenizer
    d = tok({"text": groups[0]["text"]})
    assert d["input_ids"].shape == (3, 12)
    assert tok({"text": "one report"})["input_ids"].shape == (12,)
    with pytest.raises(ValueError, match="one text prompt"):
        TokenizeTextd(max_length=12)(d | {"text": groups[0]["text"]})
    # channel k of the label is report k's mask: a marker voxel at k
    label = torch.zeros(3, 4, 4, 4)
    for k in range(3):
        label[k, k, 0, 0] = 1
    d.update(image=torch.rand(1, 4, 4, 4), label=label, text=groups[0]["text"])
    pick = RandPickReportsd(keys=["label", "input_ids", "attention_mask", "text"], num_reports=2).set_random_state(0)
    seen = set()
    for _ in range(20):
        out = pick(d)
        ks = [int(out["label"][r].nonzero()[0, 0]) for r in range(2)]  # which reports were kept
        assert ks[0] != ks[1]  # distinct when there are enough
        seen.update(ks)
        assert out["text"] == [groups[0]["text"][k] for k in ks]
        assert all(torch.equal(out["input_ids"][r], d["input_ids"][k]) for r, k in enumerate(ks))
        assert torch.equal(out["label_union"][0], label[ks].amax(0))
    assert seen == {0, 1, 2}
    one = pick({"label": label[:1], "input_ids": d["input_ids"][0], "attention_mask": d["attention_mask"][0],
                "text": ["only"]})  # fmt: skip
    assert one["input_ids"].shape == (2, 12) and one["text"] == ["only", "only"]  # drawn again when too few
    with pytest.raises(ValueError, match="one entry per report"):
        pick({**d, "text": ["a", "b"]})

    batch = list_data_collate([pick(d), pick(d)])
    image, target, args, kwargs = ReportsPrepareBatch()(batch)
    assert image.shape == (4, 1, 4, 4, 4) and target.shape == (4, 1, 4, 4, 4) and kwargs["input_ids"].shape == (4, 12)
    for row in range(4):
        b, r = divmod(row, 2)
        assert torch.equal(image[row], batch["image"][b]) and torch.equal(target[row, 0], batch["label"][b, r])
        assert torch.equal(kwargs["input_ids"][row], batch["input_ids"][b, r])
    single = {"image": torch.rand(2, 1, 4, 4, 4), "label": torch.rand(2, 1, 4, 4, 4),
              "input_ids": torch.ones(2, 12, dtype=torch.long), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    image, target, _, kwargs = ReportsPrepareBatch()(single)
    assert image.shape == (2, 1, 4, 4, 4) and kwargs["input_ids"].shape == (2, 12)
    one_report = {**single, "input_ids": single["input_ids"][:, None], "attention_mask": single["attention_mask"][:, None]}
    assert ReportsPrepareBatch()(one_report)[3]["input_ids"].shape == (2, 12)  # reports_per_volume = 1
