# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Public data set preparers: one small fixture per format, built here in that data set's on-disk layout."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from monai_vlseg.datalist import datalist_laterality, load_datalist
from monai_vlseg.datasets.prepare import main as prepare_main
from monai_vlseg.datasets.public.common import describe_mask, seeded_split


def _rgb(path: str, size=(40, 32), fmt=None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(abs(hash(os.path.basename(path))) % 2**32)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)


def _mask(path: str, boxes, size=(40, 32), mode="L", fmt=None, quality=None) -> np.ndarray:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    for y0, x0, y1, x1 in boxes:
        m[y0:y1, x0:x1] = 255
    im = Image.fromarray(m)
    if mode == "RGB":
        im = im.convert("RGB")
    kw = {"quality": quality} if quality else {}
    im.save(path, format=fmt, **kw)
    return m > 0


def _read_png(path: str) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L" and im.format == "PNG"
        a = np.asarray(im)
    assert set(np.unique(a)) <= {0, 255}
    return a > 0


# ------------------------------------------------------------------------------------------------ helpers


def test_describe_mask_is_deterministic_and_counts_regions():
    m = np.zeros((30, 30), bool)
    m[1:5, 1:5] = True  # top left, small
    assert describe_mask(m, modality="colonoscopy image") == "One small polyp at the top left of the colonoscopy image."
    m[20:28, 22:29] = True  # a second, larger region at the bottom right
    t = describe_mask(m, modality="colonoscopy image")
    assert t == describe_mask(m.copy(), modality="colonoscopy image")
    assert t.startswith("Two ") and "polyps" in t and "bottom right" in t
    assert describe_mask(np.zeros((8, 8))).startswith("No ")
    assert describe_mask(m, count=5).startswith("Five ")


def test_seeded_split_is_reproducible_and_disjoint():
    names = [f"im{i}" for i in range(20)]
    a = seeded_split(names, 0.2, 0.1, seed=3)
    b = seeded_split(list(reversed(names)), 0.2, 0.1, seed=3)
    assert a == b
    assert [len(a[k]) for k in ("training", "validation", "test")] == [14, 4, 2]
    assert sorted(sum(a.values(), [])) == sorted(names)
    assert seeded_split(names, 0.2, 0.1, seed=4) != a
    with pytest.raises(ValueError):
        seeded_split(names, 0.6, 0.5)


# ------------------------------------------------------------------------------------------------ Kvasir-SEG


