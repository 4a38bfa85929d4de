# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Reports in other wording for the chest demo's test images: the check that a model follows what a report means.

The training texts of the demo are QaTa-COV19 templates (:func:`monai_vlseg.transforms.report.chest_zone_sentence`).
The two extra test splits use the vocabulary in ``cxr_reworded.json`` (zone phrases such as "right base" / "LUL",
finding phrases, sentence templates, negations, filler sentences), written apart from the report parser and without
the template's words (``tests/test_data.py`` asserts it):

- ``test_reworded``: the named zones in ordinary radiology phrasing, with 0-2 filler sentences;
- ``test_negated``: the template sentence for the named zones plus negations ("No focal opacity in the left apex.",
  "The right lung is clear.") of the zones that hold an unnamed (distractor) lesion; ``negated_label`` masks those
  lesions, which must not be segmented.

Only the odd-numbered entries of each vocabulary list (the "test" half) make these reports; the even-numbered ones
(the "dev" half) are for checking the parser during development, so the split that is reported was never used to
tune it.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["VOCABULARY_FILE", "load_vocabulary", "negated_report", "reworded_report"]

#: the vocabulary of the reworded and negated test reports.
VOCABULARY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cxr_reworded.json")


@functools.lru_cache(maxsize=2)
def load_vocabulary(half: str = "test") -> dict[str, Any]:
    """The reworded-report vocabulary, each list cut to its ``"test"`` (odd entries) or ``"dev"`` (even) half, or
    ``"all"``."""
    if half not in ("test", "dev", "all"):
        raise ValueError(f"half must be 'test', 'dev' or 'all', got {half!r}.")
    with open(VOCABULARY_FILE, encoding="utf-8") as f:
        vocab = json.load(f)

    def cut(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        if isinstance(v, list) and half != "all" and len(v) > 1:
            return v[1::2] if half == "test" else v[0::2]
        return v

    return {k: (v if k == "zone_joiners" else cut(v)) for k, v in vocab.items()}


def _fill(template: str, **fields: str) -> str:
    fields.update({k.capitalize(): v[:1].upper() + v[1:] for k, v in list(fields.items())})
    out = template.format(**fields)
    return out[:1].upper() + out[1:]


def _join(parts: Sequence[str], rng: np.random.Generator, joiners: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    inner = str(rng.choice([j for j in joiners if j.strip() != "and"] or [", "]))
    return inner.join(parts[:-1]) + " and " + parts[-1]


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def reworded_report(zones: Sequence[str], rng: np.random.Generator, half: str = "test") -> str:
    """A report naming ``zones`` (patient's view, e.g. ``["upper left"]``) in the vocabulary's wording."""
    v = load_vocabulary(half)
    phrases = [_choice(rng, v["zone_phrases"][z]) for z in zones]
    if len(zones) == 1:
        sentence = _fill(_choice(rng, v["templates_one"]), finding=_choice(rng, v["finding_singular"]), zone=phrases[0])
    else:
        sentence = _fill(
            _choice(rng, v["templates_many"]),
            count=_choice(rng, v["count_words"][str(len(zones))]),
            findings=_choice(rng, v["finding_plural"]),
            zones=_join(phrases, rng, v["zone_joiners"]),
        )
    fillers = [str(s) for s in rng.permutation(v["filler_sentences"])[: int(rng.integers(0, 3))]]
    at = int(rng.integers(0, len(fillers) + 1))
    return " ".join(fillers[:at] + [sentence] + fillers[at:])


def negated_report(
    positive: str, negated_zones: Sequence[str], rng: np.random.Generator, half: str = "test"
) -> str:
    """``positive`` followed by one negation per zone of ``negated_zones``; a side whose three zones are all negated
    is negated as a whole lung ("The left lung is clear.")."""
    v = load_vocabulary(half)
    sentences = [positive]
    todo = list(negated_zones)
    for side in ("left", "right"):
        if all(f"{lvl} {side}" in todo for lvl in ("upper", "middle", "lower")):
            sentences.append(_fill(_choice(rng, v["negation_side_templates"]), side=side))
            todo = [z for z in todo if not z.endswith(side)]
    for z in todo:
        sentences.append(
            _fill(_choice(rng, v["negation_zone_templates"]), zone=_choice(rng, v["zone_phrases"][z]),
                  finding=_choice(rng, v["finding_singular"]))
        )  # fmt: skip
    return " ".join(sentences)
