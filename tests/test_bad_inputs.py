"""Bad inputs (issue 18, points 2 and 4): an inference batch skips a bad file, says why in one ERROR line naming it,
writes every good input's outputs under a name unique to the input, records the whole run in a manifest and exits
non-zero; a bad datalist, a label of another size than its image or missing texts stop a run before it writes
anything, in one line. README's "Reliability" section states how many kinds of bad input these tests cover
(``SKIPPED`` + ``FATAL``); test_readme_counts_the_bad_inputs_tested holds it to these tables."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from bundle_testing import REPO_ROOT, BundleConfigs
from test_bundle_ua_vls import TINY_NET, save_tiny_checkpoint
from test_dicom_io import CT_SMALL, RG1, data_file

from monai_vlseg.errors import InputError, InputsSkippedError, OutputExistsError, find_one_line_error

cfg = BundleConfigs("ua_vls")
TEXT = "Unilateral pulmonary infection, one infected area, upper left lung."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture(autouse=True)
def _keep_excepthook(monkeypatch):
    """Every bundle's initialize installs monai_vlseg.errors.brief_errors; keep the test process's hook as it was."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)


def grey_png(path, shape=(50, 70), seed=0):
    img = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


class Records(logging.Handler):
    """Log records of a bundle run (its logging.conf replaces the root handlers, so pytest's caplog sees nothing)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def errors(self):
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


def run_inference(tmp_path, ckpt, **overrides):
    """Run ua_vls inference.json in this process (tiny untrained network, 32x32); return (error or None, records)."""
    overrides = {**TINY_NET, "image_size": [32, 32], "ckpt_path": ckpt, "text": TEXT, **overrides}
    overrides.setdefault("output_dir", str(tmp_path / "out"))
    records = Records()
    try:
        wf = cfg.workflow("infer", "inference.json", **overrides)
        logging.getLogger().addHandler(records)
        wf.initialize()
        wf.run()
        wf.finalize()
    except Exception as err:  # MONAI's config parser wraps what a config expression raises
        return err, records
    finally:
        logging.getLogger().removeHandler(records)
    return None, records


def read_manifest(folder):
    with open(os.path.join(folder, "manifest.csv"), encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------------------
# bad files an inference run skips: name -> (writes the bad file into a folder, part of the reason it reports)


def _truncated_png(folder):
    path = grey_png(os.path.join(folder, "b.png"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


def _text_as(name, text):
    """A writer of a text file that claims to be an image by its name."""

    def write(folder):
        path = os.path.join(folder, name)
        open(path, "w").write(text)
        return path

    return write


def _copy(name):
    def write(folder):
        return shutil.copy(data_file(name), os.path.join(folder, "b.dcm"))

    return write


def _dicom_without_preamble(folder):
    path = os.path.join(folder, "b.dcm")
    open(path, "wb").write(open(RG1, "rb").read()[132:])  # no 128-byte preamble, no "DICM": a raw DICOM stream
    return path


def _dicom_without_pixels(folder):
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(os.path.join(folder, "b.dcm"))
    return os.path.join(folder, "b.dcm")


def _dicom_undecodable(folder):
    path = os.path.join(folder, "b.dcm")
    open(path, "wb").write(open(CT_SMALL, "rb").read()[:20000])
    return path


def _volume(folder):
    path = os.path.join(folder, "b.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 6), np.float32), np.eye(4)), path)
    return path


SKIPPED = {
    "truncated PNG": (_truncated_png, "cannot be read as an image (OSError: image file is truncated"),
    "PNG that is not an image": (_text_as("b.png", "not a PNG"), "cannot be read as an image (UnidentifiedImageError"),
    "RGB DICOM to a grey bundle": (_copy("SC_rgb.dcm"), "PhotometricInterpretation RGB: only grey images"),
    "multi-frame DICOM": (_copy("emri_small.dcm"), "multi-frame image (10 frames)"),
    "DICOM without preamble": (_dicom_without_preamble, "DICOM data without the Part 10 header"),
    "DICOM without pixel data": (_dicom_without_pixels, "no pixel data"),
    "DICOM whose pixel data cannot be decoded": (_dicom_undecodable, "pixel data cannot be decoded"),
    "text file named .dcm": (_text_as("b.dcm", "hello"), "not a DICOM file"),
    "3D volume to a 2D bundle": (_volume, "spatial_size=2 img=3"),
}


@pytest.mark.parametrize("case", sorted(SKIPPED))
def test_inference_skips_a_bad_file_and_writes_the_rest(case, tmp_path, ckpt):
    write, reason = SKIPPED[case]
    src = tmp_path / "in"
    src.mkdir()
    grey_png(src / "a.png", seed=1)
    bad = write(str(src))
    grey_png(src / "c.png", seed=2)  # after the bad one: still written
    err, records = run_inference(tmp_path, ckpt, input_dir=str(src))
    out = tmp_path / "out"
    assert sorted(p for p in os.listdir(out) if p.endswith("_seg.png")) == ["a_seg.png", "c_seg.png"]
    rows = read_manifest(out)
    assert [(os.path.basename(r["input"]), r["status"]) for r in rows] == [
        ("a.png", "written"), (os.path.basename(bad), "skipped"), ("c.png", "written"),
    ]  # fmt: skip
    assert reason in rows[1]["reason"] and rows[1]["mask"] == ""
    # one ERROR line names the file and the reason, and nothing else is logged at ERROR
    (line,) = records.errors()
    assert line.startswith(f"{bad}: skipped (") and reason in line and "\n" not in line
    # the run ends with one line naming the count and the manifest
    brief = find_one_line_error(err)
    assert isinstance(brief, InputsSkippedError), err
    assert "wrote 2 of 3 input(s) and skipped 1" in str(brief) and str(out / "manifest.csv") in str(brief)
    assert "\n" not in str(brief)


# ---------------------------------------------------------------------------------------------------------------
# bad inputs that stop a run before it writes anything, in one line


@pytest.fixture(scope="module")
def demo_datalist(tmp_path_factory):
    from monai_vlseg.datasets.synthetic.cxr import generate_demo_dataset

    tmp = tmp_path_factory.mktemp("demo")
    return generate_demo_dataset(str(tmp / "data"), n_train=2, n_val=1, n_test=1, size=48, seed=1)


def _malformed(demo_datalist, tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(open(demo_datalist).read().replace("],", "]", 1))  # a missing comma
    return str(path)


def _absolute(demo_datalist):
    data = json.load(open(demo_datalist))
    base = os.path.dirname(demo_datalist)
    for items in data.values():
        for it in items if isinstance(items, list) else []:
            for k in ("image", "label", "negated_label"):
                if k in it:
                    it[k] = os.path.join(base, it[k])
    return data


def _train_malformed(demo_datalist, tmp_path):
    path = _malformed(demo_datalist, tmp_path)
    return "train", {"datalist": path}, [path, "datalist is not valid JSON (Expecting ',' delimiter at line"]


def _infer_malformed(demo_datalist, tmp_path):
    path = _malformed(demo_datalist, tmp_path)
    return "infer", {"datalist": path}, [path, "datalist is not valid JSON"]


def _infer_no_split(demo_datalist, tmp_path):
    data = _absolute(demo_datalist)
    del data["test"]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    return "infer", {"datalist": str(path)}, [str(path), "datalist has no 'test' section (its sections: 'training'"]


def _train_label_size(demo_datalist, tmp_path):
    data = _absolute(demo_datalist)
    label = grey_png(tmp_path / "label.png", shape=(40, 44))
    image = data["training"][1]["image"]
    data["training"][1]["label"] = str(label)
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    return "train", {"datalist": str(path)}, [f"{label}: label size (44, 40) differs from its image {image} size (48, 48)"]


def _infer_no_text(demo_datalist, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    grey_png(src / "notext.png")
    return "infer", {"input_dir": str(src), "text": None}, ["no text for 1 image(s)", str(src / "notext.png")]


FATAL = {
    "malformed datalist JSON (training)": _train_malformed,
    "malformed datalist JSON (inference)": _infer_malformed,
    "datalist without the split asked for": _infer_no_split,
    "label whose size differs from its image (training)": _train_label_size,
    "images without text (text-guided inference)": _infer_no_text,
}


@pytest.mark.parametrize("case", sorted(FATAL))
def test_bad_input_stops_the_run_in_one_line(case, demo_datalist, tmp_path, ckpt):
    kind, overrides, expected = FATAL[case](demo_datalist, tmp_path)
    out = tmp_path / "out"
    if kind == "train":
        wf = cfg.workflow(
            "train", "train.json", **TINY_NET, image_size=[32, 32], max_epochs=1, batch_size=2,
            bundle_root=str(tmp_path / "bundle"), **overrides,
        )  # fmt: skip
        with pytest.raises(Exception) as info:
            wf.initialize()
            wf.run()
        assert not (tmp_path / "bundle" / "models").exists()  # stopped before training
        err = info.value
    else:
        err, _ = run_inference(tmp_path, ckpt, output_dir=str(out), **overrides)
        assert not out.exists()  # nothing written
    brief = find_one_line_error(err)
    assert isinstance(brief, InputError), err
    message = str(brief)
    assert all(e in message for e in expected) and "\n" not in message, message


@pytest.mark.parametrize("bundle", ["ua_vls", "c2seg", "lcpdn", "tifcmamba", "vm_unet", "segmamba_ct"])
def test_every_bundle_refuses_a_label_of_another_size(bundle, tmp_path):
    """The train / validate transforms of every bundle stop at a label whose size differs from its image's, naming
    both files and sizes, instead of resizing (or resampling) both to one grid."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(REPO_ROOT, "bundles", bundle, "configs", "train.json"))
    parser["bundle_root"] = str(tmp_path)
    if bundle == "segmamba_ct":
        transforms, ext = "preprocessing_transforms", ".nii.gz"
    elif bundle == "tifcmamba":  # text-supervised training reads no labels; its validation does
        transforms, ext = "validate#preprocessing#transforms", ".png"
    else:
        transforms, ext = "train#deterministic_transforms", ".png"
    image, label = str(tmp_path / f"image{ext}"), str(tmp_path / f"label{ext}")
    if ext == ".png":
        grey_png(image, shape=(20, 24))
        grey_png(label, shape=(16, 24))
    else:
        nib.save(nib.Nifti1Image(np.ones((24, 20, 8), np.float32), np.eye(4)), image)
        nib.save(nib.Nifti1Image(np.ones((24, 20, 6), np.float32), np.eye(4)), label)
    with pytest.raises(Exception) as info:
        Compose(parser.get_parsed_content(transforms))({"image": image, "label": label, "text": TEXT})
    brief = find_one_line_error(info.value)
    assert isinstance(brief, InputError), info.value
    assert str(brief).startswith(f"{label}: label size") and image in str(brief)


