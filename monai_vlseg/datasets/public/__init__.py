# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Preparers of the public data sets (LViT's QaTa-COV19 / MosMedData+, Kvasir-SEG, CVC-ClinicDB, ISIC 2017, MoNuSeg),
over the helpers of :mod:`~monai_vlseg.datasets.public.common`. Each module is a command line too."""

from __future__ import annotations

from monai_vlseg._lazy import lazy_exports

__all__ = [
    "build_cvc_datalist",
    "build_isic2017_datalist",
    "build_kvasir_datalist",
    "build_lvit_datalist",
    "build_monuseg_datalist",
    "describe_mask",
    "read_lvit_text_xlsx",
    "seeded_split",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "build_cvc_datalist": f"{__name__}.cvc",
        "build_isic2017_datalist": f"{__name__}.isic",
        "build_kvasir_datalist": f"{__name__}.kvasir",
        "build_lvit_datalist": f"{__name__}.lvit",
        "build_monuseg_datalist": f"{__name__}.monuseg",
        "describe_mask": f"{__name__}.common",
        "read_lvit_text_xlsx": f"{__name__}.lvit",
        "seeded_split": f"{__name__}.common",
    },
)
