# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Report text before tokenising: the findings part of a report, identifying text removed, the chest findings read
into a canonical finding list, and a text that fits the token budget without silent truncation.

A hospital report is not a training template. It opens with a header (patient, MRN, dates), has HISTORY / TECHNIQUE
/ COMPARISON sections, words its findings freely, negates ("no opacity in the left lung", "the right lung is
clear"), and may be written in another language. :class:`PrepareReportd` turns it into what a text-guided network
was trained on, and says so in the item (``needs_review``, ``report_warnings``, ``dropped_tokens``) when it cannot:

1. :func:`findings_text` keeps the FINDINGS / IMPRESSION / CONCLUSION sections (headings recognised at a line start);
   SR content items arrive as separate texts and are passed on as they are.
2. :func:`deidentify` removes names after titles and labels, IDs, dates, phone numbers, and the DICOM patient fields
   of the study when given (PatientName, PatientID, AccessionNumber, PatientBirthDate, ...), before anything logs or
   stores the text.
3. :func:`parse_chest_findings` reads the chest findings: the six lung zones (upper / middle / lower x the patient's
   left / right) named in zonal, lobar or abbreviated terms (``"right base"``, ``"LUL"``, ``"both apices"``), with
   NegEx-style negation (``"no ..."``, ``"... is clear"``) and the stated count. :func:`chest_zone_sentence` renders
   a finding list in the QaTa-COV19 sentence the chest bundles train on, so the network is conditioned on what the
   report means, not on its wording.
4. :func:`fit_to_budget` keeps whole sentences, those that carry findings first, when the text has more tokens than
   the network reads, and counts the tokens dropped.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from monai_vlseg.files import atomic_write_bytes, file_lock
from monai_vlseg.transforms.text import normalize_text

__all__ = [
    "CHEST_ZONES",
    "CTFindings",
    "ChestFindings",
    "PrepareReportd",
    "REVIEW_FIELDS",
    "SaveReportReviewd",
    "chest_zone_sentence",
    "count_truncated",
    "deidentify",
    "findings_text",
    "fit_to_budget",
    "is_english",
    "parse_chest_findings",
    "parse_ct_findings",
    "split_sentences",
    "text_token_stats",
]

#: the six lung zones, patient's view, in the order the canonical sentence names them.
CHEST_ZONES: tuple[str, ...] = tuple(f"{lvl} {side}" for side in ("left", "right") for lvl in ("upper", "middle", "lower"))
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

# ---------------------------------------------------------------------------------------------------------------
# 1. sections

_FINDING_HEADINGS = ("findings", "finding", "impression", "impressions", "conclusion", "conclusions", "opinion",
                     "assessment", "diagnosis", "result", "results", "report", "interpretation", "summary")  # fmt: skip
_OTHER_HEADINGS = ("patient", "patient name", "name", "mrn", "medical record number", "patient id", "id", "dob",
                   "date of birth", "birth date", "age", "sex", "gender", "date", "exam date", "study date",
                   "accession", "accession number", "history", "clinical history", "clinical information",
                   "clinical details", "clinical indication", "indication", "indications", "reason for exam",
                   "technique", "comparison", "procedure", "examination", "exam", "study", "referring physician",
                   "referrer", "requested by", "ordering physician", "radiologist", "reported by", "signed",
                   "electronically signed by", "dictated by", "recommendation", "recommendations", "address",
                   "phone", "location", "ward", "institution", "hospital")  # fmt: skip
_HEADING_RE = re.compile(
    r"^\s*(?P<h>" + "|".join(re.escape(h) for h in sorted(_FINDING_HEADINGS + _OTHER_HEADINGS, key=len, reverse=True))
    + r")\s*[:\-]\s*", re.I | re.M,
)  # fmt: skip


def findings_text(report: str) -> str:
    """The findings / impression part of ``report``; the whole text when it has no such heading.

    A heading is one of the usual section names at a line start followed by ``:`` (``"FINDINGS:"``,
    ``"Impression -"``). Sections under other headings (patient, history, technique, comparison, signature, ...) are
    dropped; text before the first heading is kept only when no findings heading exists.
    """
    marks = list(_HEADING_RE.finditer(report))
    if not marks:
        return report.strip()
    parts, wanted = [], False
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(report)
        if m.group("h").lower() in _FINDING_HEADINGS:
            wanted = True
            parts.append(report[m.end() : end].strip())
    if not wanted:
        head = report[: marks[0].start()].strip()
        return head
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------------------
# 2. identifying text

_MONTHS = r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|sep(?:t(?:ember)?)?" \
          r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"  # fmt: skip
_DATE_RES = (
    re.compile(r"\b\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b"),
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\.?,?\s+\d{{2,4}}\b", re.I),
    re.compile(rf"\b(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b", re.I),
    re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"),  # DICOM DA
)
_ID_RE = re.compile(
    r"\b(?:MRN|MR#|MR\s*no\.?|ID|NHS|SSN|accession(?:\s+(?:no\.?|number))?|acc\.?|patient\s+(?:id|no\.?|number)|"
    r"case\s+(?:no\.?|number)|record\s+(?:no\.?|number)|#)\s*[:#]?\s*[A-Z0-9][A-Z0-9./-]{2,}\b",
    re.I,
)
_LONG_NUMBER_RE = re.compile(r"\b[A-Z]{0,3}\d[\d-]{4,}\b")
_PHONE_RE = re.compile(r"(?:\+\d{1,3}[\s-]?)?\(?\d{2,4}\)?[\s-]\d{3,4}[\s-]\d{3,4}\b")
_EMAIL_RE = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
_NAME_AFTER_TITLE_RE = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|Mx)\.?\s+[A-Z][\w'-]*(?:\.?\s+[A-Z][\w'-]*){0,2}\b\.?")
_NAME_AFTER_LABEL_RE = re.compile(
    r"\b(?:patient|pt|name|patient name|referring physician|referred by|requested by|reported by|signed by|"
    r"dictated by|radiologist|physician)\s*[:\-]\s*(?:(?:Dr|Mr|Mrs|Ms|Prof)\.?\s+)?(?:[A-Za-z'^-]+\.?,?[ \t]?){1,4}",
    re.I,
)
_BORN_RE = re.compile(r"\b(?:born(?:\s+on)?|dob|d\.o\.b\.?|date of birth|birth date)\s*[:\-]?", re.I)
_AGE_SEX_RE = re.compile(r"\b\d{1,3}\s*(?:-|\s)?(?:year|yr)s?(?:\s*-?\s*old)?\b", re.I)
_IDENTIFYING_FIELDS = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "PatientBirthDate",
                       "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
                       "InstitutionName", "InstitutionAddress", "StudyID", "PatientAddress",
                       "PatientTelephoneNumbers", "IssuerOfPatientID")  # fmt: skip


