# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""What every public data set preparer shares: reading masks and user texts, checking images, building and
recording items, template texts from masks, seeded splits, the common command-line arguments and the final write.

Every datalist's ``meta.text_tokens`` says how long its texts are for the bundles' tokenizer
(:func:`record_text_tokens`): the longest token count, a histogram, and how many texts a given ``text_len`` truncates;
the bundles check their ``text_len`` against it when a run starts (:func:`monai_vlseg.bundle.check_text_len`).

Templates (:func:`describe_mask`) are deterministic: the same mask always gives the same sentence, built from
the number of connected regions, their size relative to the image and the 3x3-grid position of the largest —
the kind of prompt MedVLSM's ``p2``–``p9`` are. They carry information derived from the mask, so a model that
reads them is not comparable with image-only models, and a model *trained* on them (text-supervised) has learnt
from the mask. Every item records where its text came from in ``text_source`` (a word of
:data:`monai_vlseg.datalist.TEXT_SOURCES`: template sentences are ``mask_derived``, a texts CSV is what
``--texts-source`` declares, ``unknown`` by default); ``meta.text_source`` is the word all items share (or
``mixed``), ``meta.text_sources`` the counts, ``meta.text_origin`` the preparer's description of the texts.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_vlseg.datalist import LATERALITY_CONVENTIONS, TEXT_SOURCES, summarise_text_sources, write_datalist
from monai_vlseg.files import atomic_write_bytes

__all__ = [
    "DEFAULT_TEMPLATE",
    "MASK_TEMPLATE_SOURCE",
    "TEXT_LENS",
    "add_common_args",
    "build_item",
    "check_image",
    "data_root",
    "default_mask_dir",
    "describe_mask",
    "finish_datalist",
    "read_mask",
    "read_text_csv",
    "record_text_tokens",
    "run_cli",
    "save_mask_png",
    "seeded_split",
    "user_text",
]

logger = logging.getLogger(__name__)

#: the ``text_source`` of every sentence :func:`describe_mask` writes.
MASK_TEMPLATE_SOURCE = "mask_derived"
#: default sentence template; fields: count (word), target (singular/plural as counted), size, location, modality.
DEFAULT_TEMPLATE = "{count} {size} {target} at the {location} of the {modality}."

#: the ``text_len`` values ``meta.text_tokens.truncated`` is tabulated for: TextDiff's 10, UA-VLS's paper 24 and the
#: defaults of the text-guided bundles (tifcmamba 32; ua_vls, c2seg, lcpdn 34, the longest canonical chest sentence);
#: the histogram beside it gives the count for any other.
TEXT_LENS: tuple[int, ...] = (10, 24, 32, 34)

_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "center", "right")


def _location(cy: float, cx: float, h: int, w: int) -> str:
    r, c = min(2, int(3 * cy / max(h, 1))), min(2, int(3 * cx / max(w, 1)))
    if r == 1 and c == 1:
        return "center"
    if r == 1:
        return f"middle {_COLS[c]}"
    if c == 1:
        return _ROWS[r]
    return f"{_ROWS[r]} {_COLS[c]}"


def describe_mask(
    mask: np.ndarray,
    target: str = "polyp",
    plural: str | None = None,
    modality: str = "image",
    template: str = DEFAULT_TEMPLATE,
    extra: Mapping[str, Any] | None = None,
    count: int | None = None,
) -> str:
    """A deterministic sentence about a binary mask (count, size, position of the largest region).

    Args:
        mask: 2D array, non-zero is foreground.
        target: what the foreground is (``"polyp"``, ``"skin lesion"``); ``plural`` defaults to ``target + "s"``.
        modality: the image kind named in the sentence (``"colonoscopy image"``).
        template: ``str.format`` template with fields ``count``, ``number`` (digits), ``size``, ``location``,
            ``target``, ``modality`` and any in ``extra``.
        extra: more template fields (e.g. ``diagnosis``).
        count: the number of objects when known from annotations (Kvasir boxes, MoNuSeg polygons); default:
            the number of connected regions of the mask.

    ``size``: small (< 5 % of the image), medium (< 20 %), large. An empty mask gives ``count`` "no" and
    ``location`` "image".
    """
    from scipy import ndimage

    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise ValueError(f"describe_mask expects a 2D mask, got shape {m.shape}.")
    labels, n = ndimage.label(m)
    h, w = m.shape
    plural = plural or target + "s"
    if n:
        areas = ndimage.sum(m, labels, index=range(1, n + 1))
        big = int(np.argmax(areas)) + 1
        cy, cx = ndimage.center_of_mass(labels == big)
        frac = float(m.sum()) / m.size
        size = "small" if frac < 0.05 else "medium" if frac < 0.2 else "large"
        location = _location(cy, cx, h, w)
    else:
        size, location = "", "image"
    if count is not None:
        n = int(count)
    fields = {
        "count": _NUMBERS[n] if n < len(_NUMBERS) else str(n),
        "number": n,
        "size": size,
        "location": location,
        "target": target if n == 1 else plural,
        "modality": modality,
    }
    fields.update(extra or {})
    text = template.format(**fields)
    text = " ".join(text.split())  # an empty field leaves no double blank
    return text[:1].upper() + text[1:]


