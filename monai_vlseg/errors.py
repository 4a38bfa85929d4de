# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Errors told in one line: a bad input (the file and the reason), an output folder that holds an earlier run, a run
that skipped inputs. :func:`brief_errors` makes a bundle run on the command line end with that line instead of the
traceback MONAI's config parser wraps around it.

This module imports nothing of :mod:`monai_vlseg` (see docs/architecture.md), so every layer may use it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from types import TracebackType

__all__ = [
    "CheckpointNotFoundError",
    "InputError",
    "InputsSkippedError",
    "OneLineError",
    "OutputExistsError",
    "brief_errors",
    "find_one_line_error",
]

#: set to 1 to get full tracebacks from a bundle run after :func:`brief_errors`.
TRACEBACK_ENV = "MONAI_VLSEG_TRACEBACK"


class OneLineError(Exception):
    """An error whose message is the whole story, in one line: a bundle run on the command line ends with it (see
    :func:`brief_errors`) instead of a traceback."""


class InputError(OneLineError, ValueError):
    """An input that cannot be used: ``"<path>: <reason>"``. ``path`` may be ``None`` when the reason names the
    files itself."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.reason = reason
        super().__init__(reason if self.path is None else f"{self.path}: {reason}")


class CheckpointNotFoundError(OneLineError, FileNotFoundError):
    """A checkpoint a run needs (e.g. LCPDN's stage-1 output) is missing: the message says how to make it."""


class OutputExistsError(OneLineError, FileExistsError):
    """An output folder that already holds the outputs of an earlier run."""


class InputsSkippedError(OneLineError, RuntimeError):
    """A run that wrote the outputs of its good inputs and skipped some bad ones (listed in its manifest)."""


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)


def find_one_line_error(err: BaseException | None) -> OneLineError | None:
    """The outermost :class:`OneLineError` in the cause chain of ``err`` (MONAI's config parser wraps what a config
    expression raises in ``RuntimeError("Failed to evaluate ...")``), else ``None``."""
    return next((e for e in _chain(err) if isinstance(e, OneLineError)), None)


#: what an interrupted bundle run (Ctrl-C) ends with instead of the traceback of wherever it stopped.
INTERRUPTED = (
    "interrupted: a training run continues from its last finished epoch with --resume true (or --resume <run name>)"
)


def _excepthook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    brief = INTERRUPTED if isinstance(err, KeyboardInterrupt) else find_one_line_error(err)
    if brief is None or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        sys.__excepthook__(kind, err, tb)
        return
    line = " ".join(str(brief).split())
    logger = logging.getLogger("monai_vlseg")
    if logger.isEnabledFor(logging.ERROR):
        logger.error(line)
    else:  # pragma: no cover - logging switched off
        print(line, file=sys.stderr)


def brief_errors() -> None:
    """Make an uncaught :class:`OneLineError` (also one wrapped by MONAI's config parser) end the program with its one
    line, logged at ERROR, instead of a traceback; the exit status stays 1. Ctrl-C ends with :data:`INTERRUPTED`
    (how to resume) instead of the traceback of wherever it stopped. Other exceptions keep their traceback,
    and ``MONAI_VLSEG_TRACEBACK=1`` restores it for all. Every bundle's ``initialize`` calls this; a program that
    catches its exceptions (tests, servers) is not affected."""
    sys.excepthook = _excepthook
