"""Checks every bundle's tests share: the model-zoo layout and metadata fields, and a 2-process DDP run on CPU."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.bundle import ConfigWorkflow

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: files of the model-zoo bundle layout that every bundle has.
BUNDLE_FILES = (
    "configs/train.json", "configs/demo.json", "configs/evaluate.json", "configs/inference.json",
    "configs/multi_gpu_train.json", "configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE",
)  # fmt: skip
#: metadata fields that meta_schema_20240725 requires (the schema itself is a release asset that cannot be
#: downloaded here).
REQUIRED_METADATA = (
    "schema", "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
    "description", "authors", "copyright", "network_data_format",
)  # fmt: skip

#: what a C++ thread torn down at interpreter exit prints (std::terminate with no exception in flight).
_TEARDOWN_ABORT = "terminate called without an active exception"


class BundleConfigs:
    """One bundle's config files (``cfg("train.json", "evaluate.json")`` -> their paths) and its workflows, run as
    ``python -m monai.bundle run`` runs them."""

    def __init__(self, name: str) -> None:
        self.dir = os.path.join(REPO_ROOT, "bundles", name, "configs")
        self.meta = os.path.join(self.dir, "metadata.json")
        self.logging = os.path.join(self.dir, "logging.conf")

    def __call__(self, *names: str) -> list[str]:
        return [os.path.join(self.dir, n) for n in names]

    def workflow(self, kind: str, *names: str, **overrides: Any) -> ConfigWorkflow:
        # MONAI's parser writes `a#b` overrides into the dicts it was given: copy, so that a test cannot change the
        # overrides of the next one
        return ConfigWorkflow(
            workflow_type=kind, config_file=self(*names), meta_file=self.meta, logging_file=self.logging,
            **copy.deepcopy(overrides),
        )  # fmt: skip

    def run(self, kind: str, *names: str, check: bool | None = None, **overrides: Any) -> ConfigWorkflow:
        """Initialise, check the model-zoo workflow properties (by default not for "eval": those are inference.json's,
        not those of train.json + evaluate.json), run and finalise; return the workflow."""
        wf = self.workflow(kind, *names, **overrides)
        wf.initialize()
        if kind != "eval" if check is None else check:
            assert wf.check_properties() == []
        wf.run()
        wf.finalize()
        return wf


def check_bundle_layout(bundle_dir: str, extra_files: Sequence[str] = ()) -> dict[str, Any]:
    """Assert the bundle's files and metadata fields; return the metadata."""
    for f in (*BUNDLE_FILES, *extra_files):
        assert os.path.isfile(os.path.join(bundle_dir, f)), f
    with open(os.path.join(bundle_dir, "configs", "metadata.json")) as f:
        meta = json.load(f)
    assert all(meta.get(k) for k in REQUIRED_METADATA), [k for k in REQUIRED_METADATA if not meta.get(k)]
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    for group in ("inputs", "outputs"):
        for name, t in fmt[group].items():
            for k in ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range"):
                assert k in t, (group, name, k)
    assert list(fmt["inputs"])[0] == "image" and list(fmt["outputs"]) == ["pred"]
    return meta


def run_ddp_training(
    config_files: Sequence[str], meta_file: str, logging_file: str, overrides: dict[str, Any], workdir: str
) -> dict[str, torch.Tensor]:
    """Train with ``torchrun --nproc_per_node=2`` (gloo on CPU) into ``overrides["bundle_root"]``; return the
    checkpoint, asserting that it was saved unwrapped (loads into ``network_def``)."""
    override_file = os.path.join(workdir, "ddp_overrides.json")  # a config file: fire would read `null` as a string
    with open(override_file, "w") as f:
        json.dump(overrides, f)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
        "run", "--config_file", str([*map(str, config_files), override_file]), "--meta_file", meta_file,
        "--logging_file", logging_file,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if res.returncode != 0 and _TEARDOWN_ABORT in res.stderr:
        # a rank aborted in PyTorch's process teardown after the run (seen once in CI before the barrier in
        # ddp_finalize); say so, and run once more: a fault of ours fails the second run too.
        warnings.warn(f"torchrun rank aborted at exit ({_TEARDOWN_ABORT!r}); rerunning once", stacklevel=2)
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ckpt = torch.load(os.path.join(overrides["bundle_root"], "models", "model.pt"), map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt)
    return ckpt


def check_run_folder(bundle_root: Any, filename: str = "model.pt", **config: Any) -> str:
    """Assert what a finished training run leaves: ``models/<filename>`` put there from its run folder, whose record
    (``models/<stem>.json``) names the run and holds ``config`` among its ``model_config``; the run folder holds the
    TensorBoard logs and the whole training state of its last epoch. Returns the run folder."""
    models = os.path.join(str(bundle_root), "models")
    with open(os.path.join(models, os.path.splitext(filename)[0] + ".json")) as f:
        record = json.load(f)
    run_dir = record["run_dir"]
    assert os.path.dirname(run_dir) == os.path.join(str(bundle_root), "runs")
    with open(os.path.join(run_dir, filename), "rb") as a, open(os.path.join(models, filename), "rb") as b:
        assert a.read() == b.read()
    assert {k: record["model_config"][k] for k in config} == config
    files = os.listdir(run_dir)
    assert any(f.startswith("events.out.tfevents") for f in files) and "config.json" in files
    assert any(f.startswith("checkpoint_epoch=") for f in files)
    return run_dir


def check_checkpoint_kept(
    cfg: BundleConfigs, bundle_root: Any, filename: str, run_name: str, *names: str, check: bool | None = None,
    **overrides: Any,
) -> str:  # fmt: skip
    """Run a training stage into ``bundle_root`` whose ``models/<filename>`` another run wrote: the stage warns, keeps
    that file as it was and leaves its own checkpoint and record in ``runs/<run_name>``. Returns the run folder."""
    import pytest

    theirs = os.path.join(str(bundle_root), "models", filename)
    os.makedirs(os.path.dirname(theirs), exist_ok=True)
    torch.save({"w": torch.ones(1)}, theirs)
    with open(theirs, "rb") as f:
        before = f.read()
    with pytest.warns(UserWarning, match=f"{filename} was kept"):
        cfg.run("train", *names, check=check, bundle_root=str(bundle_root), run_name=run_name, **overrides)
    with open(theirs, "rb") as f:
        assert f.read() == before
    run_dir = os.path.join(str(bundle_root), "runs", run_name)
    assert os.path.isfile(os.path.join(run_dir, filename)) and os.path.isfile(os.path.join(run_dir, "config.json"))
    return run_dir


def causes(err: BaseException | None) -> list[BaseException]:
    """``err`` and its chain of ``__cause__`` (MONAI's config parser wraps an expression's error in a RuntimeError)."""
    out = []
    while err is not None:
        out.append(err)
        err = err.__cause__
    return out


def press_ctrl_c(_engine=None) -> None:
    """Deliver SIGINT as a user's Ctrl-C does (KeyboardInterrupt in the main thread), also where the test process was
    started with SIGINT ignored: a background job of a non-interactive shell (``nohup make test &``) inherits
    ``SIG_IGN``, and ``signal.raise_signal`` alone would then do nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.raise_signal(signal.SIGINT)  # the handler runs before raise_signal returns
    finally:
        signal.signal(signal.SIGINT, previous)
