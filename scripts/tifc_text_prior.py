"""How much of the answer the polyp demo's descriptions give away: a mask drawn from the text alone, no image.

    .venv/bin/python scripts/tifc_text_prior.py                       # the demo datalist, test split, 64 px
    .venv/bin/python scripts/tifc_text_prior.py --split validation --json prior.json

Each description of the split becomes :func:`monai_vlseg.datasets.synthetic.polyp.described_disc`: a disc of the
named size class at the centre of the named 3 x 3 cell. It is scored against the label as ``evaluate.json`` scores a
model: the label read by MONAI's loader, resized (nearest) to ``--image-size``, Dice, IoU and HD95 (pixels) by MONAI's
metrics (foreground channel; the disc is never empty). The result is the "text-only prior" of the tifcmamba docs: a text-supervised model on these
descriptions is trained with this much of the mask handed to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from monai_vlseg.datasets.synthetic.polyp import described_disc, ensure_polyp_demo_datalist  # noqa: E402

DEMO_DIR = os.path.join(REPO_ROOT, "bundles", "tifcmamba", "data", "demo_polyp")


def text_prior_scores(datalist: str, split: str = "test", image_size: int = 64) -> dict:
    """Per-image Dice / IoU / HD95 of the described disc against the label, and their means (Dice, IoU with standard
    errors)."""
    load = Compose([
        LoadImaged("label", image_only=True), EnsureChannelFirstd("label"),
        Resized("label", spatial_size=(image_size, image_size), mode="nearest"),
    ])  # fmt: skip
    dice, iou, hd95 = [], [], []
    for item in load_decathlon_datalist(datalist, True, split):
        label = (load({"label": item["label"]})["label"] > 0).float()[None]  # (1, 1, W, H): MONAI's PIL layout
        disc = torch.from_numpy(described_disc(item["text"], image_size, image_size).T.copy()).float()[None, None]
        dice.append(float(compute_dice(disc, label, include_background=True)))
        iou.append(float(compute_iou(disc, label, include_background=True)))
        hd95.append(float(compute_hausdorff_distance(disc, label, include_background=True, percentile=95)))
    n = len(dice)
    if not n:
        raise SystemExit(f"{datalist}: no items in '{split}'")

    def mean_se(v: list[float]) -> tuple[float, float]:
        return float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(n)) if n > 1 else 0.0

    (md, sd), (mi, si) = mean_se(dice), mean_se(iou)
    return {"datalist": datalist, "split": split, "image_size": image_size, "images": n, "mean_dice": md,
            "dice_se": sd, "mean_iou": mi, "iou_se": si, "mean_hd95": float(np.mean(hd95)), "dice": dice}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datalist", default=None, help="a polyp demo datalist (default: the bundle's, made if missing)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--image-size", type=int, default=64, help="side the labels are resized to (demo.json: 64)")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    datalist = args.datalist or ensure_polyp_demo_datalist(DEMO_DIR)
    out = text_prior_scores(datalist, args.split, args.image_size)
    print(f"text-only disc prior on {out['images']} '{args.split}' images at {args.image_size} px: "
          f"mDice {out['mean_dice']:.3f} (SE {out['dice_se']:.3f}), mIoU {out['mean_iou']:.3f} (SE {out['iou_se']:.3f}), "
          f"HD95 {out['mean_hd95']:.1f} px")  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
