"""Helpers the bundle configs call: where the bundle lives, what to train, evaluate and infer on, the run folder of a
training run (resume, the record of its configuration, what goes to ``models/``), the distributed set-up of
``multi_gpu_train.json``, TIFCMamba's CLIP stage, and metric summaries. A config calls one of these instead of holding
a multi-statement program or a comprehension."""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import logging
import os
import pathlib
import random
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from monai_vlseg.datalist import (
    LATERALITY_CONVENTIONS,
    MASK_DERIVED_SOURCES,
    TEXT_SOURCES,
    datalist_laterality,
    load_datalist,
    read_datalist,
    text_source_of,
)
from monai_vlseg.errors import InputError
from monai_vlseg.files import atomic_write_bytes
from monai_vlseg.io.dicom import dicom_files_in, is_dicom_file
from monai_vlseg.transforms.image import OUTPUT_NAME_KEY, unique_output_names
from monai_vlseg.transforms.report import count_truncated, text_token_stats
from monai_vlseg.utils import load_checkpoint

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEXT_CONDITIONS",
    "all_have_text",
    "as_flag",
    "channel_output_transform",
    "check_model_config",
    "check_text_supervision",
    "check_text_len",
    "checkpoint_record",
    "condition_items",
    "ddp_device",
    "ddp_finalize",
    "ddp_init",
    "eval_datalist",
    "evaluate_text_conditions",
    "find_bundle_root",
    "image_meta",
    "inference_datalist",
    "laterality_convention",
    "latest_run",
    "left_on_image_right",
    "network_signature",
    "publish_checkpoint",
    "rank_zero_handlers",
    "resume_checkpoint",
    "resuming",
    "run_clip_stage",
    "run_folder",
    "save_metrics_summary",
    "shuffle_texts",
    "start_run",
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


#: the switch of a text-supervised bundle that lets it train on texts derived from the mask (named in its error).
ALLOW_MASK_DERIVED_SWITCH = "allow_mask_derived_text"


def check_text_supervision(
    datalist: str, split: str = "training", allow_mask_derived_text: Any = False, text_supervised: Any = True
) -> dict[str, int]:
    """Refuse a text-supervised run whose texts carry the mask; return the count of each ``text_source``.

    Text-supervised training (TIFCMamba) learns where the object is from the text alone: a text computed from the
    ground-truth mask (``text_source`` ``mask_derived``, or ``synthetic`` from a generator that also draws the mask;
    :data:`monai_vlseg.datalist.MASK_DERIVED_SOURCES`) hands it the answer, and its results are then not
    text-supervised. Texts whose source is not declared (no ``text_source``, or ``unknown``) are refused as well:
    they may be mask-derived. ``caption``, ``report`` and ``template`` pass. ``synthetic`` texts alone (only this
    project's demo generators write them) run with a warning, so ``train.json`` works on the embedded demo.

    Args:
        datalist: datalist JSON.
        split: the section the run reads.
        allow_mask_derived_text: a switch (see :func:`as_flag`): run anyway, with a ``UserWarning`` that names the
            counts.
        text_supervised: a switch; ``False`` (the network is trained on the masks) skips the check.

    Raises:
        InputError: naming the datalist, the section, how many of its texts are mask-derived or undeclared, and
            the switch.
    """
    data = read_datalist(datalist)
    items = data.get(split)
    if not isinstance(items, list):
        raise InputError(datalist, f"datalist has no '{split}' section")
    meta = data.get("meta") if isinstance(data.get("meta"), Mapping) else None
    counts: dict[str, int] = {}
    for item in items:
        if isinstance(item, Mapping) and str(item.get("text") or "").strip():
            source = text_source_of(item, meta) or "unmarked"
            counts[source] = counts.get(source, 0) + 1
    counts = dict(sorted(counts.items()))
    if not as_flag(text_supervised):
        return counts
    derived = {k: v for k, v in counts.items() if k in MASK_DERIVED_SOURCES}
    undeclared = {k: v for k, v in counts.items() if k not in TEXT_SOURCES or k == "unknown"}
    if not derived and not undeclared:
        return counts
    total = sum(counts.values())
    if set(derived) == {"synthetic"} and not undeclared:  # the project's own demo generators: run, and say so
        warnings.warn(
            f"{datalist}: section '{split}': {derived['synthetic']} of its {total} texts are synthetic demo texts, "
            "generated from the same ground truth that draws the mask: the run shows the bundle works end to end; "
            "its results are not text-supervised", stacklevel=2,
        )  # fmt: skip
        return counts
    parts = []
    if derived:
        what = ", ".join(f"{k} {v}" for k, v in derived.items())
        parts.append(f"{sum(derived.values())} of its {total} texts are derived from the ground-truth mask ({what})")
    if undeclared:
        what = ", ".join(f"{k} {v}" for k, v in undeclared.items())
        parts.append(f"{sum(undeclared.values())} of its {total} texts do not say where they came from ({what})")
    found = f"section '{split}': " + " and ".join(parts)
    if as_flag(allow_mask_derived_text):
        warnings.warn(
            f"{datalist}: {found}; running on them anyway ({ALLOW_MASK_DERIVED_SWITCH} true): the model learns the "
            "mask through the text, so its results are not text-supervised", stacklevel=2,
        )  # fmt: skip
        return counts
    raise InputError(
        datalist,
        f"{found}; text-supervised training would learn the mask through the text. Use texts written without the "
        "mask (text_source caption, report or template; a preparer's --texts-csv F --texts-source caption), or set "
        f"--{ALLOW_MASK_DERIVED_SWITCH} true (results are then not text-supervised)",
    )


