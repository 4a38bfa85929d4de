"""Build the MONAI Label environment ``.venv-label`` as a thin layer over the project's ``.venv``.

MONAI Label 0.8.5 imports ``torchvision`` when it loads its bundle infer task (``monailabel.transform.post``), and the
torchvision on PyPI needs the torch it was built with (torch 2.14.1 + torchvision 0.29.1, CUDA builds), not the CPU
torch of ``.venv``. A full second environment with everything duplicated took 8.5 GB and ran a CI machine out of
disk, so ``.venv-label`` holds only what differs:

- torch 2.14.1 + torchvision 0.29.1 and torch's CUDA libraries (``nvidia-*``), which torch links at import; triton
  (0.9 GB, used only by ``torch.compile`` on a GPU) is left out;
- numpy 1.26: pydicom-seg and numpymaxflow (monailabel's requirements) need numpy < 2;
- monailabel 0.8.5 and its requirements that ``.venv`` lacks (FastAPI, uvicorn, pydicom-seg, scikit-image, ...),
  without ``sam2`` (only its SAM2 task imports it);
- its own copy of pydicom, so that the pydicom-3 shim (:mod:`monai_vlseg.label_app.compat`) goes there and not into
  ``.venv``.

Everything else (MONAI, transformers, highdicom, ITK, this package as an editable install) is read from ``.venv``
through a ``.pth`` file that calls ``site.addsitedir`` on its site-packages; the layer's own site-packages comes first
on ``sys.path``, so its torch shadows the CPU one. Run by ``make label`` as ``.venv/bin/python -m
monai_vlseg.label_app.env``; it uses the standard library only and rebuilds the layer from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv

__all__ = ["LABEL_PACKAGES", "SKIP_REQUIREMENTS", "build_label_env", "layer_requirements"]

# installed without their dependencies; those are added by layer_requirements
LABEL_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "monailabel==0.8.5")
# requirements of LABEL_PACKAGES not installed into the layer (see the module docstring)
SKIP_REQUIREMENTS = frozenset({"torch", "torchvision", "sam2", "triton"})
PTH_NAME = "_monai_vlseg_base.pth"


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res.stdout


def _python(env_dir: str) -> str:
    return os.path.join(env_dir, "bin", "python")


def _site_packages(python: str) -> str:
    return _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip()


def layer_requirements(python: str, packages: tuple[str, ...] = LABEL_PACKAGES) -> list[str]:
    """The ``Requires-Dist`` entries of ``packages`` (as installed for ``python``) whose markers hold without extras,
    minus :data:`SKIP_REQUIREMENTS` (as requirements and as extras, e.g. ``monai[torchvision]``); pip then installs
    those the layer and ``.venv`` together lack."""
    names = [p.split("==")[0] for p in packages]
    code = (
        "import json, sys, importlib.metadata as md\n"
        "from packaging.requirements import Requirement\n"
        "out = []\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    for line in md.requires(name) or []:\n"
        "        r = Requirement(line)\n"
        "        if r.marker is None or r.marker.evaluate({'extra': ''}):\n"
        "            r.marker = None\n"
        "            r.extras = set(r.extras) - set(json.loads(sys.argv[2]))\n"
        "            out.append([r.name.lower(), str(r)])\n"
        "print(json.dumps(out))\n"
    )
    reqs = json.loads(_run([python, "-c", code, json.dumps(names), json.dumps(sorted(SKIP_REQUIREMENTS))]))
    seen, keep = set(), []
    for name, spec in reqs:
        if name.replace("_", "-") in SKIP_REQUIREMENTS or spec in seen:
            continue
        seen.add(spec)
        keep.append(spec)
    return keep


def build_label_env(label_dir: str, base_python: str = sys.executable, quiet: bool = True) -> str:
    """Create ``label_dir`` as a layer over the environment of ``base_python``; returns the layer's python."""
    base_site = _site_packages(base_python)
    if os.path.realpath(base_site).startswith(os.path.realpath(label_dir) + os.sep):
        raise ValueError(f"the base environment ({base_site}) cannot live inside the layer {label_dir}")
    shutil.rmtree(label_dir, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(label_dir)
    py = _python(label_dir)
    with open(os.path.join(_site_packages(py), PTH_NAME), "w", encoding="utf-8") as f:
        f.write(f"import site; site.addsitedir({base_site!r})\n")
    q = ["-q"] if quiet else []
    pip = [py, "-m", "pip", "install", *q, "--no-cache-dir"]
    _run([py, "-m", "pip", "install", *q, "--upgrade", "pip"])
    pydicom_version = _run([base_python, "-c", "import pydicom; print(pydicom.__version__)"]).strip()
    _run([*pip, "--no-deps", "--ignore-installed", *LABEL_PACKAGES, f"pydicom=={pydicom_version}"])
    _run([*pip, *layer_requirements(py)])
    # pip adds triton back as torch's requirement while it checks the installed torch against monai's
    _run([py, "-m", "pip", "uninstall", "-y", *q, "triton"])
    _run([py, "-m", "monai_vlseg.label_app.compat"])
    # the server's imports, torchvision and the text task included
    _run([py, "-c", "import torch, torchvision, monailabel.tasks.infer.bundle, monai_vlseg.label_app.lib.infers"])
    return py


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label-env", default=".venv-label", help="folder of the layer (rebuilt from scratch)")
    ap.add_argument("--verbose", action="store_true", help="show pip's output")
    args = ap.parse_args(argv)
    py = build_label_env(os.path.abspath(args.label_env), quiet=not args.verbose)
    print(f"MONAI Label environment ready: {py} (over {sysconfig.get_path('purelib')})")


if __name__ == "__main__":
    main()
