"""Command-line switches of the bundle configs: `--shuffle_text false` arrives as the string "false" (truthy)."""

import json
import os

import pytest
from monai.bundle import ConfigParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _evaluate_configs_with_shuffle():
    found = []
    for bundle in sorted(os.listdir(os.path.join(ROOT, "bundles"))):
        path = os.path.join(ROOT, "bundles", bundle, "configs", "evaluate.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                if "shuffle_text" in json.load(f):
                    found.append(bundle)
    return found


BUNDLES = _evaluate_configs_with_shuffle()


def test_text_guided_bundles_have_the_switch():
    assert {"ua_vls", "c2seg", "lcpdn", "tifcmamba"} <= set(BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_reads_shuffle_text_as_a_bool(bundle):
    """Every evaluate.json reads the switch through `as_flag` (tifcmamba's did not and shuffled when told false)."""
    for value, expected in (("false", False), ("true", True), (False, False), ("True", True)):
        parser = ConfigParser()
        parser.read_config([os.path.join(ROOT, "bundles", bundle, "configs", f) for f in ("train.json", "evaluate.json")])
        parser["shuffle_text"] = value
        assert parser.get_parsed_content("shuffle") is expected
        assert "if @shuffle_text" not in json.dumps(parser.get()), f"{bundle}: a raw `if @shuffle_text` condition"


@pytest.mark.parametrize("value, expected", [("false", False), ("False", False), (False, False), ("true", True), (True, True)])
def test_tifcmamba_clip_keyword_pairs_reads_a_bool(value, expected):
    """`--clip_keyword_pairs false` must leave the keyword tokens out of the CLIP stage's batches."""
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", "tifcmamba", "configs", "train.json"))
    parser["clip_keyword_pairs"] = value
    keys = parser.get_parsed_content("clip#prepare_batch").extra_keys
    assert ("keyword_ids" in keys) is expected and {"input_ids", "attention_mask"} <= set(keys)


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
@pytest.mark.parametrize("spatial, channel", [("false", "true"), ("true", "false"), ("False", "false")])
def test_tifcmamba_fusion_switches_read_as_bools(config, spatial, channel):
    """The fusion ablation switches (`--fusion_spatial false`) reach TIFCMamba as bools, not as truthy strings."""
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "bundles", "tifcmamba", "configs", config))
    parser["fusion_spatial"], parser["fusion_channel"] = spatial, channel
    for key, value in (("fusion_spatial", spatial), ("fusion_channel", channel)):
        assert parser.get_parsed_content(f"network_def#{key}") is (value.lower() == "true")
