# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Names a package face resolves on first use from the module that defines them, and the old import paths of the
0.1 layout, which keep working for one release (removed in 0.3) with a ``FutureWarning`` naming the new path.

Lazy faces keep ``python -m monai_vlseg.<package>.<module>`` free of runpy's "found in sys.modules" warning and keep
heavy imports (pydicom, highdicom, transformers) off the start-up path of a package that does not need them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "install_moved_modules", "lazy_exports"]

REMOVED_IN = "0.3"

#: module paths of the 0.1 layout -> their home since 0.2 (``import`` and ``python -m`` both follow them).
MOVED_MODULES: dict[str, str] = {
    "monai_vlseg.data.datalist": "monai_vlseg.datalist",
    "monai_vlseg.data.prepare": "monai_vlseg.datasets.prepare",
    "monai_vlseg.data.lvit": "monai_vlseg.datasets.public.lvit",
    "monai_vlseg.data.kvasir": "monai_vlseg.datasets.public.kvasir",
    "monai_vlseg.data.cvc": "monai_vlseg.datasets.public.cvc",
    "monai_vlseg.data.isic": "monai_vlseg.datasets.public.isic",
    "monai_vlseg.data.monuseg": "monai_vlseg.datasets.public.monuseg",
    "monai_vlseg.data.demo": "monai_vlseg.datasets.synthetic.cxr",
    "monai_vlseg.data.demo_ct": "monai_vlseg.datasets.synthetic.ct",
    "monai_vlseg.data.demo_polyp": "monai_vlseg.datasets.synthetic.polyp",
    "monai_vlseg.data.dicom_export": "monai_vlseg.io.ingest",
    "monai_vlseg.handlers": "monai_vlseg.engines.handlers",
}


def _warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(
        f"{old} has moved to {new}; the old path works until monai_vlseg {REMOVED_IN}.", FutureWarning, stacklevel
    )


def lazy_exports(
    package: str, exports: Mapping[str, str], moved: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` that import ``exports[name]`` (a module path) on first use.

    Args:
        package: the ``__name__`` of the module the two functions are installed in.
        exports: public name -> full path of the module that defines it.
        moved: the names are deprecated aliases: each access warns with the new path, and ``dir()`` does not list
            them (MONAI's ``ComponentLocator`` reads every attribute ``dir()`` lists of every ``monai*`` module).
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if moved:
            _warn_moved(f"{package}.{name}", f"{exports[name]}.{name}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | (set() if moved else set(exports)))

    return __getattr__, __dir__


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path of :data:`MOVED_MODULES` and hands out the new module (for ``python -m``, its code)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        new = MOVED_MODULES[spec.name]
        _warn_moved(spec.name, new, stacklevel=4)
        module = importlib.import_module(new)
        spec.loader_state = module.__spec__  # the import system sets __spec__ of what create_module returns
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname: str) -> Any:
        new = MOVED_MODULES[fullname]
        _warn_moved(fullname, new)
        spec = importlib.util.find_spec(new)
        return spec.loader.get_code(new)


def install_moved_modules() -> None:
    """Put the finder of the old module paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
