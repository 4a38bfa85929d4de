# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Keyword selector of TIFCMamba (Pan, Huang & Zheng, MICCAI 2025): the keyword phrase W_T of a description.

The poster's example turns a report into ``"A red polyp left side"``: the words that say what the target looks like
and where it is. The rule set implemented here (documented so that it can be checked and tested):

1. The text is lower-cased and split into words (letters, digits, hyphens); punctuation separates clauses
   (``. , ; :`` and "with", "and" do not end a clause; only ``. ; :`` and a clause-level negation do).
2. Negation: a negation cue (``no``, ``not``, ``without``, ``absent``, ``free of``, ``negative for``) drops the words
   from the cue to the end of its sentence (``.``/``;``), so "No other lesion." contributes nothing.
3. Every remaining word found in one of the domain's vocabularies is kept, in text order and once each:
   ``size``, ``colour``, ``shape`` (appearance), ``finding`` (the noun) and ``location``. Multi-word vocabulary
   entries (e.g. "ground glass") are matched first. Spelling variants are folded ("center" -> "centre",
   "colour"/"color" are not words of any vocabulary).
4. The phrase is ``"a"`` + the attribute words (size, colour, shape in text order) + the finding noun(s) + the
   location words, e.g. ``"a small red round polyp upper left"``. A description without a finding noun gets the
   domain's default noun, so the phrase always names what to segment.

Vocabularies for three domains are built in (``polyp``, ``skin`` lesion, ``chest``); ``extra_vocabulary`` adds words.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from monai_vlseg.transforms.text import normalize_text

__all__ = [
    "KEYWORD_CATEGORIES",
    "KEYWORD_VOCABULARIES",
    "SelectKeywords",
    "SelectKeywordsd",
]

#: categories in output order; attributes (size, colour, shape) precede the noun, location follows it.
KEYWORD_CATEGORIES: tuple[str, ...] = ("size", "colour", "shape", "finding", "location")

_LOCATION = (
    "left",
    "right",
    "upper",
    "lower",
    "top",
    "bottom",
    "middle",
    "centre",
    "central",
    "side",
    "part",
    "half",
    "quadrant",
    "corner",
    "edge",
    "periphery",
    "peripheral",
    "proximal",
    "distal",
)
#: per-domain vocabularies: category -> words (multi-word entries allowed); "default" is the noun used when none is found.
KEYWORD_VOCABULARIES: dict[str, dict[str, Any]] = {
    "polyp": {
        "size": ("small", "medium", "large", "tiny", "big", "diminutive", "giant"),
        "colour": (
            "red",
            "pink",
            "pale",
            "white",
            "whitish",
            "reddish",
            "dark",
            "yellow",
            "brown",
            "purple",
        ),
        "shape": (
            "round",
            "oval",
            "lobulated",
            "flat",
            "sessile",
            "pedunculated",
            "elongated",
            "irregular",
            "polypoid",
            "smooth",
            "raised",
        ),
        "finding": ("polyp", "polyps", "adenoma", "lesion", "mass", "tumour", "tumor"),
        "location": _LOCATION,
        "default": "polyp",
    },
    "skin": {
        "size": ("small", "medium", "large", "tiny", "big"),
        "colour": (
            "brown",
            "dark",
            "black",
            "light",
            "tan",
            "red",
            "pink",
            "blue",
            "grey",
            "gray",
            "white",
            "variegated",
            "multicoloured",
        ),
        "shape": (
            "round",
            "oval",
            "irregular",
            "asymmetric",
            "symmetric",
            "elongated",
            "regular",
            "blurred",
            "sharp",
            "ill-defined",
            "well-defined",
        ),
        "finding": (
            "lesion",
            "mole",
            "nevus",
            "naevus",
            "melanoma",
            "keratosis",
            "spot",
            "patch",
        ),
        "location": _LOCATION,
        "default": "lesion",
    },
    "chest": {
        "size": (
            "small",
            "large",
            "extensive",
            "focal",
            "diffuse",
            "patchy",
            "multiple",
            "single",
            "one",
            "two",
            "three",
            "four",
        ),
        "colour": ("ground glass", "dense", "faint", "hazy"),
        "shape": ("nodular", "linear", "reticular", "bilateral", "unilateral"),
        "finding": (
            "infection",
            "infected",
            "opacity",
            "opacities",
            "consolidation",
            "pneumonia",
            "lesion",
            "nodule",
            "effusion",
            "areas",
            "area",
        ),
        "location": _LOCATION
        + ("lung", "lungs", "lobe", "zone", "base", "apex", "hilar", "basal", "apical"),
        "default": "infection",
    },
}
_SPELLING = {
    "center": "centre",
    "centered": "centre",
    "centred": "centre",
    "colored": "coloured",
    "gray": "grey",
}
_NEGATIONS = ("no", "not", "without", "absent", "free of", "negative for", "none")
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|[.;:]")


