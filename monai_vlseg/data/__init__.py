# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Data sources: datalist helpers, the LViT (QaTa-COV19 / MosMedData+) builder and the synthetic demo set.

Names are imported lazily, so ``python -m monai_vlseg.data.demo`` / ``.lvit`` run without import warnings.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DATALIST_KEYS": "datalist",
    "PATH_KEYS": "datalist",
    "SPLIT_TO_KEY": "datalist",
    "atomic_write_bytes": "datalist",
    "convert_paths": "datalist",
    "load_datalist": "datalist",
    "write_datalist": "datalist",
    "build_lvit_datalist": "lvit",
    "read_lvit_text_xlsx": "lvit",
    "ZONES": "demo",
    "DemoCase": "demo",
    "describe_zones": "demo",
    "ensure_demo_datalist": "demo",
    "generate_demo_dataset": "demo",
    "synthesize_case": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
