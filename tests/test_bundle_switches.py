"""Command-line switches of the bundle configs (`--shuffle_text false` arrives as the string "false", truthy) and the
data-set override files (configs/rgb.json: colour input)."""

import json
import logging
import os

import pytest
import torch
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


# ---------------------------------------------------------------------------------------------------------------
# colour data sets: configs/rgb.json (in_channels 3) in the text-guided bundles that default to grey

#: bundle -> (image size, tiny network overrides of its own tests, further overrides)
RGB_BUNDLES = {
    "ua_vls": ([64, 64], "test_bundle_ua_vls", {}),
    "c2seg": ([64, 64], "test_bundle_c2seg", {"require_pretrained_encoder": False}),
    "lcpdn": ([32, 32], "test_bundle_lcpdn", {"text_len": 12}),
}


@pytest.fixture(scope="module")
def colour_item(tmp_path_factory):
    """One colour photograph (each channel a different pattern), its mask and its text."""
    import numpy as np
    from PIL import Image

    tmp = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    rgb = np.stack([rng.integers(0, 256, (48, 40)), np.tile(np.arange(40) * 6, (48, 1)), np.full((48, 40), 30)], -1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(tmp / "frame.png")
    mask = np.zeros((48, 40), np.uint8)
    mask[10:30, 5:20] = 255
    Image.fromarray(mask).save(tmp / "frame_mask.png")
    return {"image": str(tmp / "frame.png"), "label": str(tmp / "frame_mask.png"), "text": "One small red polyp on the left."}


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("rgb", [True, False])
@pytest.mark.parametrize("bundle", sorted(RGB_BUNDLES))
def test_rgb_override_gives_the_network_three_channels(bundle, rgb, colour_item, tmp_path):
    """train.json + configs/rgb.json: the bundle's own transforms keep the three colour channels and the network (built
    with in_channels 3) is called with them through the bundle's prepare_batch; without the override the image is
    made grey (one channel) and a warning names the file and rgb.json."""
    import importlib

    from monai.data import list_data_collate
    from monai.transforms import Compose

    size, tests, extra = RGB_BUNDLES[bundle]
    parser = ConfigParser()
    names = ["train.json", "rgb.json"] if rgb else ["train.json"]
    parser.read_config([os.path.join(ROOT, "bundles", bundle, "configs", n) for n in names])
    parser.update({"bundle_root": str(tmp_path), "image_size": size, **importlib.import_module(tests).TINY_NET, **extra})
    seen = _Warnings()
    logging.getLogger("monai_vlseg").addHandler(seen)
    try:
        item = Compose(parser.get_parsed_content("train#deterministic_transforms"))(dict(colour_item))
    finally:
        logging.getLogger("monai_vlseg").removeHandler(seen)
    image = item["image"]
    assert tuple(image.shape) == ((3 if rgb else 1), *size)
    grey_warning = [m for m in seen.messages if "a colour image read as grey" in m]
    if not rgb:
        assert len(grey_warning) == 1 and colour_item["image"] in grey_warning[0] and "rgb.json" in grey_warning[0]
        return
    assert not grey_warning and not torch.allclose(image[0], image[1])  # colour, not grey repeated
    network = parser.get_parsed_content("network_def")
    inputs = []
    network.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    batch = list_data_collate([item, item])
    x, _, args, kwargs = parser.get_parsed_content("prepare_batch")(batch, torch.device("cpu"))
    with torch.no_grad():
        out = network.eval()(x, *args, **kwargs)
    assert tuple(inputs[0].shape) == (2, 3, *size) and tuple(out.shape) == (2, 1, *size)
    torch.testing.assert_close(inputs[0][0].as_subclass(torch.Tensor), image.as_subclass(torch.Tensor))


@pytest.mark.parametrize("bundle", sorted(RGB_BUNDLES))
def test_rgb_override_lets_inference_take_colour_images_unflagged(bundle, colour_item):
    """inference.json checks inputs against the channels the network reads (in_channels), not the metadata's grey:
    with rgb.json a colour photograph is not flagged as "a colour image"; without it, it is."""
    from monai.transforms import Compose

    for rgb in (False, True):
        parser = ConfigParser()
        names = ["inference.json", "rgb.json"] if rgb else ["inference.json"]
        parser.read_config([os.path.join(ROOT, "bundles", bundle, "configs", n) for n in names])
        parser.read_meta(os.path.join(ROOT, "bundles", bundle, "configs", "metadata.json"))
        steps = parser.get_parsed_content("preprocessing").transforms
        check = next(i for i, t in enumerate(steps) if type(t).__name__ == "CheckInputd")
        item = Compose(steps[: check + 1])({"image": colour_item["image"], "text": colour_item["text"]})
        flagged = "a colour image" in str(item.get("input_warnings", ""))
        assert flagged is not rgb, (bundle, rgb)
