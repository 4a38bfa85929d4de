"""Report text before tokenising: sections, de-identification, the chest and CT finding parsers, language, token
budget; a 3D mask checked against its report."""

from __future__ import annotations

import itertools

import pytest

from monai_vlseg.transforms import TokenizeText
from monai_vlseg.transforms.report import (
    CHEST_ZONES,
    PrepareReportd,
    chest_zone_sentence,
    count_truncated,
    deidentify,
    findings_text,
    fit_to_budget,
    is_english,
    parse_chest_findings,
    parse_ct_findings,
    text_token_stats,
)

HOSPITAL_REPORT = """PATIENT: John Smith   MRN: 12345678   DOB: 03/04/1955
EXAM: CR chest PA, 2026-11-30   Accession: ACC-20261130-7
CLINICAL HISTORY: cough and fever for 3 days, 71-year-old man. Referring physician: Dr. Anna Miller
TECHNIQUE: single PA view.
COMPARISON: none.
FINDINGS: Patchy airspace opacity in the right lower zone. No pleural effusion. Heart size normal.
Dr. Miller was informed on 01.12.2026, phone 0171 555 1234.
IMPRESSION: Right basal pneumonia.
Electronically signed by: Dr. K. Jones, 01/12/2026 09:14"""
IDENTIFYING = ("John", "Smith", "12345678", "1955", "ACC-20261130", "Anna", "Miller", "Jones", "0171", "2026")


def test_findings_sections_are_kept_and_the_rest_dropped():
    body = findings_text(HOSPITAL_REPORT)
    assert body.startswith("Patchy airspace opacity") and "Right basal pneumonia." in body
    for gone in ("cough", "PA view", "COMPARISON", "signed", "MRN"):
        assert gone not in body
    assert findings_text("Opacity in the left apex.") == "Opacity in the left apex."  # no headings: all of it


def test_deidentify_removes_names_ids_dates_and_dicom_fields():
    text, n = deidentify(HOSPITAL_REPORT)
    for s in IDENTIFYING:
        assert s not in text, s
    assert n >= 8 and "Patchy airspace opacity in the right lower zone" in text
    fields = {"PatientName": "DOE^JANE^M", "PatientID": "PX-99812", "AccessionNumber": "A7731", "PatientBirthDate": "19490521"}
    text, _ = deidentify("Jane Doe (PX-99812, acc A7731, born 21.05.1949): opacity in the RUL; DOE^JANE^M.", fields)
    for s in ("Jane", "Doe", "DOE", "JANE", "PX-99812", "A7731", "1949"):
        assert s not in text, s
    assert "opacity in the RUL" in text


@pytest.mark.parametrize(
    "text, zones, negated, sides_only, count",
    [
        ("Patchy airspace opacity at the right base and in the left apex. No pleural effusion.",
         ["lower right", "upper left"], [], [], None),
        ("Opacity in the right base with no effusion.", ["lower right"], [], [], None),
        ("Consolidation in the RLL. The left lung is clear.", ["lower right"],
         ["upper left", "middle left", "lower left"], [], None),
        ("Right lower lobe pneumonia; no opacity in the left lower zone.", ["lower right"], ["lower left"], [], None),
        ("No opacity in the left lower zone but consolidation in the right upper lobe.", ["upper right"],
         ["lower left"], [], None),
        ("Opacities in both lower zones.", ["lower left", "lower right"], [], [], None),
        ("Bibasal consolidation.", ["lower left", "lower right"], [], [], None),
        ("Ground-glass change in the left upper and mid zones.", ["upper left", "middle left"], [], [], None),
        ("Opacification of the upper and lower left lung fields.", ["upper left", "lower left"], [], [], None),
        ("Airspace shadowing in the lingula and RUL.", ["middle left", "upper right"], [], [], None),
        ("Three foci of consolidation in the right upper zone, right base and left mid zone.",
         ["upper right", "lower right", "middle left"], [], [], 3),
        ("Opacity in the left lung.", [], [], ["left"], None),
        # QaTa-COV19's own wording for a whole side; "entire" / "diffuse" read the same way
        ("Unilateral pulmonary infection, one infected area, all left lung.",
         ["upper left", "middle left", "lower left"], [], [], 1),
        ("Bilateral pulmonary infection, two infected areas, all left lung and all right lung.",
         ["upper left", "middle left", "lower left", "upper right", "middle right", "lower right"], [], [], 2),
        ("Diffuse ground-glass opacity throughout the entire right lung; the left lung is clear.",
         ["upper right", "middle right", "lower right"], ["upper left", "middle left", "lower left"], [], None),
        ("No focal consolidation. Lungs are clear.", [], [], [], None),
    ],
)  # fmt: skip
def test_chest_parser(text, zones, negated, sides_only, count):
    found = parse_chest_findings(text)
    assert found.zones == zones
    assert found.negated == negated
    assert found.sides_only == sides_only
    assert found.stated_count == count