# ---------------------------------------------------------------------------------------------------------------
# outputs: unique names, no silent overwrite, a manifest, atomic writes, the command's exit status


def test_same_stem_png_and_jpg_give_two_masks(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    grey_png(src / "image.png", shape=(50, 70), seed=1)
    Image.fromarray(np.full((30, 40), 200, np.uint8)).save(src / "image.jpg")
    grey_png(src / "other.png", shape=(20, 24), seed=3)
    err, _ = run_inference(tmp_path, ckpt, input_dir=str(src))
    assert err is None, err
    out = tmp_path / "out"
    masks = sorted(p for p in os.listdir(out) if p.endswith("_seg.png"))
    assert masks == ["image_jpg_seg.png", "image_png_seg.png", "other_seg.png"]  # a lone stem keeps its name
    assert sorted(p for p in os.listdir(out) if p.endswith("_overlay.png") and "_uncertainty_" not in p) == [m.replace("_seg", "_overlay") for m in masks]
    rows = {os.path.basename(r["input"]): r for r in read_manifest(out)}
    for name, shape in (("image.png", (50, 70)), ("image.jpg", (30, 40)), ("other.png", (20, 24))):
        mask = np.asarray(Image.open(rows[name]["mask"]))
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}  # each mask in its own input's grid
        assert os.path.basename(rows[name]["overlay"]) == f"{rows[name]['output_name']}_overlay.png"