def unlabelled_datalist(datalist: str, split: str = "training") -> list[dict[str, Any]]:
    """The items of ``split`` without their ``label`` (stage-1 pre-training learns from images and texts only)."""
    items = load_datalist(datalist, split)
    return [{k: v for k, v in it.items() if k != "label"} for it in items]


def all_have_text(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every item has a non-empty ``text`` (the text-mask consistency metrics need one per image)."""
    return all(str(it.get("text") or "").strip() for it in items)


def with_uncertainty(postprocessing: Any) -> Any:
    """An evaluation post-processing (a ``Compose``) that also keeps the probabilities (``prob``) and scores the
    uncertainty of the final mask (:class:`~monai_vlseg.transforms.UncertaintyMapd`, no review flag): what
    evaluate.json's calibration and ranking metrics read. The probabilities are copied right after the first
    ``Activationsd``; a post-processing without one (an arg-max of logits) gets its own softmax of the copy."""
    from monai.transforms import Activationsd, Compose, CopyItemsd

    from monai_vlseg.transforms.uncertainty import UncertaintyMapd

    steps = list(postprocessing.transforms)
    at = next((i for i, t in enumerate(steps) if isinstance(t, Activationsd)), None)
    if at is None:
        steps[0:0] = [CopyItemsd("pred", names="prob"), Activationsd("prob", softmax=True)]
    else:
        steps.insert(at + 1, CopyItemsd("pred", names="prob"))
    steps.append(UncertaintyMapd("pred", review_threshold=None))
    return Compose(steps)


def laterality_convention(datalist: str, fallback: str, scored: Any = True) -> str:
    """The side convention ``evaluate.json`` scores the text-mask laterality agreement with (its ``laterality``):
    the datalist's own ``meta.laterality`` (the preparers and demo generators write it: ``"patient"`` for chest X-ray
    and CT, ``"image"`` for endoscopy, dermoscopy and histology), else ``fallback``, the convention of the data the
    bundle is made for, with a warning that says how to choose (``--laterality patient|image`` replaces this call).
    ``scored`` false (a text-free data set, whose laterality metric is switched off) drops the warning.

    Raises:
        InputError: the datalist cannot be read, or its ``meta.laterality`` is not a known convention.
        ValueError: ``fallback`` is not a known convention.
    """
    left_on_image_right(fallback)  # validates
    found = datalist_laterality(datalist)
    if found is not None:
        logger.info("laterality convention %r (meta.laterality of %s)", found, datalist)
        return found
    if not as_flag(scored):
        return fallback
    logger.warning(
        "%s has no meta.laterality: scoring laterality with this bundle's default %r (%s); "
        "--laterality patient|image chooses, or add \"laterality\" to the datalist's \"meta\"",
        datalist, fallback, LATERALITY_CONVENTIONS[fallback],
    )  # fmt: skip
    return fallback


def left_on_image_right(laterality: str) -> bool:
    """Whether the patient's left is on the image's right under the side convention ``laterality`` (a key of
    :data:`monai_vlseg.datalist.LATERALITY_CONVENTIONS`): the ``left_on_image_right`` of the consistency metrics."""
    if laterality not in LATERALITY_CONVENTIONS:
        choices = "; ".join(f"{k!r}: {v}" for k, v in LATERALITY_CONVENTIONS.items())
        raise ValueError(f"laterality must be one of {choices}; got {laterality!r} (--laterality patient|image).")
    return laterality == "patient"


def _recorded_text_tokens(
    data: Mapping[str, Any], tokenizer: str, parser: str | None, splits: Sequence[str]
) -> dict[str, Any] | None:
    """The lengths a preparer recorded in ``meta.text_tokens`` for ``tokenizer`` and ``parser``, summed over
    ``splits``; None when not recorded, or when a split's count of texts no longer matches (the datalist changed)."""
    entries = (data.get("meta") or {}).get("text_tokens") if isinstance(data.get("meta"), Mapping) else None
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, Mapping) or e.get("tokenizer") != tokenizer or e.get("report_parser") != parser:
            continue
        by = e.get("by_split") or {}
        hist: dict[str, int] = {}
        for s in splits:
            texts = [i.get("text") for i in data[s] if isinstance(i, Mapping) and str(i.get("text") or "").strip()]
            if s not in by or by[s].get("texts") != len(texts):
                return None
            for k, n in by[s].get("histogram", {}).items():
                hist[k] = hist.get(k, 0) + int(n)
        return {"tokenizer": tokenizer, "report_parser": parser, "texts": sum(hist.values()),
                "max_tokens": max((int(k) for k in hist), default=0), "histogram": hist, "recorded": True}  # fmt: skip
    return None


