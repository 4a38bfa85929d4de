# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Data sources: datalist helpers, the public data set preparers (LViT QaTa-COV19 / MosMedData+, Kvasir-SEG, CVC-ClinicDB,
ISIC 2017, MoNuSeg) and the synthetic demo sets (chest X-ray, CT, polyp).

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
    "ensure_generated": "datalist",
    "file_lock": "datalist",
    "CT_LABELS": "demo_ct",
    "ensure_demo_ct_datalist": "demo_ct",
    "generate_demo_ct_dataset": "demo_ct",
    "synthesize_ct_case": "demo_ct",
    "write_dicom_series": "demo_ct",
    "build_kvasir_datalist": "kvasir",
    "build_cvc_datalist": "cvc",
    "build_isic2017_datalist": "isic",
    "build_monuseg_datalist": "monuseg",
    "describe_mask": "prepare",
    "seeded_split": "prepare",
    "subset_datalist": "prepare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