def _field_values(identifiers: Any) -> list[str]:
    """Strings to remove for the DICOM patient fields of a study (a pydicom Dataset or a mapping of keywords)."""
    values: list[str] = []
    for kw in _IDENTIFYING_FIELDS:
        v = identifiers.get(kw) if isinstance(identifiers, Mapping) else getattr(identifiers, kw, None)
        if v is None:
            continue
        items = list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
        for item in items:
            s = str(item).strip()
            if not s:
                continue
            if "^" in s or kw.endswith("Name"):  # PN: family^given^middle^prefix^suffix
                parts = [p for p in re.split(r"[\^=\s]+", s) if len(p) > 1]
                values += parts + [" ".join(reversed(parts[:2])), " ".join(parts[:2])]
            if re.fullmatch(r"(?:19|20)\d{6}", s):  # DA: the date in the usual written forms too
                y, m, d = s[:4], s[4:6], s[6:]
                values += [f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{y}-{m}-{d}", f"{d}-{m}-{y}"]
            values += [s, s.replace("^", " ").strip()]
    return sorted({v for v in values if len(v) > 1}, key=len, reverse=True)


def deidentify(text: str, identifiers: Any = None) -> tuple[str, int]:
    """``text`` with identifying text removed, and the number of removals.

    Removed: the values of the DICOM patient fields in ``identifiers`` (a pydicom Dataset of the study, or a mapping
    of DICOM keywords; names in any order, dates in the usual written forms), names after titles (``Dr``, ``Mrs``)
    and after labels (``Patient:``, ``Referring physician:``), IDs after labels (MRN, ID, accession, #) and long
    digit runs, dates, birth dates, ages, phone numbers and e-mail addresses. Anatomy, findings and counts stay.
    """
    n = 0

    def sub(pattern: re.Pattern | str, s: str, flags: int = 0) -> str:
        nonlocal n
        out, k = re.subn(pattern, " ", s, flags=flags)
        n += k
        return out

    if identifiers is not None:
        for value in _field_values(identifiers):
            text = sub(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text, re.I)
    for rx in (*_DATE_RES, _EMAIL_RE, _ID_RE, _PHONE_RE, _NAME_AFTER_LABEL_RE, _NAME_AFTER_TITLE_RE, _BORN_RE,
               _LONG_NUMBER_RE, _AGE_SEX_RE):  # fmt: skip
        text = sub(rx, text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    text = re.sub(r"(?m)^[ \t.,;:]+", "", text)
    return text.strip(), n


# ---------------------------------------------------------------------------------------------------------------
# 3. chest findings

_LOBES = {"rul": ["upper right"], "rml": ["middle right"], "rll": ["lower right"], "lul": ["upper left"],
          "lll": ["lower left"], "lingula": ["middle left"], "lingular": ["middle left"]}  # fmt: skip
_LEVELS = {
    "upper": "upper", "apex": "upper", "apices": "upper", "apical": "upper", "apically": "upper", "superior": "upper",
    "top": "upper", "upper-zone": "upper", "supra-hilar": "upper", "suprahilar": "upper",
    "middle": "middle", "mid": "middle", "midzone": "middle", "mid-zone": "middle", "midzones": "middle",
    "mid-zones": "middle", "perihilar": "middle", "parahilar": "middle", "hilar": "middle", "central": "middle",
    "mid-lung": "middle", "midlung": "middle",
    "lower": "lower", "base": "lower", "bases": "lower", "basal": "lower", "basally": "lower", "basilar": "lower",
    "inferior": "lower", "bottom": "lower", "costophrenic": "lower", "infrahilar": "lower", "infra-hilar": "lower",
    "retrocardiac": "lower",
}  # fmt: skip
_BOTH_LEVELS = {"bibasal": "lower", "bibasilar": "lower", "biapical": "upper"}
#: a whole side: "all left lung" (QaTa-COV19's own wording), "the entire right lung", "diffuse ... left lung"
_WHOLE_WORDS = ("all", "whole", "entire", "entirety", "throughout", "diffuse", "diffusely", "panlobar")
_BOTH_WORDS = ("both", "bilateral", "bilaterally", "bilat")
_FINDING_RE = re.compile(
    r"\b(?:opaci(?:ty|ties|fication|fications|fied)|consolidat\w*|infiltrat\w*|ground[- ]?glass|air[- ]?space|"
    r"shadow\w*|densit(?:y|ies)|lesions?|infect\w*|pneumoni\w*|patch(?:es|y)?|foc(?:us|i|al)|areas?|haz(?:e|y|iness)|"
    r"nodul\w*|mass(?:es)?|abnormalit(?:y|ies)|involvement|disease|infiltrat\w*|changes?|regions?|spots?|blotch\w*|"
    r"airspace|alveolar|inflammat\w*|polyps?|tumou?rs?|ulcer\w*|melanoma\w*|nev(?:us|i)|moles?|carcinoma\w*|"
    r"cancer\w*|cysts?|adenoma\w*|metasta\w*|fractur\w*)\b",
    re.I,
)
_NEG_PRE_RE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|resolution of|clearing of|rules? out|"
    r"ruled out|nor|neither|never)\b",
    re.I,
)
_NEG_POST_RE = re.compile(
    r"\b(?:(?:is|are|remains?|appears?|looks?)\s+(?:\w+\s+)?(?:clear|normal|unremarkable|free|spared|normally aerated|"
    r"well aerated)|(?:is|are)\s+not\s+(?:seen|present|identified|visible)|not\s+(?:seen|present|identified)|"
    r"(?:has|have)\s+resolved|clear|unremarkable|spared)\b",
    re.I,
)
_PSEUDO_NEG_RE = re.compile(r"\b(?:otherwise|elsewhere|remaining|rest of the)\b[\w\s]*$", re.I)
_COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "solitary": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                "six": 6, "several": None, "multiple": None}  # fmt: skip
_COUNT_RE = re.compile(
    r"\b(\d+|one|two|three|four|five|six|single|solitary)\b(?:\s+[\w-]+){0,3}?\s+"
    r"(?:opacit|consolidat|infiltrat|lesion|focus|foci|area|patch|densit|nodul|infected|region|spot|zone)",
    re.I,
)
_WORD_RE = re.compile(r"[a-z]+(?:-[a-z]+)*", re.I)
_SEGMENT_SPLIT_RE = re.compile(r",|;|\band\b|&|\bas well as\b|\bplus\b|\bwith\b|\balso\b|/", re.I)
_CLAUSE_SPLIT_RE = re.compile(r";|\bbut\b|\bhowever\b|\bwhereas\b|\bwhile\b|\bexcept\b|\balthough\b", re.I)


