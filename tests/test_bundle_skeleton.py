"""The six bundles share one config skeleton (each bundle stays self-contained: no shared base config). This test
holds the skeleton equal across them; the intended differences are listed once, in DIFFERENCES, each with its reason.
A bundle that drifts (a renamed key, a handler added to one bundle only, another output folder, another spelling of a
``_target_``) fails here, and so does an entry of DIFFERENCES that no longer describes a real difference."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from monai.bundle import ConfigParser

from monai_vlseg.transforms.uncertainty import REVIEW_THRESHOLD

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = ("ua_vls", "c2seg", "lcpdn", "tifcmamba", "vm_unet", "segmamba_ct", "report_ct")
TEXT_KEYS = {"text_model", "text_len", "empty_text", "prepare_batch", "report_parser", "keep_reported_findings"}

#: The only intended differences: (bundle, aspect) -> (value, reason). Aspects: "text" (False: a text-free bundle),
#: "<file> missing" / "<file> extra" (top-level keys of that config file), "train handlers" / "validate handlers"
#: (``_target_`` sets: (missing, extra)), "evaluate metrics" (extra, missing), "stage-1 config" (its file name).
DIFFERENCES: dict[tuple[str, str], tuple[Any, str]] = {
    ("vm_unet", "text"): (False, "image-only network: no text model, tokens or shuffled-text evaluation"),
    ("segmamba_ct", "text"): (False, "image-only 3D CT network: no text model, tokens or shuffled-text evaluation"),
    ("segmamba_ct", "train.json missing"): (
        {"image_size", "in_channels"}, "3D CT: resampled to pixdim and cropped to patch_size; one HU channel"),
    ("segmamba_ct", "inference.json missing"): ({"image_size", "in_channels", "dicom_seg"}, "3D CT (see train.json); writes NIfTI masks and an overlay"),
    ("segmamba_ct", "model_config"): (
        {"pixdim", "hu_window"}, "3D CT: the voxel spacing and HU window it was trained at, in place of image_size"),
    ("segmamba_ct", "validate inferer"): ("SlidingWindowInferer", "3D volumes are inferred patch-wise with a sliding window"),
    ("segmamba_ct", "evaluate metrics"): (
        ({"val_dice_liver", "val_dice_lesion"}, {"val_count_accuracy", "val_laterality_accuracy"}),
        "multi-class liver/lesion output: per-class Dice; no text, so no text-mask consistency"),
    ("vm_unet", "evaluate.json extra"): (
        {"text_consistency"},
        "text-free network on datasets that may carry texts: the consistency metrics run only when every image has one"),
    ("segmamba_ct", "evaluate.json missing"): ({"laterality"}, "no text, so no laterality agreement to score"),
    ("c2seg", "evaluate.json extra"): (
        {"network"}, "evaluation loads model.pt whole: no stage-1 encoder checkpoint needed"),
    ("lcpdn", "train.json missing"): (
        {"lr_scheduler", "min_epochs", "patience"}, "TextDiff's recipe: constant learning rate, fixed epoch count"),
    ("lcpdn", "train handlers"): (
        ({"LrScheduleHandler", "monai_vlseg.engines.EarlyStopAfterHandler"}, set()), "constant learning rate, no early stop"),
    ("tifcmamba", "train.json missing"): (
        {"val_interval", "min_epochs", "patience", "empty_text"},
        "text-supervised: no masks in training, so no validation or early stop; every image needs its text"),
    ("tifcmamba", "inference.json missing"): ({"empty_text", "dicom_seg"}, "every image needs its text; RGB endoscopy frames, no DICOM SEG"),
    ("tifcmamba", "train handlers"): (
        ({"ValidationHandler", "monai_vlseg.engines.EarlyStopAfterHandler"}, {"CheckpointSaver"}),
        "text-supervised: no mask validation during training, the last epoch is saved"),
    ("tifcmamba", "validate handlers"): (
        ({"TensorBoardStatsHandler", "CheckpointSaver"}, set()),
        "train.json's validate section only serves evaluate.json (never run in training)"),
    ("tifcmamba", "multi_gpu_train.json missing"): (
        {"validate#sampler", "validate#dataloader#sampler", "validate#evaluator#val_handlers"}, "no validation during training"),
    ("tifcmamba", "multi_gpu_train.json extra"): (
        {"clip#network", "clip#optimizer#params", "clip#trainer#train_handlers", "train#dataloader#drop_last"},
        "the CLIP stage runs under DDP too; equal batches on every rank for the in-batch contrastive loss"),
    ("report_ct", "train.json missing"): (
        {"image_size", "in_channels", "keep_reported_findings"},
        "3D CT (see segmamba_ct); the reported-zone cut is the chest radiograph's, a 3D report is read whole"),
    ("report_ct", "inference.json missing"): (
        {"image_size", "in_channels", "keep_reported_findings"}, "3D CT (see train.json)"),
    ("report_ct", "model_config"): ({"pixdim", "hu_window"}, "3D CT: the voxel spacing and HU window, as segmamba_ct"),
    ("report_ct", "validate inferer"): (
        "monai_vlseg.engines.TextSlidingWindowInferer", "3D volumes patch-wise, the report encoded once per volume"),
    ("report_ct", "evaluate metrics"): (
        ({"val_count_agreement", "val_laterality_agreement"},
         {"val_count_accuracy", "val_laterality_accuracy", "val_negated_area"}),
        "lesion count and sides in patient space (through each mask's affine) against what the report names; the "
        "chest report parser's metrics and negations are 2D radiograph ones"),
    ("report_ct", "evaluate.json missing"): ({"laterality"}, "sides come from the affine, not an image-side convention"),
    ("report_ct", "evaluate.json extra"): (
        {"validate#postprocessing"}, "components below min_lesion_mm3 are dropped before the metrics, as in inference"),
    ("c2seg", "stage-1 config"): ("pretrain.json", "two-stage: CaCL pre-training of the image encoder"),
    ("lcpdn", "stage-1 config"): ("pretrain_diffusion.json", "two-stage: DDPM training of the diffusion UNet"),
}  # fmt: skip

#: top-level keys every train.json / inference.json has (text keys only in text-guided bundles); evaluate.json and
#: multi_gpu_train.json are override files and must have exactly theirs.
SKELETON = {
    "train.json": {
        "imports", "bundle_root", "ckpt_dir", "run_name", "resume", "overwrite", "run_dir", "output_dir", "dataset_dir",
        "datalist", "device", "amp", "torch_threads", "seed", "num_workers", "model_config", "training_state",
        "image_size", "in_channels", "batch_size", "learning_rate", "max_epochs", "min_epochs", "patience",
        "val_interval", "cache_rate", "network_def", "network", "loss", "optimizer", "lr_scheduler", "train",
        "validate", "initialize", "run", "training",
    },
    "inference.json": {
        "imports", "bundle_root", "ckpt_path", "config_mismatch", "model_config", "output_dir", "overwrite",
        "dataset_dir", "datalist", "data_split", "input_dir", "device", "amp", "torch_threads", "input_check",
        "image_size", "in_channels", "output_ext", "uncertainty", "review_uncertainty", "dicom_seg", "network_def",
        "network", "preprocessing", "dataset",
        "dataloader", "inferer", "postprocessing", "manifest", "handlers", "evaluator", "initialize", "run", "inference",
    },
    "evaluate.json": {
        "eval_split", "config_mismatch", "output_dir", "text_conditions", "laterality", "validate#dataset#data",
        "validate#dataset#cache_rate", "validate#handlers", "validate#evaluator#postprocessing",
        "validate#additional_metrics", "initialize", "run", "evaluating",
    },
    "multi_gpu_train.json": {
        "device", "network", "train#sampler", "train#dataloader#sampler", "train#dataloader#shuffle",
        "train#trainer#train_handlers", "validate#sampler", "validate#dataloader#sampler",
        "validate#evaluator#val_handlers", "initialize", "run", "finalize",
    },
}  # fmt: skip
EXACT = ("evaluate.json", "multi_gpu_train.json")
TRAIN_HANDLERS = {
    "monai_vlseg.engines.TrainingStateLoader", "monai_vlseg.engines.TrainingStateSaver", "LrScheduleHandler",
    "ValidationHandler", "monai_vlseg.engines.EarlyStopAfterHandler", "StatsHandler", "TensorBoardStatsHandler",
    "ignite.handlers.ProgressBar",
}  # fmt: skip
VALIDATE_HANDLERS = {"StatsHandler", "TensorBoardStatsHandler", "CheckpointSaver"}
EVALUATE_HANDLERS = ["CheckpointLoader", "StatsHandler", "MetricsSaver"]
EVALUATE_METRICS = {
    "val_mean_iou", "val_hd95", "val_empty_predictions", "val_count_accuracy", "val_laterality_accuracy",
    "val_calibration_error", "val_uncertainty", "val_uncertainty_auroc", "val_uncertainty_spearman",
}  # fmt: skip
#: metrics of text-guided bundles only
TEXT_METRICS = {"val_negated_area"}
#: the same expression in every multi_gpu_train.json.
DDP_VALUES = {
    "device": "$monai_vlseg.bundle.ddp_device()",
    "train#trainer#train_handlers": "$monai_vlseg.bundle.rank_zero_handlers(@train#handlers)",
    "finalize": ["$monai_vlseg.bundle.ddp_finalize()"],
}


def _diff(bundle: str, aspect: str, default: Any = None) -> Any:
    return DIFFERENCES.get((bundle, aspect), (default, ""))[0]


def _load(bundle: str, name: str) -> dict[str, Any]:
    with open(os.path.join(REPO_ROOT, "bundles", bundle, "configs", name), encoding="utf-8") as f:
        return json.load(f)


def _targets(items: list[dict[str, Any]]) -> set[str]:
    return {h["_target_"] for h in items}


def _parser(bundle: str, *names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([os.path.join(REPO_ROOT, "bundles", bundle, "configs", n) for n in names])
    parser["bundle_root"] = "/B"
    return parser


@pytest.mark.parametrize("name", sorted(SKELETON))
@pytest.mark.parametrize("bundle", BUNDLES)
def test_top_level_keys(bundle, name):
    keys = set(_load(bundle, name))
    text = _diff(bundle, "text", True)
    expected = set(SKELETON[name]) | (TEXT_KEYS if text and name not in EXACT else set())
    if name == "evaluate.json" and text:
        expected |= {"shuffle_text", "shuffle"}  # the shuffled-text control of text-guided bundles
    missing, extra = _diff(bundle, f"{name} missing", set()), _diff(bundle, f"{name} extra", set())
    assert missing <= expected and not missing & keys, f"stale DIFFERENCES entry: {bundle} {name} missing {missing & keys}"
    assert not extra & expected and extra <= keys, f"stale DIFFERENCES entry: {bundle} {name} extra {extra - keys}"
    expected = (expected - missing) | extra
    assert expected <= keys, f"{bundle}/{name} lacks {sorted(expected - keys)}"
    if name in EXACT:
        assert keys == expected, f"{bundle}/{name} has unlisted keys {sorted(keys - expected)}"
    if not text:
        assert not TEXT_KEYS & keys, f"text-free {bundle}/{name} has {sorted(TEXT_KEYS & keys)}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_handlers(bundle):
    train = _load(bundle, "train.json")
    missing, extra = _diff(bundle, "train handlers", (set(), set()))
    assert _targets(train["train"]["handlers"]) == (TRAIN_HANDLERS - missing) | extra
    missing, extra = _diff(bundle, "validate handlers", (set(), set()))
    assert _targets(train["validate"]["handlers"]) == (VALIDATE_HANDLERS - missing) | extra
    assert [h["_target_"] for h in _load(bundle, "evaluate.json")["validate#handlers"]] == EVALUATE_HANDLERS
    inferer = train["validate"]["inferer"]["_target_"]
    assert inferer == _diff(bundle, "validate inferer", "SimpleInferer")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_output_folders(bundle):
    """A training run writes into its own folder runs/<run_name>/ (checkpoints, TensorBoard logs) and ends by putting
    its model in models/; evaluation results in eval/, inference masks in outputs/."""
    train = _parser(bundle, "train.json")
    train["run_name"] = "R"
    assert train.get_parsed_content("ckpt_dir") == "/B/models"
    assert train.get_parsed_content("run_dir") == train.get_parsed_content("output_dir") == "/B/runs/R"
    for handler in [*train["train"]["handlers"], *train.get("validate", {}).get("handlers", [])]:
        if "save_dir" in handler:
            assert handler["save_dir"] == "@run_dir", (bundle, handler["_target_"])
    evaluate = _parser(bundle, "train.json", "evaluate.json")
    assert evaluate.get_parsed_content("output_dir").startswith("/B/eval/test")
    assert _load(bundle, "evaluate.json")["validate#handlers"][0]["load_path"] == "$@ckpt_dir + '/model.pt'"
    infer = _parser(bundle, "inference.json")
    assert infer.get_parsed_content("output_dir") == "/B/outputs"
    assert infer.get_parsed_content("ckpt_path") == "/B/models/model.pt"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_skips_bad_inputs_and_records_the_run(bundle):
    """A bad input is skipped (the dataset, collate and iteration of monai_vlseg.engines.skipping), every input gets
    a manifest row, masks are written atomically under unique names, and a run that skipped inputs ends non-zero."""
    infer = _load(bundle, "inference.json")
    assert infer["dataset"]["_target_"] == "monai_vlseg.engines.SkipFailedDataset"
    assert infer["dataloader"]["collate_fn"] == "$monai_vlseg.engines.skip_failed_collate"
    assert infer["evaluator"]["iteration_update"] == "$monai_vlseg.engines.skip_failed_iteration"
    assert infer["manifest"] == {
        "_target_": "monai_vlseg.engines.ManifestSaver", "output_dir": "@output_dir", "checkpoint": "@ckpt_path",
        "overwrite": "$monai_vlseg.bundle.as_flag(@overwrite)",
    }  # fmt: skip
    assert infer["handlers"][-1] == "@manifest" and infer["overwrite"] is False
    assert infer["run"] == ["$@evaluator.run()", "$@manifest.raise_if_skipped()"]
    savers = [(t["_target_"], t["keys"]) for t in infer["postprocessing"]["transforms"] if "SaveImage" in t["_target_"]]
    assert savers == [("monai_vlseg.transforms.SaveImageAtomicd", k) for k in ("pred", "prob", "uncertainty")]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_writes_probability_and_uncertainty(bundle):
    """Every bundle keeps the probabilities before the mask step, maps and scores the uncertainty in the network's
    grid (as evaluate.json does: the review threshold chosen there applies, whatever the input's resolution), inverts
    the maps with the mask (the image last: its record inverts the others), saves both maps and a heat overlay;
    ``--uncertainty false`` turns all of it off."""
    infer = _load(bundle, "inference.json")
    steps = [t["_target_"].rsplit(".", 1)[-1] for t in infer["postprocessing"]["transforms"]]
    assert steps.index("CopyItemsd") == steps.index("Activationsd") + 1
    assert steps.index("UncertaintyMapd") + 1 == steps.index("Invertd") < steps.index("SaveHeatOverlayd")
    invert = infer["postprocessing"]["transforms"][steps.index("Invertd")]
    assert invert["keys"] == ["pred", "prob", "uncertainty", "image"]
    assert invert["nearest_interp"] == [True, False, False, False]
    assert infer["uncertainty"] is True
    parser = _parser(bundle, "inference.json")
    threshold = parser.get_parsed_content("review_uncertainty")  # chosen on the bundle's demo validation split
    assert isinstance(threshold, float) and 0.0 < threshold <= 1.0
    with open(os.path.join(REPO_ROOT, "docs", "demo_accuracy.json"), encoding="utf-8") as f:
        chosen = json.load(f)["rows"][bundle]["uncertainty"]["threshold"]
    assert threshold == round(chosen, 2) or (threshold == REVIEW_THRESHOLD and chosen is None), (threshold, chosen)
    parser["uncertainty"] = "false"
    names = [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]
    assert not {"CopyItemsd", "UncertaintyMapd", "SaveHeatOverlayd"} & set(names)


@pytest.mark.parametrize("name", ["train.json", "inference.json", "evaluate.json", "multi_gpu_train.json"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_errors_end_in_one_line(bundle, name):
    """Every run first makes a bad input's error the last line of the command, not a wrapped traceback (after
    joining the process group under torchrun)."""
    first = 1 if name == "multi_gpu_train.json" else 0
    assert _load(bundle, name)["initialize"][first] == "$monai_vlseg.errors.brief_errors()"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_labels_must_fit_their_images(bundle):
    """Training and evaluation data check that a label has its image's size before anything resizes either (a 3D
    bundle checks after orienting both to RAS: a coronal series and its axial label are the same grid)."""
    train = _load(bundle, "train.json")
    if bundle in ("segmamba_ct", "report_ct"):
        transforms = train["preprocessing_transforms"]
    elif bundle == "tifcmamba":  # text-supervised: no labels in training; its validate section reads them
        transforms = train["validate"]["preprocessing"]["transforms"]
    else:
        transforms = train["train"]["deterministic_transforms"]
    targets = [t["_target_"] for t in transforms]
    check = targets.index("monai_vlseg.transforms.CheckSameSized")
    before = ("EnsureChannelFirstd", "Orientationd") if bundle == "report_ct" else ("EnsureChannelFirstd",)
    assert transforms[check]["keys"] == ["image", "label"] and targets[check - 1] in before
    resize = [i for i, t in enumerate(targets) if t in ("Resized", "Spacingd")]
    assert resize and check < min(resize)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_metrics(bundle):
    """Dice is the key metric; IoU, HD95 (and text-mask consistency) are added by evaluate.json."""
    key = _load(bundle, "train.json")["validate"]["key_metric"]
    assert list(key) == ["val_mean_dice"] and key["val_mean_dice"]["_target_"] == "MeanDice"
    metrics = _load(bundle, "evaluate.json")["validate#additional_metrics"]
    extra, missing = _diff(bundle, "evaluate metrics", (set(), set()))
    text = TEXT_METRICS if _diff(bundle, "text", True) else set()
    assert set(metrics) == ((EVALUATE_METRICS | text) - missing) | extra
    assert metrics["val_mean_iou"]["_target_"] == "MeanIoUHandler"
    hd95 = metrics["val_hd95"]["metric_fn"]  # empty predictions count as misses
    assert hd95["_target_"] == "monai_vlseg.metrics.HausdorffDistanceMissMetric" and hd95["percentile"] == 95
    if "val_laterality_accuracy" in metrics:  # the side convention of the data set: its datalist's meta.laterality
        evaluate = _load(bundle, "evaluate.json")
        assert evaluate["laterality"].startswith("$monai_vlseg.bundle.laterality_convention(@datalist, ")
        assert metrics["val_laterality_accuracy"]["left_on_image_right"] == (
            "$monai_vlseg.bundle.left_on_image_right(@laterality)")  # fmt: skip
        assert evaluate["run"][-1].endswith(", laterality=@laterality)")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_set_up(bundle):
    ddp = _load(bundle, "multi_gpu_train.json")
    for key, value in DDP_VALUES.items():
        assert ddp[key] == value, (bundle, key)
    assert ddp["initialize"][0] == "$monai_vlseg.bundle.ddp_init(@device)"
    assert ddp["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    if "validate#evaluator#val_handlers" in ddp:
        assert ddp["validate#evaluator#val_handlers"] == "$monai_vlseg.bundle.rank_zero_handlers(@validate#handlers)"


#: data-set override files: name -> (exact content, the bundles that have it, why). Each sets keys train.json has
#: and is named in its bundle's docs/README.md with the command that uses it.
DATASET_OVERRIDES: dict[str, tuple[dict[str, Any], set[str], str]] = {
    "rgb.json": ({"in_channels": 3}, {"ua_vls", "c2seg", "lcpdn"},
                 "colour data sets (Kvasir-SEG, CVC-ClinicDB, ISIC) in the text-guided bundles that default to grey"),
    "mosmed.json": ({"learning_rate": 0.0005}, {"ua_vls"}, "UA-VLS's MosMedData+ learning rate (the paper, 5e-4)"),
}  # fmt: skip
#: variants of train.json that are neither stages nor data-set overrides
VARIANTS = {
    "tifcmamba": {"supervised.json"},
    "lcpdn": {"low_data.json"},
    "vm_unet": {"lightm_unet.json", "ultralight.json"},  # the lightweight networks of the survey (issue 23)
    "segmamba_ct": {"lightm_unet_3d.json"},
    "report_ct": {"image_only.json"},  # the baseline: the same network and data with the report's fusion removed
}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_stage1_configs(bundle):
    """Two-stage bundles have one stage-1 config besides the common files, variants and data-set overrides; the
    others none."""
    common = {"train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "metadata.json", "demo.json"}
    overrides = {name for name, (_, bundles, _) in DATASET_OVERRIDES.items() if bundle in bundles}
    files = {f for f in os.listdir(os.path.join(REPO_ROOT, "bundles", bundle, "configs")) if f.endswith(".json")}
    stage1 = _diff(bundle, "stage-1 config")
    assert files - common - VARIANTS.get(bundle, set()) - overrides == ({stage1} if stage1 else set())


@pytest.mark.parametrize("name", sorted(DATASET_OVERRIDES))
def test_dataset_override_files(name):
    """Each data-set override file is where it is meant to be, sets only keys of train.json (a typo would add an
    unused key and change nothing), and its bundle's docs give the command; a text-guided bundle that reads grey
    images by default has rgb.json."""
    content, bundles, _ = DATASET_OVERRIDES[name]
    have = {b for b in BUNDLES if os.path.isfile(os.path.join(REPO_ROOT, "bundles", b, "configs", name))}
    assert have == bundles
    if name == "rgb.json":
        assert bundles == {b for b in BUNDLES if _diff(b, "text", True) and _load(b, "train.json").get("in_channels") == 1}
    for bundle in sorted(bundles):
        assert _load(bundle, name) == content, bundle
        assert set(content) <= set(_load(bundle, "train.json")), bundle
        with open(os.path.join(REPO_ROOT, "bundles", bundle, "docs", "README.md"), encoding="utf-8") as f:
            docs = f.read()
        assert re.search(rf"--config_file \S*/train\.json\S*/{re.escape(name)}", docs), (bundle, name)


def test_one_spelling_per_target():
    """A class is named the same way in every config (not ``pkg.X`` here and ``pkg.module.X`` there)."""
    spellings: dict[str, set[str]] = defaultdict(set)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str):
                spellings[target.rsplit(".", 1)[-1]].add(target)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for bundle in BUNDLES:
        for name in os.listdir(os.path.join(REPO_ROOT, "bundles", bundle, "configs")):
            if name.endswith(".json"):
                walk(_load(bundle, name))
    assert {k: v for k, v in spellings.items() if len(v) > 1} == {}


def test_differences_name_real_bundles_and_have_reasons():
    for (bundle, aspect), (_, reason) in DIFFERENCES.items():
        assert bundle in BUNDLES and reason.strip(), (bundle, aspect)


def test_no_comprehensions_or_statement_chains_in_expressions():
    """Config expressions call named functions (monai_vlseg.bundle, monai_vlseg.utils) instead of holding
    comprehensions or ``;``-chained statements a reader must decode."""
    found = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}#{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}#{i}")
        elif isinstance(node, str) and node.startswith("$") and (re.search(r"\bfor\b.+\bin\b", node) or ";" in node):
            found.append(f"{where}: {node}")

    for bundle in BUNDLES:
        for name in os.listdir(os.path.join(REPO_ROOT, "bundles", bundle, "configs")):
            if name.endswith(".json"):
                walk(_load(bundle, name), f"{bundle}/{name}")
    assert found == []


#: the configs that train (a run folder each): train.json, its DDP variant, and the stage-1 configs
TRAINING = {bundle: [("train.json",), ("train.json", "multi_gpu_train.json")] for bundle in BUNDLES}
TRAINING["c2seg"].append(("pretrain.json",))
TRAINING["lcpdn"].append(("train.json", "pretrain_diffusion.json"))
START_RUN = "$monai_vlseg.bundle.start_run(@run_dir, @model_config, @resume)"


def _merged(bundle: str, *names: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in names:
        merged.update(_load(bundle, name))
    return merged


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_runs_resume_and_publish(bundle):
    """Every training config starts a run (its record), resumes and saves the whole training state with the handlers
    of monai_vlseg.engines, and ends by publishing its checkpoints; the objects of ``training_state`` are the
    handlers meant (early stop, best-model saver)."""
    for names in TRAINING[bundle]:
        cfg = _merged(bundle, *names)
        handlers = cfg.get("train#handlers") or cfg["train"]["handlers"]
        targets = [h["_target_"] for h in handlers]
        assert targets[0] == "monai_vlseg.engines.TrainingStateLoader", names
        saver = targets.index("monai_vlseg.engines.TrainingStateSaver")
        # after what changes state at an epoch's end, before what only logs
        assert not {"LrScheduleHandler", "ValidationHandler", "monai_vlseg.engines.EarlyStopAfterHandler"} & set(
            targets[saver:]), names  # fmt: skip
        assert handlers[0]["load_dict"] == handlers[saver]["save_dict"] == "@training_state"
        assert handlers[0]["load_path"] == "$monai_vlseg.bundle.resume_checkpoint(@run_dir, @resume)"
        state = cfg["training_state"]
        assert state["model"] == "@network" and state["optimizer"] == "@optimizer"
        assert ("lr_scheduler" in state) == ("lr_scheduler" in cfg), names
        meant = {"early_stop": "monai_vlseg.engines.EarlyStopAfterHandler", "best_model": "CheckpointSaver"}
        for key, target in meant.items():
            expected = [f"@train#handlers#{i}" for i, t in enumerate(targets) if t == target]
            if key == "best_model":
                val = (cfg.get("validate") or {}).get("handlers", []) if "ValidationHandler" in targets else []
                expected = [f"@validate#handlers#{i}" for i, h in enumerate(val) if h["_target_"] == target]
            assert ([state[key]] if key in state else []) == expected, (names, key)
        assert START_RUN in cfg["initialize"], names
        assert cfg["run"][-1].startswith("$monai_vlseg.bundle.publish_checkpoint(@run_dir, "), names
        assert cfg["run"][-1].endswith(", @overwrite)"), names


@pytest.mark.parametrize("bundle", BUNDLES)
def test_model_config_is_recorded_and_checked(bundle):
    """``model_config`` (what a checkpoint depends on) holds the input size, every key ``network_def`` reads and the
    network's signature; train.json and inference.json hold the same; evaluation and inference check it."""
    train, infer = _load(bundle, "train.json"), _load(bundle, "inference.json")
    assert train["model_config"] == infer["model_config"]
    config = train["model_config"]
    reads = set(re.findall(r"@([A-Za-z_]\w*)", json.dumps(train["network_def"])))
    size = _diff(bundle, "model_config", {"image_size", "in_channels"})
    text = {"text_model", "text_len"} if _diff(bundle, "text", True) else set()
    assert set(config) == reads | size | text | {"network_def"}
    assert all(config[k] == f"@{k}" for k in config if k != "network_def")
    assert config["network_def"] == "$monai_vlseg.bundle.network_signature(@network_def)"
    check = "$monai_vlseg.bundle.check_model_config({}, @model_config, @config_mismatch)"
    assert _load(bundle, "evaluate.json")["initialize"][-1] == check.format("@ckpt_dir + '/model.pt'")
    assert infer["initialize"][-1] == check.format("@ckpt_path")
    assert _load(bundle, "evaluate.json")["config_mismatch"] == infer["config_mismatch"] == "error"