def test_second_run_into_one_folder_is_refused_unless_overwrite(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    grey_png(src / "a.png")
    grey_png(src / "b.png", seed=1)
    err, _ = run_inference(tmp_path, ckpt, input_dir=str(src))
    assert err is None, err
    out = tmp_path / "out"
    before = {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)}
    os.remove(src / "b.png")
    err, _ = run_inference(tmp_path, ckpt, input_dir=str(src), text="Bilateral pulmonary infection, two infected areas.")
    brief = find_one_line_error(err)
    assert isinstance(brief, OutputExistsError) and str(out) in str(brief) and "--overwrite true" in str(brief)
    assert {p: os.stat(out / p).st_mtime_ns for p in os.listdir(out)} == before  # untouched
    err, _ = run_inference(tmp_path, ckpt, input_dir=str(src), overwrite="true")
    assert err is None, err
    assert [os.path.basename(r["input"]) for r in read_manifest(out)] == ["a.png"]
    assert not (out / "b_seg.png").exists() and not (out / "b_overlay.png").exists()  # the earlier run's, removed


def test_manifest_records_input_text_checkpoint_and_outputs(tmp_path, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    grey_png(src / "a.png")
    report = "Patient: John Smith, DOB 01.02.1950.\nFINDINGS: Opacity in the left upper zone, reported 03.12.2026 by Dr. Miller."
    (src / "a.txt").write_text(report)
    grey_png(src / "b.png", seed=1)
    err, _ = run_inference(tmp_path, ckpt, input_dir=str(src), report_parser=None)
    assert err is None, err
    out = tmp_path / "out"
    doc = json.loads((out / "manifest.json").read_text())
    sha = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    assert doc["complete"] and doc["summary"] == {"inputs": 2, "written": 2, "skipped": 0}
    assert doc["checkpoint"] == {"path": ckpt, "sha256": sha}
    rows = read_manifest(out)
    assert [r["input"] for r in rows] == [str(src / "a.png"), str(src / "b.png")]
    assert rows[0]["text"].startswith("Opacity in the left upper zone") and rows[1]["text"] == TEXT
    stored = (out / "manifest.csv").read_text() + (out / "manifest.json").read_text()
    for secret in ("Smith", "Miller", "03.12.2026", "1950"):
        assert secret not in stored, secret
    for r in rows:
        assert r["status"] == "written" and r["checkpoint_sha256"] == sha and r["checkpoint"] == ckpt
        assert os.path.isfile(r["mask"]) and os.path.isfile(r["overlay"]) and r["dicom_seg"] == ""
        assert all(os.path.isfile(r[c]) for c in ("probability", "uncertainty_map", "uncertainty_overlay"))
        assert 0.0 <= float(r["uncertainty"]) <= 1.0
    typed = [{**r, "needs_review": r["needs_review"] == "True", "uncertainty": float(r["uncertainty"])} for r in rows]
    assert doc["items"] == typed


def test_masks_are_written_atomically(tmp_path, monkeypatch):
    """A writer that dies half-way leaves neither a partial mask nor a temporary file behind."""
    from monai.data import MetaTensor, PILWriter

    from monai_vlseg.transforms import SaveImageAtomicd

    def broken_write(self, filename_or_obj, verbose=True, **kwargs):
        open(filename_or_obj, "wb").write(b"\x89PNG half")
        raise OSError("disk full")

    pred = MetaTensor(torch.ones(1, 8, 8), meta={"filename_or_obj": "/in/case.png"})
    saver = SaveImageAtomicd("pred", output_dir=str(tmp_path), output_postfix="seg", output_ext=".png",
                             output_dtype=np.uint8, scale=255, separate_folder=False, print_log=False)  # fmt: skip
    d = saver({"pred": pred, "output_name": "case_png"})
    assert d["pred_path"] == str(tmp_path / "case_png_seg.png") and os.listdir(tmp_path) == ["case_png_seg.png"]
    saver.saver.writers = (PILWriter,)  # no second writer to fall back on
    monkeypatch.setattr(PILWriter, "write", broken_write)
    with pytest.raises(RuntimeError, match="cannot find a suitable writer"):
        saver({"pred": pred, "output_name": "other"})
    assert os.listdir(tmp_path) == ["case_png_seg.png"]


def test_output_names_are_unique_per_run():
    from monai_vlseg.transforms import unique_output_names

    paths = ["/a/image.png", "/a/image.jpg", "/a/x.nii.gz", "/b/x.nii.gz", "/a/case one.png", "/a/IM0001", "/a/series",
             "/a/Y.png", "/a/y.png", "/a/image_png.bmp"]  # fmt: skip
    names = unique_output_names(paths)
    assert names == ["image_png", "image_jpg", "x_nii_gz", "x_nii_gz_2", "case one", "IM0001", "series", "Y_png",
                     "y_png_2", "image_png_2"]  # fmt: skip
    assert len({n.casefold() for n in names}) == len(paths)


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "datalist file not found"),
        ("[1, 2]", "a datalist is a JSON object of splits, not a JSON list"),
        ('{"training": {"image": "a.png"}}', "datalist section 'training' is a JSON dict, not a list of items"),
        ('{"training": ["a.png"]}', "item 0 of datalist section 'training' is a JSON str, not an object"),
        ('{"training": [{"image": "a.png"}, {"label": "b.png"}]}', "item 1 of datalist section 'training' has no 'image'"),
        ('{"training": [{"image": "a.png",}]}', "datalist is not valid JSON (Expecting property name"),
    ],
)
def test_datalist_errors_name_the_file(tmp_path, content, reason):
    from monai_vlseg.datalist import load_datalist

    path = tmp_path / "datalist.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as info:
        load_datalist(path, "training")
    assert str(info.value).startswith(f"{path}: {reason}"), str(info.value)


