"""Report-guided CT: the demo set's reports and masks (which lesions a report names, their sides in patient space),
ReportSegMamba (the text changes the mask, gradients reach the fusion, the report encoded once per volume gives the
same sliding-window output as encoding it for every window), and the lesion count / laterality agreement read through
the affine."""

import json
import os
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer

from monai_vlseg.datasets.synthetic.ct import synthesize_ct_case
from monai_vlseg.datasets.synthetic.ct_reports import (
    GROUP_PATTERNS,
    finding_groups,
    generate_report_ct_dataset,
    no_target_reports,
    write_ct_report,
)
from monai_vlseg.engines import TextSlidingWindowInferer
from monai_vlseg.metrics import FindingsAgreementMetric, patient_side_components
from monai_vlseg.nets.blocks import C2SegFusion
from monai_vlseg.nets.report_segmamba import ReportSegMamba, split_token_sentences
from monai_vlseg.transforms.text import TokenizeText

TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_net(**kw) -> ReportSegMamba:
    torch.manual_seed(0)
    return ReportSegMamba(feature_size=[8, 16, 16, 32], hidden_size=32, depths=[1, 1, 1, 1], num_slices=None,
                          text_config=TINY_TEXT, text_len=12, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_ct")
    path = generate_report_ct_dataset(str(root), n_train=2, n_val=1, n_test=2, size=48, variants=3, no_target=2,
                                      fov_z_mm=60.0)
    return root, json.loads(open(path).read())


def test_default_ct_demo_is_unchanged_by_the_organ_lesion_option():
    a, b = synthesize_ct_case([0, 0, 1]), synthesize_ct_case([0, 0, 1])
    assert a.findings is None and np.array_equal(a.image, b.image)
    c = synthesize_ct_case([0, 0, 1], organ_lesions=True)
    assert c.instances.max() == len(c.findings) and {f["organ"] for f in c.findings} <= {"liver", "kidney", "spleen"}


def test_report_names_some_lesions_and_the_mask_holds_exactly_those(demo):
    root, dl = demo
    findings = json.loads((root / "findings.json").read_text())
    decoys = 0
    for split, tag in (("training", "Tr"), ("test", "Ts")):
        for item in dl[split]:
            stem = os.path.basename(item["image"]).replace(".nii.gz", "")
            label = nib.load(root / item["label"])
            instances = np.asarray(nib.load(root / f"lesions{tag}" / f"{stem}.nii.gz").dataobj)
            named = sorted(int(v) for v in np.unique(instances[np.asarray(label.dataobj) > 0]))
            # the mask is whole lesions: every named lesion entirely, no other lesion's voxel
            for k in named:
                assert (np.asarray(label.dataobj)[instances == k] == 1).all()
            assert item["named_count"] == len(named) and item["decoys"] == len(findings[stem]) - len(named)
            decoys += item["decoys"]
            # the sides of the named lesions, read from the label through the affine, are the sides the item records
            sides = {s for s, _ in patient_side_components(np.asarray(label.dataobj), label.affine, min_volume_mm3=0)}
            assert sides == {s for s in item["named_sides"].split(",") if s}
            for k in named:
                f = findings[stem][k - 1]
                word = {"kidney": "kidney" if "kidney" in item["text"] else "renal", "spleen": "sple"}.get(
                    f["organ"], "lobe")
                assert f["side"] in ("left", "right") and word in item["text"], (item["text"], f)
    assert decoys > 0  # reports leave lesions out


def test_write_ct_report_names_the_groups_asked_for():
    case = synthesize_ct_case([0, 10, 5], organ_lesions=True)
    groups = finding_groups(case.findings)
    assert len(groups) >= 2
    first = next(iter(groups))
    text, idx = write_ct_report(case.findings, [first], np.random.default_rng(0))
    assert idx == groups[first] and text.startswith(("CT", "ABDOMINAL")) and "FINDINGS:" in text
    text, idx = write_ct_report(case.findings, list(groups), np.random.default_rng(0))
    assert idx == sorted(i for g in groups.values() for i in g)


def test_no_target_reports_name_groups_the_volume_lacks_and_leave_them_out_of_the_mask(demo):
    case = synthesize_ct_case([0, 10, 5], organ_lesions=True)
    groups = finding_groups(case.findings)
    missing = [g for g in GROUP_PATTERNS if g not in groups]
    assert missing
    rng = np.random.default_rng(0)
    for named, absent in no_target_reports(list(groups), 3, rng):
        assert set(absent) <= set(missing) and set(named) <= set(groups) and (absent or not named)
        text, idx = write_ct_report(case.findings, named, rng, absent)
        assert idx == sorted(i for g in named for i in groups[g])  # the absent groups add no lesion
        if not named and not absent:
            assert "No focal lesion" in text
        for g in absent:  # ... but the report names them
            assert re.search(GROUP_PATTERNS[g], text), (g, text)
    text, idx = write_ct_report(case.findings, [], rng)
    assert idx == [] and "No focal lesion" in text
    _, dl = demo  # the training split holds such reports, the validation and test splits none
    assert any(it["absent_named"] for it in dl["training"]) or any(not it["named_count"] for it in dl["training"])
    assert not any(it["absent_named"] for k in ("validation", "test") for it in dl[k])


def test_shared_fusion_block_in_2d_and_3d():
    torch.manual_seed(0)
    f2, f3 = C2SegFusion(8, 16, spatial_dims=2), C2SegFusion(8, 16, spatial_dims=3)
    f3.load_state_dict({k: v[..., None] if k == "mix.weight" else v for k, v in f2.state_dict().items()})
    x, text = torch.randn(2, 8, 4, 6), torch.randn(2, 5, 16)
    # the same math on the flattened grid: a 2D map and the same map as a one-slice volume give the same output
    torch.testing.assert_close(f3(x[..., None], text)[..., 0], f2(x, text), rtol=1e-5, atol=1e-6)


def test_report_segmamba_reads_the_text_and_trains_its_fusion():
    net = tiny_net()
    x = torch.randn(1, 1, 32, 32, 32)
    ids = torch.randint(5, 1000, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    out = net(x.expand(2, -1, -1, -1, -1), ids, mask)
    assert out.shape == (2, 2, 32, 32, 32)
    assert (out[0] - out[1]).abs().max() > 1e-4  # two reports, two outputs
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters()
               if n.startswith(("text_enc", "text_dec")) and p.requires_grad)  # fmt: skip
    assert all(p.grad is None for p in net.text_encoder.parameters())  # frozen
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 30, 32, 32), ids[:1], mask[:1])


