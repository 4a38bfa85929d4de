"""Keyword selector (TIFCMamba's W_T): the documented rule set, per-domain vocabularies, dictionary wrapper."""

import pytest

from monai_vlseg.datasets.synthetic.polyp import synthesize_polyp_case
from monai_vlseg.transforms.keywords import SelectKeywords, SelectKeywordsd


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Colonoscopy frame showing a small red round polyp in the upper left of the image.",
            "a small red round polyp upper left",
        ),
        (
            "A red, round polyp of large size is seen at the right side. No other lesion.",
            "a red round large polyp right side",
        ),  # attributes in text order; the negated sentence is dropped
        (
            "Large pale lobulated polyp, centered; no red mass.",
            "a large pale lobulated polyp centre",
        ),  # spelling
        (
            "Normal mucosa in the lower part.",
            "a polyp lower part",
        ),  # no noun: the domain default names the target
    ],
)
def test_polyp_rules(text, expected):
    assert SelectKeywords("polyp")(text) == expected


def test_skin_and_chest_vocabularies():
    assert (
        SelectKeywords("skin")("An irregular dark brown lesion on the left edge.")
        == "a irregular dark brown lesion left edge"
    )
    chest = SelectKeywords("chest")(
        "Unilateral pulmonary infection, one infected area, lower right lung."
    )
    assert chest.startswith("a unilateral one infection") and chest.endswith(
        "lower right lung"
    )
    # multi-word entries win over their parts
    assert "ground glass" in SelectKeywords("chest")(
        "Ground glass opacity in the left lung."
    )


def test_negation_is_sentence_scoped():
    sel = SelectKeywords("polyp")
    assert (
        sel("No polyp on the left. A pink oval polyp on the right side.")
        == "a pink oval polyp right side"
    )


def test_extra_vocabulary_empty_and_errors():
    sel = SelectKeywords("polyp", extra_vocabulary={"colour": ["violet"]})
    assert sel("A violet polyp.") == "a violet polyp"
    assert SelectKeywords("polyp", empty="a polyp")("  ") == "a polyp"
    assert SelectKeywords("polyp")(None) is None
    with pytest.raises(ValueError, match="unknown keyword domain"):
        SelectKeywords("liver")
    with pytest.raises(ValueError, match="category"):
        SelectKeywords("polyp", extra_vocabulary={"texture": ["smooth"]})


def test_dict_version_and_demo_descriptions_keep_every_attribute():
    t = SelectKeywordsd(keys="text", output_key="keyword", domain="polyp")
    for i in range(12):
        case = synthesize_polyp_case([7, 0, i], size=32)
        out = t({"text": case.text, "image": "x.png"})
        assert out["text"] == case.text
        kw = out["keyword"].split()
        for word in (
            case.colour,
            case.shape,
            case.size,
            "polyp",
            *case.location.split(),
        ):
            assert word in kw, (case.text, out["keyword"])