def test_datalist_forms_monai_accepts_still_load(tmp_path):
    from monai_vlseg.datalist import load_datalist

    path = tmp_path / "datalist.json"
    path.write_text('{"training": [], "test": ["a.png"]}')  # an empty split; a test split of bare image paths
    assert load_datalist(path, "training") == []
    assert load_datalist(path, "test") == [{"image": str(tmp_path / "a.png")}]


def _cli(*args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env,
                         cwd=REPO_ROOT)  # fmt: skip
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return res.returncode, lines


def test_cli_batch_with_a_bad_file_in_the_middle(tmp_path, ckpt):
    """`python -m monai.bundle run inference`: the good inputs are all written, the manifest lists all three, the
    command exits non-zero and its last line names the count and the manifest (no traceback)."""
    src = tmp_path / "in"
    src.mkdir()
    grey_png(src / "a.png")
    _truncated_png(str(src))
    grey_png(src / "c.png", seed=2)
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({**TINY_NET, "image_size": [32, 32], "ckpt_path": ckpt, "text": TEXT}))
    out = tmp_path / "out"
    rc, lines = _cli("inference", "--config_file", str([cfg("inference.json")[0], str(tiny)]),
                     "--input_dir", str(src), "--output_dir", str(out))  # fmt: skip
    assert rc != 0
    assert not any("Traceback" in ln for ln in lines), "\n".join(lines[-40:])
    assert re.search(rf"ERROR - {re.escape(str(src / 'b.png'))}: skipped \(cannot be read as an image", "\n".join(lines))
    assert "ERROR - inference wrote 2 of 3 input(s) and skipped 1" in lines[-1] and f"{out}/manifest.csv" in lines[-1]
    assert sorted(p for p in os.listdir(out) if p.endswith("_seg.png")) == ["a_seg.png", "c_seg.png"]
    assert [r["status"] for r in read_manifest(out)] == ["written", "skipped", "written"]