@pytest.mark.parametrize("finding_head", [False, True])
def test_text_encoded_once_per_volume_gives_the_sliding_window_output(finding_head):
    net = tiny_net(finding_head=finding_head).eval()
    image = torch.randn(2, 1, 48, 40, 36)
    ids, mask = torch.randint(5, 1000, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    calls = []
    encode = net.encode_text

    def counting(*a, **k):
        calls.append(1)
        return encode(*a, **k)

    net.encode_text = counting
    kw = dict(roi_size=(32, 32, 32), sw_batch_size=3, overlap=0.5)
    with torch.no_grad():
        once = TextSlidingWindowInferer(**kw)(image, net, ids, mask)
        n_once = len(calls)
        per_window = torch.cat([SlidingWindowInferer(**kw)(image[i : i + 1], net, ids[i : i + 1], mask[i : i + 1])
                                for i in range(2)])  # fmt: skip
    assert n_once == 2 and len(calls) > 2 * n_once  # once per volume vs once per window batch
    torch.testing.assert_close(once, per_window, rtol=1e-5, atol=1e-5)


def test_report_split_into_sentences_at_token_level():
    tok = TokenizeText("default", 64)
    report = "CT ABDOMEN. FINDINGS: A 12.5 mm lesion in the right kidney; two lesions in the spleen. No ascites"
    ids, mask = tok(report)
    got = [tok.tokenizer.decode(s) for s in split_token_sentences(ids[mask.bool()].tolist(), tok.tokenizer)]
    assert got == ["ct abdomen.", "findings : a 12. 5 mm lesion in the right kidney ;", "two lesions in the spleen.",
                   "no ascites"]  # fmt: skip
    assert split_token_sentences(tok("...")[0][:4].tolist(), tok.tokenizer) == []  # punctuation only: no sentence


def test_finding_head_draws_the_union_of_the_sentences_masks():
    net = tiny_net(finding_head=True, finding_dim=8)
    tok = TokenizeText("default", 12)
    one, two = tok("A lesion in the spleen."), tok("A lesion in the spleen. Two in the left kidney.")
    ids, mask = torch.stack([one[0], two[0], one[0]]), torch.stack([one[1], two[1], torch.zeros_like(one[1])])
    x = torch.randn(1, 1, 32, 32, 32).expand(3, -1, -1, -1, -1)
    per_sentence = net(x, ids, mask, return_findings=True)
    assert per_sentence.shape == (3, 2, 32, 32, 32)
    assert torch.isinf(per_sentence[0, 1]).all() and torch.isinf(per_sentence[2]).all()  # padding: no mask
    out = net(x, ids, mask)
    assert out.shape == (3, 2, 32, 32, 32)
    fg = out[:, 1] - out[:, 0]  # the foreground logit of the 2-class softmax
    torch.testing.assert_close(fg[:2], per_sentence[:2].amax(1))  # the union: the most confident sentence
    assert (fg[2] < -20).all()  # a row without a report: background everywhere
    out[:2].softmax(1)[:, 1].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.finding_query.parameters())
    with pytest.raises(ValueError, match="out_channels must be 2"):
        tiny_net(finding_head=True, out_channels=3)


