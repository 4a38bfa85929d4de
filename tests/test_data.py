# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Tests for the datalist helpers, the LViT datalist builder and the synthetic chest-X-ray demo set."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import openpyxl
import pytest
from PIL import Image

from monai_vlseg.datasets.public import lvit as lvit_mod
from monai_vlseg.datasets.synthetic import cxr as demo_mod
from monai_vlseg.datalist import convert_paths, load_datalist, write_datalist
from monai_vlseg.datasets.synthetic.cxr import ZONES, describe_zones, ensure_demo_datalist, generate_demo_dataset, synthesize_case
from monai_vlseg.datasets.public.lvit import build_lvit_datalist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"n_train": 6, "n_val": 3, "n_test": 3, "size": 160, "seed": 3}


# ---------------------------------------------------------------- fixtures: on-disk LViT layouts


def _xlsx(path, rows, header=("Image", "Description")):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    wb.save(path)


def _png(path, value=0, size=8):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.full((size, size), value, np.uint8)
    arr[2:5, 2:5] = 255 if value == 0 else 0
    Image.fromarray(arr).save(path)


def _qata(root, split, names, text_in_folder=False, with_image=True, with_mask=True):
    """QaTa-COV19 files: img/<n>.png, labelcol/mask_<n>.png; xlsx Image = mask name."""
    for n in names:
        if with_image:
            _png(os.path.join(root, f"{split}_Folder", "img", f"{n}.png"), 90)
        if with_mask:
            _png(os.path.join(root, f"{split}_Folder", "labelcol", f"mask_{n}.png"), 0)
    xdir = os.path.join(root, f"{split}_Folder") if text_in_folder else root
    return os.path.join(xdir, f"{split}_text.xlsx")


@pytest.fixture
def qata_root(tmp_path):
    root = str(tmp_path / "QaTa-COV19")
    rows = {
        "Train": [
            ("covid_1", "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."),
            ("covid_2", "Unilateral pulmonary infection, one infected area, lower left lung."),
        ],
        "Val": [("covid_3", "Unilateral pulmonary infection, one infected area, middle right lung.")],
        "Test": [("sub-S1_ses-E1_cr", "Bilateral pulmonary infection, two infected areas, all left and right lung.")],
    }
    for split, items in rows.items():
        x = _qata(root, split, [n for n, _ in items], text_in_folder=(split == "Val"))
        _xlsx(x, [(f"mask_{n}.png", t) for n, t in items])
    return root, rows


def test_qata_layout(qata_root, tmp_path):
    root, rows = qata_root
    dl = build_lvit_datalist(root)
    assert dl["skipped"] == []
    for split, key in (("Train", "training"), ("Val", "validation"), ("Test", "test")):
        assert [(os.path.basename(i["image"]), os.path.basename(i["label"]), i["text"]) for i in dl[key]] == [
            (f"{n}.png", f"mask_{n}.png", t) for n, t in rows[split]
        ]
        for item in dl[key]:
            assert os.path.isabs(item["image"]) and os.path.isfile(item["image"]) and os.path.isfile(item["label"])
            assert f"{split}_Folder{os.sep}img" in item["image"] and f"{split}_Folder{os.sep}labelcol" in item["label"]

    # written relative to the JSON's folder by default; absolute on request; both load back identically
    out = str(tmp_path / "lists" / "qata.json")
    build_lvit_datalist(root, out)
    with open(out) as f:
        raw = json.load(f)
    assert not os.path.isabs(raw["training"][0]["image"]) and raw["training"][0]["image"].startswith("../")
    loaded = load_datalist(out, "training")
    assert [i["image"] for i in loaded] == [i["image"] for i in dl["training"]]
    out_abs = str(tmp_path / "qata_abs.json")
    build_lvit_datalist(root, out_abs, relative=False)
    with open(out_abs) as f:
        assert json.load(f)["test"][0]["label"] == dl["test"][0]["label"]
    assert [i["label"] for i in load_datalist(out_abs, "Val")] == [i["label"] for i in dl["validation"]]


