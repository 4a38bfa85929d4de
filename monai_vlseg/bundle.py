"""Helpers the bundle configs call: where the bundle lives, what to train, evaluate and infer on, the distributed
set-up of ``multi_gpu_train.json``, TIFCMamba's CLIP stage, and metric summaries. A config calls one of these instead
of holding a multi-statement program or a comprehension."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_vlseg.datalist import load_datalist, read_datalist
from monai_vlseg.errors import InputError
from monai_vlseg.files import atomic_write_bytes
from monai_vlseg.io.dicom import dicom_files_in, is_dicom_file
from monai_vlseg.transforms.image import OUTPUT_NAME_KEY, unique_output_names
from monai_vlseg.utils import load_checkpoint

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEXT_CONDITIONS",
    "all_have_text",
    "as_flag",
    "channel_output_transform",
    "condition_items",
    "ddp_device",
    "ddp_finalize",
    "ddp_init",
    "eval_datalist",
    "evaluate_text_conditions",
    "find_bundle_root",
    "image_meta",
    "inference_datalist",
    "rank_zero_handlers",
    "run_clip_stage",
    "save_metrics_summary",
    "shuffle_texts",
    "unlabelled_datalist",
]

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
    """Items ``{"image": ..., "text": ..., "output_name": ...}`` to infer on. ``output_name`` names the input's
    outputs, unique in the run (:func:`~monai_vlseg.transforms.unique_output_names`: ``image.png`` and ``image.jpg``
    give ``image_png`` and ``image_jpg``, a lone ``image.png`` gives ``image``).

    Args:
        datalist: a MONAI datalist JSON; its ``split`` section is used (texts from the items).
        input_dir: a folder of images (PNG/JPG/NIfTI/DICOM files, or one sub-folder per DICOM series); an
            image's text is read from a ``<image stem>.txt`` file beside it when there is one.
        text: one text for every image; it fills items without text (and overrides nothing else).
        require_text: raise before anything is inferred (or written) when an image has no text, naming them all.

    Raises:
        InputError: a malformed datalist, a missing or empty ``input_dir``, images without text (``require_text``);
            one line naming the file(s) and the reason.
    """
    if (datalist is None) == (input_dir is None):
        raise ValueError("give exactly one of `datalist` (a datalist JSON) or `input_dir` (a folder of images).")
    if datalist is not None:
        items = load_datalist(datalist, split)
    else:
        if not os.path.isdir(input_dir):
            raise InputError(input_dir, "input_dir is not a folder")
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
            extensions = ", ".join(IMAGE_EXTENSIONS)
            raise InputError(input_dir, f"no images in the folder (extensions: {extensions}, or DICOM files)")
    items = [{k: v for k, v in it.items() if k != "label"} for it in items]
    images = [it["image"][0] if isinstance(it["image"], (list, tuple)) else it["image"] for it in items]
    for it, name in zip(items, unique_output_names(images)):  # a multi-file image is named after its first file
        it[OUTPUT_NAME_KEY] = name
    if text is not None:
        for it in items:
            if not str(it.get("text") or "").strip():
                it["text"] = text
    if require_text:
        missing = [str(it["image"]) for it in items if not str(it.get("text") or "").strip()]
        if missing:
            raise InputError(
                None,
                f"no text for {len(missing)} image(s): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                "give `text` (one for all images), a <image stem>.txt beside each image, texts in the datalist, "
                "or set empty_text='empty' to use the learned empty prompt",
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


def _rank() -> int:
    """This process's rank, 0 outside a distributed run."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def ddp_device() -> torch.device:
    """The device of this torchrun process (the ``device`` of every ``multi_gpu_train.json``): GPU ``LOCAL_RANK``
    when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
    return torch.device("cpu")


def ddp_init(device: torch.device | str) -> None:
    """Start a torchrun run (the first ``initialize`` step of every ``multi_gpu_train.json``): join the process group
    (NCCL on GPUs, gloo on the CPU) unless already joined, and make ``device`` the current CUDA device."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(device)


def rank_zero_handlers(handlers: Sequence[Any]) -> list[Any]:
    """``handlers`` on rank 0; on the other ranks without those that log, save or draw a progress bar (stats,
    TensorBoard, checkpoints, progress bar), so each is written once. Outside a distributed run: all of them."""
    if _rank() == 0:
        return list(handlers)
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

    once = (StatsHandler, TensorBoardStatsHandler, CheckpointSaver, ProgressBar)
    return [h for h in handlers if not isinstance(h, once)]


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
    shows whether a text-guided model uses the text. Each item keeps its own report as ``reference_text``, against
    which the text-mask consistency metrics score it."""
    items = [{**it, "reference_text": it.get("text")} for it in items]
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


def eval_datalist(datalist: str, split: str = "test", shuffle_text: Any = False) -> list[dict[str, Any]]:
    """The labelled items of ``split`` of a datalist JSON for evaluation; with ``shuffle_text`` (a switch, see
    :func:`as_flag`) their texts are permuted across images by :func:`shuffle_texts`."""
    items = condition_items(datalist, split, "shuffled" if as_flag(shuffle_text) else "right")
    if items is None:
        raise ValueError(f"datalist {datalist} has no '{split}' section to evaluate.")
    return items


def unlabelled_datalist(datalist: str, split: str = "training") -> list[dict[str, Any]]:
    """The items of ``split`` without their ``label`` (stage-1 pre-training learns from images and texts only)."""
    items = load_datalist(datalist, split)
    return [{k: v for k, v in it.items() if k != "label"} for it in items]


def all_have_text(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every item has a non-empty ``text`` (the text-mask consistency metrics need one per image)."""
    return all(str(it.get("text") or "").strip() for it in items)


