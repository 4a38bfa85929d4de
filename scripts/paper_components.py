"""Parameter counts behind the "default vs the paper's own components" table of every bundle's docs.

For each bundle the ``network_def`` of ``configs/train.json`` is instantiated with MONAI's ``ConfigParser`` twice:

* ``default``: as the config stands (offline text tower: the packaged all-MiniLM-L6-v2; vision towers and encoders
  with random initial weights);
* ``paper``: the same config with the paper's pretrained towers in their place. They cannot be downloaded here, so
  each is built from a ``transformers`` config of the same architecture with **random weights** (a parameter count
  does not depend on the weights): ``BertConfig()`` (BERT-base, 30522-token vocabulary) for CXR-BERT,
  ``BertConfig(vocab_size=28996)`` for Clinical BioBERT (``emilyalsentzer/Bio_ClinicalBERT``, BioBERT's cased
  vocabulary), ``CLIPTextConfig()`` for the text tower of CLIP ViT-B/32 and ViT-B/16 (the two share it),
  ``CLIPVisionConfig(patch_size=16)`` for CLIP ViT-B/16's image tower, ``CLIPConfig(vision_config={"patch_size": 16})``
  for both towers of CLIP ViT-B/16.

Bundles whose paper has no pretrained tower (``vm_unet``: the paper's ImageNet VMamba weights have the same shapes as
the random ones; ``segmamba_ct``: trained from scratch) have one row. Counts are printed as JSON (per variant: total,
trainable as the segmentation stage trains it, frozen, and per component).

    OMP_NUM_THREADS=1 python scripts/paper_components.py [--bundles ua_vls c2seg ...] [--out counts.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

#: BertConfig() (BERT-base) in the fields that set the parameter count; CXR-BERT has this shape.
BERT_BASE = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2,
}  # fmt: skip
#: Clinical BioBERT (emilyalsentzer/Bio_ClinicalBERT): BERT-base with BioBERT's 28996-token cased vocabulary.
CLINICAL_BERT = {**BERT_BASE, "vocab_size": 28996}
#: CLIP ViT-B/16's image tower (CLIPVisionConfig defaults are ViT-B/32's; only the patch size differs).
CLIP_B16_VISION = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 224, "patch_size": 16,
}  # fmt: skip


def _count(module: torch.nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


#: per bundle: {variant: config overrides}, and the named components of an instantiated network.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "ua_vls": {"default": {}, "paper": {"network_def#text_config": BERT_BASE}},
    "c2seg": {"default": {}, "paper": {"network_def#text_config": {"model_type": "clip_text_model"}}},
    "lcpdn": {
        "default": {},
        "paper": {"network_def#vision_encoder": "random", "network_def#vision_config": CLIP_B16_VISION,
                  "network_def#text_config": CLINICAL_BERT},  # fmt: skip
    },
    "tifcmamba": {"default": {}, "paper": {"clip_config": {"vision_config": {"patch_size": 16}}}},
    "vm_unet": {"default": {}},
    "segmamba_ct": {"default": {}},
}
COMPONENTS: dict[str, dict[str, Callable[[Any], torch.nn.Module | None]]] = {
    "ua_vls": {"vision encoder (ConvNeXt)": lambda n: n.vision, "text tower": lambda n: n.text_encoder},
    "c2seg": {"image encoder (CNN + KAN)": lambda n: n.encoder, "text tower": lambda n: n.text_encoder},
    "lcpdn": {
        "diffusion UNet": lambda n: n.diffusion.unet,
        "CPRFL vision tower (default: none, the UNet's own features)": lambda n: n.diffusion.vision,
        "text tower": lambda n: n.diffusion.text_encoder,
        "CPRFL": lambda n: n.diffusion.cprfl,
    },
    "tifcmamba": {"CLIP towers": lambda n: n.clip},
    "vm_unet": {},
    "segmamba_ct": {},
}


def count_bundle(bundle: str, overrides: dict[str, Any]) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(REPO, "bundles", bundle, "configs", "train.json"))
    parser.update(overrides)
    t0 = time.perf_counter()
    net = parser.get_parsed_content("network_def", instantiate=True)
    out: dict[str, Any] = {
        "total": _count(net),
        "trainable": _count(net, trainable_only=True),
        "components": {name: _count(get(net)) for name, get in COMPONENTS[bundle].items()},
    }
    out["frozen"] = out["total"] - out["trainable"]
    out["overrides"] = overrides
    out["build_s"] = round(time.perf_counter() - t0, 1)
    del net
    gc.collect()
    return out


def reference_towers() -> dict[str, int]:
    """The paper towers alone, from their transformers configs (random weights), as a cross-check of the rows."""
    from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel
    from transformers import CLIPVisionConfig, CLIPVisionModel

    builders = {
        "BertModel(BertConfig()) [CXR-BERT shape]": lambda: BertModel(BertConfig()),
        "BertModel(BertConfig(vocab_size=28996)) [Clinical BioBERT shape]": lambda: BertModel(
            BertConfig(vocab_size=28996)
        ),
        "CLIPTextModel(CLIPTextConfig()) [CLIP ViT-B/32 or B/16 text tower]": lambda: CLIPTextModel(CLIPTextConfig()),
        "CLIPVisionModel(CLIPVisionConfig(patch_size=16)) [CLIP ViT-B/16 image tower]": lambda: CLIPVisionModel(
            CLIPVisionConfig(patch_size=16)
        ),
        "CLIPModel(CLIPConfig(vision_config={'patch_size': 16})) [CLIP ViT-B/16]": lambda: CLIPModel(
            CLIPConfig(vision_config={"patch_size": 16})
        ),
    }
    result = {}
    for name, build in builders.items():
        model = build()
        result[name] = _count(model)
        del model
        gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundles", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-reference", action="store_true", help="skip the stand-alone tower counts")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    result: dict[str, Any] = {
        "command": "python scripts/paper_components.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "bundles": {},
    }
    for bundle in args.bundles:
        result["bundles"][bundle] = {v: count_bundle(bundle, o) for v, o in VARIANTS[bundle].items()}
        print(f"{bundle}: done", file=sys.stderr, flush=True)
    if not args.no_reference:
        result["reference_towers"] = reference_towers()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
