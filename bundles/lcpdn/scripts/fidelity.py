"""Fidelity figures of the LCPDN paper configuration (train.json's network_def with the paper's encoder shapes):
trainable and frozen parameters vs the paper's 4.52M trainable, for CPRFL's image tokens from the frozen UNet (the
default, ``vision_model: "unet"``) and from CLIP ViT-B/16 (the paper's,
``--vision_model openai/clip-vit-base-patch16``), and inference time per 256x256 image (three UNet passes, plus the
encoder pass that gives the default image tokens).

    OMP_NUM_THREADS=1 python bundles/lcpdn/scripts/fidelity.py [--device cpu|cuda] [--repeats 2]

``--repeats 0`` counts parameters only. Encoders are built with random weights in the shapes of
openai/clip-vit-base-patch16 and Bio_ClinicalBERT (BERT-base), so the counts and times equal those of the real towers
without downloading them (the random CLIP tower is ``vision_encoder: "random"``, for counting only).
"""

import argparse
import gc
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
VARIANTS = {
    "unet_image_tokens (default)": {},
    "clip_vit_b16_image_tokens (paper)": {
        "network_def#vision_encoder": "random", "network_def#vision_config": CLIP_B16,
    },  # fmt: skip
}


def _count(module, trainable=None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    result = {"paper_trainable_params": 4.52e6}
    for name, overrides in VARIANTS.items():
        parser = ConfigParser()
        parser.read_config(os.path.join(HERE, "..", "configs", "train.json"))
        parser.update({"network_def#text_config": BERT_BASE, **overrides})
        net = parser.get_parsed_content("network_def").eval().to(args.device)
        d = net.diffusion
        groups = {"cprfl": d.cprfl, "reduce_1x1": net.reduce, "ltfr": net.ltfr, "classifier": net.classifier}
        entry = {
            "trainable_params": _count(net, True),
            "trainable_by_part": {k: _count(m, True) for k, m in groups.items()},
            "frozen_unet_params": _count(net.diffusion.unet),
            "frozen_clip_params": _count(net.diffusion.vision),
            "frozen_text_params": _count(net.diffusion.text_encoder),
        }
        if args.repeats > 0:
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
            entry.update(device=args.device, image_size=size, text_len=text_len, threads=torch.get_num_threads(),
                         seconds_per_image=times, early_exit=net.early_exit)  # fmt: skip
        result[name] = entry
        del net, parser
        gc.collect()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
