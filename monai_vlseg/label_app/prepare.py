"""Lay out a MONAI Label app folder serving a monai-vlseg bundle.

::

    python -m monai_vlseg.label_app.prepare --bundle bundles/ua_vls --app apps/vlseg
    python -m monai_vlseg.label_app.prepare --bundle bundles/ua_vls --app apps/vlseg \\
        --overrides bundles/ua_vls/configs/demo.json --force      # a checkpoint trained with `make demo`

writes ``APP/main.py`` and ``APP/lib/`` (the app code of :mod:`monai_vlseg.label_app`) and the bundle at
``APP/model/<name>/``: ``configs/`` copied (``inference.json`` with the ``--overrides`` files and ``--set`` values
applied, so the network it builds is the one the checkpoint was trained as), ``models/model.pt`` copied or, with
``--link``, symlinked, with the record of the configuration it was trained with (``models/model.json``), plus
``LICENSE`` and ``docs/``; the overrides also as ``configs/overrides.json``, which the MONAI Label train task applies
to ``train.json``. A checkpoint whose record differs from the app's configuration (image size, text length,
channels, network) is refused before anything is written, as ``inference.json`` refuses it (``--config-mismatch
warn`` lays it out anyway). Then::

    monailabel start_server --app APP --studies STUDIES --conf models <name>

This module does not need ``monailabel``; it runs in either virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["prepare_app", "set_config_value", "main"]

APP_SRC = os.path.dirname(os.path.abspath(__file__))
BUNDLE_EXTRAS = ("LICENSE", "docs")
#: the overrides an app's bundle was laid out with (``configs/<this>``): the train task applies them to train.json
OVERRIDES_FILE = "overrides.json"


def set_config_value(config: dict, id: str, value: Any) -> None:
    """Set ``config[id]`` for a MONAI bundle id (``network_def#vision_config`` or ``network_def::vision_config``;
    list items by index), as a bundle override would."""
    keys = id.replace("#", "::").split("::")
    node: Any = config
    for i, k in enumerate(keys[:-1]):
        try:
            node = node[int(k)] if isinstance(node, list) else node[k]
        except (KeyError, IndexError, ValueError) as e:
            raise KeyError(f"config id '{id}': '{'::'.join(keys[: i + 1])}' does not exist") from e
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise KeyError(f"config id '{id}': '{'::'.join(keys[:-1])}' is not a dict or list")


def _load_overrides(path: str) -> dict[str, Any]:
    from monai.bundle import ConfigParser  # JSON or YAML, as `monai.bundle run --config_file` reads them

    content = ConfigParser.load_config_file(path)
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: an overrides file is a mapping of config ids to values")
    return dict(content)


def _place(src: str, dst: str, link: bool) -> None:
    if link:
        os.symlink(os.path.abspath(src), dst)
    elif os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def prepare_app(
    bundle: str,
    app: str,
    name: str | None = None,
    ckpt: str | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    link: bool = False,
    force: bool = False,
    config_mismatch: str = "error",
) -> str:
    """Lay out ``app`` (see the module docstring) and return the bundle folder inside it.

    Args:
        bundle: the bundle folder (``configs/inference.json`` and ``configs/metadata.json``).
        app: the app folder; created. Its ``main.py`` and ``lib/`` are always rewritten.
        name: the model name the server will use (default: the bundle folder's name).
        ckpt: the checkpoint (default ``<bundle>/models/model.pt``).
        overrides: JSON/YAML files of ``{config id: value}`` applied to the app copy of ``inference.json``, in order.
        values: single ``{config id: value}`` overrides applied after the files.
        link: symlink the checkpoint, ``LICENSE`` and ``docs`` instead of copying them.
        force: replace an existing ``app/model/<name>``.
        config_mismatch: ``"error"`` or ``"warn"`` when the checkpoint's record differs from the app's configuration
            (:func:`monai_vlseg.bundle.check_model_config`).
    """
    bundle = os.path.abspath(bundle)
    name = name or os.path.basename(bundle.rstrip(os.sep))
    for f in ("inference.json", "metadata.json"):
        if not os.path.isfile(os.path.join(bundle, "configs", f)):
            raise FileNotFoundError(f"{bundle} is not a bundle with configs/{f}.")
    ckpt = os.path.abspath(ckpt or os.path.join(bundle, "models", "model.pt"))
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(
            f"checkpoint {ckpt} not found: train the bundle first (e.g. `make demo`, or `python -m monai.bundle run "
            f"training --config_file {os.path.join(bundle, 'configs', 'train.json')}`) or pass --ckpt."
        )

    with open(os.path.join(bundle, "configs", "inference.json"), encoding="utf-8") as f:
        config = json.load(f)
    applied: dict[str, Any] = {}
    for path in overrides:
        applied.update(_load_overrides(path))
    applied.update(values or {})
    for k, v in applied.items():  # before anything is written: a wrong id leaves no half-made app
        set_config_value(config, k, v)
    record = _check_record(config, bundle, ckpt, config_mismatch)

    os.makedirs(app, exist_ok=True)
    shutil.copy2(os.path.join(APP_SRC, "main.py"), os.path.join(app, "main.py"))
    shutil.rmtree(os.path.join(app, "lib"), ignore_errors=True)
    no_cache = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(APP_SRC, "lib"), os.path.join(app, "lib"), ignore=no_cache)

    dst = os.path.join(app, "model", name)
    if os.path.lexists(dst):
        if not force:
            raise FileExistsError(f"{dst} exists; pass --force to replace it.")
        shutil.rmtree(dst) if os.path.isdir(dst) and not os.path.islink(dst) else os.remove(dst)
    os.makedirs(os.path.join(dst, "models"))
    shutil.copytree(os.path.join(bundle, "configs"), os.path.join(dst, "configs"))
    _place(ckpt, os.path.join(dst, "models", "model.pt"), link)
    if record is not None:  # what the app's checkpoint was trained with, beside it (models/model.json)
        with open(os.path.join(dst, "models", "model.json"), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    for extra in BUNDLE_EXTRAS:
        if os.path.exists(os.path.join(bundle, extra)):
            _place(os.path.join(bundle, extra), os.path.join(dst, extra), link)

    with open(os.path.join(dst, "configs", "inference.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=4)
        f.write("\n")
    if applied:  # the MONAI Label train task applies them to train.json: the network trained is the one served
        with open(os.path.join(dst, "configs", OVERRIDES_FILE), "w", encoding="utf-8") as f:
            json.dump(applied, f, indent=4)
            f.write("\n")
    return dst


def _check_record(config: dict, bundle: str, ckpt: str, on_mismatch: str) -> dict[str, Any] | None:
    """Compare the app's ``model_config`` with the record of ``ckpt`` (refuse or warn, see
    :func:`~monai_vlseg.bundle.check_model_config`); return the record, None when the checkpoint has none."""
    from monai.bundle import ConfigParser

    from monai_vlseg.bundle import check_model_config, checkpoint_record

    if "model_config" in config:
        parser = ConfigParser(config)
        parser["bundle_root"] = bundle
        check_model_config(ckpt, parser.get_parsed_content("model_config"), on_mismatch)
    found = checkpoint_record(ckpt)
    return None if found is None else found[1]


def _parse_value(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"--set takes ID=VALUE, got {item!r}")
    k, v = item.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v  # a plain string


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/ua_vls")
    p.add_argument("--app", required=True, help="app folder to write (created)")
    p.add_argument("--name", default=None, help="model name on the server (default: the bundle folder's name)")
    p.add_argument("--ckpt", default=None, help="checkpoint (default: <bundle>/models/model.pt)")
    p.add_argument(
        "--overrides", nargs="*", default=[], metavar="FILE",
        help="JSON/YAML files of config-id overrides the checkpoint was trained with (e.g. configs/demo.json)",
    )  # fmt: skip
    p.add_argument(
        "--set", dest="values", action="append", type=_parse_value, default=[], metavar="ID=VALUE",
        help="one override, VALUE as JSON (e.g. --set 'image_size=[128,128]'); repeatable",
    )  # fmt: skip
    p.add_argument("--link", action="store_true", help="symlink the checkpoint, LICENSE and docs instead of copying")
    p.add_argument("--force", action="store_true", help="replace an existing APP/model/<name>")
    p.add_argument(
        "--config-mismatch", choices=("error", "warn"), default="error",
        help="when the checkpoint's record of its training configuration differs from the app's (default: refuse)",
    )  # fmt: skip
    args = p.parse_args(argv)
    dst = prepare_app(
        args.bundle, args.app, args.name, args.ckpt, args.overrides, dict(args.values), args.link, args.force,
        args.config_mismatch,
    )  # fmt: skip
    name = os.path.basename(dst)
    print(f"bundle '{name}' laid out at {dst}")
    print(f"start: monailabel start_server --app {os.path.abspath(args.app)} --studies STUDIES --conf models {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
