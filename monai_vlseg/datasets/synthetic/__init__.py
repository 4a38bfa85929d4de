# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Synthetic demo sets, generated on first use by the bundles: chest radiographs with QaTa-style reports
(:mod:`~monai_vlseg.datasets.synthetic.cxr`), abdominal CT as NIfTI and DICOM series
(:mod:`~monai_vlseg.datasets.synthetic.ct`; with reports that name some of its lesions:
:mod:`~monai_vlseg.datasets.synthetic.ct_reports`) and RGB endoscopy with descriptions
(:mod:`~monai_vlseg.datasets.synthetic.polyp`). Each module is a command line too."""

from __future__ import annotations

from monai_vlseg._lazy import lazy_exports

__all__ = [
    "ensure_demo_ct_datalist",
    "ensure_demo_datalist",
    "ensure_polyp_demo_datalist",
    "ensure_report_ct_datalist",
    "generate_demo_ct_dataset",
    "generate_demo_dataset",
    "generate_polyp_demo",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ensure_demo_ct_datalist": f"{__name__}.ct",
        "ensure_demo_datalist": f"{__name__}.cxr",
        "ensure_polyp_demo_datalist": f"{__name__}.polyp",
        "ensure_report_ct_datalist": f"{__name__}.ct_reports",
        "generate_demo_ct_dataset": f"{__name__}.ct",
        "generate_demo_dataset": f"{__name__}.cxr",
        "generate_polyp_demo": f"{__name__}.polyp",
    },
)
