"""Make MONAI Label 0.8.5 importable beside pydicom 3.

``monailabel`` imports ``pydicom_seg`` (0.4.1, its last release) at start-up, which imports
``pydicom._storage_sopclass_uids`` — a pydicom 2 module. pydicom 3 (which monai-vlseg and highdicom need) keeps the
same UID constants in ``pydicom.uid``, so ``monailabel start_server`` fails with ``ModuleNotFoundError`` before any
app code runs. ``python -m monai_vlseg.label_app.compat`` (run by ``make label``) adds that module back to the
environment's pydicom as a re-export of ``pydicom.uid``; with pydicom 2 it does nothing. Run it again after
reinstalling pydicom.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["ensure_pydicom_uid_module"]

SHIM = '''"""pydicom 2's ``pydicom._storage_sopclass_uids`` for pydicom-seg under pydicom 3.

Written by monai_vlseg.label_app.compat.
"""

from pydicom.uid import *  # noqa: F401,F403
'''


def ensure_pydicom_uid_module() -> str | None:
    """Write ``pydicom/_storage_sopclass_uids.py`` into the installed pydicom when it lacks it; returns the path
    written, or None when the module already imports."""
    try:
        importlib.import_module("pydicom._storage_sopclass_uids")
        return None
    except ModuleNotFoundError:
        pass
    import pydicom.uid

    if not hasattr(pydicom.uid, "SegmentationStorage"):
        raise RuntimeError(f"pydicom {pydicom.__version__} has no pydicom.uid.SegmentationStorage; no shim written.")
    path = os.path.join(os.path.dirname(os.path.abspath(pydicom.__file__)), "_storage_sopclass_uids.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(SHIM)
    importlib.invalidate_caches()
    importlib.import_module("pydicom._storage_sopclass_uids")
    return path


if __name__ == "__main__":
    written = ensure_pydicom_uid_module()
    print(f"wrote {written}" if written else "pydicom._storage_sopclass_uids imports; nothing to do")