@dataclass
class ChestFindings:
    """What :func:`parse_chest_findings` read from a report.

    Attributes:
        zones: lung zones with a finding, in the order first named (see :data:`CHEST_ZONES`).
        negated: zones the report says are free of findings.
        sides_only: sides named with a finding but no zone (``"opacity in the left lung"``).
        stated_count: the count the report states (``"two opacities"``), None when it states none.
        whole_sides: sides named whole (``"all left lung"``): their three zones are in ``zones``, as one region.
        warnings: what makes the reading uncertain.
    """

    zones: list[str] = field(default_factory=list)
    negated: list[str] = field(default_factory=list)
    sides_only: list[str] = field(default_factory=list)
    stated_count: int | None = None
    whole_sides: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after ``.``, ``!``, ``?`` followed by a space or line end, and at line breaks)."""
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if p and p.strip()]


def _segment_mentions(segment: str) -> tuple[set[str], set[str], list[str]]:
    """(levels, sides, zones from lobes) named in one segment of a clause; "both" gives both sides."""
    levels: set[str] = set()
    sides: set[str] = set()
    zones: list[str] = []
    for w in _WORD_RE.findall(segment):
        for lw in dict.fromkeys([w.lower(), *w.lower().split("-")]):  # "left-sided", "mid-zone"
            if lw in _LOBES:
                zones += [z for z in _LOBES[lw] if z not in zones]
            elif lw in _BOTH_LEVELS:
                levels.add(_BOTH_LEVELS[lw])
                sides |= {"left", "right"}
            elif lw in _LEVELS:
                levels.add(_LEVELS[lw])
            elif lw in ("left", "right"):
                sides.add(lw)
            elif lw in ("lt", "rt"):
                sides.add("left" if lw == "lt" else "right")
            elif lw in _BOTH_WORDS:
                sides |= {"left", "right"}
            elif lw in _WHOLE_WORDS:
                levels |= {"upper", "middle", "lower", "whole"}
    return levels, sides, zones


def _segments(clause: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of the parts of a clause between ``,``, ``and``, ``with``, ... (one place each)."""
    out, start = [], 0
    for m in _SEGMENT_SPLIT_RE.finditer(clause):
        out.append((start, m.start(), clause[start : m.start()]))
        start = m.end()
    out.append((start, len(clause), clause[start:]))
    return out


