"""What a perfect report reader scores on the report-guided CT demo: the mask each report selects from a volume's
lesion instances (by the groups it names), with the volume's own report and with reports shuffled across volumes
(:func:`monai_vlseg.bundle.condition_items`), scored against the volume's own label. The ceiling of the shuffled-text
control of bundles/report_ct (empty labels are left out, as in its evaluation). Also the text-blind ceiling: every
lesion of the volume, whatever the report says.

    python scripts/report_ct_oracle.py bundles/report_ct/data/demo_report_ct --split test
"""

from __future__ import annotations

import argparse
import json
import os
import re

import nibabel as nib
import numpy as np

from monai_vlseg.bundle import condition_items
from monai_vlseg.datasets.synthetic.ct_reports import GROUP_PATTERNS, finding_groups

_TAGS = {"training": "Tr", "validation": "Val", "test": "Ts"}


def oracle_dice(root: str, split: str, condition: str) -> list[float]:
    """Per volume of ``split``: the Dice of the mask the ``condition`` report selects (NaN for an empty label);
    ``condition="all lesions"``: of every lesion (a perfect segmenter that ignores the report)."""
    findings = json.load(open(os.path.join(root, "findings.json"), encoding="utf-8"))
    own = condition_items(os.path.join(root, "datalist.json"), split, "right")
    read_as = "right" if condition == "all lesions" else condition
    used = condition_items(os.path.join(root, "datalist.json"), split, read_as)
    out = []
    for item, report in zip(own, used):
        stem = os.path.basename(item["image"]).split(".")[0]
        instances = np.asarray(nib.load(os.path.join(root, f"lesions{_TAGS[split]}", stem + ".nii.gz")).dataobj)
        label = np.asarray(nib.load(item["label"]).dataobj) > 0
        groups = finding_groups(findings[stem])
        named = [i for g, p in GROUP_PATTERNS.items() if re.search(p, report["text"]) for i in groups.get(g, [])]
        pred = instances > 0 if condition == "all lesions" else np.isin(instances, np.asarray(named, int) + 1)
        out.append(float("nan") if not label.any() else 2 * (pred & label).sum() / (pred.sum() + label.sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the demo data folder (generate_report_ct_dataset)")
    parser.add_argument("--split", default="test", choices=list(_TAGS))
    args = parser.parse_args()
    for condition in ("right", "shuffled", "all lesions"):
        d = oracle_dice(os.path.abspath(args.root), args.split, condition)
        print(f"{args.split} {condition}: mean Dice {np.nanmean(d):.3f} over {int(np.sum(~np.isnan(d)))} volumes")


if __name__ == "__main__":
    main()
