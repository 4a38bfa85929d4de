# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""File helpers at the bottom of the package: atomic writes, an inter-process lock, and generate-once folders.

This module imports nothing of :mod:`monai_vlseg` (see docs/architecture.md), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["atomic_write_bytes", "ensure_generated", "file_lock"]


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
