"""Helpers the bundle configs call: where the bundle lives, what to infer on, and metric summaries."""

from __future__ import annotations

import glob
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import load_decathlon_datalist

from monai_vlseg.io.dicom import dicom_files_in, is_dicom_file

__all__ = ["as_flag", "find_bundle_root", "inference_datalist", "shuffle_texts", "save_metrics_summary", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".mha", ".nrrd")


def find_bundle_root(name: str) -> str:
    """The folder of bundle ``name``: the working directory when it is that bundle, else ``./bundles/<name>``,
    else the copy beside an editable install of this package. ``--bundle_root`` overrides it as usual."""
    cwd = os.getcwd()
    if os.path.basename(cwd) == name and os.path.isfile(os.path.join(cwd, "configs", "metadata.json")):
        return cwd
    candidates = [
        os.path.join(cwd, "bundles", name),
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", name),
    ]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "configs", "metadata.json")):
            return c
    raise FileNotFoundError(
        f"bundle '{name}' not found from {cwd}: run from the repository root or the bundle folder, or pass --bundle_root."
    )


def _is_image(path: str) -> bool:
    """An image by its extension, or a DICOM file by its content (PACS exports often have no extensions)."""
    low = path.lower()
    if low.endswith("_overlay.png") or os.path.basename(low) == "dicomdir":
        return False
    return any(low.endswith(ext) for ext in IMAGE_EXTENSIONS) or is_dicom_file(path)


def inference_datalist(
    datalist: str | None = None,
    input_dir: str | None = None,
    text: str | None = None,
    split: str = "test",
    require_text: bool = False,
) -> list[dict[str, Any]]:
    """Items ``{"image": ..., "text": ...}`` to infer on.

    Args:
        datalist: a MONAI datalist JSON; its ``split`` section is used (texts from the items).
        input_dir: a folder of images (PNG/JPG/NIfTI/DICOM files, or one sub-folder per DICOM series); an
            image's text is read from a ``<image stem>.txt`` file beside it when there is one.
        text: one text for every image; it fills items without text (and overrides nothing else).
        require_text: raise before anything is inferred (or written) when an image has no text, naming them all.
    """
    if (datalist is None) == (input_dir is None):
        raise ValueError("give exactly one of `datalist` (a datalist JSON) or `input_dir` (a folder of images).")
    if datalist is not None:
        items = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=split)
    else:
        if not os.path.isdir(input_dir):
            raise FileNotFoundError(f"input_dir '{input_dir}' is not a folder.")
        items = []
        for path in sorted(glob.glob(os.path.join(input_dir, "*"))):
            if os.path.isdir(path) and dicom_files_in(path):  # one folder per DICOM series
                items.append({"image": path})
            elif os.path.isfile(path) and _is_image(path):
                item = {"image": path}
                stem = path[: -len(".nii.gz")] if path.lower().endswith(".nii.gz") else os.path.splitext(path)[0]
                if os.path.isfile(stem + ".txt"):
                    with open(stem + ".txt", encoding="utf-8") as f:
                        item["text"] = f.read().strip()
                items.append(item)
        if not items:
            raise FileNotFoundError(f"no images found in '{input_dir}' (extensions: {', '.join(IMAGE_EXTENSIONS)}).")
    items = [{k: v for k, v in it.items() if k != "label"} for it in items]
    if text is not None:
        for it in items:
            if not str(it.get("text") or "").strip():
                it["text"] = text
    if require_text:
        missing = [str(it["image"]) for it in items if not str(it.get("text") or "").strip()]
        if missing:
            raise ValueError(
                f"no text for {len(missing)} image(s): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                "give `text` (one for all images), a <image stem>.txt beside each image, texts in the datalist, "
                "or set empty_text='empty' to use the learned empty prompt"
            )
    return items


def as_flag(value: Any) -> bool:
    """A command-line switch as a bool: ``--shuffle_text true`` reaches a config as the string "true", and a string
    is truthy whatever it says, so configs read switches through this."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise ValueError(f"expected a true/false switch, got {value!r}.")


def ddp_finalize() -> None:
    """End a torchrun run (the ``finalize`` of every ``multi_gpu_train.json``): wait for all ranks, then destroy the
    process group. Without the barrier a rank with less to do at the end (rank > 0 saves no checkpoint and writes no
    logs) tears its gloo/NCCL group down and exits while rank 0 is still working, the teardown race behind an
    intermittent ``terminate called without an active exception`` abort of that rank on CPU."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shuffle_texts(items: Sequence[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The same items with their texts permuted across images (a derangement where possible): the control that
    shows whether a text-guided model uses the text."""
    items = [dict(it) for it in items]
    n = len(items)
    if n < 2:
        return items
    rng = random.Random(seed)
    perm = list(range(n))
    rng.shuffle(perm)
    # rotate by one inside the shuffled order: a derangement
    texts = [items[i]["text"] for i in perm]
    for j, i in enumerate(perm):
        items[i]["text"] = texts[(j + 1) % n]
    return items


def save_metrics_summary(metrics: Mapping[str, Any], path: str, **extra: Any) -> dict[str, Any]:
    """Write the evaluator's aggregated metrics (plus ``extra`` fields) as JSON and return them."""
    summary = {k: float(v) for k, v in metrics.items()}
    summary.update(extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, path)
    return summary