def _clause_zones(clause: str) -> list[tuple[tuple[int, int], list[str], list[str], list[str]]]:
    """Per segment of one clause that names a place: ((start, end), zones, sides named without a zone, sides named
    whole: "all left lung" gives the three zones of the left side, as one region)."""
    segs = [((start, end), *_segment_mentions(text)) for start, end, text in _segments(clause)]
    out = []
    for i, (span, levels, sides, lobe_zones) in enumerate(segs):
        zones = list(lobe_zones)
        if levels and not sides and "whole" not in levels:  # "upper and lower left": the side comes with a neighbour
            nxt = next((s for _, lv, s, _ in segs[i + 1 :] if s and lv), set())
            prev = next((s for _, lv, s, _ in reversed(segs[:i]) if s), set())
            sides = nxt or prev
        whole = [s for s in ("left", "right") if s in sides] if "whole" in levels else []
        sides_only: list[str] = []
        if levels and sides:
            zones += [f"{lvl} {side}" for side in ("left", "right") for lvl in ("upper", "middle", "lower")
                      if side in sides and lvl in levels and f"{lvl} {side}" not in zones]  # fmt: skip
        elif sides and not lobe_zones:
            sides_only = [s for s in ("left", "right") if s in sides]
        if zones or sides_only:
            out.append((span, zones, sides_only, whole))
    return out


def _negated_spans(clause: str, spans: Sequence[tuple[int, int]]) -> Callable[[tuple[int, int]], bool]:
    """Whether the place segment ``(start, end)`` of ``clause`` (one of ``spans``) is negated, NegEx-style: a
    pre-negation ("no", "without", "free of") before its end, within the clause, or a post-negation ("... is clear",
    "... not seen") whose nearest place segment at or before it is this one ("the right lung is well expanded and
    clear")."""
    pre = [m.start() for m in _NEG_PRE_RE.finditer(clause)]
    post = {
        max((sp for sp in spans if sp[0] <= m.start()), default=None)
        for m in _NEG_POST_RE.finditer(clause)
        if not _PSEUDO_NEG_RE.search(clause[max(0, m.start() - 24) : m.start()])  # "lungs otherwise clear"
    }
    return lambda span: any(p < span[1] for p in pre) or span in post