def check_text_len(
    source: str | os.PathLike | Sequence[Mapping[str, Any]],
    tokenizer: str | None,
    text_len: int,
    report_parser: str | None = None,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """At the start of a run: warn when texts are longer than the network's ``text_len``, i.e. cut before the
    network reads them. Returns the lengths (:func:`monai_vlseg.transforms.report.text_token_stats`) with
    ``text_len`` and ``truncated``, the number of texts longer than it.

    The texts are counted as the bundle reads them (:class:`~monai_vlseg.transforms.report.PrepareReportd` with
    ``report_parser``, then ``tokenizer``). For a datalist JSON the preparer's record (``meta.text_tokens``, per split)
    is used when it was made with the same tokenizer and parser and still fits the datalist; otherwise the texts are
    counted now (a fast tokenizer: about a millisecond a text).

    Args:
        source: a datalist JSON, or the items of a run (``inference_datalist``'s).
        tokenizer: the bundle's ``text_model`` (``None``: the default).
        text_len: the bundle's ``text_len``.
        report_parser: the bundle's ``report_parser``.
        splits: the datalist sections the run reads (default: every section with items).
    """
    tokenizer = str(tokenizer or "default")
    stats: dict[str, Any] | None = None
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        data = read_datalist(where)
        sections = [k for k, v in data.items() if k not in ("skipped", "meta") and isinstance(v, list)]
        wanted = [s for s in (splits or sections) if s in sections]
        stats = _recorded_text_tokens(data, tokenizer, report_parser, wanted)
        if stats is None:
            items = [(s, i) for s in wanted for i in data[s] if isinstance(i, Mapping)]
            texts, groups = [i.get("text") for _, i in items], [s for s, _ in items]
            stats = text_token_stats(texts, tokenizer, report_parser, splits=groups)
        where = f"{where} ({', '.join(wanted)})"
    else:
        where = "the inputs of this run"
        stats = text_token_stats([i.get("text") if isinstance(i, Mapping) else None for i in source], tokenizer,
                                 report_parser)  # fmt: skip
    stats = {**stats, "text_len": int(text_len), "truncated": count_truncated(stats, text_len)}
    if stats["truncated"] and _rank() == 0:
        warnings.warn(
            f"{stats['truncated']} of {stats['texts']} texts in {where} are longer than text_len={text_len} tokens "
            f"(the longest: {stats['max_tokens']}; tokenizer {tokenizer}, report_parser {report_parser}): the network "
            "reads them cut short (PrepareReportd keeps finding sentences first and counts each item's "
            f"dropped_tokens). --text_len {stats['max_tokens']} fits them all; a network trained with another "
            "text_len must be trained again.",
            stacklevel=2,
        )
    elif stats["texts"]:
        logger.info(f"texts fit text_len={text_len}: the longest has {stats['max_tokens']} tokens ({where})")
    return stats


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
    network: nn.Module,
    clip_ckpt: str | None,
    clip_trainer: Any,
    save_path: str,
    train: Any = True,
    reuse: Any = False,
    pretrained: Any = True,
) -> nn.Module:
    """TIFCMamba's stage 1, before the segmentation stage: the CLIP towers ``network.clip`` are loaded from
    ``clip_ckpt`` when given (strictly, :func:`monai_vlseg.utils.load_checkpoint`), else from ``save_path`` when
    ``reuse`` (a resumed run whose CLIP stage had ended) and the file is there, else trained by ``clip_trainer`` when
    ``train``; then frozen, and saved to ``save_path`` (by rank 0 only). Returns ``network``.

    ``pretrained`` false (no ``clip_model``: the towers start random) with no checkpoint and no training raises: the
    towers would be frozen with random weights, a stub in disguise."""
    if not clip_ckpt and as_flag(reuse) and os.path.isfile(save_path):
        clip_ckpt = save_path
    if clip_ckpt:
        load_checkpoint(network.clip, clip_ckpt)
    elif as_flag(train):
        clip_trainer.run()
    elif not as_flag(pretrained):
        raise ValueError(
            "the CLIP towers would be frozen with random weights: no clip_model, no clip_ckpt and no CLIP stage "
            "(clip_pretrain_epochs 0); set --clip_pretrain_epochs N, --clip_ckpt FILE or --clip_model ID_OR_FOLDER."
        )
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


