"""Phi_T of a TIFCMamba checkpoint: which words of each description its text mask M_T keeps.

    .venv/bin/python scripts/tifc_text_mask.py                    # the demo model (models/model.pt), test split
    .venv/bin/python scripts/tifc_text_mask.py --ckpt bundles/tifcmamba/runs/demo_accuracy/models/model.pt \\
        --split validation --examples 5

The descriptions of a datalist split go through the bundle's own keyword selector and tokenizer (the
``SelectKeywordsd`` / ``TokenizeTextd`` entries of ``train#deterministic_transforms``), then through
``TIFCMamba.text_mask``. Over all content tokens (no start/end/padding) it reports the ROC AUC of M_T against the
keyword selector's choice (MONAI's ``compute_roc_auc``), precision / recall / F1 of ``M_T > 0.5``, and mean M_T on
the keyword tokens and on the others; ``--json`` writes them to a file. No image is read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist
from monai.metrics import compute_roc_auc

CONFIGS = "bundles/tifcmamba/configs"
TEXT_TRANSFORMS = ("SelectKeywordsd", "TokenizeTextd")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=[f"{CONFIGS}/train.json", f"{CONFIGS}/demo.json"])
    ap.add_argument("--ckpt", default=None, help="state dict (default: the config's ckpt_dir/model.pt)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--examples", type=int, default=3, help="descriptions printed with the words M_T keeps")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)

    parser = ConfigParser()
    parser.read_config(args.config)
    net = parser.get_parsed_content("network_def")
    ckpt = args.ckpt or os.path.join(parser.get_parsed_content("ckpt_dir"), "model.pt")
    if not os.path.isfile(ckpt):
        sys.exit(f"{ckpt}: no checkpoint (train the bundle first, or pass --ckpt)")
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    net.eval()
    steps = parser["train"]["deterministic_transforms"]
    text_tf = [
        parser.get_parsed_content(f"train#deterministic_transforms#{i}")
        for i, t in enumerate(steps)
        if str(t.get("_target_", "")).endswith(TEXT_TRANSFORMS)
    ]
    if [type(t).__name__ for t in text_tf] != list(TEXT_TRANSFORMS):
        sys.exit(f"expected {TEXT_TRANSFORMS} in train#deterministic_transforms, found {[type(t).__name__ for t in text_tf]}")
    items = load_decathlon_datalist(parser.get_parsed_content("datalist"), False, args.split)
    batch = []
    for item in items:
        d = {"text": item.get("text")}
        for t in text_tf:
            d = t(d)
        batch.append(d)
    cols = {k: torch.stack([torch.as_tensor(d[k]) for d in batch]) for k in
            ("input_ids", "attention_mask", "keyword_ids", "keyword_mask")}
    with torch.no_grad():
        m_t, member = net.text_mask(cols["input_ids"], cols["attention_mask"], cols["keyword_ids"], cols["keyword_mask"])
    content = cols["attention_mask"].bool() & ~net.clip.special_tokens(cols["input_ids"])
    y, s = member[content].float(), m_t[content]
    pred = s > 0.5
    tp = (pred & (y > 0)).sum().item()
    precision, recall = tp / max(int(pred.sum()), 1), tp / max(int(y.sum()), 1)
    out = {
        "checkpoint": ckpt,
        "split": args.split,
        "descriptions": len(items),
        "content_tokens": int(content.sum()),
        "keyword_fraction": float(y.mean()),
        "auc": float(compute_roc_auc(s, y)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "mean_mt_keyword": float(s[y > 0].mean()),
        "mean_mt_other": float(s[y == 0].mean()),
    }
    print(json.dumps(out, indent=2))
    tokenizer = text_tf[1].tokenize.tokenizer
    for i, d in enumerate(batch[: args.examples]):
        kept = [tok for tok, keep in zip(tokenizer.convert_ids_to_tokens(cols["input_ids"][i].tolist()),
                                         (m_t[i] > 0.5) & content[i]) if keep]
        print(f"\n{d['text']!r}\n  keyword: {d['keyword']!r}\n  M_T > 0.5: {' '.join(kept)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