def parse_chest_findings(text: str) -> ChestFindings:
    """Read the lung-zone findings of a chest radiograph report (see the module docstring).

    A clause (a sentence cut at ``;``, "but", "however", ...) that names zones and a finding word (opacity,
    consolidation, infiltrate, ground-glass, lesion, infection, area, ...) adds them as findings; a clause with a
    negation ("no", "without", "free of", "... is clear", "... not seen") adds them as negated, and a later positive
    mention wins over a negation. Zones are named by level and side (``"right base"``, ``"left upper zone"``,
    ``"upper and lower left lung"``, ``"both bases"``, ``"bibasal"``), by lobe (``"RLL"``, ``"left lower lobe"``,
    ``"lingula"``, ``"right middle lobe"``) or whole (``"all left lung"``, QaTa-COV19's wording; ``"the entire right
    lung"``: the side's three zones, counted as one region).
    """
    out = ChestFindings()
    counts: list[int] = []
    for sentence in split_sentences(text):
        has_finding = bool(_FINDING_RE.search(sentence))
        for clause in _CLAUSE_SPLIT_RE.split(sentence):
            places = _clause_zones(clause or "")
            if not places:
                continue
            negated = _negated_spans(clause, [span for span, _, _, _ in places])
            positive = False
            for span, zones, sides_only, whole in places:
                if negated(span):
                    every = [f"{lvl} {s}" for s in sides_only for lvl in ("upper", "middle", "lower")]
                    out.negated += [z for z in zones + every if z not in out.zones and z not in out.negated]
                elif has_finding:
                    positive = True
                    for z in zones:
                        if z in out.negated:
                            out.negated.remove(z)
                        if z not in out.zones:
                            out.zones.append(z)
                    out.sides_only += [s for s in sides_only if s not in out.sides_only]
                    out.whole_sides += [s for s in whole if s not in out.whole_sides]
            m = _COUNT_RE.search(clause) if positive else None
            if m is not None and (m.group(1).isdigit() or _COUNT_WORDS.get(m.group(1).lower()) is not None):
                word = m.group(1).lower()
                counts.append(int(word) if word.isdigit() else _COUNT_WORDS[word])
    covered = {z.split()[1] for z in out.zones}
    out.sides_only = [s for s in out.sides_only if s not in covered]
    if counts:
        out.stated_count = max(counts) if len(set(counts)) > 1 else counts[0]
    if out.sides_only:
        out.warnings.append(f"finding on the {' and '.join(out.sides_only)} side without a zone")
    out.whole_sides = [s for s in out.whole_sides if all(f"{lvl} {s}" in out.zones for lvl in ("upper", "middle", "lower"))]
    # a side named whole ("all left lung") is one region, not three zones
    regions = len(out.zones) - 2 * len(out.whole_sides)
    if out.stated_count is not None and out.zones and out.stated_count != regions:
        out.warnings.append(f"the report states {out.stated_count} finding(s) but names {regions} region(s)")
    return out


def chest_zone_sentence(zones: Sequence[str]) -> str:
    """The QaTa-COV19 sentence for ``zones`` (e.g. ``["upper left", "lower right"]``): the text the chest bundles
    train on, e.g. ``"Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."``."""
    if not zones:
        raise ValueError("at least one zone is needed.")
    bad = [z for z in zones if z not in CHEST_ZONES]
    if bad:
        raise ValueError(f"unknown zone(s) {bad}; expected some of {CHEST_ZONES}.")
    sides = {z.split()[1] for z in zones}
    n = len(zones)
    parts = [f"{z} lung" for z in zones]
    where = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    kind = "Bilateral" if len(sides) == 2 else "Unilateral"
    return f"{kind} pulmonary infection, {_NUMBER_WORDS[n]} infected area{'s' if n > 1 else ''}, {where}."


# ---------------------------------------------------------------------------------------------------------------
# 3b. abdominal CT findings

#: the patient side of an organ named without one (the left hepatic lobe crosses the midline: no side)
_CT_ORGAN_SIDE = {"spleen": "left", "splenic": "left", "gallbladder": "right", "appendix": "right"}
#: organs (and places) that lie on the side a report names: "left kidney", "right renal cortex", "right hepatic lobe"
_CT_PAIRED_RE = re.compile(
    r"\b(left|right)\s+(?:[\w-]+\s+){0,2}?(?:kidneys?|renal|adrenal|lungs?|pulmonary|ovar(?:y|ian)|breasts?|"
    r"(?:upper|middle|lower)\s+lobe|hemithorax|psoas|hepatic\s+lobe|lobe\s+of\s+the\s+liver|hemiliver|liver)\b",
    re.I,
)
_CT_LESION_RE = re.compile(
    r"\b(?:lesions?|nodul\w*|mass(?:es)?|cysts?|foc(?:us|i)|metasta\w*|tumou?rs?|hypodensit(?:y|ies)|"
    r"hyperdensit(?:y|ies)|abscess(?:es)?|hemangioma\w*|haemangioma\w*|carcinoma\w*)\b",
    re.I,
)
_CT_COUNT_RE = re.compile(
    r"\b(an?|one|single|solitary|two|three|four|five|six|several|multiple|numerous|few|\d+(?![\d.]*\s*(?:mm|cm)\b))"
    r"\s+(?:[\w.-]+\s+){0,4}?" + _CT_LESION_RE.pattern[2:],
    re.I,
)


@dataclass
class CTFindings:
    """What :func:`parse_ct_findings` read from a CT report.

    Attributes:
        findings: one ``(count, side)`` per sentence that reports a lesion: ``count`` None when the sentence states
            none ("multiple lesions", "lesions in the liver"); ``side`` "left" / "right" of the patient, or None
            when the place has no side (the left hepatic lobe crosses the midline; "the liver").
        negated: sentences that say there is no lesion ("No focal lesion in the liver or spleen.").
    """

    findings: list[tuple[int | None, str | None]] = field(default_factory=list)
    negated: int = 0

    @property
    def count(self) -> int | None:
        """Lesions the report names in all (0 when it names none), None when a finding states no count."""
        counts = [c for c, _ in self.findings]
        return None if None in counts else sum(c for c in counts if c is not None)

    @property
    def sides(self) -> set[str] | None:
        """The patient sides the report names lesions on, None when a finding's place has no side."""
        sides = [s for _, s in self.findings]
        return None if None in sides else {s for s in sides if s is not None}