# --- run folders ---------------------------------------------------------------------------------------------------
#: the record of a run's configuration in its folder; beside a published checkpoint it is ``<stem>.json``
RUN_RECORD = "config.json"
#: ``model_config`` keys added after checkpoints were first recorded -> the value a checkpoint recorded without the key
#: was trained with (SegMamba's ToM layers scanned along the first array axis, x, before ``slice_axis``: issue 19)
RECORD_DEFAULTS: dict[str, Any] = {"slice_axis": 0}
_EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
_FLAG_WORDS = ("true", "1", "yes", "on", "false", "0", "no", "off", "", "none")
logger = logging.getLogger(__name__)


def resuming(resume: Any) -> bool:
    """Whether ``--resume`` asks to resume: true, or a run name or folder (see :func:`run_folder`)."""
    return bool(_resume_target(resume))


def _resume_target(resume: Any) -> bool | str:
    """False, True, or a run name / folder (``--resume 7`` reaches a config as the number 7: a run name)."""
    if isinstance(resume, int) and not isinstance(resume, bool) and resume not in (0, 1):
        return str(resume)
    if isinstance(resume, (str, os.PathLike)) and str(resume).strip().lower() not in _FLAG_WORDS:
        return os.fspath(resume)
    return False if resume is None else as_flag(resume)


def _broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank of a distributed run (``value`` itself outside one)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _epoch_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(epoch, path)`` of the training-state checkpoints in ``run_dir``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), "checkpoint_epoch=*.pt")):
        m = _EPOCH_CHECKPOINT.search(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_run(runs: str) -> str | None:
    """The run folder under ``runs`` (one holding a :data:`RUN_RECORD`) whose newest checkpoint (else record) was
    written last; None when there is none."""
    best, best_time = None, -1.0
    for record in glob.glob(os.path.join(glob.escape(runs), "*", RUN_RECORD)):
        folder = os.path.dirname(record)
        written = max([os.path.getmtime(p) for _, p in _epoch_checkpoints(folder)] + [os.path.getmtime(record)])
        if written > best_time:
            best, best_time = folder, written
    return best


def run_folder(bundle_root: str, run_name: str | None = None, resume: Any = False) -> str:
    """The folder of a training run (the ``run_dir`` of every train config; nothing is created here).

    - a new run: ``<bundle_root>/runs/<run_name>``; without ``run_name``, the start time (``20261203-141501``, with
      ``-2``, ``-3``... when taken), the same on every rank of a distributed run;
    - ``resume`` true: the run ``run_name`` when given, else the run written last (:func:`latest_run`);
    - ``resume`` a run name or folder: that run.
    """
    runs = os.path.join(os.path.abspath(bundle_root), "runs")
    target = _resume_target(resume)
    if isinstance(target, str):
        for folder in (target, os.path.join(runs, target)):
            if os.path.isfile(os.path.join(folder, RUN_RECORD)):
                return os.path.abspath(folder)
        raise FileNotFoundError(
            f"--resume {target}: no run there (a run name under {runs}, or a run folder holding {RUN_RECORD})."
        )
    if run_name:
        return os.path.join(runs, str(run_name))
    if target:
        latest = latest_run(runs)
        if latest is None:
            raise FileNotFoundError(f"--resume true: no run in {runs} to resume.")
        return latest
    name = None
    if _rank() == 0:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name, n = stamp, 1
        while os.path.exists(os.path.join(runs, name)):
            n += 1
            name = f"{stamp}-{n}"
    return os.path.join(runs, _broadcast(name))


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, tensors and sizes as lists), to compare records."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def network_signature(network: nn.Module) -> dict[str, Any]:
    """What a checkpoint's network is, to compare with another configuration's: its class, and the number, total
    size and a digest of the names and shapes of its state-dict tensors (every ``network_def`` argument that shapes
    a layer changes the digest)."""
    net = getattr(network, "module", network) if isinstance(network, nn.parallel.DistributedDataParallel) else network
    state = net.state_dict()
    shapes = "\n".join(f"{k}:{list(v.shape)}" for k, v in state.items() if isinstance(v, torch.Tensor))
    return {
        "class": f"{type(net).__module__}.{type(net).__qualname__}",
        "tensors": len(state),
        "values": int(sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))),
        "shapes": hashlib.sha256(shapes.encode("utf-8")).hexdigest()[:16],
    }


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, data: Mapping[str, Any]) -> str:
    return atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def _sidecar(ckpt_path: str) -> str:
    """``models/model.pt`` -> ``models/model.json``: the record of a published checkpoint."""
    return os.path.splitext(ckpt_path)[0] + ".json"


