"""How well a bundle's ``needs_review`` flags pick out its wrong masks: an inference run's ``report_review.csv``
joined, per image, with an evaluation run's per-image scores (``val_*_raw.csv``) of the same images.

Prints, for each reason family (the report check of :class:`monai_vlseg.transforms.CheckReportFindingsd`, the
uncertainty score, any flag): how many images it flags, their mean Dice and the others', and how many of the images
whose mask disagrees with the report's named count / sides (the evaluation's count and laterality agreement) it
catches::

    python -m monai.bundle run inference --config_file bundles/report_ct/configs/inference.json \\
        --output_dir /tmp/rct_infer
    python -m monai.bundle run evaluating --config_file "['bundles/report_ct/configs/train.json',\\
        'bundles/report_ct/configs/evaluate.json','bundles/report_ct/configs/demo.json']" --output_dir /tmp/rct_eval
    python scripts/review_flags.py /tmp/rct_infer /tmp/rct_eval
"""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np

#: reason families: a substring of ``report_warnings`` that marks each
FAMILIES = {"report check": "the report names", "uncertainty": "uncertainty ", "any flag": ""}


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    return name.split(".")[0]


def _raw(folder: str, metric: str) -> dict[str, float]:
    path = os.path.join(folder, f"val_{metric}_raw.csv")
    with open(path, newline="", encoding="utf-8") as f:
        return {_stem(r["filename"]): float(r["mean"]) for r in csv.DictReader(f)}


def review_table(inference_dir: str, evaluation_dir: str) -> list[dict[str, object]]:
    """One row per reason family (see the module docstring)."""
    path = os.path.join(inference_dir, "report_review.csv")
    with open(path, newline="", encoding="utf-8") as f:
        review = {_stem(r["image"]): r for r in csv.DictReader(f)}
    dice, count, side = (_raw(evaluation_dir, m) for m in ("mean_dice", "count_agreement", "laterality_agreement"))
    stems = sorted(set(review) & set(dice))
    if not stems:
        raise SystemExit(f"no image is in both {path} and {evaluation_dir}'s val_mean_dice_raw.csv")
    rows = []
    for family, marker in FAMILIES.items():
        flagged = [
            s for s in stems
            if review[s]["needs_review"] == "True" and marker in (review[s]["report_warnings"] or "")
        ]  # fmt: skip
        rest = [s for s in stems if s not in flagged]
        wrong_count = [s for s in stems if count.get(s) == 0.0]
        wrong_side = [s for s in stems if side.get(s) == 0.0]
        rows.append({
            "flag": family,
            "images": len(stems),
            "flagged": len(flagged),
            "Dice flagged": float(np.mean([dice[s] for s in flagged])) if flagged else float("nan"),
            "Dice not flagged": float(np.mean([dice[s] for s in rest])) if rest else float("nan"),
            "count wrong, flagged": f"{len(set(wrong_count) & set(flagged))}/{len(wrong_count)}",
            "side wrong, flagged": f"{len(set(wrong_side) & set(flagged))}/{len(wrong_side)}",
            "flagged, count and side right": len([s for s in flagged if s not in wrong_count + wrong_side]),
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inference_dir", help="an inference run's output folder (report_review.csv)")
    parser.add_argument("evaluation_dir", help="an evaluation run's output folder (val_*_raw.csv), same images")
    args = parser.parse_args()
    rows = review_table(args.inference_dir, args.evaluation_dir)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