def read_text_csv(path: str | os.PathLike) -> dict[str, str]:
    """User-supplied texts: a CSV with a header holding ``image`` and ``text`` columns (case-insensitive).

    Keys are the ``image`` cells as written and their file stems, so ``ISIC_0000000`` and ``ISIC_0000000.jpg``
    both match.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text CSV not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
        if "image" not in cols or "text" not in cols:
            raise ValueError(f"{path}: the header must hold 'image' and 'text' columns, found {reader.fieldnames}.")
        out: dict[str, str] = {}
        for row in reader:
            name = (row.get(cols["image"]) or "").strip()
            text = (row.get(cols["text"]) or "").strip()
            if name and text:
                out[name] = text
                out[os.path.splitext(os.path.basename(name))[0]] = text
    return out


def user_text(texts: Mapping[str, str] | None, image: str) -> str | None:
    """The text :func:`read_text_csv` gave for ``image`` (by file name or stem; ``""`` when the CSV lacks it, so the
    item is skipped as having no text), or ``None`` without a CSV (the preparer's template then describes the mask)."""
    if texts is None:
        return None
    name = os.path.basename(image)
    return texts.get(name) or texts.get(os.path.splitext(name)[0]) or ""


def data_root(root: str | os.PathLike, dataset: str) -> str:
    """``root`` as an absolute folder path; ``FileNotFoundError`` naming the data set when it is not a folder."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{dataset} root not found: {root}")
    return root


def seeded_split(
    names: Sequence[str], val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[str]]:
    """Split sorted ``names`` into ``training`` / ``validation`` / ``test`` with a seeded shuffle.

    The same names, fractions and seed always give the same split, whatever order ``names`` came in.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be in [0, 1) and sum below 1, got val={val_fraction}, test={test_fraction}.")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"training": sorted(train), "validation": sorted(val), "test": sorted(test)}


def read_mask(path: str | os.PathLike, threshold: int = 127) -> np.ndarray:
    """A mask file (PNG/JPG/TIFF/BMP; grey, RGB or palette) as a boolean array (any channel > ``threshold``).

    JPEG masks (Kvasir-SEG) are lossy: thresholding at the middle recovers the binary mask.
    """
    from PIL import Image

    with Image.open(os.fspath(path)) as im:
        a = np.asarray(im.convert("L") if im.mode in ("P", "1", "LA") else im)
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1)
    if a.dtype != np.uint8:  # 16-bit or float masks
        a = (a > 0).astype(np.uint8) * 255
    return a > threshold


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> str:
    """Write a binary mask as a 0/255 8-bit PNG (atomically) and return the absolute path."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def check_image(path: str) -> str | None:
    """``None`` when ``path`` is a readable image (header parsed, not decoded), else the problem."""
    from PIL import Image

    if not os.path.isfile(path):
        return "file missing"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises many types for broken files
        return f"unreadable image ({type(e).__name__}: {e})"
    return None


def build_item(
    split: str,
    image: str,
    mask: str | None,
    root: str,
    skipped: list[dict[str, Any]],
    text: str | None = None,
    describe: Any = None,
    mask_out: str | None = None,
    mask_array: np.ndarray | None = None,
    text_source: str = "unknown",
    describe_source: str = MASK_TEMPLATE_SOURCE,
) -> dict[str, Any] | None:
    """One datalist item ``{"image", "label", "text", "text_source"}``, or ``None`` after recording why in
    ``skipped``.

    Args:
        split: datalist key the item belongs to (for the skip record).
        image: image file; must exist and be readable.
        mask: mask file (read and binarised), unless ``mask_array`` is given (already rasterised).
        root: data set root, skip records name files relative to it.
        skipped: list the problem records are appended to.
        text: the item's text; when ``None`` ``describe(mask_bool_array)`` makes it.
        describe: callable making a text from the boolean mask (templates).
        mask_out: write the binary mask as a 0/255 PNG there and point ``label`` at it; ``None`` keeps ``mask``.
        text_source: the :data:`~monai_vlseg.datalist.TEXT_SOURCES` word of a given ``text``.
        describe_source: the word of the texts ``describe`` makes (default ``mask_derived``: made from the mask).
    """
    for word in (text_source, describe_source):
        if word not in TEXT_SOURCES:
            raise ValueError(f"text source must be one of {sorted(TEXT_SOURCES)}, got {word!r}.")

    def rel(p: str) -> str:
        return os.path.relpath(p, root).replace(os.sep, "/")

    def skip(file: str, reason: str) -> None:
        skipped.append({"split": split, "file": rel(file), "reason": reason})

    problem = check_image(image)
    if problem:
        skip(image, problem)
        return None
    if mask_array is None:
        if mask is None or not os.path.isfile(mask):
            skip(mask or image, "mask file missing" + (f" ({rel(mask)})" if mask else ""))
            return None
        try:
            mask_array = read_mask(mask)
        except Exception as e:  # PIL raises many types for broken files
            skip(mask, f"unreadable mask ({type(e).__name__}: {e})")
            return None
    source = text_source
    if text is None and describe is not None:
        text, source = describe(mask_array), describe_source
    if not text or not str(text).strip():
        skip(image, "no text")
        return None
    label = mask if mask_out is None else save_mask_png(mask_array, mask_out)
    if label is None:
        raise ValueError(f"{image}: a rasterised mask needs `mask_out`.")
    image, label = os.path.abspath(image), os.path.abspath(label)
    return {"image": image, "label": label, "text": str(text).strip(), "text_source": source}


def default_mask_dir(output_json: str | os.PathLike | None, mask_dir: str | os.PathLike | None) -> str | None:
    """Where converted masks go: ``mask_dir``, else ``<output json stem>_masks`` beside the datalist."""
    if mask_dir is not None:
        return os.path.abspath(os.fspath(mask_dir))
    if output_json is not None:
        return os.path.splitext(os.path.abspath(os.fspath(output_json)))[0] + "_masks"
    return None


def record_text_tokens(
    datalist: dict[str, Any],
    report_parsers: Sequence[str | None] = (None,),
    tokenizers: Sequence[str] = ("default",),
    text_lens: Sequence[int] = TEXT_LENS,
) -> list[dict[str, Any]]:
    """Measure the texts of every split of ``datalist`` and store the result as ``datalist["meta"]["text_tokens"]``.

    One entry per tokenizer and report parser (:func:`monai_vlseg.transforms.report.text_token_stats`: the text as
    :class:`~monai_vlseg.transforms.report.PrepareReportd` hands it on, so with ``"chest"`` the canonical sentence the
    chest bundles read), over all splits and per split (``by_split``). ``"default"`` is the bundles' default
    tokenizer (the packaged all-MiniLM-L6-v2 WordPiece one, always available offline); another one (a HuggingFace id
    in the local cache or a folder, e.g. the paper's text tower) is measured when asked for. Returns the entries.
    """
    from monai_vlseg.transforms.report import text_token_stats

    sections = [k for k, v in datalist.items() if k not in ("skipped", "meta") and isinstance(v, list)]
    items = [(k, i) for k in sections for i in datalist[k] if isinstance(i, Mapping)]
    texts, splits = [i.get("text") for _, i in items], [k for k, _ in items]
    entries = []
    for tok in dict.fromkeys(tokenizers):
        for parser in dict.fromkeys(report_parsers):
            entry = text_token_stats(texts, tokenizer=tok, parser=parser, text_lens=text_lens, splits=splits)
            entries.append(entry)
            logger.info(
                "texts: %d, longest %d tokens (tokenizer %s, report_parser %s); truncated at text_len %s",
                entry["texts"], entry["max_tokens"], tok, parser,
                ", ".join(f"{k}: {v}" for k, v in entry["truncated"].items()),
            )  # fmt: skip
    datalist["meta"] = {**dict(datalist.get("meta") or {}), "text_tokens": entries}
    return entries


def finish_datalist(
    splits: Mapping[str, list[dict[str, Any]]],
    skipped: list[dict[str, Any]],
    meta: Mapping[str, Any],
    output_json: str | os.PathLike | None,
    relative: bool = True,
    strict: bool = False,
    root: str = "",
    report_parsers: Sequence[str | None] = (None,),
) -> dict[str, Any]:
    """Log (or with ``strict`` raise on) the skipped entries, measure the texts (:func:`record_text_tokens`, with
    each of ``report_parsers``: ``"chest"`` too for chest reports), write the datalist, return it.

    ``skipped`` records are ``{"split", "file", "reason"}`` like :func:`~monai_vlseg.datasets.public.lvit.build_lvit_datalist`.
    ``meta`` gets ``text_source`` (the word every item's ``text_source`` shares, or ``mixed``) and ``text_sources``
    (the count of each) from the items; the preparer's description of its texts goes in ``meta["text_origin"]``.
    ``meta`` must say the side convention of the texts, ``laterality`` (a key of
    :data:`~monai_vlseg.datalist.LATERALITY_CONVENTIONS`): evaluation scores left / right with it.
    """
    if meta.get("laterality") not in LATERALITY_CONVENTIONS:
        raise ValueError(
            f"{meta.get('dataset', root)}: a preparer's meta must say its texts' side convention, laterality "
            f"{' or '.join(map(repr, LATERALITY_CONVENTIONS))}; got {meta.get('laterality')!r}."
        )
    if skipped:
        lines = [
            f"  [{r.get('split', '')}] {r['file']}: {r['reason']}" + (f" (row {r['row']} of {r['xlsx']})" if "row" in r else "")
            for r in skipped
        ]
        msg = f"{root}: {len(skipped)} entries skipped:\n" + "\n".join(lines)
        if strict:
            raise ValueError(msg)
        logger.warning(msg)
    result: dict[str, Any] = {k: list(v) for k, v in splits.items()}
    result["skipped"] = skipped
    result["meta"] = {**dict(meta), **summarise_text_sources(splits)}
    dataset, origin = meta.get("dataset", root), meta.get("text_origin", "?")
    logger.info("%s: text source: %s (%s)", dataset, result["meta"]["text_source"], origin)
    record_text_tokens(result, report_parsers)
    if output_json is not None:
        write_datalist(result, output_json, relative=relative)
    return result


def add_common_args(p: Any, texts: bool = True, split: bool = True) -> None:
    """Arguments every preparer's command line shares."""
    p.add_argument("root", help="data set root as downloaded")
    p.add_argument("output_json", help="datalist JSON to write (converted masks go to a folder beside it)")
    if split:
        p.add_argument("--val-fraction", type=float, default=0.1, help="seeded split: validation fraction")
        p.add_argument("--test-fraction", type=float, default=0.1, help="seeded split: test fraction")
        p.add_argument("--seed", type=int, default=0, help="seed of the split")
    if texts:
        p.add_argument("--texts-csv", default=None, help="CSV with 'image' and 'text' columns (overrides templates)")
        p.add_argument("--template", default=None, help=f"sentence template (default '{DEFAULT_TEMPLATE}')")
        p.add_argument(
            "--texts-source", default="unknown", choices=sorted(TEXT_SOURCES),
            help="what the --texts-csv texts are, written into each item's text_source: caption (written by a person "
            "looking at the image, not the mask), report, template (class name / image-level label), mask_derived "
            "(computed from the masks); default unknown, which text-supervised training (tifcmamba) refuses",
        )  # fmt: skip
    p.add_argument(
        "--tokenizer", action="append", default=[], metavar="NAME",
        help="also measure the texts with this tokenizer (HF id in the local cache or a folder; repeatable); the "
        "bundles' default tokenizer is always measured",
    )  # fmt: skip
    p.add_argument(
        "--text-len", action="append", type=int, default=[], metavar="N",
        help=f"also count the texts longer than N tokens in meta.text_tokens (repeatable; always: {TEXT_LENS})",
    )  # fmt: skip
    p.add_argument("--absolute", action="store_true", help="store absolute paths (default: relative to the JSON)")
    p.add_argument("--strict", action="store_true", help="fail on any bad or missing file")


def run_cli(build: Any, args: Any, **kwargs: Any) -> int:
    """Run a builder for a command line, print the counts, turn expected errors into exit code 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dl = build(args.root, args.output_json, relative=not args.absolute, strict=args.strict, **kwargs)
        extra_tok, extra_len = list(getattr(args, "tokenizer", []) or []), list(getattr(args, "text_len", []) or [])
        if extra_tok or extra_len:  # measure again with the tokenizers / lengths asked for, and write that
            parsers = [e["report_parser"] for e in dl["meta"].get("text_tokens", [])] or [None]
            record_text_tokens(dl, parsers, ["default", *extra_tok], [*TEXT_LENS, *extra_len])
            if args.output_json is not None:
                write_datalist(dl, args.output_json, relative=not args.absolute)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    longest = ", ".join(
        f"{e['max_tokens']} ({e['tokenizer']}, report_parser {e['report_parser']})"
        for e in dl.get("meta", {}).get("text_tokens", [])
    )
    counts = ", ".join(f"{k}: {len(v)}" for k, v in dl.items() if k not in ("skipped", "meta"))
    meta = dl.get("meta", {})
    sources = ", ".join(f"{k} {v}" for k, v in meta.get("text_sources", {}).items())
    print(
        f"wrote {os.path.abspath(args.output_json)} ({counts}; skipped: {len(dl['skipped'])}; "
        f"text: {meta.get('text_origin', '?')}; text_source: {sources or 'none'}; longest text in tokens: {longest or '-'})"
    )
    return 0
