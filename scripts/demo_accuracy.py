"""Accuracy of every bundle on the demo data, trained with its documented small-demo override.

For each bundle (``bundles/*/configs/train.json`` with a ``configs/demo.json``, or ``--bundles``):

1. trains with ``train.json`` + ``demo.json`` through ``python -m monai.bundle run training`` in a subprocess; the
   training run keeps its whole state in a run folder of its own (``bundles/<name>/runs/<start time>/``), and its
   model and TensorBoard events go to ``bundles/<name>/runs/demo_accuracy/`` (through the ``ckpt_dir`` /
   ``output_dir`` ids when the config has them; ``--overwrite true`` replaces the checkpoints of the previous time);
2. evaluates the best checkpoint on the test split with ``evaluate.json`` (Dice, mIoU, HD95 and, for
   text-guided bundles, the text-mask consistency accuracies), and for text-guided bundles (metadata inputs
   list ``input_ids``) once more with ``--shuffle_text True``: the Dice drop is the figure that shows the text
   is used;
3. evaluates the same checkpoint on the validation split (right text only) for the per-image uncertainty scores
   and Dice, and chooses there the review threshold that best separates the poor segmentations (Dice < 0.5;
   Youden's J), which the test split then measures (:func:`uncertainty_row`);
4. writes one table, ``docs/demo_accuracy.md`` (+ ``docs/demo_accuracy.json``, which keeps the rows of bundles
   not run this time and which ``scripts/benchmark.py --plot`` reads), and one PNG of training curves per bundle
   (``docs/demo_curves_<name>.png``: training loss per epoch and validation Dice, read from the TensorBoard
   event files, else from the StatsHandler log lines).

    .venv/bin/python scripts/demo_accuracy.py                      # every bundle
    .venv/bin/python scripts/demo_accuracy.py --bundles ua_vls     # one; others' rows are kept
    .venv/bin/python scripts/demo_accuracy.py --bundles ua_vls --skip-train   # re-evaluate the last run
    .venv/bin/python scripts/demo_accuracy.py --bundle-checkpoints   # evaluate what each bundle's demo run left

Two-stage bundles run their stage 1 first (``configs/pretrain.json``, ``configs/pretrain_diffusion.json``: see
:data:`STAGE1`), into the same run folder.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = os.path.join(REPO, "bundles")
RUN_SUBDIR = os.path.join("runs", "demo_accuracy")
#: stage-1 configs of two-stage bundles -> (workflow id, config files merged before demo.json); run before training,
#: into the same ckpt_dir, where stage 2 finds their output (c2seg: models/encoder.pt, lcpdn: models/diffusion.pt)
STAGE1 = {
    "pretrain.json": ("pretraining", ("pretrain.json",)),
    "pretrain_diffusion.json": ("training", ("train.json", "pretrain_diffusion.json")),
}

#: text conditions of evaluate.json's summary -> row keys
CONDITIONS = {"right": "test", "shuffled": "test_shuffled_text", "reworded": "test_reworded", "negated": "test_negated"}

#: summary.json keys -> table columns
METRICS = {
    "val_mean_dice": "Dice",
    "val_mean_iou": "mIoU",
    "val_hd95": "HD95 (px)",
    "val_count_accuracy": "count acc.",
    "val_laterality_accuracy": "laterality acc.",
}


def discover(names: Sequence[str] | None = None) -> list[str]:
    """Bundles that have ``configs/train.json`` and ``configs/demo.json`` (all, or the ``names`` asked for). A name
    ``<bundle>/<variant>`` (e.g. ``vm_unet/ultralight``) is the bundle with ``configs/<variant>.json`` merged last (a
    network variant); variants run only when asked for."""
    found = sorted(
        os.path.basename(os.path.dirname(os.path.dirname(p)))
        for p in glob.glob(os.path.join(BUNDLES, "*", "configs", "train.json"))
    )
    variants = [n for n in names or () if "/" in n]
    for v in variants:
        b, _, f = v.partition("/")
        if not os.path.isfile(os.path.join(BUNDLES, b, "configs", f"{f}.json")):
            raise SystemExit(f"error: no bundles/{b}/configs/{f}.json for the variant '{v}'")
    found = sorted(found + variants)
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise SystemExit(f"error: no bundles/<name>/configs/train.json for {missing}; found {found}")
        found = [n for n in found if n in names]
    return [n for n in found if os.path.isfile(os.path.join(BUNDLES, n.split("/")[0], "configs", "demo.json"))]


def is_text_guided(bundle: str) -> bool:
    """True when the bundle's metadata lists ``input_ids`` among the network inputs."""
    with open(os.path.join(BUNDLES, bundle.split("/")[0], "configs", "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    return "input_ids" in meta.get("network_data_format", {}).get("inputs", {})


def config_ids(files: Sequence[str]) -> set[str]:
    """Top-level ids of the merged configs (read as JSON, nothing is instantiated)."""
    ids: set[str] = set()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            ids.update(json.load(fh))
    return ids


def _run(cmd: list[str], log_path: str, timeout: float | None) -> tuple[int, float]:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[demo_accuracy] timed out after {timeout} s\n")
            rc = 124
    return rc, time.perf_counter() - t0


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def read_curves(train_dir: str, log_path: str) -> dict[str, list[tuple[int, float]]]:
    """``{"loss": [(epoch, mean loss)], "val_dice": [(epoch, dice)]}`` from TensorBoard events, else the log."""
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "val_dice": []}
    events = sorted(glob.glob(os.path.join(train_dir, "**", "events.out.tfevents.*"), recursive=True))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        scalars: dict[str, list[tuple[int, float]]] = {}
        for ev in events:
            acc = EventAccumulator(ev, size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                scalars.setdefault(tag, []).extend((s.step, s.value) for s in acc.Scalars(tag))
        dice_tag = next((t for t in ("val_mean_dice", "val_dice") if t in scalars), None)
        if dice_tag:
            curves["val_dice"] = sorted(scalars[dice_tag])
        loss = sorted(scalars.get("train_loss", []))
        epochs = max((len(v) for k, v in scalars.items() if k.startswith("train_") and k != "train_loss"), default=0)
        epochs = epochs or len(curves["val_dice"])
        if loss and epochs:  # iteration-level loss -> per-epoch mean
            per = max(1, round(len(loss) / epochs))
            curves["loss"] = [
                (e + 1, sum(v for _, v in loss[e * per : (e + 1) * per]) / len(loss[e * per : (e + 1) * per]))
                for e in range(epochs)
                if loss[e * per : (e + 1) * per]
            ]
        # no per-epoch tag to count epochs by (no validation, e.g. text-supervised training): the log has them
    if not curves["loss"] or not curves["val_dice"]:
        curves_log = _curves_from_log(log_path)
        for k in curves:
            curves[k] = curves[k] or curves_log[k]
    return curves


def _curves_from_log(log_path: str) -> dict[str, list[tuple[int, float]]]:
    """Parse MONAI StatsHandler lines: ``Epoch: 3/60, Iter: 2/12 -- train_loss: 0.51`` and
    ``Epoch[3] Metrics -- val_mean_dice: 0.42``."""
    losses: dict[str, dict[int, list[float]]] = {}  # tag -> epoch -> values (a stage-1 tag such as clip_loss too)
    dice: list[tuple[int, float]] = []
    it_re = re.compile(r"Epoch: (\d+)/\d+, Iter: \d+/\d+ -- (\w*loss\w*): ([-\d.eE+naif]+)")
    ep_re = re.compile(r"Epoch\[(\d+)\] Metrics -- .*?val_mean_dice: ([-\d.eE+naif]+)")
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if m := it_re.search(line):
                    losses.setdefault(m.group(2), {}).setdefault(int(m.group(1)), []).append(float(m.group(3)))
                elif m := ep_re.search(line):
                    dice.append((int(m.group(1)), float(m.group(2))))
    except OSError:
        pass
    loss = losses.get("train_loss") or next(iter(losses.values()), {})
    return {"loss": [(e, sum(v) / len(v)) for e, v in sorted(loss.items())], "val_dice": dice}


def plot_curves(bundle: str, curves: dict[str, list[tuple[int, float]]], path: str) -> str | None:
    """Two panels (training loss per epoch, validation Dice per epoch) in one PNG."""
    if not curves["loss"] and not curves["val_dice"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, title in ((axes[0], "loss", "training loss (epoch mean)"), (axes[1], "val_dice", "validation Dice")):
        if curves[key]:
            x, y = zip(*curves[key])
            ax.plot(x, y, marker="." if len(x) < 40 else None)
        else:
            ax.text(0.5, 0.5, "none logged\n(e.g. a bundle that trains without masks)", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{bundle}: demo-data training")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _bundle_output_dir(bundle: str) -> str:
    """The TensorBoard folder of the run that wrote the bundle's own ``models/model.pt`` (its run folder, named in
    ``models/model.json``), relative to the repository; a checkpoint without that record: ``bundles/<name>/eval``,
    where runs wrote their events before they had run folders."""
    record = os.path.join(BUNDLES, bundle, "models", "model.json")
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            run_dir = json.load(f).get("run_dir")
        if run_dir and os.path.isdir(run_dir):
            return os.path.relpath(run_dir, REPO)
    return os.path.join("bundles", bundle, "eval")


def run_bundle(bundle: str, args: argparse.Namespace, seed: int | None = None) -> dict[str, Any]:
    """Train (unless ``--skip-train``) and evaluate one bundle; returns its table row. ``seed``: the configs' ``seed``
    (training and stage 1), into a run folder of its own (``runs/demo_accuracy_seed<N>``) unless it is 0."""
    name, _, network = bundle.partition("/")
    cfg = os.path.join("bundles", name, "configs")
    train, demo, evaluate = (os.path.join(cfg, f) for f in ("train.json", "demo.json", "evaluate.json"))
    extra = [os.path.join(cfg, f"{network}.json")] if network else []  # a network variant: merged last
    run_dir = os.path.join("bundles", name, RUN_SUBDIR + (f"_{network}" if network else "") + (f"_seed{seed}" if seed else ""))  # relative: cwd is REPO
    ids = config_ids([os.path.join(REPO, f) for f in (train, demo, *extra)])
    seeded = ["--seed", str(seed)] if seed is not None and "seed" in ids else []
    own = [k for k in ("ckpt_dir", "output_dir") if k not in ids]
    if args.bundle_checkpoints:  # the checkpoint the bundle's own demo run left in its ckpt_dir; its own curves
        own = own or ["ckpt_dir", "output_dir"]
    redirect = [] if own else ["--ckpt_dir", os.path.join(run_dir, "models")]
    replace = [] if own else ["--overwrite", "true"]  # the checkpoints of this script's previous time
    train_dir = os.path.join(run_dir, "train") if not own else _bundle_output_dir(bundle)
    row: dict[str, Any] = {
        "bundle": bundle,
        "text_guided": is_text_guided(bundle),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "run_dir": run_dir,
        "seed": seed if seeded else None,
        "note": "" if not own else f"config has no {own}: used the bundle's own folders",
    }
    if args.bundle_checkpoints:
        row["note"] = ("not retrained here: evaluated the checkpoint its own demo run left in "
                       f"bundles/{bundle}/models; training time and epochs of that run are in its docs")  # fmt: skip
    py = [sys.executable, "-m", "monai.bundle", "run"]
    train_cmd = py + ["training", "--config_file", json.dumps([train, demo, *extra])] + redirect + replace + seeded
    if not own:
        train_cmd += ["--output_dir", train_dir]
    train_cmd += args.override
    row["train_command"] = " ".join(shlex.quote(c) for c in ["python"] + train_cmd[1:])
    log_path = os.path.join(REPO, run_dir, "train.log")
    if not (args.skip_train or args.bundle_checkpoints):
        for stage_file, (workflow, files) in STAGE1.items():
            if not os.path.isfile(os.path.join(REPO, cfg, stage_file)):
                continue
            stage_cmd = py + [workflow, "--config_file", json.dumps([os.path.join(cfg, f) for f in files] + [demo])]
            stage_cmd += redirect + replace + seeded + args.override
            print(f"[{bundle}] stage 1 ({stage_file})", flush=True)
            stage_log = os.path.join(REPO, run_dir, f"{os.path.splitext(stage_file)[0]}.log")
            rc, secs = _run(stage_cmd, stage_log, args.timeout)
            row["stage1_time_s"] = row.get("stage1_time_s", 0.0) + secs
            if rc:
                row["error"] = f"stage 1 ({stage_file}) failed (exit {rc}); see {os.path.relpath(stage_log, REPO)}"
                print(f"[{bundle}] {row['error']}\n{_tail(stage_log)}", file=sys.stderr, flush=True)
                return row
        print(f"[{bundle}] training: {row['train_command']}", flush=True)
        for old in glob.glob(os.path.join(REPO, train_dir, "events.out.tfevents.*")) if not own else []:
            os.remove(old)  # curves of this run only
        rc, secs = _run(train_cmd, log_path, args.timeout)
        row["train_time_s"] = secs
        row["load_avg_after_training"] = round(os.getloadavg()[0], 2)
        if rc:
            row["error"] = f"training failed (exit {rc}); see {os.path.relpath(log_path, REPO)}"
            print(f"[{bundle}] {row['error']}\n{_tail(log_path)}", file=sys.stderr, flush=True)
            return row
    else:
        row["train_time_s"] = None
    # one evaluation run: evaluate.json scores every text condition the datalist has (right text, shuffled,
    # reworded, negated; image-only bundles: the right one) and writes them all into one summary.json
    out_dir = os.path.join(run_dir, "eval", "test")
    cmd = py + ["evaluating", "--config_file", json.dumps([train, evaluate, demo, *extra])] + redirect
    cmd += ["--output_dir", out_dir] + args.override
    print(f"[{bundle}] evaluating", flush=True)
    elog = os.path.join(REPO, run_dir, "eval_test.log")
    rc, _ = _run(cmd, elog, args.timeout)
    summary_path = os.path.join(REPO, out_dir, "summary.json")
    if rc or not os.path.isfile(summary_path):
        row["error"] = f"evaluation failed (exit {rc}); see {os.path.relpath(elog, REPO)}"
        print(f"[{bundle}] {row['error']}\n{_tail(elog)}", file=sys.stderr, flush=True)
        return row
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    row["eval_command"] = " ".join(shlex.quote(c) for c in ["python"] + cmd[1:])
    for condition, key in CONDITIONS.items():
        if condition in summary.get("conditions", {}):
            row[key] = summary["conditions"][condition]
    if "test_shuffled_text" in row:
        row["dice_drop_shuffled"] = row["test"]["val_mean_dice"] - row["test_shuffled_text"]["val_mean_dice"]
    # the validation split, right text only: per-image uncertainty and Dice for choosing the review threshold
    val_dir = os.path.join(run_dir, "eval", "validation")
    vcmd = py + ["evaluating", "--config_file", json.dumps([train, evaluate, demo, *extra])] + redirect
    vcmd += ["--output_dir", val_dir, "--eval_split", "validation", "--text_conditions", "['right']"] + args.override
    print(f"[{bundle}] evaluating the validation split", flush=True)
    rc, _ = _run(vcmd, os.path.join(REPO, run_dir, "eval_validation.log"), args.timeout)
    if rc == 0:
        row["uncertainty"] = uncertainty_row(os.path.join(REPO, val_dir), os.path.join(REPO, out_dir))
        row["uncertainty"]["val_command"] = " ".join(shlex.quote(c) for c in ["python"] + vcmd[1:])
    curves = read_curves(os.path.join(REPO, train_dir), log_path)
    row["epochs"] = len(curves["val_dice"]) or len(curves["loss"])
    if not seed:  # the main table's run
        png = plot_curves(bundle, curves, os.path.join(args.docs, f"demo_curves_{bundle.replace('/', '-')}.png"))
        row["curves_png"] = os.path.relpath(png, args.docs) if png else None
    return row


def _per_image(folder: str, metric: str) -> dict[str, float]:
    """``{image: value}`` from MetricsSaver's ``<metric>_raw.csv`` (its last column: the mean over the classes)."""
    import csv

    path = os.path.join(folder, f"{metric}_raw.csv")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t" if "\t" in f.readline() else ","))
    return {r[0]: float(r[-1]) for r in rows if len(r) > 1}  # the header line was read above


def youden_threshold(scores: Sequence[float], poor: Sequence[bool]) -> float | None:
    """The score threshold (flag ``score > t``) with the largest TPR - FPR for finding the poor images; ``None``
    when the split has no poor or no good image (nothing to separate)."""
    n_poor, n_good = sum(poor), len(poor) - sum(poor)
    if not n_poor or not n_good:
        return None
    cuts = sorted(set(scores))
    candidates = [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [cuts[0] - 1e-6]

    def j(t: float) -> float:
        tp = sum(s > t and p for s, p in zip(scores, poor))
        fp = sum(s > t and not p for s, p in zip(scores, poor))
        return tp / n_poor - fp / n_good

    return max(candidates, key=lambda t: (j(t), t))


def uncertainty_row(val_dir: str, test_dir: str, poor_dice: float = 0.5) -> dict[str, Any]:
    """The threshold chosen on validation and what it flags on test: the number flagged, the poor test images found,
    and the mean Dice of the flagged and the unflagged test images. The threshold is Youden's where validation holds
    poor and good images, else the largest validation score (flag only what is more uncertain than every validation
    image)."""
    out: dict[str, Any] = {}
    v_s, v_d = _per_image(val_dir, "val_uncertainty"), _per_image(val_dir, "val_mean_dice")
    t_s, t_d = _per_image(test_dir, "val_uncertainty"), _per_image(test_dir, "val_mean_dice")
    keys = [k for k in v_s if k in v_d]
    out["val_images"], out["val_poor"] = len(keys), sum(v_d[k] < poor_dice for k in keys)
    thr = youden_threshold([v_s[k] for k in keys], [v_d[k] < poor_dice for k in keys]) if keys else None
    out["rule"] = "Youden" if thr is not None else None
    if thr is None and keys:  # no poor (or only poor) validation image: flag what is beyond every validation score
        thr, out["rule"] = max(v_s[k] for k in keys), "validation max"
    out["threshold"] = thr
    keys = [k for k in t_s if k in t_d]
    out["test_images"], out["test_poor"] = len(keys), sum(t_d[k] < poor_dice for k in keys)
    if thr is not None and keys:
        flagged = [k for k in keys if t_s[k] > thr]
        kept = [k for k in keys if k not in flagged]
        out["flagged"] = len(flagged)
        out["poor_flagged"] = sum(t_d[k] < poor_dice for k in flagged)
        out["dice_flagged"] = sum(t_d[k] for k in flagged) / len(flagged) if flagged else None
        out["dice_unflagged"] = sum(t_d[k] for k in kept) / len(kept) if kept else None
    return out


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


#: issue 17's targets for a text-guided bundle on its demo test split: (label, test(row) -> met?)
TARGETS = (
    ("reworded within 0.05", lambda r: abs(_get(r, "test_reworded", "val_mean_dice") - _get(r, "test", "val_mean_dice")) <= 0.05),
    ("shuffled >= 0.3 lower", lambda r: r.get("dice_drop_shuffled", float("nan")) >= 0.3),
    ("negated area < 0.05", lambda r: _get(r, "test_negated", "val_negated_area") < 0.05),
    ("count >= 0.9", lambda r: _get(r, "test", "val_count_accuracy") >= 0.9),
    ("laterality >= 0.95", lambda r: _get(r, "test", "val_laterality_accuracy") >= 0.95),
)  # fmt: skip


#: the 3D report-guided bundle scores count and laterality in patient space under other names
_AGREEMENT = {"val_count_accuracy": "val_count_agreement", "val_laterality_accuracy": "val_laterality_agreement"}


def _get(row: dict[str, Any], condition: str, metric: str) -> float:
    found = row.get(condition, {})
    v = found.get(metric, found.get(_AGREEMENT.get(metric, "")))
    return float("nan") if v is None else float(v)


def seed_table(seed_rows: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Markdown lines: every text-guided bundle's runs over training seeds, each against :data:`TARGETS`."""
    runs = {b: {k: r for k, r in v.items() if "test_reworded" in r} for b, v in seed_rows.items()}
    runs = {b: v for b, v in runs.items() if v}
    if not runs:
        return []
    lines = [
        "",
        "## Spread over training seeds",
        "",
        "The same training and evaluation with other values of the configs' `seed` (`--seed N`: weight initialisation,",
        "shuffling, augmentation; the demo data stay the same). Each run against issue 17's targets: reworded Dice",
        "within 0.05 of the right-text Dice, shuffled text at least 0.3 lower, negated area below 0.05, count accuracy",
        "at least 0.9 and laterality at least 0.95 (24 test images: one image is 0.042 of an accuracy).",
        "",
        "| bundle | seed | Dice right | Dice reworded | Dice drop (shuffled) | negated area | count acc. | laterality acc. "
        "| targets missed | run date |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(runs):
        for seed in sorted(runs[name], key=int):
            r = runs[name][seed]
            missed = [label for label, ok in TARGETS if not ok(r)]
            lines.append("| " + " | ".join([
                name, seed, _fmt(_get(r, "test", "val_mean_dice")), _fmt(_get(r, "test_reworded", "val_mean_dice")),
                _fmt(r.get("dice_drop_shuffled")), _fmt(_get(r, "test_negated", "val_negated_area")),
                _fmt(_get(r, "test", "val_count_accuracy")), _fmt(_get(r, "test", "val_laterality_accuracy")),
                ", ".join(missed) or "none", r.get("date", ""),
            ]) + " |")  # fmt: skip
    for name in sorted(runs):
        cmd = next((r["train_command"] for _, r in sorted(runs[name].items()) if r.get("seed")), None)
        if cmd:
            lines.append(f"\nExample ({name}, one seed): `{cmd}`")
    return lines


def uncertainty_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The "Uncertainty" section: calibration and ranking on test, the threshold chosen on validation."""
    lines = [
        "",
        "## Uncertainty",
        "",
        "Inference writes, beside each mask, the probability map, the normalised-entropy map and a heat overlay, and one",
        "score per image (`monai_vlseg.transforms.uncertainty`: the mean entropy over the mask's boundary band and the",
        "unsure pixels); above `review_uncertainty` the output is flagged `needs_review`. Here, on the test split with",
        "the right text: ECE = expected calibration error of the pixel probabilities (MONAI `CalibrationError`, 20",
        "bins, mean over images; the foreground classes for segmamba_ct); AUROC = the score as a detector of the",
        "images with Dice < 0.5 (0.5 is chance; — when the split has none or only such images); Spearman = rank",
        "correlation of score and Dice (negative is useful). The threshold is chosen on the validation split (Youden's",
        "J for Dice < 0.5; where validation has no poor image, its largest score) and only then applied to the test",
        "split; each bundle's `inference.json` `review_uncertainty` is its value here. Scores are relative to a model:",
        "choose the threshold again on your own validation split (`evaluate.json` with `--eval_split validation` writes",
        "the per-image scores and Dice; `scripts/demo_accuracy.py`'s `uncertainty_row` does the rest).",
        "",
        "| bundle | ECE | AUROC (Dice < 0.5) | Spearman (score, Dice) | mean score | poor test images | threshold "
        "(validation; rule) | flagged on test | poor among flagged | Dice flagged / unflagged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(rows):
        r = rows[name]
        t, u = r.get("test", {}), r.get("uncertainty")
        if "val_calibration_error" not in t or not u:
            continue
        both = f"{_fmt(u.get('dice_flagged'))} / {_fmt(u.get('dice_unflagged'))}" if "flagged" in u else "—"
        lines.append("| " + " | ".join([
            name, _fmt(t.get("val_calibration_error")), _fmt(t.get("val_uncertainty_auroc")),
            _fmt(t.get("val_uncertainty_spearman")), _fmt(t.get("val_uncertainty")),
            f"{u.get('test_poor', 0)} of {u.get('test_images', 0)}",
            f"{_fmt(u.get('threshold'))} ({u.get('rule') or '—'})",
            str(u.get("flagged", "—")), str(u.get("poor_flagged", "—")), both,
        ]) + " |")  # fmt: skip
    return lines


def write_table(rows: dict[str, dict[str, Any]], docs: str, command: str,
                seed_rows: dict[str, dict[str, dict[str, Any]]] | None = None) -> str:
    """``docs/demo_accuracy.md`` from all rows (this run's and the kept ones)."""
    lines = [
        "# Accuracy on the demo data",
        "",
        "Every bundle trained with its small-demo override (`configs/train.json` + `configs/demo.json`, after its",
        "stage 1 for two-stage bundles) on its demo set — the synthetic chest-X-ray-like set (`monai_vlseg.datasets.synthetic.cxr`;",
        "report texts name some lesions and not the distractors) for the 2D text-guided bundles, the RGB polyp set",
        "(`monai_vlseg.datasets.synthetic.polyp`) for tifcmamba and vm_unet (since 2026-12-04; before, vm_unet's rows",
        "were on the chest set), synthetic CT volumes (`monai_vlseg.datasets.synthetic.ct`; mean Dice",
        "over liver and lesion) for segmamba_ct — and evaluated on its test split with `configs/evaluate.json`",
        "(best-validation-Dice checkpoint). A network variant `<bundle>/<variant>` is its bundle with",
        "`configs/<variant>.json` merged last, on the bundle's demo set unless the variant file names another",
        "(`vm_unet/lightm_unet`: the chest set); its training command (below) shows any width override.",
        "\"Dice drop (shuffled text)\" is Dice minus the Dice with the texts permuted across test images (the",
        "`shuffled` condition of the same evaluation run): the part of the result that comes from the text. Count /",
        "laterality accuracy: the predicted mask's number of lesions / lung sides agree with the image's own report",
        "(`monai_vlseg.metrics.consistency`; for report_ct in patient space through the affine,",
        "`monai_vlseg.metrics.findings`). HD95 counts an empty prediction as a miss (the image diagonal) in rows",
        "run from 2026-12-03 on; earlier rows used MONAI's HD95, which leaves empty predictions out.",
        "Times are wall-clock on the machine named in each row's run, usually shared with other jobs (under load).",
        "",
        f"Produced by `{command}` (rows of bundles not run then are kept from earlier runs).",
        "",
        "| bundle | text | Dice | mIoU | HD95 (px) | count acc. | laterality acc. | Dice shuffled text | "
        "Dice drop (shuffled text) | epochs | train time (min) | run date | curves |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(rows):
        r = rows[name]
        if "error" in r:
            lines.append(f"| {name} | {'yes' if r.get('text_guided') else 'no'} | " + " | ".join(["—"] * 9)
                         + f" | {r.get('date', '')} | {r['error']} |")  # fmt: skip
            continue
        t, s = r.get("test", {}), r.get("test_shuffled_text", {})
        secs = r.get("train_time_s")
        png = r.get("curves_png")
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    "yes" if r.get("text_guided") else "no",
                    _fmt(t.get("val_mean_dice")),
                    _fmt(t.get("val_mean_iou")),
                    _fmt(t.get("val_hd95"), 1),
                    _fmt(_get(r, "test", "val_count_accuracy")),
                    _fmt(_get(r, "test", "val_laterality_accuracy")),
                    _fmt(s.get("val_mean_dice")),
                    _fmt(r.get("dice_drop_shuffled")),
                    _fmt(r.get("epochs")),
                    _fmt(secs / 60 if secs else None, 1),
                    r.get("date", ""),
                    f"![{name}]({png})" if png else "—",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Reports in other wording",
        "",
        "One `evaluate.json` run scores the test images under four texts: the right report (the training template), the",
        "reports permuted across images (shuffled; count and laterality are still scored against the image's own",
        "report), the same findings in ordinary radiology wording no training text uses (`test_reworded`), and the right",
        "report plus negations of the zones that hold an unnamed lesion (`test_negated`; \"negated area\" is the",
        "fraction of those lesions' area the mask covers). Text-guided chest bundles read the report with",
        "`monai_vlseg.transforms.PrepareReportd` (chest parser) and cut the mask to the named sides with",
        "`KeepReportedFindingsd`. HD95 counts an empty prediction as a miss (the image diagonal); \"empty\" is their number.",
        "",
        "| bundle | Dice right | Dice shuffled | Dice reworded | Dice negated | negated area | count acc. | "
        "laterality acc. | HD95 (px) | empty | evaluate command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(rows):
        r = rows[name]
        if "test_reworded" not in r:
            continue
        t, s, w, n = (r.get(k, {}) for k in ("test", "test_shuffled_text", "test_reworded", "test_negated"))
        lines.append("| " + " | ".join([
            name, _fmt(t.get("val_mean_dice")), _fmt(s.get("val_mean_dice")), _fmt(w.get("val_mean_dice")),
            _fmt(n.get("val_mean_dice")), _fmt(n.get("val_negated_area")), _fmt(t.get("val_count_accuracy")),
            _fmt(t.get("val_laterality_accuracy")), _fmt(t.get("val_hd95"), 1), _fmt(t.get("val_empty_predictions"), 0),
            f"`{r.get('eval_command', '')}`",
        ]) + " |")  # fmt: skip
    lines += uncertainty_table(rows)
    lines += seed_table(seed_rows or {})
    lines += ["", "Training commands (machine; 1-minute load average when training ended):", ""]
    for name in sorted(rows):
        r = rows[name]
        if r.get("train_command"):
            load = r.get("load_avg_after_training")
            where = f"{r.get('machine', '?')}; load {'not recorded' if load is None else load}"
            lines.append(f"- {name} ({where}): `{r['train_command']}`" + (f" ({r['note']})" if r.get("note") else ""))
    lines.append("")
    path = os.path.join(docs, "demo_accuracy.md")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", nargs="+", default=None, help="bundle names (default: every bundle with demo.json)")
    p.add_argument("--docs", default=os.path.join(REPO, "docs"), help="where the table, JSON and PNGs go")
    p.add_argument("--skip-train", action="store_true", help="evaluate the checkpoint of the last run only")
    p.add_argument("--bundle-checkpoints", action="store_true",
                   help="no training: evaluate the checkpoint in each bundle's own ckpt_dir (left by its documented "
                        "demo run) and plot that run's curves")  # fmt: skip
    p.add_argument("--timeout", type=float, default=None, help="seconds per subprocess")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="train and evaluate once per seed (the configs' `seed`); seed 0 is the main table's run, the "
                        "others go to runs/demo_accuracy_seed<N> and the seed-spread table")  # fmt: skip
    p.add_argument("--override", nargs=argparse.REMAINDER, default=[],
                   help="extra `--id value` overrides passed to every bundle run (last on the command line)")  # fmt: skip
    args = p.parse_args(argv)
    names = discover(args.bundles)
    if not names:
        print("no bundles with configs/demo.json found", file=sys.stderr)
        return 1
    os.makedirs(args.docs, exist_ok=True)
    store = os.path.join(args.docs, "demo_accuracy.json")
    rows: dict[str, dict[str, Any]] = {}
    seed_rows: dict[str, dict[str, dict[str, Any]]] = {}  # bundle -> seed -> row
    if os.path.isfile(store):
        with open(store, encoding="utf-8") as f:
            stored = json.load(f)
        rows, seed_rows = stored.get("rows", {}), stored.get("seed_rows", {})
        for name, row in rows.items():  # rows from before seeds were recorded were trained with the configs' seed 0
            if "error" not in row and row.get("train_command") and "--seed" not in row["train_command"]:
                seed_rows.setdefault(name, {}).setdefault("0", row)
    failed: list[str] = []
    done_rows: set[str] = set()  # what this run wrote: only these replace what the store holds when it is written
    done_seeds: set[tuple[str, str]] = set()
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    command = " ".join(["python", "scripts/demo_accuracy.py"] + list(sys.argv[1:] if argv is None else argv))
    for name, seed in [(n, s) for n in names for s in (args.seeds or [None])]:
        try:
            row = run_bundle(name, args, seed)
        except Exception as e:  # noqa: BLE001 - a half-built bundle is reported in its row, the others still run
            row = {"bundle": name, "text_guided": False, "error": f"{type(e).__name__}: {e}"[:300],
                   "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
            print(f"[{name}] {row['error']}", file=sys.stderr, flush=True)
        row["machine"] = machine
        previous = rows.get(name, {})
        if args.skip_train and "error" not in row and previous.get("train_command"):
            # the checkpoint is the last run's: its training figures stay with the row
            for k in ("train_time_s", "stage1_time_s", "load_avg_after_training", "machine"):
                if k in previous:
                    row[k] = previous[k]
            row["note"] = (f"re-evaluated {row['date']} with --skip-train; trained {previous.get('date', '?')}"
                           + (f"; {previous['note']}" if previous.get("note") else ""))  # fmt: skip
        if not seed:  # seed 0 / the configs' own: the main table's row
            rows[name] = row
            done_rows.add(name)
        if "error" in row:
            failed.append(name)
        else:  # the configs' own seed is 0
            seed_rows.setdefault(name, {})[str(seed or 0)] = row
            done_seeds.add((name, str(seed or 0)))
        if os.path.isfile(store):  # rows another run wrote meanwhile (two runs at once: other bundles or seeds) stay
            with open(store, encoding="utf-8") as f:
                latest = json.load(f)
            rows = {**latest.get("rows", {}), **{n: r for n, r in rows.items() if n in done_rows}}
            merged = latest.get("seed_rows", {})
            for n, by_seed in seed_rows.items():
                merged.setdefault(n, {}).update({k: r for k, r in by_seed.items() if (n, k) in done_seeds})
            seed_rows = merged
        with open(store + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "seed_rows": seed_rows}, f, indent=2)
        os.replace(store + ".tmp", store)
        t = row.get("test", {})
        print(
            f"[{name}{f' seed {seed}' if seed else ''}] " + (row["error"] if "error" in row else
            f"Dice {_fmt(t.get('val_mean_dice'))} mIoU {_fmt(t.get('val_mean_iou'))} HD95 {_fmt(t.get('val_hd95'), 1)}"
            f" drop(shuffled) {_fmt(row.get('dice_drop_shuffled'))}"),
            flush=True,
        )  # fmt: skip
    print(write_table(rows, args.docs, command, seed_rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