def test_mosmed_layout(tmp_path):
    root = str(tmp_path / "MosMedData+")
    for split in ("Train", "Val", "Test"):
        names = [f"study_{split}_{k}.png" for k in range(2)]
        for n in names:
            _png(os.path.join(root, f"{split}_Folder", "img", n), 80)
            _png(os.path.join(root, f"{split}_Folder", "labelcol", n), 0)
        _xlsx(os.path.join(root, f"{split}_text.xlsx"), [(n, f"Lesion in {n}") for n in names])
    dl = build_lvit_datalist(root)
    assert dl["skipped"] == []
    assert len(dl["training"]) == len(dl["validation"]) == len(dl["test"]) == 2
    for item in dl["training"] + dl["test"]:
        assert os.path.basename(item["image"]) == os.path.basename(item["label"])
        assert item["text"] == f"Lesion in {os.path.basename(item['image'])}"


def test_train_val_shared_xlsx(tmp_path):
    root = str(tmp_path / "Covid19")
    _qata(root, "Train", ["a1", "a2"])
    _qata(root, "Val", ["b1"])
    _qata(root, "Test", ["c1"])
    shared = [("mask_a1.png", "t a1"), ("mask_b1.png", "t b1"), ("mask_a2.png", "t a2")]
    _xlsx(os.path.join(root, "Train_Val_text.xlsx"), shared)
    _xlsx(os.path.join(root, "Test_text.xlsx"), [("mask_c1.png", "t c1")])
    dl = build_lvit_datalist(root)
    assert dl["skipped"] == []
    assert [i["text"] for i in dl["training"]] == ["t a1", "t a2"]
    assert [i["text"] for i in dl["validation"]] == ["t b1"]
    assert os.path.dirname(os.path.dirname(dl["validation"][0]["image"])).endswith("Val_Folder")
    # a Train-only request ignores the rows held by Val_Folder (not missing files)
    only = build_lvit_datalist(root, splits=("Train",))
    assert set(only) == {"training", "skipped", "meta"} and len(only["training"]) == 2 and only["skipped"] == []


def test_problems_reported(tmp_path, caplog):
    root = str(tmp_path / "broken")
    x = _qata(root, "Train", ["ok", "nodesc", "nandesc"])
    _qata(root, "Train", ["noimg"], with_image=False)
    _qata(root, "Train", ["nomask"], with_mask=False)
    _qata(root, "Train", ["orphan"])  # on disk, no xlsx row
    _xlsx(
        x,
        [
            ("mask_ok.png", "fine"),
            ("mask_noimg.png", "text"),
            ("mask_nomask.png", "text"),
            ("mask_nodesc.png", None),
            ("mask_nandesc.png", "nan"),
            ("mask_ok.png", "fine again"),
        ],
    )
    with caplog.at_level(logging.WARNING, logger=lvit_mod.__name__):
        dl = build_lvit_datalist(root, splits=("Train",))
    assert [os.path.basename(i["image"]) for i in dl["training"]] == ["ok.png"]
    why = {r["file"]: r["reason"] for r in dl["skipped"]}
    assert "image file missing" in why["Train_Folder/labelcol/mask_noimg.png"]
    assert "noimg.png" in why["Train_Folder/labelcol/mask_noimg.png"]
    assert "mask file missing" in why["Train_Folder/img/nomask.png"]
    assert why["Train_Folder/labelcol/mask_nodesc.png"] == "empty description"
    assert why["Train_Folder/labelcol/mask_nandesc.png"] == "empty description"
    assert why["Train_Folder/img/orphan.png"] == "no row in Train_text.xlsx"
    assert why["Train_Folder/labelcol/mask_orphan.png"] == "no row in Train_text.xlsx"
    assert any(r["reason"] == "duplicate row" and r["row"] == 7 for r in dl["skipped"])
    assert all("row" in r for r in dl["skipped"] if "orphan" not in r["file"])
    for name in ("mask_noimg.png", "nomask.png", "mask_nodesc.png", "mask_nandesc.png", "orphan.png"):
        assert name in caplog.text
    with pytest.raises(ValueError, match="mask_noimg.png"):
        build_lvit_datalist(root, splits=("Train",), strict=True)
    # missing split folders are reported, not fatal (unless strict)
    dl = build_lvit_datalist(root)
    assert {"split": "Val", "file": "Val_Folder", "reason": "split folder missing"} in dl["skipped"]
    with pytest.raises(FileNotFoundError):
        build_lvit_datalist(root, splits=("Test",))


def test_lvit_cli(qata_root, tmp_path, capsys):
    root, _ = qata_root
    out = str(tmp_path / "cli.json")
    assert lvit_mod.main([root, out]) == 0
    assert "training: 2" in capsys.readouterr().out
    assert len(load_datalist(out, "test")) == 1
    assert lvit_mod.main([str(tmp_path / "nope"), out]) == 1