def parse_ct_findings(text: str) -> CTFindings:
    """Read the focal lesions an abdominal CT report names, per sentence: how many and on which side of the patient.

    A sentence that names a lesion word (lesion, nodule, mass, cyst, metastasis, ...) is a finding unless a negation
    precedes it ("No focal lesion ..."). Its count is the number word or digit before the lesion word (``"a 14 mm
    hypodense lesion"``: 1, ``"two low-attenuation lesions"``: 2, summed over the lesion words of the sentence; a size
    in mm/cm is not a count; "multiple" or a bare plural: unknown). Its side is the patient side named with a sided
    organ or place (``"left kidney"``, ``"right hepatic lobe"``), or the side of an unpaired organ (the spleen: left);
    a place with no side (the left hepatic lobe crosses the midline) or two sides gives None.
    """
    out = CTFindings()
    for sentence in split_sentences(text):
        lesion = _CT_LESION_RE.search(sentence)
        if lesion is None:
            continue
        if _NEG_PRE_RE.search(sentence[: lesion.start()]):
            out.negated += 1
            continue
        words = [m.group(1).lower() for m in _CT_COUNT_RE.finditer(sentence)] or [""]  # "a ... and a ... lesion"
        counts = [int(w) if w.isdigit() else {"a": 1, "an": 1, **_COUNT_WORDS}.get(w) for w in words]
        count = None if None in counts else sum(counts)
        sides = {s.lower() for s in _CT_PAIRED_RE.findall(sentence)}
        if not sides:
            sides = {_CT_ORGAN_SIDE[w] for w in _WORD_RE.findall(sentence.lower()) if w in _CT_ORGAN_SIDE}
        liver_left = re.search(r"\bleft\s+(?:hepatic\s+lobe|lobe\s+of\s+the\s+liver|hemiliver|liver)", sentence, re.I)
        side = sides.pop() if len(sides) == 1 and not liver_left else None
        out.findings.append((count, side))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 4. language and budget

_ENGLISH = frozenset(
    "a an the of in on at to is are was were be been no not with without and or but there this that these those "
    "for from by as seen noted present shows show appears appear remains lung lungs left right upper lower middle "
    "mid zone zones lobe lobes base bases apex apices opacity opacities infection area areas clear normal chest "
    "heart size pleural effusion finding findings impression small large new patchy focal seen both side".split()
)


