"""Choose, on the validation split, the smallest lesion a report-guided 3D bundle keeps (``min_lesion_mm3``).

A predicted mask's connected components below ``min_lesion_mm3`` (MONAI ``RemoveSmallObjectsd``, 26-connected, in
mm3 of the network's grid) are dropped before the mask is saved or scored: fragments, and the edges of a decoy the
report does not name, otherwise count as extra lesions. This script runs the bundle's checkpoint once over the
*validation* split (never the test split), then scores every candidate threshold on those predictions: Dice, lesion
count and laterality agreement (:class:`monai_vlseg.metrics.FindingsAgreementMetric`). It prints the table and the
threshold with the best count + laterality agreement (ties: the higher Dice, then the smaller threshold); set that
value as the bundle's ``min_lesion_mm3`` (``configs/demo.json`` for the demo model) and evaluate on test.

    .venv/bin/python scripts/choose_min_lesion.py --bundle report_ct
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CANDIDATES = (0, 250, 500, 750, 1000, 1500, 2000)


def validation_predictions(bundle: str, configs: list[str], overrides: dict) -> list[tuple]:
    """``[(pred, label, named_count, named_sides)]`` over the validation split: one-hot masks (MetaTensors on the
    network's grid) of the bundle's checkpoint, before any small-lesion removal."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(REPO, "bundles", bundle, "configs", c) for c in configs])
    parser.update({"eval_split": "validation", "min_lesion_mm3": 0, **overrides})
    parser.update({"validate#handlers": [parser.get("validate#handlers")[0]]})  # the CheckpointLoader only
    parser.get_parsed_content("initialize")
    evaluator = parser.get_parsed_content("validate#evaluator")
    from monai_vlseg.engines.handlers import _preds_and_items

    kept: list[tuple] = []

    def keep(engine) -> None:
        preds, items = _preds_and_items(engine, "pred")
        labels, _ = _preds_and_items(engine, "label")
        for p, y, b in zip(preds, labels, items):
            kept.append((p.detach().cpu(), y.detach().cpu(), int(b["named_count"]), str(b["named_sides"])))

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, keep)
    evaluator.run()
    return kept


def score(kept: list[tuple], min_mm3: float, pixdim: list[float]) -> dict[str, float]:
    """Mean Dice, count and laterality agreement of the kept predictions after removing lesions below ``min_mm3``."""
    import torch
    from monai.metrics import DiceMetric
    from monai.transforms import RemoveSmallObjects

    from monai_vlseg.metrics.findings import FindingsAgreementMetric

    remove = RemoveSmallObjects(min_size=min_mm3, connectivity=3, by_measure=True, pixdim=pixdim)
    dice = DiceMetric(include_background=False)
    count, side = FindingsAgreementMetric("count"), FindingsAgreementMetric("laterality")
    for pred, label, n, sides in kept:
        fg = pred[1:2] if min_mm3 <= 0 else remove(pred[1:2])
        pred = pred.clone()
        pred[1:2], pred[0:1] = fg, 1 - fg
        dice(pred[None], label[None])
        count([pred], [(n, sides)])
        side([pred], [(n, sides)])
    return {"dice": float(dice.aggregate()), "count": float(count.aggregate()), "laterality": float(side.aggregate())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="report_ct")
    ap.add_argument("--configs", default="train.json,evaluate.json,demo.json", help="merged in this order")
    ap.add_argument("--candidates", default=",".join(map(str, CANDIDATES)), help="thresholds in mm3")
    ap.add_argument("--set", default="{}", help="JSON of further config overrides, e.g. '{\"ckpt_dir\": \"...\"}'")
    args = ap.parse_args(argv)
    kept = validation_predictions(args.bundle, args.configs.split(","), json.loads(args.set))
    if not kept:
        print("the validation split is empty: nothing to choose on", file=sys.stderr)
        return 1
    pixdim = [float(v) for v in kept[0][0].pixdim]
    rows = [(float(c), score(kept, float(c), pixdim)) for c in args.candidates.split(",")]
    print(f"{args.bundle}: validation split, {len(kept)} volumes, grid {pixdim} mm")
    print("| min_lesion_mm3 | Dice | count agreement | laterality agreement |\n|---|---|---|---|")
    for c, s in rows:
        print(f"| {c:g} | {s['dice']:.3f} | {s['count']:.3f} | {s['laterality']:.3f} |")
    best = max(rows, key=lambda r: (r[1]["count"] + r[1]["laterality"], r[1]["dice"], -r[0]))
    print(f"chosen on validation: min_lesion_mm3 = {best[0]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