def image_meta(batch: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The image metadata of each item of a decollated batch (``MetricsSaver``'s ``batch_transform``: the file
    names of the per-image metric rows)."""
    return [item["image"].meta for item in batch]


def channel_output_transform(channel: int, keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple]:
    """An ``output_transform`` giving each item's ``keys`` (``from_engine``) reduced to one ``channel`` (kept as a
    channel axis): a per-class metric of a one-hot multi-class output."""
    from monai.handlers import from_engine

    get = from_engine(list(keys))

    def _transform(output: Any) -> tuple:
        return tuple([t[channel : channel + 1] for t in values] for values in get(output))

    return _transform


def run_clip_stage(
    network: nn.Module, clip_ckpt: str | None, clip_trainer: Any, save_path: str, train: Any = True
) -> nn.Module:
    """TIFCMamba's stage 1, before the segmentation stage: the CLIP towers ``network.clip`` are loaded from
    ``clip_ckpt`` when given (strictly, :func:`monai_vlseg.utils.load_checkpoint`), else trained by ``clip_trainer``
    when ``train``; then frozen, and saved to ``save_path`` (by rank 0 only). Returns ``network``."""
    if clip_ckpt:
        load_checkpoint(network.clip, clip_ckpt)
    elif as_flag(train):
        clip_trainer.run()
    network.clip.set_frozen(True)
    if _rank() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
        torch.save(network.clip.state_dict(), save_path)
    return network


#: the text conditions :func:`evaluate_text_conditions` knows: the image's own report, the reports permuted across
#: images, the same findings in other wording, and reports that also negate findings (``<split>_reworded`` /
#: ``<split>_negated`` sections of the datalist, e.g. the chest demo's).
TEXT_CONDITIONS: tuple[str, ...] = ("right", "shuffled", "reworded", "negated")


def condition_items(datalist: str, split: str, condition: str) -> list[dict[str, Any]] | None:
    """The evaluation items of ``split`` under one text ``condition`` (see :data:`TEXT_CONDITIONS`); ``None`` when
    the datalist has no section for it (``<split>_reworded`` / ``<split>_negated``)."""
    if condition not in TEXT_CONDITIONS:
        raise ValueError(f"unknown text condition {condition!r}; expected some of {TEXT_CONDITIONS}.")
    section = {"reworded": f"{split}_reworded", "negated": f"{split}_negated"}.get(condition, split)
    if section not in read_datalist(datalist):
        return None
    items = load_datalist(datalist, section)
    return shuffle_texts(items) if condition == "shuffled" else items


def evaluate_text_conditions(
    evaluator: Any, datalist: str, split: str, conditions: Sequence[str], output_dir: str, **extra: Any
) -> dict[str, Any]:
    """Run ``evaluator`` once per text condition on ``split`` of ``datalist`` and write ``<output_dir>/summary.json``:
    the metrics of each condition under ``"conditions"`` (and those of the first at the top level), with
    ``extra`` fields. The per-image CSVs of the evaluator's ``MetricsSaver`` stay in ``output_dir`` for the first
    condition and go to ``<output_dir>/<condition>/`` for the others. Conditions without a datalist section are
    listed under ``"not_available"``."""
    dataset = evaluator.data_loader.dataset
    output_dir = os.path.abspath(output_dir)
    results: dict[str, Any] = {}
    first: Mapping[str, Any] = {}
    kept: dict[str, bytes] = {}
    missing = []
    for condition in conditions:
        items = condition_items(datalist, split, condition)
        if items is None:
            missing.append(condition)
            continue
        if hasattr(dataset, "set_data"):
            dataset.set_data(items)
        else:
            dataset.data = items
        evaluator.state.epoch_length = len(evaluator.data_loader)
        evaluator.run()
        first = first or dict(evaluator.state.metrics)
        results[condition] = {**_metric_values(evaluator.state.metrics), "num_images": len(items)}
        # the evaluator's MetricsSaver writes its per-image CSVs into output_dir: the first condition's stay there,
        # the others' go to output_dir/<condition>/
        csvs = glob.glob(os.path.join(output_dir, "*.csv"))
        if len(results) == 1:
            kept = {f: pathlib.Path(f).read_bytes() for f in csvs}
            continue
        folder = os.path.join(output_dir, condition)
        os.makedirs(folder, exist_ok=True)
        for f in csvs:
            os.replace(f, os.path.join(folder, os.path.basename(f)))
        for f, data in kept.items():
            atomic_write_bytes(f, data)
    num_images = results[next(iter(results))]["num_images"] if results else 0
    return save_metrics_summary(
        first, os.path.join(output_dir, "summary.json"), split=split, num_images=num_images, conditions=results,
        not_available=missing, **extra,
    )  # fmt: skip


def _metric_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics as floats; one that scored no image (NaN) is listed under ``"absent"`` instead of given a value."""
    values: dict[str, Any] = {}
    absent = []
    for k, v in metrics.items():
        f = float(v)
        if f != f:
            absent.append(k)
        else:
            values[k] = f
    return {**values, "absent": absent}


def save_metrics_summary(metrics: Mapping[str, Any], path: str, **extra: Any) -> dict[str, Any]:
    """Write the evaluator's aggregated metrics (plus ``extra`` fields) as JSON, atomically, and return them; a metric
    that scored no image is listed under ``"absent"``, not written as 0 or NaN."""
    summary = {**_metric_values(metrics), **extra}
    atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary
