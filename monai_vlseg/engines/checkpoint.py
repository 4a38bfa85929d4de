# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""The whole state of a training run, saved and loaded with MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` so that
a stopped run resumes where its last epoch ended and ends with the weights an uninterrupted run would have.

Besides what a config names (network, optimizer, lr scheduler, stateful handlers), a run's state is the trainer
(epoch, iteration), its AMP ``GradScaler`` and the random states that the next epoch draws from
(:class:`RandomStates`). The trainer and its scaler exist only once the trainer is built from its handlers, so a
config cannot name them in a handler's ``save_dict`` (a circular reference): :class:`TrainingStateSaver` and
:class:`TrainingStateLoader` add them when they are attached to the trainer."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable

__all__ = ["RandomStates", "TrainingStateLoader", "TrainingStateSaver", "training_objects"]


class RandomStates:
    """The random states a training epoch draws from, as a ``state_dict`` / ``load_state_dict`` object for ignite's
    ``Checkpoint``: PyTorch (CPU and, when initialised, CUDA), NumPy, Python's ``random``, and the ``R`` of every
    MONAI ``Randomizable`` reachable from ``root`` (e.g. the transforms of a data set; MONAI's ``DataLoader`` with
    ``num_workers=0`` seeds them once, and they then run on from epoch to epoch).

    The data loader's shuffling and the worker seeds are drawn from PyTorch's generator when an epoch's iterator is
    made, so restoring these states at the start of a resumed run reproduces the epochs that follow. All values are
    tensors and plain Python numbers, which ``torch.load(weights_only=True)`` (``CheckpointLoader``) accepts.
    """

    def __init__(self, root: Any = None) -> None:
        self.root = root

    def _randomizables(self) -> list[Randomizable]:
        """Every ``Randomizable`` reachable from ``root`` through attributes, lists, tuples and dict values, in a
        fixed order (that of MONAI's ``set_rnd``); tensors, arrays and strings are not entered."""
        found: list[Randomizable] = []
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            obj = stack.pop()
            if obj is None or id(obj) in seen or isinstance(obj, (str, bytes, int, float, torch.Tensor, np.ndarray)):
                continue
            seen.add(id(obj))
            if isinstance(obj, Randomizable):
                found.append(obj)
            if isinstance(obj, Mapping):
                children = list(obj.values())
            elif isinstance(obj, (list, tuple)):
                children = list(obj)
            else:
                children = [v for k, v in getattr(obj, "__dict__", {}).items() if not k.startswith("__")]
            stack.extend(reversed(children))
        return found

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": _python_state(random.getstate()),
            "transforms": [_numpy_state(t.R.get_state()) for t in self._randomizables()],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        transforms = self._randomizables()
        if len(transforms) != len(state["transforms"]):
            raise ValueError(
                f"the checkpoint holds the random states of {len(state['transforms'])} random transforms, this "
                f"run's data pipeline has {len(transforms)}: resume with the configuration the run was started with."
            )
        torch.set_rng_state(state["torch"])
        np.random.set_state(_numpy_tuple(state["numpy"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(int(v) for v in internal), gauss))
        for t, s in zip(transforms, state["transforms"]):
            t.R.set_state(_numpy_tuple(s))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]


def _python_state(state: tuple) -> list[Any]:
    version, internal, gauss = state
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


class _KeyMetricState:
    """The best-so-far record of a ``CheckpointSaver`` with ``save_key_metric`` (MONAI's ``CheckpointSaver`` loads
    it with ``load_state_dict`` but has no ``state_dict``): a resumed run then replaces the best model only with a
    better one."""

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        ckpt = self.saver._key_metric_checkpoint
        state = ckpt.state_dict() if ckpt is not None else {}
        return {k: [(float(priority), str(name)) for priority, name in v] for k, v in state.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.saver._key_metric_checkpoint is not None:
            self.saver.load_state_dict(dict(state))


def training_objects(objects: Mapping[str, Any], engine: Engine | None = None) -> dict[str, Any]:
    """``objects`` as ignite's ``Checkpoint`` takes them (a ``CheckpointSaver`` stands for its best-so-far record),
    plus, given the trainer ``engine``: ``trainer`` (its epoch and iteration), ``scaler`` (its AMP ``GradScaler``,
    when it has one) and ``random`` (:class:`RandomStates` of its data loader's data set)."""
    out = {k: _KeyMetricState(v) if isinstance(v, CheckpointSaver) else v for k, v in objects.items()}
    if engine is not None:
        out["trainer"] = engine
        if getattr(engine, "scaler", None) is not None:
            out["scaler"] = engine.scaler
        loader = getattr(engine, "data_loader", None)
        out["random"] = RandomStates(getattr(loader, "dataset", loader))
    return out


class TrainingStateSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` of the whole training state, attached to the trainer: ``save_dict`` plus what
    :func:`training_objects` adds, saved every ``save_interval`` epochs as ``checkpoint_epoch=N.pt`` in ``save_dir``.

    The last ``n_saved`` (default 2) are kept and each is written through a temporary file: ignite removes the oldest
    file before it writes the next, so with two kept a run stopped while saving still has one whole checkpoint.
    Put it after the handlers that change state at the end of an epoch (scheduler, validation, early stop).
    """

    def __init__(self, save_dir: str, save_dict: dict, save_interval: int = 1, n_saved: int = 2, **kwargs: Any):
        super().__init__(
            save_dir, training_objects(save_dict), save_interval=save_interval, n_saved=n_saved, epoch_level=True,
            **kwargs,
        )  # fmt: skip
        for ckpt in (self._interval_checkpoint, self._final_checkpoint, self._key_metric_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._atomic = True  # ignite's DiskSaver option, which MONAI's CheckpointSaver sets off

    def attach(self, engine: Engine) -> None:
        # ignite's Checkpoint holds this very dict: the trainer's objects are saved from the first checkpoint on
        self.save_dict.update(training_objects({}, engine))
        super().attach(engine)


class TrainingStateLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` of what :class:`TrainingStateSaver` saved, attached to the trainer (first, so that
    the state is back before any other handler starts): ``load_dict`` plus what :func:`training_objects` adds. Every
    object must be in the checkpoint. ``load_path`` None: nothing to resume, the handler does nothing."""

    def __init__(self, load_path: str | None, load_dict: dict, **kwargs: Any) -> None:
        self.resume = load_path is not None
        if self.resume:
            super().__init__(load_path, training_objects(load_dict), **kwargs)

    def attach(self, engine: Engine) -> None:
        if self.resume:
            self.load_dict.update(training_objects({}, engine))
            super().attach(engine)
