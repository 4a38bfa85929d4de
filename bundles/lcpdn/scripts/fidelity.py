"""Fidelity figures of the LCPDN paper configuration (train.json's network_def with the paper's encoder shapes):
trainable parameters vs the paper's 4.52M, and inference time per 256x256 image (three UNet passes).

    OMP_NUM_THREADS=1 python bundles/lcpdn/scripts/fidelity.py [--device cpu|cuda] [--repeats 2]

Encoders are built with random weights in the shapes of openai/clip-vit-base-patch16 and Bio_ClinicalBERT
(BERT-base), so the counts and times equal those of the real towers without downloading them.
"""

import argparse
import json
import os
import time

import torch
from monai.bundle import ConfigParser

HERE = os.path.dirname(os.path.abspath(__file__))
CLIP_B16 = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "image_size": 224, "patch_size": 16}  # fmt: skip
BERT_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "vocab_size": 28996}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    parser = ConfigParser()
    parser.read_config(os.path.join(HERE, "..", "configs", "train.json"))
    parser.update({"network_def#vision_config": CLIP_B16, "network_def#text_config": BERT_BASE})
    net = parser.get_parsed_content("network_def").eval().to(args.device)
    groups = {
        "cprfl": net.diffusion.cprfl,
        "reduce_1x1": net.reduce,
        "ltfr": net.ltfr,
        "classifier": net.classifier,
    }
    counts = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in groups.items()}
    result = {
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "trainable_by_part": counts,
        "paper_trainable_params": 4.52e6,
        "frozen_unet_params": sum(p.numel() for p in net.diffusion.unet.parameters()),
        "frozen_clip_params": sum(p.numel() for p in net.diffusion.vision.parameters()),
        "frozen_text_params": sum(p.numel() for p in net.diffusion.text_encoder.parameters()),
    }
    size = parser.get_parsed_content("image_size")
    text_len = parser.get_parsed_content("text_len")
    x = torch.rand(1, 1, *size, device=args.device)
    ids = torch.randint(1000, 2000, (1, text_len), device=args.device)
    mask = torch.ones_like(ids)
    times = []
    with torch.no_grad():
        for i in range(args.repeats + 1):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            net(x, ids, mask)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first call is a warm-up
                times.append(time.perf_counter() - t0)
    result.update(device=args.device, image_size=size, threads=torch.get_num_threads(),
                  seconds_per_image=times, early_exit=net.early_exit)  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