def test_datalist_helpers(tmp_path):
    img = str(tmp_path / "data" / "a.png")
    dl = {"training": [{"image": img, "label": [img, img], "text": "x"}], "name": "n"}
    rel = convert_paths(dl, tmp_path / "out")
    assert rel["training"][0]["image"] == "../data/a.png" and rel["training"][0]["label"] == ["../data/a.png"] * 2
    assert rel["name"] == "n" and dl["training"][0]["image"] == img  # input untouched
    back = convert_paths(rel, tmp_path / "out", relative=False)
    assert back == dl
    path = write_datalist(dl, tmp_path / "out" / "d.json")
    assert load_datalist(path)[0]["image"] == img
    # fields other than paths come back as written, even when a file of that name sits beside the datalist
    (tmp_path / "out" / "left").write_text("")
    path = write_datalist({"test": [{"image": img, "named_sides": "", "text": "left", "named_count": 0}]}, path)
    item = load_datalist(path, "test")[0]
    assert (item["named_sides"], item["text"], item["named_count"]) == ("", "left", 0)


# ---------------------------------------------------------------- synthetic demo set


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo") / "set")
    generate_demo_dataset(root, **SMALL)
    return root


def test_demo_records_its_text_lengths(demo_dir):
    """meta.text_tokens of the chest demo covers every split, the reworded and negated test reports included: as
    written and as the chest bundles read them (the canonical sentence, never longer than the six-zone one)."""
    from monai_vlseg.transforms import TokenizeText

    with open(os.path.join(demo_dir, "datalist.json")) as f:
        dl = json.load(f)
    raw, chest = dl["meta"]["text_tokens"]
    assert (raw["report_parser"], chest["report_parser"]) == (None, "chest")
    splits = {"training", "validation", "test", "test_reworded", "test_negated"}
    assert set(raw["by_split"]) == set(chest["by_split"]) == splits
    tok = TokenizeText("default").tokenizer
    assert raw["max_tokens"] == max(len(tok(i["text"])["input_ids"]) for k in splits for i in dl[k])
    assert chest["max_tokens"] <= 34 and chest["truncated"]["34"] == 0


def _dilate(m, iterations=1):
    """Binary dilation (4-neighbourhood), numpy only."""
    m = m.copy()
    for _ in range(iterations):
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return m


def _box(shape, box):
    out = np.zeros(shape, bool)
    r0, c0, r1, c1 = box
    out[r0:r1, c0:c1] = True
    return out


def _tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def test_demo_layout_and_determinism(demo_dir, tmp_path):
    files = _tree(demo_dir)
    assert {"Train_text.xlsx", "Val_text.xlsx", "Test_text.xlsx", "datalist.json"} <= set(files)
    assert sum(k.startswith(os.path.join("Train_Folder", "img")) for k in files) == SMALL["n_train"]
    other = str(tmp_path / "again")
    generate_demo_dataset(other, **SMALL)
    assert _tree(other) == files  # byte-identical, xlsx included
    with pytest.raises(FileExistsError):
        generate_demo_dataset(other, **SMALL)
    generate_demo_dataset(other, **{**SMALL, "n_train": 2}, overwrite=True)
    assert len(load_datalist(os.path.join(other, "datalist.json"))) == 2
    assert not os.path.exists(os.path.join(other, "Train_Folder", "img", "cxr_train_0005.png"))

    # QaTa on-disk format: Image column = mask name, image = same name without "mask_"
    wb = openpyxl.load_workbook(os.path.join(demo_dir, "Train_text.xlsx"))
    rows = list(wb.active.iter_rows(values_only=True))
    assert rows[0] == ("Image", "Description") and len(rows) == SMALL["n_train"] + 1
    for name, text in rows[1:]:
        assert name.startswith("mask_")
        assert os.path.isfile(os.path.join(demo_dir, "Train_Folder", "img", name[len("mask_") :]))
        assert os.path.isfile(os.path.join(demo_dir, "Train_Folder", "labelcol", name))
        assert text.endswith("lung.")
    # the datalist is exactly what the LViT builder makes of the layout, plus zone metadata
    with open(os.path.join(demo_dir, "datalist.json")) as f:
        raw = json.load(f)
    built = build_lvit_datalist(demo_dir)
    assert built["skipped"] == [] and raw["skipped"] == []
    for key in ("training", "validation", "test"):
        items = load_datalist(os.path.join(demo_dir, "datalist.json"), key)
        assert [(i["image"], i["label"], i["text"]) for i in items] == [
            (i["image"], i["label"], i["text"]) for i in built[key]
        ]
    # the reports are generated from the lesions that draw the masks: marked so, in every section and the meta
    assert built["meta"]["text_source"] == "report"  # what the LViT builder says of a real LViT layout
    marks = {it["text_source"] for k, v in raw.items() if isinstance(v, list) and k != "skipped" for it in v}
    assert marks == {"synthetic"} and raw["meta"]["text_source"] == "synthetic"
    assert sum(raw["meta"]["text_sources"].values()) == sum(
        len(v) for k, v in raw.items() if isinstance(v, list) and k != "skipped"
    )  # fmt: skip


