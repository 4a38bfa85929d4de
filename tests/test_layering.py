"""The package's layers (docs/architecture.md): a module imports only from lower layers or from its own layer.

Every ``import`` statement counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "monai_vlseg")

#: lowest first; a module may import from its own layer and the layers before it. Kept equal to the table in
#: docs/architecture.md by test_architecture_doc_lists_the_layers.
LAYERS: list[tuple[str, ...]] = [
    ("monai_vlseg._lazy", "monai_vlseg.errors", "monai_vlseg.files"),
    ("monai_vlseg", "monai_vlseg.datalist", "monai_vlseg.utils", "monai_vlseg.data"),
    ("monai_vlseg.ops",),
    ("monai_vlseg.nets.blocks",),
    ("monai_vlseg.nets",),
    ("monai_vlseg.transforms",),
    ("monai_vlseg.losses",),
    ("monai_vlseg.metrics",),
    ("monai_vlseg.io",),
    ("monai_vlseg.datasets",),
    ("monai_vlseg.engines",),
    ("monai_vlseg.bundle", "monai_vlseg.export"),
    ("monai_vlseg.label_app",),
]


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the entry it matched) of a dotted module name: the longest entry that is a prefix of it."""
    best = (-1, "")
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if (module == e or module.startswith(e + ".")) and len(e) > len(best[1]):
                best = (i, e)
    if best[0] < 0:
        raise KeyError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")
    return best


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every import of a ``monai_vlseg`` module in ``source``, relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from pkg import sub` imports pkg.sub when sub is a module: count the longer name
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names] if name else []
    return [(ln, m) for ln, m in out if m == "monai_vlseg" or m.startswith("monai_vlseg.")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports of ``source`` (the text of ``module``) that reach a higher layer."""
    mine, _ = layer_of(module)
    bad = []
    for line, target in imported_modules(source, module, is_package):
        theirs, entry = layer_of(target)
        if theirs > mine:
            bad.append(f"{module}:{line} imports {target} (layer {theirs} '{entry}' > {mine})")
    return bad


def package_modules() -> list[tuple[str, str]]:
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                found.append((module_name(os.path.join(folder, f)), os.path.join(folder, f)))
    return sorted(found)


def test_no_module_imports_a_higher_layer():
    bad = []
    for module, path in package_modules():
        with open(path, encoding="utf-8") as f:
            bad += violations(f.read(), module, path.endswith("__init__.py"))
    assert not bad, "imports that go up a layer (see docs/architecture.md):\n" + "\n".join(bad)


def test_every_module_is_in_a_layer():
    for module, _ in package_modules():
        layer_of(module)


@pytest.mark.parametrize(
    "module, source",
    [
        ("monai_vlseg.ops.cross_scan", "from monai_vlseg.nets.vm_unet import VMUNet"),
        ("monai_vlseg.files", "def f():\n    from monai_vlseg.datalist import write_datalist\n"),
        ("monai_vlseg.io.dicom", "from ..datasets.synthetic import ct"),
        ("monai_vlseg.nets.lcpdn", "import monai_vlseg.engines.inferers"),
        ("monai_vlseg.nets.blocks.mamba", "from monai_vlseg.nets import vm_unet"),
    ],
)
def test_checker_catches_an_upward_import(module, source):
    assert violations(source, module)


def test_checker_allows_downward_and_sibling_imports():
    assert not violations("from monai_vlseg.ops.selective_scan import selective_scan", "monai_vlseg.nets.blocks.mamba")
    assert not violations("from .dicom import DicomReader", "monai_vlseg.io.dicom_seg")
    assert not violations("from . import ingest", "monai_vlseg.io", is_package=True)
    assert not violations("from monai_vlseg import __version__", "monai_vlseg.io.dicom_seg")


def test_architecture_doc_lists_the_layers():
    """docs/architecture.md's layer table names every entry of LAYERS, in the same order."""
    with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as f:
        doc = f.read()
    table = doc.split("<!-- layers -->")[1].split("<!-- /layers -->")[0]
    rows = [r for r in table.splitlines() if re.match(r"\|\s*\d+\s*\|", r)]
    named = [tuple(re.findall(r"`(monai_vlseg[\w.]*)`", r.split("|")[2])) for r in rows]
    assert named == LAYERS


def test_readme_layout_matches_the_tree():
    """Every path the README's Layout section names exists, and it names every package and top-level module."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## Layout\n")[1].split("\n## ")[0]
    block = section.split("```")[1]
    listed = {line.split()[0].rstrip("/") for line in block.strip().splitlines() if line.strip()}
    for path in listed:
        if "<" not in path:
            assert os.path.exists(os.path.join(ROOT, path)), f"README Layout names {path}, which does not exist"
    wanted = {os.path.relpath(folder, ROOT) for folder, _, files in os.walk(PACKAGE) if "__init__.py" in files}
    wanted -= {"monai_vlseg"}
    wanted |= {f"monai_vlseg/{f}" for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"}
    assert not wanted - listed, f"README Layout does not name {sorted(wanted - listed)}"
