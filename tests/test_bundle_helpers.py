"""The functions of monai_vlseg.bundle that the bundle configs call instead of inline programs."""

import datetime
import json
import os
import socket
from types import SimpleNamespace

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
    untrained = _Net()  # pretrained towers (a clip_model) are frozen as they are
    mb.run_clip_stage(untrained, None, _Trainer(untrained), str(tmp_path / "u.pt"), train="false")
    assert (tmp_path / "u.pt").is_file() and untrained.clip.frozen
    with pytest.raises(ValueError, match="frozen with random weights.*--clip_pretrain_epochs N"):  # random ones refused
        mb.run_clip_stage(_Net(), None, None, str(tmp_path / "r.pt"), train=False, pretrained=False)
    assert not (tmp_path / "r.pt").exists()
    with pytest.raises(ValueError, match="unexpected keys"):
        torch.save({"proj.weight": torch.zeros(2, 2), "proj.bias": torch.zeros(2), "x": torch.zeros(1)}, tmp_path / "w.pt")
        mb.run_clip_stage(_Net(), str(tmp_path / "w.pt"), None, str(tmp_path / "v.pt"))


# --- run folders, the record of a checkpoint's configuration, publishing --------------------------------------------
CONFIG = {"image_size": [64, 64], "in_channels": 1, "text_len": 24}


def _run(root, name, config=CONFIG, epochs=()):
    run_dir = mb.start_run(str(root / "runs" / name), config)
    for e in epochs:
        torch.save({"epoch": e}, f"{run_dir}/checkpoint_epoch={e}.pt")
    return run_dir


def test_run_folder_names_new_runs_by_start_time_and_finds_the_run_to_resume(tmp_path, monkeypatch):
    fixed = datetime.datetime(2026, 12, 3, 14, 15, 1)
    monkeypatch.setattr(mb, "datetime", SimpleNamespace(datetime=SimpleNamespace(now=lambda: fixed)))
    runs = tmp_path / "runs"
    assert mb.run_folder(str(tmp_path)) == str(runs / "20261203-141501")  # nothing is created
    (runs / "20261203-141501").mkdir(parents=True)
    (runs / "20261203-141501-2").mkdir()
    assert mb.run_folder(str(tmp_path), resume="false") == str(runs / "20261203-141501-3")
    assert mb.run_folder(str(tmp_path), run_name="mine") == str(runs / "mine")
    with pytest.raises(FileNotFoundError, match="no run in"):
        mb.run_folder(str(tmp_path), resume=True)
    old = _run(tmp_path, "old", epochs=[1, 2])
    new = _run(tmp_path, "new", epochs=[1])
    os.utime(f"{old}/checkpoint_epoch=2.pt", (1, 1))
    os.utime(f"{old}/config.json", (1, 1))
    assert mb.run_folder(str(tmp_path), resume=True) == new  # the run written last
    assert mb.run_folder(str(tmp_path), resume="true", run_name="old") == str(runs / "old")
    assert mb.run_folder(str(tmp_path), resume="old") == old  # a run name
    assert mb.run_folder(str(tmp_path / "elsewhere"), resume=old) == old  # a folder
    with pytest.raises(FileNotFoundError, match="--resume nope"):
        mb.run_folder(str(tmp_path), resume="nope")
    assert mb.resuming("old") and mb.resuming("True") and not mb.resuming("false") and not mb.resuming(None)
    _run(tmp_path, "7")
    assert mb.run_folder(str(tmp_path), resume=7) == str(runs / "7")  # `--resume 7` reaches the config as a number


def test_start_run_records_the_configuration_and_refuses_a_used_folder(tmp_path):
    run_dir = _run(tmp_path, "a")
    record = json.loads(open(f"{run_dir}/config.json").read())
    assert record["run"] == "a" and record["model_config"] == CONFIG and record["started"]
    with pytest.raises(FileExistsError, match="--resume true"):
        mb.start_run(run_dir, CONFIG)
    assert mb.start_run(run_dir, dict(CONFIG, image_size=(64, 64)), resume=True) == run_dir  # tuples read as lists
    with pytest.raises(ValueError, match=r"image_size \[64, 64\] there, \[96, 96\] here"):
        mb.start_run(run_dir, dict(CONFIG, image_size=[96, 96]), resume=True)
    with pytest.raises(FileNotFoundError, match="holds no run"):
        mb.start_run(str(tmp_path / "runs" / "b"), CONFIG, resume=True)


def test_resume_checkpoint_is_the_last_epochs(tmp_path):
    run_dir = _run(tmp_path, "a", epochs=[9, 10])
    assert mb.resume_checkpoint(run_dir, False) is None
    assert mb.resume_checkpoint(run_dir, True).endswith("checkpoint_epoch=10.pt")  # by number, not by name
    empty = _run(tmp_path, "b")
    with pytest.warns(UserWarning, match="starts again at epoch 1"):
        assert mb.resume_checkpoint(empty, "true") is None


