"""Export a bundle's text-guided network with its text inputs to TorchScript or ONNX.

``python -m monai.bundle ckpt_export`` traces a network with a single image tensor, which for a text-guided network
exports only the empty-prompt path. This tool does the same job with MONAI's own converters
(:func:`monai.networks.convert_to_torchscript`, :func:`monai.networks.convert_to_onnx`, both verifying the exported
model against the eager one) but traces with every input named in the metadata's ``network_data_format`` —
the image plus ``input_ids`` and ``attention_mask`` from the bundle's tokenizer::

    python -m monai_vlseg.export --config_file bundles/ua_vls/configs/inference.json --format torchscript
    python -m monai_vlseg.export --config_file "['bundles/ua_vls/configs/inference.json','bundles/ua_vls/configs/demo.json']" --format onnx

The TorchScript file is written with :func:`monai.networks.save_net_with_metadata` (metadata and inference config
embedded), as ``ckpt_export`` does; the exported model is called ``model(image, input_ids, attention_mask)``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import save_net_with_metadata
from monai.networks import convert_to_onnx, convert_to_torchscript

from monai_vlseg.transforms.text import TokenizeText

__all__ = ["example_inputs", "load_bundle_network", "export_network"]

EXAMPLE_TEXT = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."


def _config_files(config_file: str | Sequence[str]) -> list[str]:
    if isinstance(config_file, str) and config_file.strip().startswith("["):
        return list(ast.literal_eval(config_file))
    return [config_file] if isinstance(config_file, str) else list(config_file)


def load_bundle_network(
    config_file: str | Sequence[str], ckpt_file: str | None = None, meta_file: str | None = None, **override: Any
) -> tuple[torch.nn.Module, ConfigParser]:
    """Build ``network_def`` from the bundle config (+ overrides) and load ``ckpt_file`` (a model-zoo checkpoint
    ``{"model": state_dict}`` or a bare state dict). Returns the eval-mode network and the parser."""
    files = _config_files(config_file)
    parser = ConfigParser()
    parser.read_config(files)
    meta_file = meta_file or os.path.join(os.path.dirname(os.path.abspath(files[0])), "metadata.json")
    parser.read_meta(meta_file)
    for k, v in override.items():
        parser[k] = v
    net = parser.get_parsed_content("network_def")
    if ckpt_file is None:
        ckpt_file = os.path.join(parser.get_parsed_content("bundle_root"), "models", "model.pt")
    if not os.path.isfile(ckpt_file):
        raise FileNotFoundError(f"checkpoint '{ckpt_file}' not found: train the bundle first or pass --ckpt_file.")
    state = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return net.eval(), parser


def example_inputs(parser: ConfigParser, text: str = EXAMPLE_TEXT) -> dict[str, torch.Tensor]:
    """One example of every network input named in the metadata (image random, text tokenised for real)."""
    inputs = parser.get("_meta_")["network_data_format"]["inputs"]
    img = inputs["image"]
    out = {"image": torch.rand(1, img["num_channels"], *img["spatial_shape"])}
    if "input_ids" in inputs:
        tok = TokenizeText(
            tokenizer=parser.get_parsed_content("text_model"), max_length=inputs["input_ids"]["spatial_shape"][0]
        )
        ids, mask = tok(text)
        out["input_ids"], out["attention_mask"] = ids.unsqueeze(0), mask.unsqueeze(0)
    return out


def export_network(
    config_file: str | Sequence[str],
    filepath: str | None = None,
    fmt: str = "torchscript",
    ckpt_file: str | None = None,
    meta_file: str | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    **override: Any,
) -> str:
    """Export, verify against eager (rtol/atol) and save; returns the written path."""
    net, parser = load_bundle_network(config_file, ckpt_file, meta_file, **override)
    inputs = example_inputs(parser)
    names = list(inputs)
    if filepath is None:
        ext = ".ts" if fmt == "torchscript" else ".onnx"
        filepath = os.path.join(parser.get_parsed_content("bundle_root"), "models", "model" + ext)
    os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
    if fmt == "torchscript":
        ts = convert_to_torchscript(
            net, inputs=list(inputs.values()), use_trace=True, verify=True, rtol=rtol, atol=atol, check_trace=False
        )
        extra = {"inference.json": json.dumps(parser.get(), default=str).encode()}
        save_net_with_metadata(
            ts, filepath, include_config_vals=False, append_timestamp=False, meta_values=parser.get("_meta_"),
            more_extra_files=extra,
        )  # fmt: skip
    elif fmt == "onnx":
        model = convert_to_onnx(
            net, inputs=list(inputs.values()), input_names=names, output_names=["pred"], use_trace=True, verify=True,
            rtol=rtol, atol=atol, dynamo=False, opset_version=17, do_constant_folding=True, use_ort=True,
            ort_provider=["CPUExecutionProvider"],
        )  # fmt: skip
        import onnx

        onnx.save(model, filepath)
    else:
        raise ValueError(f"unknown format '{fmt}': use 'torchscript' or 'onnx'.")
    return filepath


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config_file", required=True, help="inference config, or a list \"['a.json','b.json']\"")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    p.add_argument("--filepath", default=None, help="output file (default <bundle_root>/models/model.ts|.onnx)")
    p.add_argument("--ckpt_file", default=None)
    p.add_argument("--meta_file", default=None)
    args, rest = p.parse_known_args(argv)
    override = {}
    for k, v in zip(rest[::2], rest[1::2]):
        key = k.lstrip("-")
        try:
            override[key] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            override[key] = v
    path = export_network(args.config_file, args.filepath, args.format, args.ckpt_file, args.meta_file, **override)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
