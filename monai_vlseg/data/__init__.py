# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""The 0.1 home of the data tools, kept for one release: every name and sub-module still resolves, with a
``FutureWarning`` naming its new path (:mod:`monai_vlseg.datalist`, :mod:`monai_vlseg.files`,
:mod:`monai_vlseg.datasets`, :mod:`monai_vlseg.io.ingest`; see docs/architecture.md)."""

from __future__ import annotations

from monai_vlseg._lazy import lazy_exports

_DATALIST, _FILES = "monai_vlseg.datalist", "monai_vlseg.files"
_PUBLIC, _SYNTHETIC = "monai_vlseg.datasets.public", "monai_vlseg.datasets.synthetic"

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(("DATALIST_KEYS", "PATH_KEYS", "SPLIT_TO_KEY", "convert_paths", "load_datalist"), _DATALIST),
        "write_datalist": _DATALIST,
        **dict.fromkeys(("atomic_write_bytes", "ensure_generated", "file_lock"), _FILES),
        **dict.fromkeys(("build_lvit_datalist", "read_lvit_text_xlsx"), f"{_PUBLIC}.lvit"),
        "build_kvasir_datalist": f"{_PUBLIC}.kvasir",
        "build_cvc_datalist": f"{_PUBLIC}.cvc",
        "build_isic2017_datalist": f"{_PUBLIC}.isic",
        "build_monuseg_datalist": f"{_PUBLIC}.monuseg",
        **dict.fromkeys(("describe_mask", "seeded_split"), f"{_PUBLIC}.common"),
        "subset_datalist": "monai_vlseg.datasets.prepare",
        **dict.fromkeys(
            ("ZONES", "DemoCase", "describe_zones", "ensure_demo_datalist", "generate_demo_dataset", "synthesize_case"),
            f"{_SYNTHETIC}.cxr",
        ),
        **dict.fromkeys(
            ("CT_LABELS", "ensure_demo_ct_datalist", "generate_demo_ct_dataset", "synthesize_ct_case"), f"{_SYNTHETIC}.ct"
        ),
        "write_dicom_series": "monai_vlseg.io.series",
    },
    moved=True,
)