def is_english(text: str) -> bool:
    """Whether ``text`` reads as English (the language of the text towers here): mostly Latin letters, and English
    function or report words among its words. A one-word text counts when it is an English report word."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return False
    words = [w.lower() for w in _WORD_RE.findall(text)]
    hits = sum(w in _ENGLISH or w in _LEVELS or w in _LOBES or w in _BOTH_LEVELS or bool(_FINDING_RE.fullmatch(w))
               for w in words)  # fmt: skip
    return hits >= 1 and hits / len(words) >= 0.2


def fit_to_budget(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> tuple[str, int]:
    """``text`` cut to whole sentences that fit ``max_tokens``, and the number of tokens dropped (0 when it fits).

    Sentences that name a finding (see :func:`parse_chest_findings`'s finding words) are kept first, then the
    others, each in report order; a first sentence longer than the budget is kept (the tokenizer truncates it and
    its excess counts as dropped).
    """
    total = count_tokens(text)
    if total <= max_tokens:
        return text, 0
    sentences = split_sentences(text)
    ranked = sorted(range(len(sentences)), key=lambda i: (not _FINDING_RE.search(sentences[i]), i))
    keep: list[int] = []
    for i in ranked:
        if count_tokens(" ".join(sentences[j] for j in sorted(keep + [i]))) <= max_tokens:
            keep.append(i)
    if not keep:
        keep = ranked[:1]
    kept = " ".join(sentences[j] for j in sorted(keep))
    return kept, max(0, total - min(count_tokens(kept), max_tokens))


# ---------------------------------------------------------------------------------------------------------------
# the transform


class PrepareReportd(MapTransform):
    """Report text -> the text a text-guided network reads, with the doubts written into the item.

    Steps: :func:`findings_text`, :func:`deidentify` (also the DICOM fields in ``identifiers_key`` when present),
    then with ``parser="chest"`` :func:`parse_chest_findings` and :func:`chest_zone_sentence`, then
    :func:`fit_to_budget` with the tokenizer of ``tokenizer`` (when given). It writes, per item:

    - ``needs_review`` (bool): the text is not English, names no finding the model can ground, names a side without
      a zone, states a count that differs from the zones named, or lost tokens to ``max_length`` (unless every
      finding read is still in what the network reads); the mask then should not go to a PACS unreviewed.
    - ``report_warnings`` (str): the reasons, ``"; "``-joined (``""`` when none); they never quote the report.
    - ``dropped_tokens`` (int): tokens that did not fit ``max_length``.
    - ``report_zones`` (str): the zones read with ``parser="chest"`` (``"upper left; lower right"``).
    - ``report_negated`` (str): the zones the report says are clear (``"lower left"``), for
      :class:`~monai_vlseg.transforms.lesions.KeepReportedFindingsd`.

    Args:
        keys: text key(s).
        parser: ``"chest"`` to condition on the canonical finding list, ``None`` to keep the (cleaned) wording.
        tokenizer: tokenizer name or folder (as :class:`~monai_vlseg.transforms.TokenizeText`) to count tokens;
            ``None`` skips the budget step.
        max_length: the token budget (the network's ``text_len``).
        identifiers_key: item key holding DICOM patient fields (a mapping of keywords) to remove.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(
        self,
        keys: KeysCollection = "text",
        parser: str | None = "chest",
        tokenizer: str | None = None,
        max_length: int = 24,
        identifiers_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if parser not in (None, "chest"):
            raise ValueError(f"parser must be 'chest' or None, got {parser!r}.")
        self.parser, self.max_length, self.identifiers_key = parser, max_length, identifiers_key
        self._tokenize = None
        if tokenizer is not None:
            from monai_vlseg.transforms.text import TokenizeText

            self._tokenize = TokenizeText(tokenizer, max_length=max_length)

    def _count_tokens(self, text: str) -> int:
        return len(self._tokenize.tokenizer(text, add_special_tokens=True)["input_ids"])

    def token_count(self, text: Any, identifiers: Any = None) -> int | None:
        """Tokens (special tokens included) of the text this transform hands on before the budget step: what the
        network would read with an unlimited ``text_len``; ``None`` for a missing text. ``count > max_length`` is
        exactly when :meth:`prepare` drops tokens (``dropped_tokens > 0``). Needs ``tokenizer``."""
        if self._tokenize is None:
            raise ValueError("token_count needs a tokenizer (PrepareReportd(tokenizer=...)).")
        raw = normalize_text(text)
        return None if raw is None else self._count_tokens(self._body(raw, identifiers)[0])

    def _body(self, raw: str, identifiers: Any = None) -> tuple[str, list[str], list[str], list[str]]:
        """Steps 1-3 for a non-empty report: (text before the budget step, warnings, zones read, zones negated)."""
        warnings: list[str] = []
        body, _ = deidentify(findings_text(raw), identifiers)
        if not is_english(body):
            warnings.append("report is not in English (the text tower's language)")
        zones: list[str] = []
        negated: list[str] = []
        if self.parser == "chest":
            found = parse_chest_findings(body)
            warnings += found.warnings
            zones, negated = found.zones, found.negated
            if zones:
                body = chest_zone_sentence(zones)
            else:
                warnings.append("no lung zone with a finding could be read from the report")
        return body, warnings, zones, negated

    def prepare(self, text: Any, identifiers: Any = None) -> dict[str, Any]:
        """The prepared text and the review fields for one report (what :meth:`__call__` writes into an item)."""
        raw = normalize_text(text)
        out: dict[str, Any] = {
            "text": raw, "needs_review": False, "dropped_tokens": 0, "report_zones": "", "report_negated": "",
        }  # fmt: skip
        if raw is None:
            out.update(needs_review=True, report_warnings="no report text")
            return out
        body, warnings, zones, negated = self._body(raw, identifiers)
        if self.parser == "chest":
            out["report_zones"] = "; ".join(zones)
            out["report_negated"] = "; ".join(negated)
        notes: list[str] = []
        if self._tokenize is not None:
            body, dropped = fit_to_budget(body, self._count_tokens, self.max_length)
            if dropped:
                message = f"{dropped} token(s) of the report did not fit text_len={self.max_length}"
                if zones and parse_chest_findings(self._truncated(body)).zones == zones:
                    notes.append(message + " (every finding read is still in the text)")  # nothing lost: no review
                else:
                    warnings.append(message)
            out["dropped_tokens"] = dropped
        out.update(text=body, needs_review=bool(warnings), report_warnings="; ".join(warnings + notes))
        return out

    def _truncated(self, text: str) -> str:
        """``text`` as the network reads it: tokenised to ``max_length`` and decoded."""
        tok = self._tokenize.tokenizer
        ids = tok(text, truncation=True, max_length=self.max_length)["input_ids"]
        return tok.decode(ids, skip_special_tokens=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        identifiers = d.get(self.identifiers_key) if self.identifiers_key else None
        for key in self.key_iterator(d):
            prepared = self.prepare(d[key], identifiers)
            prepared["needs_review"] = bool(prepared["needs_review"] or d.get("needs_review"))  # e.g. CheckInputd's
            d[key] = prepared.pop("text") or ""
            d.update(prepared)
        return d


def _length_summary(counts: Sequence[int]) -> dict[str, Any]:
    hist = collections.Counter(counts)
    return {"texts": len(counts), "max_tokens": max(counts, default=0),
            "histogram": {str(k): hist[k] for k in sorted(hist)}}  # fmt: skip


def text_token_stats(
    texts: Iterable[Any],
    tokenizer: str | None = "default",
    parser: str | None = None,
    text_lens: Sequence[int] = (),
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """How many tokens a network reads of each text: the texts as :class:`PrepareReportd` with ``parser`` hands them
    to the tokenizer (findings, de-identified; with ``"chest"`` the canonical sentence), counted with ``tokenizer``
    (special tokens included, as ``text_len`` counts them). What a preparer writes into the datalist ``meta``
    (``text_tokens``) and what a bundle checks its ``text_len`` against at the start of a run.

    Args:
        texts: the texts (missing / empty ones are left out).
        tokenizer: tokenizer name or folder (as :class:`~monai_vlseg.transforms.TokenizeText`).
        parser: the bundle's ``report_parser``.
        text_lens: the ``text_len`` values to count truncated texts for.
        splits: the datalist split of each text (parallel to ``texts``): adds ``by_split``.

    Returns:
        ``{"tokenizer", "report_parser", "texts", "max_tokens", "histogram", "truncated"}`` (and ``"by_split"``:
        ``{split: {"texts", "max_tokens", "histogram"}}``): the number of non-empty texts, the longest token count,
        ``{count: texts}`` (string keys, for JSON) and, per ``text_lens`` value L, how many texts are longer than L,
        i.e. lose tokens at ``text_len=L`` (:func:`count_truncated` gives it for any L from the histogram).
    """
    texts = list(texts)
    prep = PrepareReportd(parser=parser, tokenizer=tokenizer or "default", max_length=512)
    counts = [prep.token_count(t) for t in texts]
    stats: dict[str, Any] = {
        "tokenizer": str(tokenizer or "default"),
        "report_parser": parser,
        **_length_summary([c for c in counts if c is not None]),
    }
    stats["truncated"] = {str(n): count_truncated(stats, n) for n in sorted({int(n) for n in text_lens})}
    if splits is not None:
        if len(splits) != len(texts):
            raise ValueError(f"splits names {len(splits)} texts, texts has {len(texts)}.")
        stats["by_split"] = {
            name: _length_summary([c for c, g in zip(counts, splits) if g == name and c is not None])
            for name in dict.fromkeys(splits)
        }
    return stats


def count_truncated(stats: Mapping[str, Any], text_len: int) -> int:
    """How many texts of :func:`text_token_stats`' ``stats`` are longer than ``text_len`` tokens."""
    return sum(int(n) for k, n in stats.get("histogram", {}).items() if int(k) > int(text_len))


#: the item fields :class:`PrepareReportd` (and :class:`~monai_vlseg.transforms.image.CheckInputd`:
#: ``input_warnings``) write and :class:`SaveReportReviewd` stores, in CSV column order.
REVIEW_FIELDS: tuple[str, ...] = (
    "needs_review", "report_warnings", "dropped_tokens", "report_zones", "report_negated", "input_warnings",
)  # fmt: skip


def flag_for_review(d: dict[Hashable, Any], reason: str) -> None:
    """Flag item ``d`` ``needs_review`` and add ``reason`` to its ``report_warnings`` (the review CSV's column)."""
    d["needs_review"] = True
    d["report_warnings"] = "; ".join(filter(None, [str(d.get("report_warnings") or ""), reason]))


class SaveReportReviewd(MapTransform):
    """Write one row per item into ``<output_dir>/<filename>``: the image and the :data:`REVIEW_FIELDS` that
    :class:`PrepareReportd` put into it (never the report text). The file is started anew by the first item a
    transform instance sees and rewritten whole (atomically) on every item, so a run leaves exactly its own rows.

    Args:
        keys: the image key (its ``filename_or_obj`` or path names the row).
        output_dir: folder of the CSV.
        filename: CSV file name.
    """

    def __init__(self, keys: KeysCollection = "image", output_dir: str = "./", filename: str = "report_review.csv") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.path = os.path.join(os.fspath(output_dir), filename)
        self._rows: list[list[Any]] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.first_key(d)
        image = d.get(key) if key != [] else None
        meta = getattr(image, "meta", None) or {}
        name = meta.get("filename_or_obj") or (image if isinstance(image, (str, os.PathLike)) else "")
        row = [os.fspath(name)] + [d.get(f, "") for f in REVIEW_FIELDS]
        row[1] = bool(row[1])
        self._rows.append(row)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(("image",) + REVIEW_FIELDS)
        writer.writerows(self._rows)
        with file_lock(self.path + ".lock"):
            atomic_write_bytes(self.path, buf.getvalue().encode("utf-8"))
        return d
