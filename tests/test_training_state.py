"""monai_vlseg.engines.checkpoint: the whole state of a training run, saved and loaded with MONAI's CheckpointSaver /
CheckpointLoader, resumes a run bit for bit."""

import os
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.handlers import CheckpointLoader
from monai.transforms import Compose, RandAffined, RandGaussianNoised
from torch import nn

from monai_vlseg.engines import (
    EarlyStopAfterHandler, RandomStates, TrainingStateLoader, TrainingStateSaver, training_objects,
)  # fmt: skip


def _pipeline():
    return Compose([
        RandAffined("x", prob=0.5, rotate_range=0.3, padding_mode="zeros"),
        RandGaussianNoised("x", prob=0.5, std=0.1),
    ])  # fmt: skip


def _draw(transform):
    return (
        torch.rand(2), np.random.rand(2), random.random(),
        transform({"x": torch.ones(1, 8, 8)})["x"].sum().item(),
    )  # fmt: skip


def test_random_states_restore_every_generator(tmp_path):
    transform = _pipeline()
    transform.set_random_state(3)
    root = {"dataset": [transform]}
    _draw(transform)
    torch.save(RandomStates(root).state_dict(), tmp_path / "r.pt")
    first = _draw(transform)
    RandomStates(root).load_state_dict(torch.load(tmp_path / "r.pt", weights_only=True))
    again = _draw(transform)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2:] == again[2:]
    assert len(RandomStates(root).state_dict()["transforms"]) == 6  # Compose, 2 dict transforms, their array transforms
    with pytest.raises(ValueError, match="random transforms"):
        RandomStates({"dataset": [RandGaussianNoised("x")]}).load_state_dict(RandomStates(root).state_dict())


def test_early_stop_state_round_trip():
    engine = Engine(lambda e, b: None)
    handler = EarlyStopAfterHandler(patience=3, score_function=lambda _: 0.5)
    handler.attach(engine)
    handler._handler.counter, handler._handler.best_score = 2, np.float64(0.7)
    state = handler.state_dict()
    assert state["counter"] == 2 and state["best_score"] == 0.7 and type(state["best_score"]) is float
    other = EarlyStopAfterHandler(patience=3, score_function=lambda _: 0.5)
    other.attach(Engine(lambda e, b: None))
    other.load_state_dict(state)
    assert other._handler.counter == 2 and other._handler.best_score == 0.7


class _Noisy(RandGaussianNoised):
    pass


def _trainer(save_dir, resume_from=None, stop_after=None):
    """A tiny SGD run: shuffled data, a random transform and dropout, so every random state matters."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    data = [{"x": torch.full((1, 4), i / 6)} for i in range(6)]
    loader = DataLoader(Dataset(data, _Noisy("x", prob=1.0, std=1.0)), batch_size=2, shuffle=True)

    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch["x"]).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    def stop(engine):
        raise KeyboardInterrupt

    trainer = Engine(step)
    trainer.data_loader = loader  # as MONAI's trainers have it
    objects = {"model": net, "optimizer": opt, "lr_scheduler": sched}
    TrainingStateLoader(resume_from, objects).attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    TrainingStateSaver(str(save_dir), objects).attach(trainer)
    if stop_after is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_after), stop)
    return trainer, loader, objects


def test_saver_and_loader_resume_a_run_exactly(tmp_path):
    trainer, loader, straight = _trainer(tmp_path / "straight")
    trainer.run(loader, max_epochs=4)
    assert sorted(os.listdir(tmp_path / "straight")) == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]  # 2 kept
    state = torch.load(tmp_path / "straight" / "checkpoint_epoch=4.pt", weights_only=True)
    assert set(state) == {"model", "optimizer", "lr_scheduler", "trainer", "random"}
    assert state["trainer"]["iteration"] == 12 and state["random"]["transforms"]

    stopped, loader, _ = _trainer(tmp_path / "stopped", stop_after=3 + 2)  # in epoch 2
    with pytest.raises(KeyboardInterrupt):
        stopped.run(loader, max_epochs=4)
    last = tmp_path / "stopped" / "checkpoint_epoch=1.pt"
    assert os.listdir(tmp_path / "stopped") == [last.name]
    resumed, loader, objects = _trainer(tmp_path / "stopped", resume_from=str(last))
    epochs = []
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    resumed.run(loader, max_epochs=4)
    assert epochs == [2, 3, 4]
    want = straight["model"].state_dict()
    assert all(v.isfinite().all() for v in want.values())
    assert all(torch.equal(v, objects["model"].state_dict()[k]) for k, v in want.items())
    assert str(objects["optimizer"].state_dict()) == str(straight["optimizer"].state_dict())

    # the same resume without the random states (MONAI's CheckpointLoader of the rest) ends elsewhere
    again, loader, objects = _trainer(tmp_path / "again")
    CheckpointLoader(str(last), {**objects, "trainer": again}).attach(again)
    again.run(loader, max_epochs=4)
    assert not all(torch.equal(v, objects["model"].state_dict()[k]) for k, v in want.items())


def test_training_objects_add_the_trainer_its_scaler_and_random_states():
    engine = Engine(lambda e, b: None)
    engine.data_loader, engine.scaler = [1, 2], None  # amp off: MONAI's trainers have scaler None
    assert set(training_objects({"model": nn.Linear(1, 1)}, engine)) == {"model", "trainer", "random"}
    engine.scaler = torch.amp.GradScaler("cpu")
    objects = training_objects({}, engine)
    assert objects["scaler"] is engine.scaler and objects["trainer"] is engine
    assert set(objects["scaler"].state_dict()) >= {"scale", "growth_factor"}