def test_cli_malformed_datalist_is_one_line(demo_datalist, tmp_path):
    path = _malformed(demo_datalist, tmp_path)
    rc, lines = _cli("training", "--config_file", cfg("train.json")[0], "--datalist", path,
                     "--bundle_root", str(tmp_path / "bundle"))  # fmt: skip
    assert rc == 1
    assert not any("Traceback" in ln for ln in lines), "\n".join(lines[-40:])
    assert re.search(rf"ERROR - {re.escape(path)}: datalist is not valid JSON \(Expecting ',' delimiter at line \d+ column \d+\)$", lines[-1])


def test_brief_errors_shows_the_line_or_the_traceback(monkeypatch, capsys):
    from monai_vlseg import errors

    try:
        try:
            raise InputError("/data/x.png", "cannot be read")
        except InputError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        err = wrapped
    records = Records()
    logging.getLogger("monai_vlseg").addHandler(records)
    try:
        errors.brief_errors()
        sys.excepthook(type(err), err, err.__traceback__)
        assert records.errors() == ["/data/x.png: cannot be read"]
        assert "Traceback" not in capsys.readouterr().err
        monkeypatch.setenv(errors.TRACEBACK_ENV, "1")
        sys.excepthook(type(err), err, err.__traceback__)
        assert "Traceback" in capsys.readouterr().err and len(records.errors()) == 1
        monkeypatch.delenv(errors.TRACEBACK_ENV)
        other = ValueError("a bug")
        sys.excepthook(ValueError, other, None)
        assert "ValueError: a bug" in capsys.readouterr().err and len(records.errors()) == 1
        sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)  # Ctrl-C: how to resume, no traceback
        assert records.errors()[-1] == errors.INTERRUPTED and "Traceback" not in capsys.readouterr().err
    finally:
        logging.getLogger("monai_vlseg").removeHandler(records)


def test_readme_counts_the_bad_inputs_tested():
    """README's "Reliability" section states the number of bad-input kinds these tests cover, and names them."""
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        section = " ".join(f.read().split("## Reliability\n")[1].split("\n## ")[0].split())
    stated = re.search(r"(\d+) kinds of bad input: (\d+) that an inference run skips, (\d+) that stop a run", section)
    assert stated, section
    assert tuple(map(int, stated.groups())) == (len(SKIPPED) + len(FATAL), len(SKIPPED), len(FATAL))
    for name in (*SKIPPED, *FATAL):
        assert re.sub(r" \(.*\)$", "", name).lower() in section.lower(), name
