"""Pixel uncertainty, the per-image score, the review flag and the heat overlay (monai_vlseg.transforms.uncertainty)."""

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_vlseg.transforms import SaveHeatOverlayd, UncertaintyMapd
from monai_vlseg.transforms.uncertainty import boundary_band, normalised_entropy, uncertainty_score


def test_normalised_entropy_binary_and_categorical():
    p = torch.tensor([[[0.0, 0.25, 0.5, 1.0]]])
    h = normalised_entropy(p)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    torch.testing.assert_close(h, torch.tensor([[[0.0, expected, 1.0, 0.0]]]))
    three = torch.tensor([[[1 / 3, 1.0, 0.5]], [[1 / 3, 0.0, 0.5]], [[1 / 3, 0.0, 0.0]]])  # (C=3, 1, 3)
    torch.testing.assert_close(normalised_entropy(three), torch.tensor([[[1.0, 0.0, math.log(2) / math.log(3)]]]))


@pytest.mark.parametrize("dims", [2, 3])
def test_boundary_band_is_a_ring_of_twice_the_width(dims):
    shape, box = (1,) + (20,) * dims, (slice(None),) + (slice(5, 15),) * dims
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[box] = True
    band = boundary_band(mask, 1)
    assert int(band.sum()) == 12**dims - 8**dims  # one pixel outside and one inside the edge
    assert not band[(slice(None),) + (slice(7, 13),) * dims].any() and not band[(slice(None),) + (0,) * dims]
    assert int(boundary_band(torch.zeros(shape, dtype=torch.bool), 2).sum()) == 0


def _prob(edge_p):
    """A 1x32x32 probability map: a confident 10x10 square (p 0.99 inside, 0.01 out) whose edge pixels hold edge_p."""
    p = torch.full((1, 32, 32), 0.01)
    p[0, 10:20, 10:20] = 0.99
    ring = boundary_band(p > 0.5, 0) | boundary_band(p > 0.5, 1) & (p > 0.5)
    p[ring] = edge_p
    return p


def test_score_ranks_a_hesitant_mask_above_a_crisp_one_and_scores_empty_predictions_by_their_near_miss():
    crisp, soft = _prob(0.99), _prob(0.6)
    s_crisp = uncertainty_score(normalised_entropy(crisp), crisp > 0.5, prob=crisp)
    s_soft = uncertainty_score(normalised_entropy(soft), soft > 0.5, prob=soft)
    assert 0.0 < s_crisp < 0.1 < s_soft
    near_miss = torch.full((1, 32, 32), 0.01)
    near_miss[0, 4:12, 4:12] = 0.4  # nothing above 0.5: an empty mask, and a region the network nearly called
    assert uncertainty_score(normalised_entropy(near_miss), near_miss > 0.5, prob=near_miss) > 0.4
    empty = torch.full((1, 32, 32), 0.001)
    assert uncertainty_score(normalised_entropy(empty), empty > 0.5, prob=empty) < 0.02
    assert uncertainty_score(normalised_entropy(empty), empty > 0.5) == 0.0  # no probabilities given
    softmax = torch.stack([1 - near_miss[0], near_miss[0] * 0.5, near_miss[0] * 0.5])  # 3 classes, fg = 1 - background
    assert uncertainty_score(normalised_entropy(softmax), torch.zeros(1, 32, 32, dtype=torch.bool), prob=softmax) > 0.4


def test_uncertainty_mapd_flags_above_the_threshold_and_keeps_the_geometry():
    soft = MetaTensor(_prob(0.6), meta={"filename_or_obj": "a.png", "affine": torch.eye(4)})
    item = {"prob": soft, "pred": (soft > 0.5).float(), "report_warnings": "earlier note"}
    d = UncertaintyMapd(review_threshold=0.1)(item)
    assert d["needs_review"] is True and d["report_warnings"].startswith("earlier note; uncertainty 0.")
    assert isinstance(d["uncertainty"], MetaTensor) and d["uncertainty"].meta["filename_or_obj"] == "a.png"
    torch.testing.assert_close(d["uncertainty"].as_tensor(), normalised_entropy(soft.as_tensor()))
    assert d["uncertainty_score"] == pytest.approx(uncertainty_score(normalised_entropy(soft), soft > 0.5, prob=soft))
    calm = UncertaintyMapd(review_threshold=0.1)({"prob": _prob(0.99), "pred": (_prob(0.99) > 0.5).float()})
    assert "needs_review" not in calm and calm["uncertainty_score"] < 0.1
    with pytest.raises(ValueError, match="differ"):
        UncertaintyMapd()({"prob": torch.rand(1, 8, 8), "pred": torch.zeros(1, 8, 9)})


def test_heat_overlay_is_written_in_the_files_orientation(tmp_path):
    image = torch.zeros(1, 40, 30)  # MONAI's (W, H) order: the PNG is 30 rows x 40 columns
    unc = torch.zeros(1, 40, 30)
    unc[0, 30:, :] = 1.0  # the image's right quarter
    pred = torch.zeros(1, 40, 30)
    pred[0, 5:15, 5:15] = 1
    d = SaveHeatOverlayd(output_dir=str(tmp_path))({"image": image, "uncertainty": unc, "pred": pred, "output_name": "x"})
    rgb = np.asarray(Image.open(d["uncertainty_overlay_path"]))
    assert rgb.shape == (30, 40, 3)
    assert (rgb[:, 32:, 0] > 200).all() and (rgb[:, :28, 0] < 60).all()  # heat on the right, none on the black left
    assert (rgb[5, 5:15] == (0, 230, 255)).all()  # the mask's outline


def test_ranking_metric_auroc_and_spearman():
    from monai_vlseg.metrics import UncertaintyRankingMetric

    scores, dice = torch.tensor([0.9, 0.7, 0.3, 0.1]), torch.tensor([0.2, 0.4, 0.8, 0.9])
    for kind, expected, flipped in (("auroc", 1.0, 0.0), ("spearman", -1.0, 1.0)):
        m = UncertaintyRankingMetric(kind)
        m(scores[:2], dice[:2])  # accumulated over iterations
        m(scores[2:], dice[2:])
        assert float(m.aggregate()) == pytest.approx(expected)
        m.reset()
        m(-scores, dice)
        assert float(m.aggregate()) == pytest.approx(flipped)
    only_good = UncertaintyRankingMetric("auroc")
    only_good(scores, torch.full((4,), 0.9))
    assert math.isnan(float(only_good.aggregate()))
    with pytest.raises(ValueError, match="kind"):
        UncertaintyRankingMetric("ece")