def _kvasir(root: str, n: int = 6) -> dict:
    truth = {}
    boxes = {}
    for i in range(n):
        stem = f"cju{i:04d}abc"
        _rgb(os.path.join(root, "images", stem + ".jpg"), fmt="JPEG")
        regions = [(2, 2, 12, 14)] + ([(20, 25, 30, 38)] if i % 2 else [])
        truth[stem] = _mask(os.path.join(root, "masks", stem + ".jpg"), regions, fmt="JPEG", quality=75)
        boxes[stem] = {
            "height": 32, "width": 40,
            "bbox": [{"label": "polyp", "xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1} for y0, x0, y1, x1 in regions],
        }  # fmt: skip
    with open(os.path.join(root, "kavsir_bboxes.json"), "w") as f:
        json.dump(boxes, f)
    return truth


def test_kvasir_template_seeded_split_and_jpeg_masks_to_png(tmp_path):
    root = str(tmp_path / "Kvasir-SEG")
    truth = _kvasir(root)
    os.remove(os.path.join(root, "images", "cju0005abc.jpg"))  # a mask without its image
    out = str(tmp_path / "out" / "kvasir.json")
    assert prepare_main(["kvasir", str(tmp_path), out, "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    with open(out) as f:
        dl = json.load(f)
    assert dl["meta"]["dataset"] == "Kvasir-SEG" and "template" in dl["meta"]["text_origin"]
    # template sentences are computed from the masks: every item and the meta say so
    assert dl["meta"]["text_source"] == "mask_derived" and dl["meta"]["text_sources"] == {"mask_derived": 5}
    assert all(it["text_source"] == "mask_derived" for k in ("training", "validation", "test") for it in dl[k])
    assert datalist_laterality(out) == "image"  # endoscopy: "left" in its texts is the image's left
    assert [r["file"] for r in dl["skipped"]] == ["Kvasir-SEG/masks/cju0005abc.jpg"]
    items = sum((load_datalist(out, k) for k in ("training", "validation", "test")), [])
    assert len(items) == 5 and len(load_datalist(out, "test")) == 1
    for it in items:
        stem = os.path.splitext(os.path.basename(it["image"]))[0]
        assert it["label"].endswith(".png") and os.path.dirname(os.path.dirname(it["label"])).endswith("kvasir_masks")
        got = _read_png(it["label"])
        assert (got == truth[stem]).mean() > 0.99  # JPEG ringing removed by the threshold
        n = 2 if int(stem[3:7]) % 2 else 1
        assert it["text"].startswith("Two " if n == 2 else "One ") and "colonoscopy image" in it["text"]


def test_kvasir_medvlsm_captions_give_split_and_text(tmp_path):
    root = str(tmp_path)
    _kvasir(root, n=4)
    anns = os.path.join(root, "anns")
    os.makedirs(anns)

    def rec(i, p2):
        stem = f"cju{i:04d}abc"
        return {"img_name": stem + ".jpg", "mask_name": stem + ".jpg",
                "prompts": {"p0": "", "p1": "Polyp.", "p2": p2}}  # fmt: skip

    with open(os.path.join(anns, "train.json"), "w") as f:
        json.dump([rec(0, ["Pink round polyp.", "Small polyp."]), rec(1, "Two polyps."), rec(1, "dup")], f)
    with open(os.path.join(anns, "val.json"), "w") as f:
        json.dump([rec(2, "")], f)  # empty p2 -> auto falls back to p1
    with open(os.path.join(anns, "test.json"), "w") as f:
        json.dump([rec(3, "A polyp."), {"img_name": "missing.jpg", "mask_name": "missing.jpg", "prompts": {"p1": "x"}}], f)
    from monai_vlseg.datasets.public.kvasir import build_kvasir_datalist

    dl = build_kvasir_datalist(root, str(tmp_path / "dl.json"), prompt="auto", prompt_index=1)
    assert [it["text"] for it in dl["training"]] == ["Small polyp.", "Two polyps."]
    assert [it["text"] for it in dl["validation"]] == ["Polyp."]
    assert [it["text"] for it in dl["test"]] == ["A polyp."]
    reasons = sorted(r["reason"].split(" (")[0] for r in dl["skipped"])
    assert reasons == ["duplicate", "file missing"]
    assert "MedVLSM" in dl["meta"]["text_origin"]
    # p2 onwards carry what MedVLSM computed from the masks; p1 is the class name only (auto fell back to it)
    assert [it["text_source"] for it in dl["training"]] == ["mask_derived", "mask_derived"]
    assert [it["text_source"] for it in dl["validation"]] == ["template"]
    assert dl["meta"]["text_source"] == "mixed" and dl["meta"]["text_sources"] == {"mask_derived": 3, "template": 1}
    dl1 = build_kvasir_datalist(root, None, prompt="p1")
    assert all(it["text"] == "Polyp." and it["text_source"] == "template" for it in dl1["training"])
    assert dl1["meta"]["text_source"] == "template"
    dl6 = build_kvasir_datalist(root, None)  # default p6: absent in these records -> every row skipped, reported
    assert sum(len(dl6[k]) for k in ("training", "validation", "test")) == 0
    assert all("empty prompt 'p6'" in r["reason"] for r in dl6["skipped"] if "prompt" in r["reason"])
    with pytest.raises(ValueError, match="missing.jpg"):
        build_kvasir_datalist(root, None, strict=True)


# ------------------------------------------------------------------------------------------------ CVC-ClinicDB


@pytest.mark.parametrize("layout", ["tif", "png"])
def test_cvc_clinicdb_tif_and_png_layouts(tmp_path, layout):
    if layout == "tif":
        img_dir, msk_dir, ext = tmp_path / "CVC-ClinicDB" / "Original", tmp_path / "CVC-ClinicDB" / "Ground Truth", ".tif"
    else:
        img_dir, msk_dir, ext = tmp_path / "PNG" / "Original", tmp_path / "PNG" / "Ground Truth", ".png"
    truth = {}
    for i in range(1, 11):
        _rgb(str(img_dir / f"{i}{ext}"))
        truth[str(i)] = _mask(str(msk_dir / f"{i}{ext}"), [(5, 5, 5 + i, 9 + i)], mode="RGB")  # RGB masks
    os.remove(msk_dir / f"7{ext}")
    texts = tmp_path / "texts.csv"
    with open(texts, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text"])
        w.writerows([[f"{i}{ext}", f"polyp number {i}"] for i in range(1, 11) if i != 3])
    from monai_vlseg.datasets.public.cvc import build_cvc_datalist

    out = str(tmp_path / "cvc.json")
    dl = build_cvc_datalist(str(tmp_path), out, val_fraction=0.2, test_fraction=0.2, seed=1)
    items = [it for k in ("training", "validation", "test") for it in dl[k]]
    assert len(items) == 9 and {r["reason"] for r in dl["skipped"]} == {"mask file missing"}
    assert dl["meta"]["split"].startswith("seeded split")
    for it in items:
        stem = os.path.splitext(os.path.basename(it["image"]))[0]
        assert np.array_equal(_read_png(it["label"]), truth[stem])
        assert it["text"].startswith("One ") and it["text"].endswith("of the colonoscy image.".replace("colonoscy", "colonoscopy"))
        assert it["text_source"] == "mask_derived"
    # same split again; a CSV of texts replaces the template, rows it lacks are skipped
    dl2 = build_cvc_datalist(str(tmp_path), out, texts_csv=str(texts), val_fraction=0.2, test_fraction=0.2, seed=1)
    assert [os.path.basename(i["image"]) for i in dl2["test"]] == [os.path.basename(i["image"]) for i in dl["test"]]
    assert all(it["text"] == f"polyp number {os.path.splitext(os.path.basename(it['image']))[0]}" for it in dl2["training"])
    assert any(r["file"].endswith(f"3{ext}") and r["reason"] == "no text" for r in dl2["skipped"])
    assert "user CSV" in dl2["meta"]["text_origin"]
    # a CSV's texts are what the preparer is told they are: undeclared by default, "caption" when declared so
    assert dl2["meta"]["text_source"] == "unknown" and all(it["text_source"] == "unknown" for it in dl2["training"])
    dl4 = build_cvc_datalist(str(tmp_path), None, texts_csv=str(texts), texts_source="caption", val_fraction=0.2, test_fraction=0.2, seed=1)
    assert dl4["meta"]["text_source"] == "caption" and dl4["meta"]["text_sources"] == {"caption": 8}
    with pytest.raises(ValueError, match="text source must be one of"):
        build_cvc_datalist(str(tmp_path), None, texts_csv=str(texts), texts_source="human")
    assert datalist_laterality(dl) == datalist_laterality(dl2) == "image"
    if layout == "png":  # MedVLSM's captions for CVC-ClinicDB name the PNG copy's files
        anns = tmp_path / "anns"
        anns.mkdir()
        rec = {"img_name": "4.png", "mask_name": "4.png", "prompts": {"p1": "polyp", "p6": "one small pink polyp, located in center of the image"}}
        (anns / "train.json").write_text(json.dumps([rec, {**rec, "img_name": "5.png", "mask_name": "5.png"}]))
        (anns / "test.json").write_text(json.dumps([{**rec, "img_name": "6.png", "mask_name": "6.png"}]))
        dl3 = build_cvc_datalist(str(tmp_path), str(tmp_path / "cvc_cap.json"), captions=str(anns))
        assert [os.path.basename(i["image"]) for i in dl3["training"]] == ["4.png", "5.png"]
        assert dl3["test"][0]["text"] == "one small pink polyp, located in center of the image"
        assert np.array_equal(_read_png(dl3["test"][0]["label"]), truth["6"])
        assert [r["reason"] for r in dl3["skipped"]] == ["caption file missing"]  # no val.json
        assert dl3["meta"]["text_source"] == "mask_derived"  # the default p6 names count, size and place from the mask


# ------------------------------------------------------------------------------------------------ ISIC 2017


def test_isic2017_official_split_diagnosis_template(tmp_path):
    root = tmp_path / "isic"
    layout = {"Training": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", [0, 1, 2]),
              "Validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth", [3]),
              "Test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth", [4, 5])}  # fmt: skip
    for data, gt, ids in layout.values():
        for i in ids:
            stem = f"ISIC_{i:07d}"
            _rgb(str(root / data / f"{stem}.jpg"), fmt="JPEG")
            _mask(str(root / data / f"{stem}_superpixels.png"), [(0, 0, 3, 3)])  # ignored
            if i != 5:
                _mask(str(root / gt / f"{stem}_segmentation.png"), [(8, 10, 24, 30)])
    with open(root / "ISIC-2017_Training_Part3_GroundTruth.csv", "w") as f:
        f.write("image_id,melanoma,seborrheic_keratosis\nISIC_0000000,1.0,0.0\nISIC_0000001,0.0,1.0\nISIC_0000002,0,0\n")
    (root / "ISIC-2017_Test_v2_Data" / "ISIC-2017_Test_v2_Data_metadata.csv").write_text("image_id,age\n")
    out = str(tmp_path / "isic.json")
    assert prepare_main(["isic", str(root), out]) == 0
    with open(out) as f:
        dl = json.load(f)
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [3, 1, 1]
    assert [it["text"] for it in dl["training"]] == [
        "A large melanoma skin lesion at the center of the dermoscopy image.",
        "A large seborrheic keratosis skin lesion at the center of the dermoscopy image.",
        "A large nevus skin lesion at the center of the dermoscopy image.",
    ]
    assert dl["validation"][0]["text"] == "A large skin lesion at the center of the dermoscopy image."  # no Part 3 CSV
    assert datalist_laterality(out) == "image"  # dermoscopy
    assert dl["skipped"] == [{"split": "test", "file": "ISIC-2017_Test_v2_Part1_GroundTruth/ISIC_0000005_segmentation.png",
                              "reason": "mask file missing (ISIC-2017_Test_v2_Part1_GroundTruth/ISIC_0000005_segmentation.png)"}]  # fmt: skip
    assert dl["training"][0]["label"] == "isic/ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png"
    # size and place come from the mask (the diagnosis does not): the whole template counts as mask-derived
    assert dl["meta"]["text_sources"] == {"mask_derived": 5} and "Part 3 diagnosis" in dl["meta"]["text_origin"]
    items = load_datalist(out, "training")
    assert all(os.path.isfile(it["image"]) and os.path.isfile(it["label"]) for it in items)


# ------------------------------------------------------------------------------------------------ MoNuSeg


def _aperio_xml(path, polygons) -> None:
    regions = "".join(
        f'<Region Id="{k + 1}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>"
        for k, poly in enumerate(polygons)
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(
            '<?xml version="1.0" encoding="UTF-8"?><Annotations MicronsPerPixel="0.252">'
            '<Annotation Id="1" Type="4"><Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>'
            f'<Regions><RegionAttributeHeaders/>{regions}</Regions><Plots/></Annotation></Annotations>'
        )


def test_monuseg_xml_rasterised_official_test_folder(tmp_path):
    root = tmp_path / "monuseg"
    train = root / "MoNuSeg 2018 Training Data"
    stems = [f"TCGA-{i:02d}-0000-01Z-00-DX1" for i in range(5)]
    for i, s in enumerate(stems):
        _rgb(str(train / "Tissue Images" / f"{s}.tif"), size=(48, 40))
        squares = [[(x, y), (x + 5, y), (x + 5, y + 5), (x, y + 5)] for x, y in [(2, 2), (20, 10), (30, 30)][: i % 3 + 1]]
        _aperio_xml(str(train / "Annotations" / f"{s}.xml"), squares)
    _rgb(str(root / "MoNuSegTestData" / "TCGA-99-0000-01Z-00-DX1.tif"), size=(48, 40))
    _aperio_xml(str(root / "MoNuSegTestData" / "TCGA-99-0000-01Z-00-DX1.xml"), [[(0, 0), (9, 0), (9, 9), (0, 9)], [(1, 1), (2, 2)]])
    (root / "MoNuSegTestData" / "broken.xml").write_text("<Annotations><oops")
    _rgb(str(root / "MoNuSegTestData" / "broken.tif"), size=(48, 40))
    out = str(tmp_path / "lists" / "monuseg.json")
    assert prepare_main(["monuseg", str(root), out, "--val-fraction", "0.2"]) == 0
    with open(out) as f:
        dl = json.load(f)
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [4, 1, 1]
    assert [r["file"] for r in dl["skipped"]] == ["MoNuSegTestData/broken.xml"] and "not valid XML" in dl["skipped"][0]["reason"]
    test = load_datalist(out, "test")[0]
    m = _read_png(test["label"])
    assert m.shape == (40, 48)
    expect = np.zeros((40, 48), bool)
    expect[0:10, 0:10] = True  # PIL fills the polygon including its outline; the 2-vertex region is dropped
    assert np.array_equal(m, expect)
    assert test["text"] == "One cell nucleus covering 5% of the H&E-stained tissue image."
    texts = {os.path.basename(it["image"]): it["text"] for k in ("training", "validation") for it in load_datalist(out, k)}
    assert texts[f"{stems[2]}.tif"].startswith("Three cell nuclei covering")
    assert "official test folder" in dl["meta"]["split"]
    assert dl["meta"]["text_source"] == "mask_derived" and test["text_source"] == "mask_derived"  # from the polygons
    assert datalist_laterality(out) == "image"  # histology


def test_a_preparer_must_state_the_side_convention(tmp_path):
    """finish_datalist (every preparer's last step) refuses a meta without a known laterality, and a datalist with
    an unknown one is refused when read, naming the file."""
    from monai_vlseg.datasets.public.common import finish_datalist
    from monai_vlseg.errors import InputError

    with pytest.raises(ValueError, match="laterality 'patient' or 'image'; got None"):
        finish_datalist({"training": []}, [], {"dataset": "X"}, str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"training": [], "meta": {"laterality": "radiological"}}))
    with pytest.raises(InputError, match=r"odd\.json: meta\.laterality is 'radiological'; expected 'patient' or 'image'"):
        datalist_laterality(str(path))
    path.write_text(json.dumps({"training": []}))
    assert datalist_laterality(str(path)) is None


def test_prepare_front_door_usage_and_errors(tmp_path, capsys):
    assert prepare_main([]) == 2
    assert "kvasir" in capsys.readouterr().out
    assert prepare_main(["cvc", str(tmp_path / "nowhere"), str(tmp_path / "x.json")]) == 1
    assert "not found" in capsys.readouterr().err
    assert prepare_main(["monuseg", str(tmp_path), str(tmp_path / "x.json")]) == 1
    assert "no *.xml" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ LViT + subset


def test_front_door_lvit_covid19_variant_and_subset(tmp_path):
    import openpyxl

    root = tmp_path / "Covid19"
    rows = {"Train": [], "Val": [], "Test": []}
    for split, n in (("Train", 6), ("Val", 2), ("Test", 3)):
        for i in range(n):
            name = f"covid_{split}_{i}.png"
            _rgb(str(root / f"{split}_Folder" / "img" / name))
            _mask(str(root / f"{split}_Folder" / "labelcol" / f"mask_{name}"), [(2, 2, 9, 9)])
            rows[split].append((f"mask_{name}", f"Unilateral pulmonary infection, one infected area, {split} {i}."))

    def xlsx(path, data):
        wb = openpyxl.Workbook()
        wb.active.append(["Image", "Description"])
        for r in data:
            wb.active.append(list(r))
        wb.save(path)

    xlsx(root / "Train_Val_text.xlsx", rows["Train"] + rows["Val"])  # the Covid19 copy: one xlsx for Train and Val
    xlsx(root / "Test_Folder" / "Test_text.xlsx", rows["Test"])
    out = str(tmp_path / "qata.json")
    assert prepare_main(["qata", str(root), out]) == 0
    with open(out) as f:
        dl = json.load(f)
    assert [len(dl[k]) for k in ("training", "validation", "test")] == [6, 2, 3] and dl["skipped"] == []
    assert dl["training"][0]["image"].endswith("Train_Folder/img/covid_Train_0.png")
    assert dl["training"][0]["label"].endswith("Train_Folder/labelcol/mask_covid_Train_0.png")
    assert dl["meta"]["text_source"] == "report" and dl["meta"]["text_sources"] == {"report": 11}
    # a low-data cut written elsewhere: seeded, order kept, paths still resolve
    small = str(tmp_path / "cuts" / "qata_small.json")
    assert prepare_main(["subset", out, small, "--training", "3", "--test", "2", "--seed", "1"]) == 0
    tr, te, va = (load_datalist(small, k) for k in ("training", "test", "validation"))
    assert len(tr) == 3 and len(te) == 2 and len(va) == 2
    full = [it["image"] for it in load_datalist(out, "training")]
    idx = [full.index(it["image"]) for it in tr]
    assert idx == sorted(idx) and all(os.path.isfile(it["image"]) and os.path.isfile(it["label"]) for it in tr)
    with open(small) as f:
        cut = json.load(f)
    assert cut["meta"]["subset"]["sizes"] == {"training": 3, "test": 2}
    assert all(it["text_source"] == "report" for it in cut["training"])  # the marks travel with the items
    assert cut["meta"]["text_sources"] == {"report": 7}  # 3 + 2 cut, the 2 validation items kept
    assert datalist_laterality(out) == datalist_laterality(small) == "patient"  # chest: the cut keeps the convention
    histology = str(tmp_path / "monuseg_lvit.json")  # LViT's MoNuSeg copy has the same layout: say its convention
    assert prepare_main(["lvit", str(root), histology, "--laterality", "image"]) == 0
    assert datalist_laterality(histology) == "image"
    assert prepare_main(["subset", out, small, "--training", "99"]) == 1


def test_texts_source_is_declared_on_the_command_line_and_reported(tmp_path, capsys):
    """``--texts-source`` marks a CSV's texts (here ISIC with descriptions written from the images), the command says
    what it wrote, and an undeclared CSV is marked ``unknown``."""
    root = tmp_path / "isic"
    for i in range(2):
        _rgb(str(root / "ISIC-2017_Training_Data" / f"ISIC_{i:07d}.jpg"), fmt="JPEG")
        _mask(str(root / "ISIC-2017_Training_Part1_GroundTruth" / f"ISIC_{i:07d}_segmentation.png"), [(8, 10, 24, 30)])
    texts = tmp_path / "texts.csv"
    texts.write_text("image,text\nISIC_0000000,a dark brown lesion\nISIC_0000001,a pale pink lesion\n")
    out = str(tmp_path / "isic.json")
    assert prepare_main(["isic", str(root), out, "--texts-csv", str(texts), "--texts-source", "caption"]) == 0
    assert "text_source: caption 2" in capsys.readouterr().out
    with open(out) as f:
        dl = json.load(f)
    assert [it["text_source"] for it in dl["training"]] == ["caption", "caption"]
    assert dl["meta"]["text_source"] == "caption" and "declared caption" in dl["meta"]["text_origin"]
    assert prepare_main(["isic", str(root), out, "--texts-csv", str(texts)]) == 0
    assert "text_source: unknown 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        prepare_main(["isic", str(root), out, "--texts-csv", str(texts), "--texts-source", "human"])


def test_medvlsm_prompt_sources():
    """Only MedVLSM's class-name prompt was written without the mask; ``auto`` resolves per record."""
    from monai_vlseg.datasets.public.kvasir import medvlsm_prompt_source, pick_prompt, resolve_prompt_key

    prompts = {"p0": "", "p1": "polyp", "p6": "one small pink polyp, located in right of the image", "p7": ["a", "b"]}
    assert resolve_prompt_key(prompts, "auto") == "p7" and pick_prompt(prompts, "auto", 1) == "b"
    assert resolve_prompt_key({"p0": "", "p1": "polyp", "p2": ""}, "auto") == "p1"
    assert resolve_prompt_key({"p0": ""}, "auto") is None and pick_prompt({"p0": ""}, "auto") == ""
    assert medvlsm_prompt_source("p1") == "template"
    assert [medvlsm_prompt_source(f"p{i}") for i in range(2, 10)] == ["mask_derived"] * 8


# ------------------------------------------------------------------------------------------------ text lengths


def _lvit_set(root, texts: dict[str, list[str]]) -> None:
    import openpyxl

    for split, split_texts in texts.items():
        wb = openpyxl.Workbook()
        wb.active.append(["Image", "Description"])
        for i, text in enumerate(split_texts):
            name = f"case_{split}_{i}.png"
            _rgb(str(root / f"{split}_Folder" / "img" / name))
            _mask(str(root / f"{split}_Folder" / "labelcol" / f"mask_{name}"), [(2, 2, 9, 9)])
            wb.active.append([f"mask_{name}", text])
        wb.save(root / f"{split}_text.xlsx")


def test_preparers_record_text_lengths_in_tokens(tmp_path, capsys):
    """meta.text_tokens: the longest text in tokens of the bundles' tokenizer, a histogram per split and how many
    texts a given text_len truncates, for the text as written and (chest data sets) as the chest bundles read it;
    a subset is measured again."""
    from monai_vlseg.transforms.text import TokenizeText

    one = "Unilateral pulmonary infection, one infected area, upper left lung."
    two = "Bilateral pulmonary infection, two infected areas, upper left lung and upper right lung."
    worded = "Patchy opacity at the right base. Heart size normal. No effusion. Lungs otherwise clear."
    texts = {"Train": [one, two, one], "Val": [worded], "Test": [two]}
    root = tmp_path / "QaTa"
    _lvit_set(root, texts)
    out = str(tmp_path / "qata.json")
    assert prepare_main(["qata", str(root), out, "--text-len", "18"]) == 0
    assert "longest text in tokens: " in capsys.readouterr().out
    with open(out) as f:
        entries = json.load(f)["meta"]["text_tokens"]
    tok = TokenizeText("default").tokenizer
    n = {t: len(tok(t)["input_ids"]) for t in (one, two, worded)}
    assert n[one] < 18 == n[two] < 24 < n[worded] < 32  # 17, 18 and 25 tokens
    raw, chest = entries
    assert (raw["tokenizer"], raw["report_parser"], chest["report_parser"]) == ("default", None, "chest")
    assert raw["texts"] == 5 and raw["max_tokens"] == n[worded]
    assert raw["histogram"] == {str(n[one]): 2, str(n[two]): 2, str(n[worded]): 1}
    assert raw["truncated"] == {"10": 5, "18": 1, "24": 1, "32": 0, "34": 0}
    assert raw["by_split"]["training"] == {"texts": 3, "max_tokens": n[two],
                                           "histogram": {str(n[one]): 2, str(n[two]): 1}}  # fmt: skip
    # the chest bundles read the report as its canonical sentence: "Unilateral ..., lower right lung."
    canon = len(tok("Unilateral pulmonary infection, one infected area, lower right lung.")["input_ids"])
    assert chest["by_split"]["validation"]["max_tokens"] == canon and chest["max_tokens"] == n[two]
    # a low-data cut is measured again: only what it kept
    small = str(tmp_path / "small.json")
    assert prepare_main(["subset", out, small, "--training", "1", "--seed", "0"]) == 0
    with open(small) as f:
        cut = json.load(f)["meta"]["text_tokens"]
    assert [e["report_parser"] for e in cut] == [None, "chest"] and cut[0]["texts"] == 3
    assert cut[0]["by_split"]["training"]["texts"] == 1 and "18" in cut[0]["truncated"]


def test_template_preparers_and_demo_sets_record_text_lengths(tmp_path):
    """Preparers of template texts (here Kvasir) and the synthetic demo generators write meta.text_tokens too."""
    from monai_vlseg.datasets.synthetic.polyp import generate_polyp_demo
    from monai_vlseg.transforms.text import TokenizeText

    tok = TokenizeText("default").tokenizer
    _kvasir(str(tmp_path / "Kvasir-SEG"))
    out = str(tmp_path / "kvasir.json")
    assert prepare_main(["kvasir", str(tmp_path), out]) == 0
    with open(out) as f:
        dl = json.load(f)
    (entry,) = dl["meta"]["text_tokens"]
    items = [i for k in ("training", "validation", "test") for i in dl[k]]
    assert entry["report_parser"] is None and entry["texts"] == len(items)
    assert entry["max_tokens"] == max(len(tok(i["text"])["input_ids"]) for i in items)
    with open(generate_polyp_demo(str(tmp_path / "polyp"), n_train=3, n_val=1, n_test=1, size=32)) as f:
        dl = json.load(f)
    (entry,) = dl["meta"]["text_tokens"]
    assert set(entry["by_split"]) == {"training", "validation", "test"} and entry["texts"] == 5
    assert entry["max_tokens"] == max(len(tok(i["text"])["input_ids"]) for k in entry["by_split"] for i in dl[k])