TEXT_BUNDLES = tuple(b for b in BUNDLES if _diff(b, "text", True))
TEXT_LEN_CHECK = "$monai_vlseg.bundle.check_text_len("


@pytest.mark.parametrize("bundle", TEXT_BUNDLES)
def test_runs_check_that_texts_fit_text_len(bundle):
    """Every run of a text-guided bundle (training, stage 1, evaluation, inference) starts by counting the texts it
    reads with its tokenizer and warning when some are longer than text_len."""
    names = ["train.json", "multi_gpu_train.json", "evaluate.json", "inference.json"]
    names += [_diff(bundle, "stage-1 config")] if _diff(bundle, "stage-1 config") else []
    for name in names:
        calls = [x for x in _load(bundle, name)["initialize"] if x.startswith(TEXT_LEN_CHECK)]
        assert len(calls) == 1 and "@text_model, @text_len, " in calls[0], (bundle, name)


def _default_texts(bundle: str, parser: str | None) -> list[str]:
    """The longest texts the bundle's default data set can hand its network (every one its generator can write)."""
    import itertools

    from monai_vlseg.transforms.report import CHEST_ZONES, chest_zone_sentence

    if parser == "chest":  # whatever the report, the chest parser hands on the canonical sentence: at most six zones
        return [chest_zone_sentence(list(CHEST_ZONES))]
    if bundle == "report_ct":  # the longest header and, for every lesion group, its longest sentence
        from monai_vlseg.datasets.synthetic import ct_reports

        assert "ensure_report_ct_datalist" in _load(bundle, "train.json")["datalist"]
        groups = ["liver right lobe", "liver left lobe", "kidney right", "kidney left", "spleen"]
        rngs = [np.random.default_rng(s) for s in range(40)]
        longest = [max((ct_reports._sentence(g, [24.0] * 3, r) for r in rngs), key=len) for g in groups]
        return [f"{max(ct_reports._HEADERS, key=len)} FINDINGS: {' '.join(longest)}"]
    from monai_vlseg.datasets.synthetic import polyp

    assert "ensure_polyp_demo_datalist" in _load(bundle, "train.json")["datalist"]
    texts = [
        t.format(size=s, Size=s.capitalize(), colour=c, shape=sh, a_shape=("an " if sh[0] in "aeiou" else "a ") + sh,
                 loc=polyp.location_phrase(r, col))
        for t, s, c, sh, r, col in itertools.product(
            polyp._TEMPLATES, polyp.SIZES, polyp.COLOURS, polyp.SHAPES, ("upper", "middle", "lower"),
            ("left", "centre", "right"))
    ]  # fmt: skip
    return texts


@pytest.mark.parametrize("bundle", TEXT_BUNDLES)
def test_text_len_covers_the_longest_text_of_the_default_data(bundle):
    """No text of a bundle's default data set is cut before the network reads it (issue 19: LCPDN's 10 tokens cut
    the report before its locations)."""
    from monai_vlseg.transforms.report import PrepareReportd

    train, infer = _load(bundle, "train.json"), _load(bundle, "inference.json")
    assert infer["text_len"] == train["text_len"] and "text_len" not in _load(bundle, "demo.json")
    parser = train["report_parser"]
    count = PrepareReportd(parser=parser, tokenizer=train["text_model"]).token_count
    assert max(count(t) for t in _default_texts(bundle, parser)) <= train["text_len"]