def test_canonical_sentence_is_a_fixed_point_of_the_parser():
    """Every training template reads back to its own zones: conditioning on the parse changes no training text."""
    for n in range(1, 5):
        for zones in itertools.combinations(CHEST_ZONES, n):
            sentence = chest_zone_sentence(list(zones))
            assert parse_chest_findings(sentence).zones == list(zones), sentence
            assert parse_chest_findings(sentence).stated_count == n


def test_count_that_differs_from_the_zones_is_flagged():
    found = parse_chest_findings("Two opacities in the right base.")
    assert found.zones == ["lower right"] and found.warnings
    # a whole side is one region: QaTa's "one infected area, all left lung" agrees with its count
    found = parse_chest_findings("Unilateral pulmonary infection, one infected area, all left lung.")
    assert found.whole_sides == ["left"] and not found.warnings
    found = parse_chest_findings("Three infected areas, all left lung.")
    assert found.warnings == ["the report states 3 finding(s) but names 1 region(s)"]


@pytest.mark.parametrize(
    "text, english",
    [
        ("Patchy opacity in the right base.", True),
        ("Bibasal consolidation.", True),
        ("left", True),
        ("Linke Lunge: Verschattung im Unterfeld.", False),
        ("Opacité du lobe inférieur droit, épanchement absent.", False),
        ("右下肺感染", False),
        ("", False),
    ],
)
def test_language(text, english):
    assert is_english(text) is english


def test_fit_to_budget_keeps_finding_sentences_and_counts_the_rest():
    tok = TokenizeText(max_length=24).tokenizer

    def count(t: str) -> int:
        return len(tok(t)["input_ids"])

    filler = " ".join(f"The mediastinal contour number {i} is within normal limits." for i in range(40))
    text = filler + " Patchy opacity in the right lower zone."
    kept, dropped = fit_to_budget(text, count, 24)
    assert "Patchy opacity in the right lower zone." in kept and count(kept) <= 24
    assert dropped == count(text) - count(kept) > 300
    assert fit_to_budget("Opacity in the left apex.", count, 24) == ("Opacity in the left apex.", 0)


def test_prepare_report_conditions_on_the_canonical_findings():
    prep = PrepareReportd(parser="chest", tokenizer="default", max_length=24)
    out = prep({"image": "a.png", "text": HOSPITAL_REPORT})
    assert out["text"] == "Unilateral pulmonary infection, one infected area, lower right lung."
    assert out["needs_review"] is False and out["report_warnings"] == "" and out["dropped_tokens"] == 0
    assert out["report_zones"] == "lower right"
    for s in IDENTIFYING:
        assert s not in str(out), s
    # a long report with the finding at the end: the same canonical text, nothing cut silently
    long = "History: " + "routine follow-up, no complaints, " * 300 + "\nFindings: ground-glass opacity in the LUL."
    assert prep({"text": long})["text"] == "Unilateral pulmonary infection, one infected area, upper left lung."


@pytest.mark.parametrize(
    "text, reason",
    [
        ("left", "no lung zone"),
        ("Opacity in the left lung.", "without a zone"),
        ("Linke Lunge: Verschattung im Unterfeld.", "not in English"),
        ("右下肺感染", "not in English"),
        ("Heart size is normal. No pleural effusion.", "no lung zone"),
        ("Two opacities in the right base.", "states 2"),
        (None, "no report text"),
    ],
)
def test_prepare_report_flags_what_it_cannot_ground(text, reason):
    out = PrepareReportd(parser="chest")({"text": text})
    assert out["needs_review"] is True and reason in out["report_warnings"]