def test_demo_masks_match_text(demo_dir):
    size = SMALL["size"]
    splits = (("training", 0), ("validation", 1), ("test", 2))
    path = os.path.join(demo_dir, "datalist.json")
    for key, si in splits:
        for i, item in enumerate(load_datalist(path, key)):
            img = np.asarray(Image.open(item["image"]))
            mask = np.asarray(Image.open(item["label"]))
            assert img.dtype == np.uint8 and img.shape == (size, size) and mask.shape == (size, size)
            assert set(np.unique(mask)) == {0, 255}
            assert img.std() > 20  # not blank
            # the text names exactly the metadata zones
            zones = item["zones"]
            named = re.findall(r"(upper|middle|lower) (left|right) lung", item["text"])
            assert [" ".join(z) for z in named] == zones and zones
            assert item["text"].startswith("Bilateral" if len({z.split()[1] for z in zones}) == 2 else "Unilateral")
            assert not set(zones) & set(item["distractor_zones"])
            assert 1 <= len(zones) + len(item["distractor_zones"]) <= 4
            # same case as the generator function (ties the PNGs to the lesion metadata)
            case = synthesize_case([SMALL["seed"], si, i], size=size)
            assert np.array_equal(case.image, img) and np.array_equal(case.mask, mask)
            boxes = item["zone_boxes"]
            assert set(boxes) == set(ZONES)

            def inside(m, z):
                r0, c0, r1, c1 = boxes[z]
                return m[r0:r1, c0:c1].any()

            fg = mask > 0
            for z in zones:
                assert inside(fg, z), (item["image"], z)
            for z in item["distractor_zones"]:
                assert inside(case.lesion_mask, z) and not inside(fg, z), (item["image"], z)
            allowed = np.zeros_like(fg)
            for z in zones:
                allowed |= _box(fg.shape, boxes[z])
            assert not (fg & ~allowed).any()  # every mask component lies in a named zone
            assert (fg <= case.lesion_mask).all()


def test_demo_statistics():
    """About half the cases have unnamed distractor lesions, equally visible as the named ones."""
    n_distr, contrast = 0, {True: [], False: []}
    for i in range(40):
        case = synthesize_case([11, 0, i], size=160)
        n_distr += bool(case.distractor_zones)
        img = case.image.astype(float)
        for z in case.zones + case.distractor_zones:  # one lesion per zone
            comp = case.lesion_mask & _box(img.shape, case.zone_boxes[z])
            ring = _dilate(comp, 6) & ~_dilate(case.lesion_mask, 2) & case.lung_mask
            if ring.sum() < 10:
                continue
            c = img[comp].mean() - img[ring].mean()
            assert c > 8, (i, z, c)
            assert bool(case.mask[comp].any()) == (z in case.zones)
            contrast[z in case.zones].append(c)
    assert 12 <= n_distr <= 28
    assert abs(np.median(contrast[True]) - np.median(contrast[False])) < 15
    assert describe_zones(["upper left", "lower right"]) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )
    assert describe_zones(["middle right"]) == "Unilateral pulmonary infection, one infected area, middle right lung."
    assert describe_zones(["upper left", "middle left", "lower left"]).endswith(
        "three infected areas, upper left lung, middle left lung and lower left lung."
    )
    # radiological convention: patient's LEFT lung (and the heart) on the IMAGE RIGHT
    case = synthesize_case([0, 0, 0], size=160)
    assert case.zone_boxes["upper left"][1] > case.zone_boxes["upper right"][3]


