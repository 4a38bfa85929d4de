# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Deterministic file encodings the synthetic generators write: 8-bit PNG and LViT's ``*_text.xlsx``.

The same array (rows) always gives the same bytes, so a generated demo set is byte-identical from run to run.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence

import numpy as np

__all__ = ["png_bytes", "xlsx_bytes"]

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_XLSX_DATE = "2020-01-01T00:00:00Z"


def png_bytes(arr: np.ndarray) -> bytes:
    """An 8-bit greyscale ``(H, W)`` or RGB ``(H, W, 3)`` array as PNG file content."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def xlsx_bytes(rows: Sequence[tuple[str, str]]) -> bytes:
    """LViT ``*_text.xlsx`` content (``Image``, ``Description``) with fixed zip / document timestamps."""
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["Image", "Description"])
    for r in rows:
        ws.append(list(r))
    raw = io.BytesIO()
    wb.save(raw)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                stamp = rb"\g<1>" + _XLSX_DATE.encode() + rb"\3"
                data = re.sub(rb"(<dcterms:(created|modified)[^>]*>)[^<]*(<)", stamp, data)
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE), data, zipfile.ZIP_DEFLATED)
    return out.getvalue()