def test_prepare_report_without_parser_keeps_the_wording_within_budget():
    prep = PrepareReportd(parser=None, tokenizer="default", max_length=16)
    report = "Findings: " + "Mild bowel gas is noted in the colon. " * 5 + "A sessile polyp at the left wall."
    out = prep({"text": report})
    assert "polyp" in out["text"] and out["dropped_tokens"] > 0 and out["needs_review"] is True
    assert "did not fit text_len=16" in out["report_warnings"]


def test_review_csv_holds_the_flags_and_never_the_report(tmp_path):
    import csv

    from monai_vlseg.transforms.report import SaveReportReviewd

    prep = PrepareReportd(parser="chest")
    save = SaveReportReviewd("image", output_dir=str(tmp_path))
    for name, text in (("a.png", HOSPITAL_REPORT), ("b.png", "Linke Lunge: Verschattung im Unterfeld.")):
        save(prep({"image": name, "text": text}))
    with open(tmp_path / "report_review.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["a.png", "b.png"]
    assert [r["needs_review"] for r in rows] == ["False", "True"]
    assert rows[0]["report_zones"] == "lower right" and "not in English" in rows[1]["report_warnings"]
    written = (tmp_path / "report_review.csv").read_text()
    for s in IDENTIFYING + ("Verschattung", "Patchy"):
        assert s not in written, s
    SaveReportReviewd("image", output_dir=str(tmp_path))(prep({"image": "c.png", "text": "Opacity in the RUL."}))
    with open(tmp_path / "report_review.csv", encoding="utf-8") as f:
        assert [r["image"] for r in csv.DictReader(f)] == ["c.png"]  # a new run starts the file anew


def test_keep_reported_findings_cuts_the_mask_to_the_named_sides_and_counts():
    import torch

    from monai_vlseg.transforms import KeepReportedFindingsd

    pred = torch.zeros(1, 64, 64)  # (channel, x, y): x = 0 is the image's left = the patient's right
    pred[0, 40:56, 5:20] = 1  # patient's left, large
    pred[0, 44:50, 40:46] = 1  # patient's left, small
    pred[0, 8:20, 30:40] = 1  # patient's right
    keep = KeepReportedFindingsd("pred")
    out = keep({"pred": pred, "report_zones": "upper left"})["pred"]
    assert out[0, 40:56, 5:20].all() and not out[0, 44:50, 40:46].any() and not out[0, 8:20, 30:40].any()
    out = keep({"pred": pred, "report_zones": "upper left; lower left; middle right"})["pred"]
    assert torch.equal(out, pred)
    # same side, the level decides, not the size: "lower left" keeps the smaller, lower component
    out = keep({"pred": pred, "report_zones": "lower left"})["pred"]
    assert out[0, 44:50, 40:46].all() and not out[0, 40:56, 5:20].any()
    three = torch.zeros(1, 64, 64)
    for y0 in (4, 26, 48):  # one component per level on the patient's left
        three[0, 40:50, y0 : y0 + 8] = 1
    three[0, 40:52, 26:36] = 1  # the middle one is the largest
    out = keep({"pred": three, "report_zones": "upper left; lower left"})["pred"]
    assert out[0, 40:50, 4:12].all() and out[0, 40:50, 48:56].all() and not out[0, 40:52, 26:36].any()
    assert torch.equal(keep({"pred": pred, "report_zones": ""})["pred"], pred)  # nothing read: unchanged
    assert torch.equal(keep({"pred": pred})["pred"], pred)


def test_keep_reported_findings_removes_a_lesion_in_a_zone_the_report_calls_clear():
    """The network missed the named upper-left lesion and found one in the left base, which the report calls clear:
    that lesion is removed and the item flagged, not stored as the finding (issue 17)."""
    import torch

    from monai_vlseg.transforms import KeepReportedFindingsd

    pred = torch.zeros(1, 64, 64)  # (channel, x, y); y = 0 is the top
    pred[0, 40:52, 42:52] = 1  # patient's left, lower
    pred[0, 8:20, 10:20] = 1  # patient's right, upper
    keep = KeepReportedFindingsd("pred")
    item = {"pred": pred, "report_zones": "upper left; upper right", "report_negated": "lower left"}
    d = keep(item)
    assert not d["pred"][0, 40:52, 42:52].any() and d["pred"][0, 8:20, 10:20].all()
    assert d["needs_review"] is True and "calls clear (left side): removed" in d["report_warnings"]
    # without the negation the only left component stays (the level is relative among a side's components)
    d = keep({"pred": pred, "report_zones": "upper left; upper right"})
    assert torch.equal(d["pred"], pred) and "needs_review" not in d
    # a component at a named level stays, whatever else the report calls clear
    d = keep({"pred": pred, "report_zones": "lower left; upper right", "report_negated": "upper left"})
    assert torch.equal(d["pred"], pred) and "needs_review" not in d
    # the parser's reading reaches the step
    prep = PrepareReportd(parser="chest")({"text": "Opacity in the left upper zone. No opacity in the left base."})
    assert prep["report_zones"] == "upper left" and prep["report_negated"] == "lower left"


def test_a_canonical_text_cut_at_its_end_loses_no_finding_and_is_not_flagged():
    prep = PrepareReportd(parser="chest", tokenizer="default", max_length=24)
    four = "Bilateral pulmonary infection, four infected areas, middle left lung, lower left lung, upper right lung and middle right lung."
    out = prep({"text": four})
    assert out["dropped_tokens"] > 0 and "every finding read is still in the text" in out["report_warnings"]
    assert out["needs_review"] is False
    short = PrepareReportd(parser="chest", tokenizer="default", max_length=12)({"text": four})
    assert short["needs_review"] is True and "did not fit text_len=12" in short["report_warnings"]


def test_token_count_is_what_the_budget_step_compares():
    """token_count: the tokens of the text PrepareReportd hands on before its budget step; above max_length exactly
    when prepare() drops tokens, and then by the number it drops (one-sentence texts)."""
    two = chest_zone_sentence(["upper left", "upper right"])
    texts = [HOSPITAL_REPORT, two, "Bilateral opacities at both bases and the left apex.", None, "  "]
    for parser, max_length in itertools.product((None, "chest"), (10, 18, 24)):
        prep = PrepareReportd(parser=parser, tokenizer="default", max_length=max_length)
        for text in texts:
            n = prep.token_count(text)
            if text is None or not text.strip():
                assert n is None
                continue
            out = prep.prepare(text)
            assert (n > max_length) == (out["dropped_tokens"] > 0), (parser, max_length, text)
            if n <= max_length:
                assert prep._count_tokens(out["text"]) == n
            elif parser == "chest":
                assert out["dropped_tokens"] == n - max_length
    with pytest.raises(ValueError, match="needs a tokenizer"):
        PrepareReportd().token_count(two)


def test_text_token_stats_counts_the_text_the_network_reads():
    tok = TokenizeText("default").tokenizer
    one, two = chest_zone_sentence(["upper left"]), chest_zone_sentence(["upper left", "upper right"])
    n1, n2 = (len(tok(t)["input_ids"]) for t in (one, two))
    assert (n1, n2) == (17, 18)
    texts = [one, two, "Opacity in the right lower lobe.", None, two]
    stats = text_token_stats(texts, parser="chest", text_lens=[10, 17, 34], splits=["a", "a", "b", "b", "c"])
    rll = len(tok(chest_zone_sentence(["lower right"]))["input_ids"])
    assert stats["tokenizer"] == "default" and stats["report_parser"] == "chest" and stats["texts"] == 4
    assert rll == n1 and stats["max_tokens"] == n2 and stats["histogram"] == {str(n1): 2, str(n2): 2}
    assert stats["truncated"] == {"10": 4, "17": 2, "34": 0}
    assert stats["by_split"]["b"]["texts"] == 1 and stats["by_split"]["c"]["max_tokens"] == n2
    assert count_truncated(stats, 16) == 4 and count_truncated(stats, n2) == 0
    raw = text_token_stats(texts, parser=None)
    assert raw["max_tokens"] == n2 and "by_split" not in raw and raw["truncated"] == {}


@pytest.mark.parametrize(
    "text, findings, negated",
    [
        ("CT ABDOMEN. FINDINGS: A 14 mm hypodense lesion in the right kidney.", [(1, "right")], 0),
        ("Two low-attenuation lesions in the left hepatic lobe, up to 21 mm.", [(2, None)], 0),  # crosses the midline
        ("Three hypodense lesions in the right lobe of the liver, the largest 22 mm.", [(3, "right")], 0),
        ("Solitary hypodense lesion in the splenic parenchyma, measuring 18 mm.", [(1, "left")], 0),
        # free wording no generator writes: a size in cm is no count, digits and a lone plural
        ("There is a 2.3 cm enhancing mass arising from the lower pole of the left kidney.", [(1, "left")], 0),
        ("Impression: 2 hypodense foci in the right renal cortex. No splenic lesion.", [(2, "right")], 1),
        ("Multiple hepatic cysts.", [(None, None)], 0),
        ("A 9 mm cyst in the right kidney and a 12 mm lesion in the left kidney.", [(2, None)], 0),
        ("No focal lesion in the liver, kidneys or spleen.", [], 1),
        ("Liver, spleen and kidneys unremarkable.", [], 0),
    ],
)
def test_ct_parser(text, findings, negated):
    found = parse_ct_findings(text)
    assert found.findings == findings and found.negated == negated


def test_ct_parser_reads_every_report_the_ct_demo_writes():
    import numpy as np

    from monai_vlseg.datasets.synthetic.ct_reports import finding_groups, write_ct_report

    places = {"liver right lobe": ("liver", "right", "right lobe"), "liver left lobe": ("liver", "right", "left lobe"),
              "kidney right": ("kidney", "right", None), "kidney left": ("kidney", "left", None),
              "spleen": ("spleen", "left", None)}  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(200):
        findings = [
            {"organ": o, "side": s, "place": p, "diameter_mm": float(rng.uniform(8, 26))}
            for g, (o, s, p) in places.items()
            for _ in range(int(rng.integers(0, 4)))
        ]
        groups = list(finding_groups(findings))
        named = [g for g in groups if rng.random() < 0.5]
        text, idx = write_ct_report(findings, named, rng)
        read = parse_ct_findings(text)
        assert read.count == len(idx), text
        sides = {findings[i]["side"] for i in idx}
        assert read.sides in (None, sides), text
        assert read.sides is not None or "liver left lobe" in named, text


def test_check_report_findings_flags_what_the_report_does_not_say_in_patient_space():
    import numpy as np
    import torch
    from monai.data import MetaTensor

    from monai_vlseg.transforms import CheckReportFindingsd

    mask = torch.zeros(1, 40, 30, 20)  # RAS, 2 mm voxels centred on x = 0: x index >= 20 is the patient's right
    mask[0, 30:36, 10:16, 8:14] = 1  # patient's right
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-39.0, -29.0, -19.0]
    check = CheckReportFindingsd("pred")
    right = "FINDINGS: A 12 mm hypodense lesion in the right kidney."
    flipped = affine.copy()
    flipped[0] = [-2.0, 0.0, 0.0, 39.0]  # the same patient stored with x running right to left
    for pred in (MetaTensor(mask, affine=affine), MetaTensor(mask.flip(1), affine=flipped)):
        assert not check({"pred": pred, "text": right}).get("needs_review")  # stored left-right flipped: the same
    two = mask.clone()
    two[0, 4:10, 10:16, 8:14] = 1  # and one on the patient's left
    out = check({"pred": MetaTensor(two, affine=affine), "text": right})
    assert out["needs_review"] and "holds 2 lesion(s), the report names 1" in out["report_warnings"]
    assert "patient's left, where the report names none" in out["report_warnings"]
    out = check({"pred": MetaTensor(mask, affine=affine), "text": "Two lesions in the left kidney, up to 9 mm."})
    assert "no lesion on the patient's left" in out["report_warnings"] and "names 2" in out["report_warnings"]
    speck = mask.clone()
    speck[0, 4, 10, 8] = 1  # 8 mm3: not a lesion
    assert not check({"pred": MetaTensor(speck, affine=affine), "text": right}).get("needs_review")
    unsure = check({"pred": MetaTensor(two, affine=affine), "text": "Multiple lesions in the liver."})
    assert not unsure.get("needs_review")  # no count, no side stated: nothing to check
    with pytest.raises(ValueError, match="MetaTensor"):
        check({"pred": two, "text": right})
