"""Torch's CPU thread count follows the cores other processes leave free (issue 18.6); the benchmark is
scripts/bench_threads.py (docs/threads.md)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest
import torch

from monai_vlseg.utils import free_cores, set_torch_threads


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


@pytest.fixture
def default_threads():
    n = torch.get_num_threads()
    yield n
    torch.set_num_threads(n)


def test_explicit_and_default_settings(default_threads, monkeypatch):
    assert set_torch_threads(1) == 1 and torch.get_num_threads() == 1
    assert set_torch_threads(None) == 1  # None leaves the current count alone
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(default_threads)
    assert set_torch_threads("auto") == default_threads  # the user's OMP_NUM_THREADS wins (torch read it at start)
    with pytest.raises(ValueError, match="torch_threads"):
        set_torch_threads(-2)


def test_auto_gives_way_to_busy_cores(default_threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    usable = len(os.sched_getaffinity(0))
    ctx = mp.get_context("fork")
    hogs = [ctx.Process(target=_spin, args=(time.time() + 3.0,)) for _ in range(usable)]
    for h in hogs:
        h.start()
    try:
        time.sleep(0.3)
        busy = free_cores(interval=0.5)
        n = set_torch_threads("auto")
    finally:
        for h in hogs:
            h.terminate()
            h.join()
    assert busy < 0.75 * usable, f"{usable} busy loops left {busy:.2f} of {usable} cores free"
    assert 1 <= n <= max(1, round(busy) or 1) and n <= default_threads
    assert torch.get_num_threads() == n


def test_every_bundle_run_sets_its_threads():
    """Every train / evaluate / inference config starts by choosing the thread count (top-level ``torch_threads``)."""
    import glob
    import json

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in glob.glob(os.path.join(root, "bundles", "*", "configs", "*.json")):
        cfg = json.load(open(path))
        if "initialize" in cfg:
            assert "$monai_vlseg.utils.set_torch_threads(@torch_threads)" in cfg["initialize"], path
        if "amp" in cfg:
            assert cfg.get("torch_threads") == "auto", path