def test_ensure_demo_datalist_idempotent_and_monai(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    d = str(tmp_path / "bundle" / "data" / "demo")
    kw = {"n_train": 3, "n_val": 1, "n_test": 1, "size": 96}
    p = ensure_demo_datalist(d, **kw)
    assert p == os.path.join(d, "datalist.json")
    stamp = os.stat(p).st_mtime_ns
    assert ensure_demo_datalist(d, **kw) == p and os.stat(p).st_mtime_ns == stamp
    assert sorted(os.listdir(os.path.dirname(d))) == [".demo.lock", "demo"]  # no temporary leftovers
    items = load_decathlon_datalist(p, is_segmentation=True, data_list_key="training", base_dir=d)
    assert len(items) == 3 and all(os.path.isfile(i["image"]) for i in items)
    data = LoadImaged(keys=["image", "label"], image_only=True)(items[0])
    assert tuple(data["image"].shape) == (96, 96) and set(np.unique(np.asarray(data["label"]))) <= {0, 255}
    assert np.asarray(data["label"]).max() == 255
    assert "zones" in data and "text" in data

    # an existing folder holding other files is completed, not replaced
    e = tmp_path / "existing"
    e.mkdir()
    (e / "keep.txt").write_text("x")
    p2 = ensure_demo_datalist(str(e), **kw)
    assert (e / "keep.txt").exists() and len(load_datalist(p2, "test")) == 1


def test_ensure_demo_datalist_interrupted(tmp_path, monkeypatch):
    def boom(root, **kw):
        os.makedirs(os.path.join(root, "Train_Folder", "img"))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_mod, "generate_demo_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_datalist(str(tmp_path / "demo"))
    assert os.listdir(tmp_path) == [".demo.lock"]  # no half data set, no temporary folder


def test_ensure_demo_datalist_concurrent(tmp_path):
    d = str(tmp_path / "demo")
    code = textwrap.dedent(
        f"""
        import sys
        from monai_vlseg.datasets.synthetic.cxr import ensure_demo_datalist
        print(ensure_demo_datalist({d!r}, n_train=4, n_val=2, n_test=2, size=96))
        """
    )
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
        assert out.decode().strip() == os.path.join(d, "datalist.json")
    assert sorted(os.listdir(tmp_path)) == [".demo.lock", "demo"]
    assert len(load_datalist(os.path.join(d, "datalist.json"), "training")) == 4
    ref = str(tmp_path / "ref")
    generate_demo_dataset(ref, n_train=4, n_val=2, n_test=2, size=96)
    assert _tree(ref) == _tree(d)


def test_demo_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert demo_mod.main([out, "--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "96"]) == 0
    assert "training: 2" in capsys.readouterr().out
    assert demo_mod.main([out, "--n-train", "2"]) == 1


def test_other_wording_splits(demo_dir):
    """test_reworded / test_negated: the test images with reports the training texts cannot produce."""
    import itertools
    import re

    from monai_vlseg.datasets.synthetic.cxr_reports import load_vocabulary
    from monai_vlseg.transforms.report import parse_chest_findings

    path = os.path.join(demo_dir, "datalist.json")
    test = load_datalist(path, "test")
    reworded = load_datalist(path, "test_reworded")
    negated = load_datalist(path, "test_negated")
    assert [i["image"] for i in reworded] == [i["image"] for i in negated] == [i["image"] for i in test]
    assert [i["label"] for i in reworded] == [i["label"] for i in test]
    # every text the training set can hold (the template over every set of zones); there is no augmentation bank
    templates = {describe_zones(list(z)) for n in range(1, 5) for z in itertools.combinations(ZONES, n)}
    template_phrases = re.compile(r"pulmonary infection|infected areas?|\b(?:upper|middle|lower) (?:left|right)\b", re.I)
    vocab = load_vocabulary("all")
    words = json.dumps({k: v for k, v in vocab.items() if k != "zone_phrases"}) + json.dumps(
        list(vocab["zone_phrases"].values())
    )
    assert not template_phrases.search(words), "the reworded vocabulary reuses the training template's wording"
    for item in reworded:
        assert item["text"] not in templates and not template_phrases.search(item["text"])
        assert sorted(parse_chest_findings(item["text"]).zones) == sorted(item["zones"])
    for item, plain in zip(negated, test):
        assert item["text"].startswith(plain["text"]) and len(item["text"]) > len(plain["text"])
        found = parse_chest_findings(item["text"])
        assert sorted(found.zones) == sorted(item["zones"]) and set(item["negated_zones"]) <= set(found.negated)
        neg = np.asarray(Image.open(item["negated_label"])) > 0
        pos = np.asarray(Image.open(item["label"])) > 0
        assert not (neg & pos).any()
        assert neg.any() == bool(item["distractor_zones"])  # the negated lesions are the unnamed ones


def test_polyp_demo_marks_its_descriptions_as_synthetic(tmp_path):
    """The polyp demo's descriptions are written from the scene that draws the mask: each item and the meta say so,
    and the datalist's counts match its items."""
    from monai_vlseg.datasets.synthetic.polyp import generate_polyp_demo

    path = generate_polyp_demo(str(tmp_path / "polyp"), n_train=3, n_val=1, n_test=2, size=32, seed=0)
    with open(path) as f:
        raw = json.load(f)
    assert all(it["text_source"] == "synthetic" for k in ("training", "validation", "test") for it in raw[k])
    assert raw["meta"]["text_source"] == "synthetic" and raw["meta"]["text_sources"] == {"synthetic": 6}
    assert "draw the mask" in raw["meta"]["text_origin"]
    assert load_datalist(path, "training")[0]["text_source"] == "synthetic"  # kept through MONAI's loader


def test_polyp_description_alone_places_the_polyp(tmp_path):
    """What makes the demo's descriptions mask-derived: size class and 3 x 3 cell read back from the text give a disc
    that overlaps the mask far above chance (scripts/tifc_text_prior.py scores it as evaluate.json scores a model)."""
    import importlib.util

    from monai_vlseg.datasets.synthetic.polyp import (
        described_disc, generate_polyp_demo, location_phrase, read_description, synthesize_polyp_case,
    )  # fmt: skip

    for i in range(12):
        case = synthesize_polyp_case([0, 2, i], size=64)
        size, row, col = read_description(case.text)
        assert size == case.size and location_phrase(row, col) == case.location
        disc, mask = described_disc(case.text, 64, 64), case.mask > 0
        assert 2 * (disc & mask).sum() / (disc.sum() + mask.sum()) > 0.2
    with pytest.raises(ValueError, match="no polyp size"):
        read_description("a polyp somewhere")
    path = generate_polyp_demo(str(tmp_path / "polyp"), n_train=1, n_val=1, n_test=8, size=64, seed=0)
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "tifc_text_prior.py")
    spec = importlib.util.spec_from_file_location("tifc_text_prior", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--datalist", path, "--json", str(tmp_path / "p.json")])
    assert out["images"] == 8 and out["mean_dice"] > 0.5 and out["mean_iou"] < out["mean_dice"]
    assert json.loads((tmp_path / "p.json").read_text())["mean_dice"] == out["mean_dice"]


def test_text_source_helpers():
    """An item's own mark wins; a vocabulary word in ``meta.text_source`` marks the items without one; anything else
    leaves them unmarked."""
    from monai_vlseg.datalist import MASK_DERIVED_SOURCES, TEXT_SOURCES, count_text_sources, summarise_text_sources

    assert MASK_DERIVED_SOURCES <= set(TEXT_SOURCES) and {"caption", "report", "template"} <= set(TEXT_SOURCES)
    dl = {"training": [{"image": "a", "text": "x", "text_source": "caption"}, {"image": "b", "text": "y"},
                       {"image": "c", "text": "  "}],
          "test": [{"image": "d", "text": "z", "text_source": "mask_derived"}], "skipped": [{"file": "e"}]}  # fmt: skip
    assert count_text_sources(dl) == {"caption": 1, "mask_derived": 1, "unmarked": 1}
    assert count_text_sources({**dl, "meta": {"text_source": "report"}}, ["training"]) == {"caption": 1, "report": 1}
    assert count_text_sources({**dl, "meta": {"text_source": "LViT xlsx"}}, ["training"]) == {"caption": 1, "unmarked": 1}
    assert summarise_text_sources(dl)["text_source"] == "mixed"
    assert summarise_text_sources({"training": dl["test"]}) == {"text_source": "mask_derived", "text_sources": {"mask_derived": 1}}
    assert summarise_text_sources({"training": []})["text_source"] == "none"
