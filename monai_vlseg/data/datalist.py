# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Shared helpers for MONAI decathlon-style datalists (``{"training": [...], "validation": [...], "test": [...]}``).

Builders (LViT QaTa-COV19 / MosMedData+, the synthetic demo set, later Kvasir and DICOM export folders) return
datalists whose file entries are absolute paths; :func:`write_datalist` stores them relative to the JSON file's
folder by default so the whole data set can be moved, and :func:`load_datalist` resolves them again through
:func:`monai.data.load_decathlon_datalist`.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "DATALIST_KEYS",
    "PATH_KEYS",
    "SPLIT_TO_KEY",
    "atomic_write_bytes",
    "convert_paths",
    "ensure_generated",
    "file_lock",
    "load_datalist",
    "write_datalist",
]

#: item keys whose values are file paths (made relative / resolved by the helpers below).
PATH_KEYS: tuple[str, ...] = ("image", "label")
#: datalist keys of the three standard splits, in order.
DATALIST_KEYS: tuple[str, ...] = ("training", "validation", "test")
#: LViT split folder prefix -> datalist key.
SPLIT_TO_KEY: dict[str, str] = {"Train": "training", "Val": "validation", "Test": "test"}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a partially written file. Returns the absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions a plain open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def convert_paths(
    datalist: Mapping[str, Any],
    base_dir: str | os.PathLike,
    relative: bool = True,
    keys: Iterable[str] = PATH_KEYS,
) -> dict[str, Any]:
    """Return a deep copy of ``datalist`` with the path entries of every split item rewritten.

    Args:
        datalist: decathlon-style dict; every value that is a list of dicts is treated as a split.
        base_dir: folder the paths are made relative to (``relative=True``) or resolved against (``False``).
        relative: make paths relative to ``base_dir`` (``"/"``-separated) instead of absolute.
        keys: item keys holding a path or a list of paths.
    """
    base_dir = os.path.abspath(os.fspath(base_dir))
    keys = tuple(keys)

    def _conv(p: Any) -> Any:
        if not isinstance(p, (str, os.PathLike)):
            return p
        p = os.fspath(p)
        full = os.path.normpath(os.path.join(base_dir, p))
        if not relative:
            return full
        return os.path.relpath(full, base_dir).replace(os.sep, "/")

    out = copy.deepcopy(dict(datalist))
    for value in out.values():
        if not isinstance(value, list):
            continue
        for item in value:
            if not isinstance(item, dict):
                continue
            for k in keys:
                if k not in item:
                    continue
                v = item[k]
                item[k] = [_conv(x) for x in v] if isinstance(v, (list, tuple)) else _conv(v)
    return out


def write_datalist(
    datalist: Mapping[str, Any], path: str | os.PathLike, relative: bool = True, keys: Iterable[str] = PATH_KEYS
) -> str:
    """Write a decathlon-style datalist to JSON (atomically) and return the absolute JSON path.

    Args:
        datalist: ``{"training": [...], "validation": [...], "test": [...], ...}``; items hold absolute paths
            (or paths relative to the current working directory).
        path: output ``.json`` file; parent folders are created.
        relative: store ``keys`` paths relative to the JSON file's folder (default) so the data set can be moved;
            ``False`` stores absolute paths.
        keys: item keys holding file paths.
    """
    path = os.path.abspath(os.fspath(path))
    out = convert_paths(datalist, os.path.dirname(path), relative=relative, keys=keys)
    text = json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def load_datalist(
    path: str | os.PathLike,
    split: str = "training",
    base_dir: str | os.PathLike | None = None,
    is_segmentation: bool = True,
) -> list[dict[str, Any]]:
    """Load one split of a datalist JSON with :func:`monai.data.load_decathlon_datalist`.

    Args:
        path: datalist ``.json`` file.
        split: datalist key (``"training"``, ``"validation"``, ``"test"``); the LViT folder names
            ``"Train"``, ``"Val"``, ``"Test"`` are accepted too.
        base_dir: folder relative paths are resolved against; defaults to the JSON file's folder.
        is_segmentation: also resolve the ``"label"`` entries (MONAI semantics).

    Returns:
        list of item dicts with absolute ``image``/``label`` paths.
    """
    from monai.data import load_decathlon_datalist

    split = SPLIT_TO_KEY.get(split, split)
    path = os.path.abspath(os.fspath(path))
    if base_dir is None:
        base_dir = os.path.dirname(path)
    return load_decathlon_datalist(path, is_segmentation=is_segmentation, data_list_key=split, base_dir=base_dir)



@contextlib.contextmanager
def file_lock(path: str, timeout: float = 3600.0) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (``fcntl.flock``; ``O_EXCL`` lock file elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        fcntl = None
    if fcntl is not None:
        with open(path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return
    start = time.monotonic()  # pragma: no cover
    while True:  # pragma: no cover
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"lock {path} held for more than {timeout} s") from None
            time.sleep(0.2)
    try:  # pragma: no cover
        yield
    finally:  # pragma: no cover
        os.close(fd)
        os.remove(path)


def ensure_generated(dataset_dir: str | os.PathLike, generate: Callable[[str], Any], marker: str = "datalist.json") -> str:
    """Return ``dataset_dir/marker``, running ``generate(folder)`` to write the data set there first if it is missing.

    Safe under concurrency (e.g. torchrun ranks): one process generates while the others wait on a lock file
    ``.<dataset_dir name>.lock`` next to ``dataset_dir``; the set is written into a temporary sibling folder and
    renamed into place, and ``marker`` (the completion marker, written last by ``generate``) appears last, so an
    interrupted run never leaves a half data set behind. An existing ``marker`` is returned as is.
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    target = os.path.join(dataset_dir, marker)
    if os.path.isfile(target):
        return target
    parent, name = os.path.split(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    with file_lock(os.path.join(parent, f".{name}.lock")):
        if os.path.isfile(target):
            return target
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        try:
            generate(tmp)
            try:
                os.rename(tmp, dataset_dir)  # atomic when dataset_dir is absent or an empty folder
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.EACCES, errno.EPERM):
                    raise
                if os.path.isfile(target):  # another host won the race (lock not shared)
                    return target
                # dataset_dir holds other files: move the entries in, the marker last
                for entry in sorted(os.listdir(tmp), key=lambda f: f == marker):
                    dst = os.path.join(dataset_dir, entry)
                    if os.path.isdir(dst) and entry != marker:
                        shutil.rmtree(dst)
                    os.replace(os.path.join(tmp, entry), dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