class SelectKeywords(Transform):
    """Description -> keyword phrase W_T (see the module docstring for the rules).

    Args:
        domain: ``"polyp"``, ``"skin"`` or ``"chest"`` (vocabulary set).
        extra_vocabulary: ``{category: [words]}`` added to the domain's vocabulary.
        empty: text returned for a missing/empty description (``None`` keeps it missing).
    """

    def __init__(
        self,
        domain: str = "polyp",
        extra_vocabulary: Mapping[str, Sequence[str]] | None = None,
        empty: str | None = None,
    ) -> None:
        if domain not in KEYWORD_VOCABULARIES:
            raise ValueError(
                f"unknown keyword domain {domain!r}; choose one of {sorted(KEYWORD_VOCABULARIES)}"
            )
        vocab = {c: list(KEYWORD_VOCABULARIES[domain][c]) for c in KEYWORD_CATEGORIES}
        for cat, words in (extra_vocabulary or {}).items():
            if cat not in vocab:
                raise ValueError(
                    f"extra_vocabulary category {cat!r} is not one of {KEYWORD_CATEGORIES}"
                )
            vocab[cat] += [str(w).lower() for w in words]
        self.domain, self.default, self.empty = (
            domain,
            KEYWORD_VOCABULARIES[domain]["default"],
            empty,
        )
        # phrase (tuple of words) -> category; longer phrases first so "ground glass" wins over "glass"
        self._phrases = sorted(
            ((tuple(w.split()), cat) for cat in KEYWORD_CATEGORIES for w in vocab[cat]),
            key=lambda p: -len(p[0]),
        )
        self._negations = sorted(
            (tuple(n.split()) for n in _NEGATIONS), key=len, reverse=True
        )

    def words(self, text: str) -> list[tuple[str, str]]:
        """``[(phrase, category)]`` kept by rules 1-3, in text order."""
        toks = [_SPELLING.get(t, t) for t in _WORD.findall(text.lower())]
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        i, negated = 0, False
        while i < len(toks):
            if toks[i] in ".;:":
                negated, i = False, i + 1
                continue
            neg = next(
                (n for n in self._negations if tuple(toks[i : i + len(n)]) == n), None
            )
            if neg is not None:
                negated, i = True, i + len(neg)
                continue
            hit = next(
                (p for p in self._phrases if tuple(toks[i : i + len(p[0])]) == p[0]),
                None,
            )
            if hit is None or negated:
                i += 1 if hit is None else len(hit[0])
                continue
            phrase = " ".join(hit[0])
            if phrase not in seen:
                seen.add(phrase)
                out.append((phrase, hit[1]))
            i += len(hit[0])
        return out

    def __call__(self, text: Any) -> str | None:
        text = normalize_text(text)
        if text is None:
            return self.empty
        found = self.words(text)
        attrs = [w for w, c in found if c in ("size", "colour", "shape")]
        nouns = [w for w, c in found if c == "finding"] or [self.default]
        where = [w for w, c in found if c == "location"]
        return " ".join(["a", *attrs, *nouns, *where])


class SelectKeywordsd(MapTransform):
    """Dictionary wrapper of :class:`SelectKeywords`: ``data[key]`` (description) -> ``data[output_key]`` (W_T).

    Args:
        keys: description key(s).
        output_key: keyword key(s), one per key (default ``"keyword"``).
        domain, extra_vocabulary, empty: see :class:`SelectKeywords`.
    """

    def __init__(
        self,
        keys: KeysCollection = "text",
        output_key: str | Sequence[str] = "keyword",
        domain: str = "polyp",
        extra_vocabulary: Mapping[str, Sequence[str]] | None = None,
        empty: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.select = SelectKeywords(domain, extra_vocabulary, empty)
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out in self.key_iterator(d, self.output_keys):
            d[out] = self.select(d[key])
        return d
