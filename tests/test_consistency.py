"""Text–mask consistency metrics: parsing, component analysis, the metric and its evaluator handler."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, load_decathlon_datalist
from monai.engines import SupervisedEvaluator
from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd

from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset
from monai_vlseg.engines import TextMaskConsistencyHandler
from monai_vlseg.metrics.consistency import (
    TextMaskConsistencyMetric,
    mask_laterality,
    mask_lesions,
    parse_laterality,
    parse_lesion_count,
)


@pytest.mark.parametrize(
    "text,count,side",
    [
        ("Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung.", 2, "bilateral"),
        ("Unilateral pulmonary infection, one infected area, middle right lung.", 1, "right"),
        ("Unilateral pulmonary infection, three infected areas, upper left lung, middle left lung and lower left "
         "lung.", 3, "left"),  # fmt: skip
        ("A red polyp left side", 1, "left"),
        ("with a total of two areas of consolidation", 2, None),
        ("3 nodules in both lungs", 3, "bilateral"),
        ("one medium sized polyp located in the center", 1, None),
        ("Bright spot, unilateral", None, None),  # "bright" is not "right"; "unilateral" names no side
        ("", None, None),
    ],
)
def test_parse(text, count, side):
    assert parse_lesion_count(text) == count
    assert parse_laterality(text) == side


def _disc(mask: np.ndarray, cx: int, cy: int, r: int) -> None:
    x, y = np.ogrid[: mask.shape[0], : mask.shape[1]]
    mask[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = 1


def test_components_and_sides():
    m = np.zeros((64, 64), np.uint8)  # (x, y): axis 0 runs from the image's left to its right
    _disc(m, 16, 20, 5)
    _disc(m, 16, 45, 5)
    m[60, 60] = 1  # one-pixel speck: below min_area_fraction, not a lesion
    labels, n = mask_lesions(m, min_area_fraction=0.002)
    assert n == 2 and labels.max() == 2
    # both on the image's left = the patient's right under the radiological convention
    assert mask_laterality(labels, n) == "right"
    assert mask_laterality(labels, n, left_on_image_right=False) == "left"
    _disc(m, 50, 30, 5)
    labels, n = mask_lesions(m, min_area_fraction=0.002)
    assert n == 3 and mask_laterality(labels, n) == "bilateral"
    assert mask_laterality(*mask_lesions(np.zeros((8, 8)))) == "none"


def test_metric_scores_and_nan():
    m = torch.zeros(1, 64, 64)
    m[0, 5:15, 5:15] = 1
    m[0, 5:15, 40:50] = 1  # two lesions on the image's left -> patient's right
    texts = ["two lesions in the right lung", "one lesion, left lung", "no side or count here"]
    count = TextMaskConsistencyMetric("count")
    count(torch.stack([m, m, m]), texts)
    buf = count.get_buffer().reshape(-1)
    assert buf[0] == 1 and buf[1] == 0 and math.isnan(float(buf[2]))
    assert float(count.aggregate()) == pytest.approx(0.5)
    side = TextMaskConsistencyMetric("laterality")
    side([m, m], texts[:2])
    assert side.get_buffer().reshape(-1).tolist() == [1.0, 0.0]
    two_channel = torch.cat([1 - m, m])  # softmax-style output: channel 0 is background
    side.reset()
    side([two_channel], texts[:1])
    assert float(side.aggregate()) == 1.0
    with pytest.raises(ValueError, match="kind"):
        TextMaskConsistencyMetric("size")
    with pytest.raises(ValueError, match="texts"):
        count([m, m], ["one"])


def _evaluate(tmp_path, flip: bool) -> dict:
    """Evaluator whose prediction is the ground-truth mask (optionally mirrored left-right) of the demo set."""
    datalist = generate_demo_dataset(tmp_path / ("flip" if flip else "demo"), n_train=1, n_val=1, n_test=16, size=96)
    items = [{"label": d["label"], "text": d["text"]} for d in load_decathlon_datalist(datalist, True, "test")]
    xf = Compose([LoadImaged("label"), EnsureChannelFirstd("label"), ScaleIntensityd("label")])
    loader = DataLoader(Dataset(items, xf), batch_size=4)

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.flip(x, dims=(2,)) if flip else x

    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=Net(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["label"], batch["label"]),
        postprocessing=AsDiscreted("pred", threshold=0.5),
        key_val_metric={"count": TextMaskConsistencyHandler("count", min_area_fraction=0.002)},
        additional_metrics={"side": TextMaskConsistencyHandler("laterality")},
    )
    evaluator.run()
    assert evaluator.state.metric_details["side"].shape == (16, 1)
    return evaluator.state.metrics


def test_handler_on_demo_ground_truth(tmp_path):
    # the demo masks are drawn in the zones the text names, patient's left on the image's right
    right = _evaluate(tmp_path, flip=False)
    assert right["side"] == 1.0
    assert right["count"] >= 0.75  # lesions in adjacent zones may touch and count as one
    mirrored = _evaluate(tmp_path, flip=True)
    assert mirrored["side"] < 0.7  # unilateral cases flip side; bilateral ones stay right


def test_negated_side_is_not_a_stated_side():
    assert parse_laterality("Consolidation in the right base. The left lung is clear.") == "right"
    assert parse_laterality("No opacity in the left apex; patchy opacity in the RLL and the left base.") == "bilateral"


def test_nothing_stated_aggregates_to_absent_not_zero():
    metric = TextMaskConsistencyMetric("count")
    pred = torch.zeros(1, 1, 32, 32)
    pred[0, 0, 4:8, 4:8] = 1
    metric(pred, ["Heart size is normal."])
    assert math.isnan(float(metric.aggregate()))
    metric(pred, ["One opacity."])
    assert float(metric.aggregate()) == 1.0


def test_hd95_counts_an_empty_prediction_as_a_miss():
    from monai.metrics import HausdorffDistanceMetric

    from monai_vlseg.metrics import EmptyPredictionMetric, HausdorffDistanceMissMetric

    label = torch.zeros(3, 1, 32, 32)
    label[:2, :, 5:10, 5:10] = 1
    pred = torch.zeros_like(label)
    pred[1, :, 6:11, 6:11] = 1  # image 0: empty prediction; image 1: hit; image 2: both empty
    ours = HausdorffDistanceMissMetric(include_background=True, percentile=95)
    scores = ours(pred, label)
    monai_scores = HausdorffDistanceMetric(include_background=True, percentile=95)(pred, label)
    assert float(scores[0, 0]) == pytest.approx(math.hypot(31, 31))  # the image diagonal, not NaN
    assert float(scores[1, 0]) == pytest.approx(float(monai_scores[1, 0]))
    assert math.isnan(float(scores[2, 0])) and math.isnan(float(monai_scores[0, 0]))
    assert float(ours.aggregate()) > float(HausdorffDistanceMetric(include_background=True, percentile=95)(pred, label)[1, 0])
    spaced = HausdorffDistanceMissMetric(include_background=True, spacing=(0.5, 2.0))(pred, label)
    assert float(spaced[0, 0]) == pytest.approx(math.hypot(15.5, 62.0))
    empty = EmptyPredictionMetric(include_background=True)
    empty(pred, label)
    empty(pred, label)
    assert float(empty.aggregate()) == 2.0


def test_negated_area_handler_on_the_negated_demo_split(tmp_path):
    """Predicting the named lesions covers none of the negated ones; predicting every lesion covers all of them."""
    from monai_vlseg.datalist import load_datalist
    from monai_vlseg.engines import NegatedAreaHandler

    datalist = generate_demo_dataset(tmp_path / "demo", n_train=1, n_val=1, n_test=16, size=96)
    items = load_datalist(datalist, "test_negated")
    assert any(it["distractor_zones"] for it in items)
    xf = Compose([LoadImaged(["label", "all"]), EnsureChannelFirstd(["label", "all"]), ScaleIntensityd(["label", "all"])])

    def run(key: str) -> tuple[float, torch.Tensor]:
        data = [{"label": d["label"], "all": d["label"] if key == "label" else d["negated_label"],
                 "negated_label": d["negated_label"], "text": d["text"]} for d in items]  # fmt: skip
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader(Dataset(data, xf), batch_size=4),
            network=torch.nn.Identity(),
            prepare_batch=lambda batch, device, non_blocking, **kw: (batch["all"], batch["label"]),
            postprocessing=AsDiscreted("pred", threshold=0.5),
            key_val_metric={"negated": NegatedAreaHandler()},
        )
        evaluator.run()
        return evaluator.state.metrics["negated"], evaluator.state.metric_details["negated"]

    named, details = run("label")
    assert named == 0.0 and details.shape == (16, 1)
    assert int(torch.isnan(details).sum()) == sum(not it["distractor_zones"] for it in items)  # nothing negated: NaN
    negated_only, _ = run("negated_label")
    assert negated_only == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# the side convention comes with the data set (its datalist's meta.laterality), not with the bundle

#: bundles whose evaluate.json scores laterality -> the convention of the data they are made for (the fallback)
LATERALITY_BUNDLES = {"ua_vls": "patient", "c2seg": "patient", "lcpdn": "patient", "tifcmamba": "image", "vm_unet": "patient"}


@pytest.fixture(scope="module")
def datalists(tmp_path_factory):
    """A chest X-ray and an endoscopy demo datalist (as their generators write them) and one without meta."""
    from monai_vlseg.datasets.synthetic.polyp import generate_polyp_demo

    tmp = tmp_path_factory.mktemp("conventions")
    chest = generate_demo_dataset(tmp / "chest", n_train=1, n_val=1, n_test=1, size=96)
    endoscopy = generate_polyp_demo(tmp / "endoscopy", n_train=1, n_val=1, n_test=1, size=64)
    bare = tmp / "bare.json"  # a hand-written datalist: no meta
    bare.write_text(json.dumps({"test": load_decathlon_datalist(chest, True, "test")}))
    return {"chest": chest, "endoscopy": endoscopy, "bare": str(bare), "root": tmp}


def _score_image_left_lesion(handler) -> float:
    """Run the evaluate config's laterality handler on ONE prediction, a lesion on the image's left half, whose text
    says "left"."""
    pred = torch.zeros(1, 64, 64)  # MONAI's (x, y): axis 1 here runs from the image's left to its right
    pred[0, 4:24, 20:44] = 1
    loader = DataLoader(Dataset([{"image": pred, "text": "One polyp on the left side."}]), batch_size=1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Identity(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["image"]),
        postprocessing=AsDiscreted("pred", threshold=0.5), key_val_metric={"side": handler},
    )  # fmt: skip
    evaluator.run()
    return float(evaluator.state.metrics["side"])


def _evaluate_config(bundle: str, root, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", bundle, "configs")
    parser.read_config([os.path.join(configs, f) for f in ("train.json", "evaluate.json")])
    parser.update({"bundle_root": str(root), **overrides})
    return parser


@pytest.mark.parametrize("bundle", sorted(LATERALITY_BUNDLES))
def test_each_datalist_is_scored_with_its_own_side_convention(bundle, datalists):
    """The same prediction and text score "left" the radiological way with the chest datalist (the lesion on the
    image's left is in the patient's right lung: disagreement) and the photographic way with the endoscopy datalist
    (agreement), whichever bundle's evaluate.json builds the handler; a datalist without meta gets the bundle's
    default, and --laterality overrides both."""
    expected = {"chest": ("patient", 0.0), "endoscopy": ("image", 1.0)}
    expected["bare"] = (LATERALITY_BUNDLES[bundle], 0.0 if LATERALITY_BUNDLES[bundle] == "patient" else 1.0)
    for name, (convention, score) in expected.items():
        parser = _evaluate_config(bundle, datalists["root"], datalist=datalists[name])
        assert parser.get_parsed_content("laterality") == convention, name
        handler = parser.get_parsed_content("validate#additional_metrics#val_laterality_accuracy")
        assert _score_image_left_lesion(handler) == score, name
    parser = _evaluate_config(bundle, datalists["root"], datalist=datalists["chest"], laterality="image")
    assert _score_image_left_lesion(parser.get_parsed_content("validate#additional_metrics#val_laterality_accuracy")) == 1.0
    parser = _evaluate_config(bundle, datalists["root"], datalist=datalists["chest"], laterality="radiological")
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("validate#additional_metrics#val_laterality_accuracy")
    assert "--laterality patient|image" in str(err.value) + str(err.value.__cause__)


def test_demo_generators_write_their_side_convention(datalists):
    from monai_vlseg.datalist import datalist_laterality

    assert datalist_laterality(datalists["chest"]) == "patient"
    assert datalist_laterality(datalists["endoscopy"]) == "image"
    assert datalist_laterality(datalists["bare"]) is None