def checkpoint_record(ckpt_path: str) -> tuple[str, dict[str, Any]] | None:
    """``(file, record)`` of the configuration ``ckpt_path`` was trained with: ``<stem>.json`` beside it (a published
    checkpoint), else the :data:`RUN_RECORD` of its run folder; None when neither holds a ``model_config``."""
    for path in (_sidecar(ckpt_path), os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), RUN_RECORD)):
        if os.path.isfile(path):
            record = _read_json(path)
            if isinstance(record, dict) and isinstance(record.get("model_config"), dict):
                return path, record
    return None


def _describe_network(sig: Any) -> str:
    if not isinstance(sig, dict):
        return json.dumps(sig)
    return f"{sig.get('class')} ({sig.get('tensors')} tensors, {sig.get('values')} values, shapes {sig.get('shapes')})"


def _mismatches(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One phrase per key whose value differs: both values and the override that gives the saved one."""
    out = []
    for key, value in _plain(dict(current)).items():
        if key not in saved or saved[key] == value:
            continue
        if key == "network_def":
            out.append(
                f"network_def {_describe_network(saved[key])} there, {_describe_network(value)} here: give the "
                "network_def overrides it was trained with (e.g. the same demo.json)"
            )
        else:
            was = json.dumps(saved[key])
            out.append(f"{key} {was} there, {json.dumps(value)} here: add --{key} '{was}'")
    return out


def check_model_config(ckpt_path: str, model_config: Mapping[str, Any], on_mismatch: str = "error") -> None:
    """Compare ``model_config`` (image size, channels, text length, ``network_def``... of this evaluation or
    inference) with the record of the configuration ``ckpt_path`` was trained with (:func:`checkpoint_record`).

    A difference raises ``ValueError`` naming both values, the record and the override to use (``on_mismatch``
    ``"warn"``: a warning instead); a checkpoint without a record gets a warning. Keys one side lacks are not compared,
    except those of :data:`RECORD_DEFAULTS`: a record from before such a key existed is read with the key's old value.
    """
    if on_mismatch not in ("error", "warn"):
        raise ValueError(f"config_mismatch must be 'error' or 'warn', got {on_mismatch!r}.")
    found = checkpoint_record(ckpt_path)
    if found is None:
        sidecar = os.path.basename(_sidecar(ckpt_path))
        warnings.warn(
            f"{ckpt_path} has no record of the configuration it was trained with ({sidecar} or {RUN_RECORD} beside "
            "it): image size, text length, channels and network_def are not checked.",
            stacklevel=2,
        )
        return
    path, record = found
    recorded = {**{k: v for k, v in RECORD_DEFAULTS.items() if k in model_config}, **record["model_config"]}
    problems = _mismatches(recorded, model_config)
    if not problems:
        return
    msg = f"{ckpt_path} was trained with another configuration (recorded in {path}): {'; '.join(problems)}."
    if on_mismatch == "warn":
        warnings.warn(msg, stacklevel=2)
        return
    raise ValueError(msg + " To run anyway: --config_mismatch warn.")


def start_run(run_dir: str, model_config: Mapping[str, Any], resume: Any = False) -> str:
    """Begin the training run of ``run_dir`` (:func:`run_folder`): write its :data:`RUN_RECORD` (the run's name, start
    time and ``model_config``, the configuration its checkpoints depend on), or, when ``resume``, check that this
    configuration is the recorded one. A new run refuses a folder that holds a run. Returns ``run_dir``."""
    record = os.path.join(run_dir, RUN_RECORD)
    if resuming(resume):
        if not os.path.isfile(record):
            raise FileNotFoundError(f"--resume: {run_dir} holds no run ({RUN_RECORD} is missing).")
        problems = _mismatches(_read_json(record)["model_config"], model_config)
        if problems:
            raise ValueError(
                f"--resume {run_dir}: this configuration differs from the run's ({record}): {'; '.join(problems)}."
            )
        logger.info(f"resuming run {run_dir}")
        return run_dir
    if _rank() != 0:  # rank 0 checks the folder and writes the record
        return run_dir
    if os.path.isfile(record) or _epoch_checkpoints(run_dir):
        raise FileExistsError(
            f"{run_dir} holds a run already: continue it with --resume true, or start another with a new --run_name."
        )
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    config = _plain(dict(model_config))
    _write_json(record, {"run": os.path.basename(run_dir), "started": started, "model_config": config})
    logger.info(f"training run {run_dir}")
    return run_dir


def resume_checkpoint(run_dir: str, resume: Any = False) -> str | None:
    """The training-state checkpoint to resume from (the last epoch's in ``run_dir``), None when not resuming or
    when the run has none yet (stopped in its first epoch: it starts again at epoch 1, with a warning)."""
    if not resuming(resume):
        return None
    found = _epoch_checkpoints(run_dir)
    if not found:
        warnings.warn(f"{run_dir} holds no epoch checkpoint yet: the run starts again at epoch 1.", stacklevel=2)
        return None
    return found[-1][1]


def publish_checkpoint(run_dir: str, ckpt_dir: str, filename: str = "model.pt", overwrite: Any = False) -> str | None:
    """At the end of a training run, put the run's ``filename`` where evaluation and inference read it
    (``<ckpt_dir>/<filename>``, e.g. ``models/model.pt``), with a record ``<stem>.json`` beside it: the run, and the
    ``model_config`` it was trained with.

    A checkpoint already there is replaced only when this run wrote it (its record names this run folder) or with
    ``overwrite``; otherwise it is kept and a warning says where this run's checkpoint is and how to use it. Rank 0
    only. Returns the path of the checkpoint to use (None when the run wrote none)."""
    if _rank() != 0:
        return None
    src, dst = os.path.join(run_dir, filename), os.path.join(ckpt_dir, filename)
    if not os.path.isfile(src):
        warnings.warn(f"{src} was not written: nothing to put in {ckpt_dir}.", stacklevel=2)
        return None
    sidecar = _sidecar(dst)
    owner = _read_json(sidecar).get("run_dir") if os.path.isfile(sidecar) else None
    ours = owner is not None and os.path.abspath(owner) == os.path.abspath(run_dir)
    if os.path.isfile(dst) and not ours and not as_flag(overwrite):
        no_record = f"no run of this bundle (no {os.path.basename(sidecar)})"
        written_by = f"run {owner} (see {sidecar})" if owner else no_record
        warnings.warn(
            f"{dst} was kept: it was written by {written_by}. This run's checkpoint is {src}: evaluate it with "
            f"--ckpt_dir {run_dir} (inference: --ckpt_path {src}), or train with --overwrite true to replace {dst}.",
            stacklevel=2,
        )
        return src
    run_record = os.path.join(run_dir, RUN_RECORD)
    model_config = _read_json(run_record).get("model_config") if os.path.isfile(run_record) else None
    if os.path.isfile(sidecar):
        os.remove(sidecar)  # a checkpoint without a record is never taken for a run's own
    atomic_write_bytes(dst, pathlib.Path(src).read_bytes())
    published = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    _write_json(sidecar, {
        "checkpoint": filename, "run": os.path.basename(run_dir), "run_dir": os.path.abspath(run_dir),
        "published": published, "model_config": model_config,
    })  # fmt: skip
    logger.info(f"{src} -> {dst}")
    return dst
