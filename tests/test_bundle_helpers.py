"""The functions of monai_vlseg.bundle that the bundle configs call instead of inline programs."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
from ignite.handlers import ProgressBar
from monai.data import MetaTensor
from monai.handlers import CheckpointSaver, LrScheduleHandler, StatsHandler, TensorBoardStatsHandler
from torch import nn

import monai_vlseg.bundle as mb


@pytest.fixture
def datalist(tmp_path):
    items = [{"image": f"i{i}.png", "label": f"l{i}.png", "text": f"text {i}"} for i in range(5)]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": items, "test": items[:4]}))
    return str(path)


def test_eval_datalist_shuffles_texts_only_when_asked(datalist):
    plain = mb.eval_datalist(datalist, "test")
    assert [d["text"] for d in plain] == [f"text {i}" for i in range(4)] and all("label" in d for d in plain)
    for switch in (True, "true"):
        shuffled = mb.eval_datalist(datalist, "test", shuffle_text=switch)
        assert [d["image"] for d in shuffled] == [d["image"] for d in plain]
        assert sorted(d["text"] for d in shuffled) == sorted(d["text"] for d in plain)
        assert all(s["text"] != p["text"] for s, p in zip(shuffled, plain))  # a derangement
    assert mb.eval_datalist(datalist, "test", shuffle_text="false") == plain


def test_unlabelled_datalist_drops_labels_only(datalist):
    items = mb.unlabelled_datalist(datalist)
    assert len(items) == 5 and all(set(d) == {"image", "text"} for d in items)
    assert items[0]["text"] == "text 0" and items[0]["image"].endswith("i0.png")


def test_all_have_text():
    assert mb.all_have_text([{"text": "a"}, {"text": " b "}])
    assert not mb.all_have_text([{"text": "a"}, {"text": "  "}])
    assert not mb.all_have_text([{"text": "a"}, {"image": "x"}])


def test_image_meta_of_a_decollated_batch():
    batch = [{"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": f"f{i}"})} for i in range(2)]
    assert [m["filename_or_obj"] for m in mb.image_meta(batch)] == ["f0", "f1"]


def test_channel_output_transform_selects_one_channel():
    pred, label = torch.arange(12.0).view(3, 2, 2), -torch.arange(12.0).view(3, 2, 2)
    output = [{"pred": pred, "label": label}, {"pred": pred + 1, "label": label - 1}]
    preds, labels = mb.channel_output_transform(2)(output)
    assert len(preds) == len(labels) == 2
    assert torch.equal(preds[0], pred[2:3]) and torch.equal(preds[1], pred[2:3] + 1)
    assert torch.equal(labels[1], label[2:3] - 1) and preds[0].shape == (1, 2, 2)


def test_ddp_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mb.ddp_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert mb.ddp_device() == torch.device("cuda:3")


def _handlers():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    return [
        LrScheduleHandler(sched), StatsHandler(), TensorBoardStatsHandler(log_dir="/nonexistent/never-written"),
        CheckpointSaver(save_dir="/nonexistent", save_dict={"opt": opt}), ProgressBar(),
    ]  # fmt: skip


def test_rank_zero_handlers(monkeypatch):
    handlers = _handlers()
    assert mb.rank_zero_handlers(handlers) == handlers  # not distributed: rank 0
    monkeypatch.setattr(mb, "_rank", lambda: 1)
    assert mb.rank_zero_handlers(handlers) == handlers[:1]  # the others log, save or draw once


def test_ddp_init_joins_a_one_process_group(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        mb.ddp_init(torch.device("cpu"))
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        mb.ddp_init(torch.device("cpu"))  # joined already: nothing to do
        assert mb._rank() == 0
    finally:
        mb.ddp_finalize()
    assert not dist.is_initialized()


class _Towers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.frozen = False

    def set_frozen(self, frozen: bool = True) -> "_Towers":
        self.frozen = frozen
        return self


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.clip = _Towers()


class _Trainer:
    def __init__(self, net: _Net) -> None:
        self.net, self.runs = net, 0

    def run(self) -> None:
        self.runs += 1
        self.net.clip.proj.weight.data.add_(1.0)  # "training" changes the weights


def test_run_clip_stage_trains_or_loads_then_freezes_and_saves(tmp_path):
    net = _Net()
    trainer = _Trainer(net)
    out = tmp_path / "models" / "clip.pt"
    assert mb.run_clip_stage(net, None, trainer, str(out), train=True) is net
    assert trainer.runs == 1 and net.clip.frozen
    saved = torch.load(out, weights_only=True)
    assert torch.equal(saved["proj.weight"], net.clip.proj.weight)
    other = _Net()
    other_trainer = _Trainer(other)
    mb.run_clip_stage(other, str(out), other_trainer, str(tmp_path / "again.pt"), train=True)
    assert other_trainer.runs == 0 and other.clip.frozen  # loaded, not trained
    assert torch.equal(other.clip.proj.weight, net.clip.proj.weight)
    untrained = _Net()
    mb.run_clip_stage(untrained, None, _Trainer(untrained), str(tmp_path / "u.pt"), train="false")
    assert (tmp_path / "u.pt").is_file() and untrained.clip.frozen
    with pytest.raises(ValueError, match="unexpected keys"):
        torch.save({"proj.weight": torch.zeros(2, 2), "proj.bias": torch.zeros(2), "x": torch.zeros(1)}, tmp_path / "w.pt")
        mb.run_clip_stage(_Net(), str(tmp_path / "w.pt"), None, str(tmp_path / "v.pt"))
