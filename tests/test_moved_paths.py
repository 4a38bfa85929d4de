"""The 0.1 import paths keep working for one release, each with a FutureWarning naming the new path."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import warnings

import pytest

import monai_vlseg
from monai_vlseg._lazy import MOVED_MODULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("old, new", sorted(MOVED_MODULES.items()))
def test_old_module_path_is_the_new_module(old, new):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == new  # the alias does not rename the real module


@pytest.mark.parametrize(
    "face, name, home",
    [
        ("monai_vlseg.data", "ensure_demo_datalist", "monai_vlseg.datasets.synthetic.cxr"),
        ("monai_vlseg.data", "ensure_generated", "monai_vlseg.files"),
        ("monai_vlseg.data", "load_datalist", "monai_vlseg.datalist"),
        ("monai_vlseg.data", "write_dicom_series", "monai_vlseg.io.series"),
        ("monai_vlseg.data", "subset_datalist", "monai_vlseg.datasets.prepare"),
        ("monai_vlseg.metrics", "TextMaskConsistencyHandler", "monai_vlseg.engines.handlers"),
        ("monai_vlseg.metrics.consistency", "TextMaskConsistencyHandler", "monai_vlseg.engines.handlers"),
        ("monai_vlseg.nets.lcpdn", "PromptedDiffusionPrepareBatch", "monai_vlseg.engines.prepare_batch"),
        ("monai_vlseg.nets.lcpdn", "PromptedDiffusionInferer", "monai_vlseg.engines.inferers"),
    ],
)
def test_old_name_resolves_with_a_warning(face, name, home):
    with pytest.warns(FutureWarning, match=f"{home}.{name}".replace(".", r"\.")):
        obj = getattr(importlib.import_module(face), name)
    assert obj is getattr(importlib.import_module(home), name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        importlib.import_module("monai_vlseg.data").no_such_thing


def test_scanning_a_face_does_not_warn():
    """MONAI's ComponentLocator reads every attribute dir() lists: the moved names must not be among them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for face in ("monai_vlseg.data", "monai_vlseg.metrics", "monai_vlseg.nets.lcpdn"):
            inspect.getmembers(importlib.import_module(face))


def test_old_command_line_runs_the_new_module(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "monai_vlseg.data.demo", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1",
           "--size", "64"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "monai_vlseg.datasets.synthetic.cxr" in proc.stderr and "FutureWarning" in proc.stderr
    assert os.path.isfile(out / "datalist.json")


def test_version_is_past_the_old_layout():
    assert tuple(int(v) for v in monai_vlseg.__version__.split(".")[:2]) >= (0, 2)


def test_configs_scripts_and_docs_use_the_new_paths():
    """Only the 0.1 shims and the table of moved paths in docs/architecture.md may name a 0.1 path."""
    import glob
    import re

    old = re.compile(
        r"monai_vlseg\.data\b(?!list)|monai_vlseg\.handlers\b|nets\.lcpdn\.PromptedDiffusion|"
        r"metrics(?:\.consistency)?\.TextMaskConsistencyHandler"
    )
    files = [*glob.glob(os.path.join(ROOT, "bundles", "*", "configs", "*.json")),
             *glob.glob(os.path.join(ROOT, "bundles", "*", "docs", "*.md")), *glob.glob(os.path.join(ROOT, "scripts", "*.py")),
             os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]  # fmt: skip
    stale = []
    for path in files:
        if path.endswith("architecture.md"):
            continue
        with open(path, encoding="utf-8") as f:
            stale += [f"{os.path.relpath(path, ROOT)}:{i}" for i, line in enumerate(f, 1) if old.search(line)]
    assert not stale, f"0.1 module paths in {stale}"