def test_findings_agreement_reads_sides_through_the_affine():
    from monai.data import MetaTensor

    mask = np.zeros((40, 30, 20), np.float32)
    mask[2:8, 10:16, 5:10] = 1  # low x index
    mask[30:36, 10:16, 5:10] = 1  # high x index
    mask[20, 20, 10] = 1  # one voxel: not a lesion
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    ras[:3, 3] = [-40.0, -30.0, 0.0]  # x from -40 to +38 mm: the first blob at x < 0 is the patient's left in RAS
    sides = patient_side_components(mask, ras)
    assert [s for s, _ in sides] == ["left", "right"]
    # the same voxels stored the other way round (x flipped in the array and in the affine): the same sides
    flipped = ras.copy()
    flipped[0, 0], flipped[0, 3] = -2.0, ras[0, 3] + 2.0 * 39
    assert sorted(s for s, _ in patient_side_components(mask[::-1].copy(), flipped)) == ["left", "right"]
    onehot = torch.stack([1 - torch.from_numpy(mask), torch.from_numpy(mask)])
    pred = MetaTensor(onehot, affine=torch.from_numpy(ras))
    for kind, truth, expected in (("count", (2, "left,right"), 1.0), ("count", (1, "left"), 0.0),
                                  ("laterality", (2, "left,right"), 1.0), ("laterality", (1, "left"), 0.0)):  # fmt: skip
        metric = FindingsAgreementMetric(kind)
        metric([pred], [truth])
        assert float(metric.aggregate()) == expected, (kind, truth)


def test_patient_coordinates_come_from_the_affine_and_the_body_centre():
    from monai.data import MetaTensor

    from monai_vlseg.errors import InputError
    from monai_vlseg.transforms import PatientCoordinatesd

    vol = torch.zeros(1, 10, 8, 6)
    vol[0, 2:9, 1:8, 1:6] = 0.5  # the body: bounding-box centre at index (5, 4, 3)
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    out = PatientCoordinatesd("image")({"image": MetaTensor(vol, affine=affine)})["image"]
    assert out.shape == (4, 10, 8, 6) and torch.equal(out[:1], vol)
    assert torch.allclose(out[1:, 5, 4, 3], torch.zeros(3))
    torch.testing.assert_close(out[1:, 9, 4, 0], torch.tensor([0.08, 0.0, -0.09]))  # (4, 0, -3) voxels in mm / 100
    # the same patient stored with the first axis reversed (another orientation): each voxel keeps its coordinates
    flipped = torch.diag(torch.tensor([-2.0, 2.0, 3.0, 1.0]))
    flipped[0, 3] = 18.0
    back = PatientCoordinatesd("image")({"image": MetaTensor(vol.flip(1), affine=flipped)})["image"]
    torch.testing.assert_close(back.flip(1), out)
    assert PatientCoordinatesd("image", channels=0)({"image": MetaTensor(vol)})["image"].shape == (1, 10, 8, 6)
    with pytest.raises(InputError, match="no voxel above"):
        PatientCoordinatesd("image")({"image": MetaTensor(torch.zeros(1, 4, 4, 4))})
