# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""One front door for the public data set preparers, and ``subset`` for low-data budgets.

Every preparer reads a data set in the layout it is downloaded in and writes a MONAI datalist with text
(``{"training": [...], "validation": [...], "test": [...], "skipped": [...], "meta": {...}}``):

===========  =====================================================  ==============================================
data set     module                                                 text
===========  =====================================================  ==============================================
``qata``     :mod:`monai_vlseg.datasets.public.lvit` (LViT layout)  LViT's ``*_text.xlsx`` reports
``mosmed``   :mod:`monai_vlseg.datasets.public.lvit` (LViT layout)  LViT's ``*_text.xlsx`` reports
``kvasir``   :mod:`monai_vlseg.datasets.public.kvasir`              MedVLSM's caption files, else a template
``cvc``      :mod:`monai_vlseg.datasets.public.cvc`                 a template from the mask, or a CSV of texts
``isic``     :mod:`monai_vlseg.datasets.public.isic`                a template (diagnosis from Part 3 CSV + mask)
``monuseg``  :mod:`monai_vlseg.datasets.public.monuseg`             a template from the annotations, or a CSV
===========  =====================================================  ==============================================

Command line::

    python -m monai_vlseg.datasets.prepare DATASET ROOT OUT.json [options of that data set's preparer]
    python -m monai_vlseg.datasets.prepare subset IN.json OUT.json --training 150 --test 50 [--seed 0]

``subset`` cuts a prepared datalist to a low-data budget (LCPDN's 5 MoNuSeg / 150 QaTa training images): a seeded
sample of each named split, the other splits kept whole, paths rewritten for OUT.json's folder, ``meta.text_tokens``
measured again on what was kept.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from monai_vlseg.datalist import DATALIST_KEYS, convert_paths, summarise_text_sources, write_datalist

__all__ = ["PREPARERS", "main", "subset_datalist"]

#: data set name -> module under monai_vlseg.datasets.public whose ``main(argv)`` is its command line.
PREPARERS: dict[str, str] = {
    "qata": "lvit",
    "mosmed": "lvit",
    "lvit": "lvit",
    "kvasir": "kvasir",
    "cvc": "cvc",
    "isic": "isic",
    "monuseg": "monuseg",
}


def subset_datalist(
    datalist_json: str | os.PathLike,
    output_json: str | os.PathLike,
    sizes: Mapping[str, int],
    seed: int = 0,
    relative: bool = True,
) -> dict[str, Any]:
    """Write a copy of a datalist whose splits in ``sizes`` hold a seeded sample of that many items (in their
    original order); other splits are kept whole. Paths are rewritten for ``output_json``'s folder; the items keep their
    ``text_source`` and ``meta.text_sources`` counts the items kept.

    Raises:
        ValueError: a split is missing or smaller than asked.
    """
    src = os.path.abspath(os.fspath(datalist_json))
    with open(src, encoding="utf-8") as f:
        data = convert_paths(json.load(f), os.path.dirname(src), relative=False)
    for split, n in sizes.items():
        items = data.get(split)
        if not isinstance(items, list):
            raise ValueError(f"{src}: no '{split}' split to take {n} items from.")
        if n > len(items):
            raise ValueError(f"{src}: '{split}' has {len(items)} items, fewer than the {n} asked for.")
        keep = sorted(random.Random(seed).sample(range(len(items)), n))
        data[split] = [items[i] for i in keep]
    meta = dict(data.get("meta") or {})
    meta["subset"] = {"source": src, "sizes": dict(sizes), "seed": seed}
    if "text_sources" in meta:  # the counts of the items kept
        meta.update(summarise_text_sources({k: v for k, v in data.items() if k != "meta"}))
    data["meta"] = meta
    before = meta.get("text_tokens")
    if isinstance(before, list) and before:  # the subset's own text lengths, measured as the source's were
        from monai_vlseg.datasets.public.common import TEXT_LENS, record_text_tokens

        record_text_tokens(
            data,
            [e.get("report_parser") for e in before],
            [e.get("tokenizer") or "default" for e in before],
            sorted({int(n) for e in before for n in e.get("truncated", {})} | set(TEXT_LENS)),
        )  # fmt: skip
    write_datalist(data, output_json, relative=relative)
    return data


def _subset_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.prepare subset", description=subset_datalist.__doc__.split("\n\n")[0])
    p.add_argument("datalist_json")
    p.add_argument("output_json")
    for k in DATALIST_KEYS:
        p.add_argument(f"--{k}", type=int, default=None, help=f"items to keep in '{k}' (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--absolute", action="store_true")
    a = p.parse_args(argv)
    sizes = {k: getattr(a, k) for k in DATALIST_KEYS if getattr(a, k) is not None}
    try:
        dl = subset_datalist(a.datalist_json, a.output_json, sizes, seed=a.seed, relative=not a.absolute)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {len(v)}" for k, v in dl.items() if k not in ("skipped", "meta") and isinstance(v, list))
    print(f"wrote {os.path.abspath(a.output_json)} ({counts})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_vlseg.datasets.prepare DATASET ROOT OUT.json [options]`` (or ``subset IN.json OUT.json``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "subset":
        return _subset_main(argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in PREPARERS:
        names = ", ".join(PREPARERS)
        print(
            f"usage: python -m monai_vlseg.datasets.prepare DATASET ROOT OUT.json [options]\n  DATASET: one of {names}\n"
            "       python -m monai_vlseg.datasets.prepare subset IN.json OUT.json [--training N] [--test N] [--seed S]"
        )
        print(__doc__.split("Command line::")[0])
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"monai_vlseg.datasets.public.{PREPARERS[argv[0]]}")
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