def test_publish_checkpoint_replaces_only_what_a_run_wrote_or_when_told(tmp_path):
    models = tmp_path / "models"
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", dict(CONFIG, image_size=[96, 96]))
    for run_dir in (a, b):
        torch.save({"w": torch.tensor([float(run_dir.endswith("b"))])}, f"{run_dir}/model.pt")
    assert mb.publish_checkpoint(a, str(models)) == str(models / "model.pt")  # none there yet
    record = json.loads((models / "model.json").read_text())
    assert record["run_dir"] == a and record["checkpoint"] == "model.pt" and record["model_config"] == CONFIG
    assert mb.publish_checkpoint(a, str(models)) == str(models / "model.pt")  # its own: replaced (a resumed run)
    with pytest.warns(UserWarning, match=r"model.pt was kept: it was written by run .*/a .*--ckpt_dir .*/b"):
        assert mb.publish_checkpoint(b, str(models)) == f"{b}/model.pt"
    assert torch.load(models / "model.pt")["w"].item() == 0.0
    assert mb.publish_checkpoint(b, str(models), overwrite="true") == str(models / "model.pt")
    assert torch.load(models / "model.pt")["w"].item() == 1.0
    assert json.loads((models / "model.json").read_text())["model_config"]["image_size"] == [96, 96]
    (models / "model.json").unlink()  # a model.pt no run recorded (trained before runs had records, copied in...)
    with pytest.warns(UserWarning, match="written by no run of this bundle"):
        mb.publish_checkpoint(b, str(models))
    with pytest.warns(UserWarning, match="was not written"):
        assert mb.publish_checkpoint(b, str(models), "encoder.pt") is None


def test_check_model_config(tmp_path):
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    with pytest.warns(UserWarning, match="has no record of the configuration"):
        mb.check_model_config(str(ckpt), CONFIG)
    run_dir = _run(tmp_path, "a")  # a run folder: its config.json is the record of its checkpoints
    mb.check_model_config(f"{run_dir}/model.pt", CONFIG)
    (ckpt.parent / "model.json").write_text(json.dumps({"model_config": dict(CONFIG, network_def={"class": "N"})}))
    mb.check_model_config(str(ckpt), dict(CONFIG, image_size=(64, 64), extra=1))  # keys one side lacks: not compared
    with pytest.raises(ValueError) as err:
        mb.check_model_config(str(ckpt), dict(CONFIG, image_size=[96, 96], text_len=16, network_def={"class": "M"}))
    msg = str(err.value)
    assert f"{ckpt} was trained with another configuration (recorded in {ckpt.parent / 'model.json'})" in msg
    assert "image_size [64, 64] there, [96, 96] here: add --image_size '[64, 64]'" in msg
    assert "text_len 24 there, 16 here: add --text_len '24'" in msg and "network_def N" in msg
    assert "--config_mismatch warn" in msg and "\n" not in msg
    # a SegMamba checkpoint recorded before slice_axis existed scanned along x (axis 0): refused at the new default
    with pytest.raises(ValueError, match="slice_axis 0 there, -1 here: add --slice_axis '0'"):
        mb.check_model_config(str(ckpt), dict(CONFIG, network_def={"class": "N"}, slice_axis=-1))
    mb.check_model_config(str(ckpt), dict(CONFIG, network_def={"class": "N"}, slice_axis=0))
    with pytest.warns(UserWarning, match="image_size"):
        mb.check_model_config(str(ckpt), dict(CONFIG, image_size=[96, 96]), on_mismatch="warn")
    with pytest.raises(ValueError, match="config_mismatch must be"):
        mb.check_model_config(str(ckpt), CONFIG, on_mismatch="ignore")


def test_network_signature_tells_networks_apart():
    sig = mb.network_signature(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)))
    assert sig["class"] == "torch.nn.modules.container.Sequential" and sig["tensors"] == 7
    assert sig["values"] == 8 * 9 + 8 + 4 * 8 + 1
    assert sig == mb.network_signature(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8)))
    assert sig["shapes"] != mb.network_signature(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))["shapes"]


def test_check_text_len_warns_when_a_run_would_truncate_texts(tmp_path, recwarn):
    """At the start of a run: the texts of the splits it reads, counted as the bundle reads them (report parser,
    tokenizer); the preparer's record in meta.text_tokens when it fits the datalist, else counted now."""
    from monai_vlseg.datasets.public.common import record_text_tokens

    one = "Unilateral pulmonary infection, one infected area, upper left lung."  # 17 tokens
    two = "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."  # 18
    long = "Findings: patchy opacity at the right base and in the left upper zone, slightly worse than before."
    data = {"training": [{"image": "a.png", "text": one}, {"image": "b.png", "text": two}],
            "validation": [{"image": "c.png", "text": two}], "test": [{"image": "d.png", "text": long}]}  # fmt: skip
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    fits = mb.check_text_len(str(path), "default", 18, "chest", ["training", "validation"])
    assert fits["truncated"] == 0 and fits["max_tokens"] == 18 and fits["texts"] == 3 and not recwarn.list
    expected = r"2 of 3 texts in .*datalist.json \(training, validation\) are longer than text_len=17 tokens "
    with pytest.warns(UserWarning, match=expected + r"\(the longest: 18.*--text_len 18 fits them all"):
        cut = mb.check_text_len(str(path), "default", 17, "chest", ["training", "validation"])
    assert "recorded" not in cut
    # as written (no parser) the test report is longer than its canonical sentence
    raw = mb.check_text_len(str(path), None, 34, None, ["test"])
    canonical = mb.check_text_len(str(path), None, 34, "chest", ["test"])
    assert raw["texts"] == 1 and raw["max_tokens"] > canonical["max_tokens"]
    # the preparer's record is used while it fits the datalist; a changed datalist is counted again
    record_text_tokens(data, (None, "chest"))
    path.write_text(json.dumps(data))
    assert mb.check_text_len(str(path), "default", 17, "chest", ["training"])["recorded"] is True
    data["training"].append({"image": "e.png", "text": one})
    path.write_text(json.dumps(data))
    again = mb.check_text_len(str(path), "default", 18, "chest", ["training"])
    assert "recorded" not in again and again["texts"] == 3
    # the items of an inference run (a folder and one --text)
    with pytest.warns(UserWarning, match="1 of 1 texts in the inputs of this run"):
        assert mb.check_text_len([{"image": "x.png", "text": two}], "default", 10, "chest")["truncated"] == 1
