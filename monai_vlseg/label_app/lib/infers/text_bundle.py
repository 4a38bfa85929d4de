"""MONAI Label infer task for text-guided bundles: ``network(image, input_ids, attention_mask)``.

MONAI Label's stock :class:`~monailabel.tasks.infer.bundle.BundleInferTask` reads a bundle's ``configs/inference.json``
(``network_def`` + ``models/model.pt``, ``preprocessing``, ``postprocessing``, ``inferer``) but calls the network
with the image only. :class:`TextBundleInferTask` keeps all of that and adds the text prompt:

1. the text comes from the request (``params={"text": "..."}`` in ``POST /infer/<model>``), else from a
   ``<image stem>.txt`` file beside the image (a studies folder), else the learned empty prompt when the server was
   started with ``--conf empty_text empty`` (or the bundle's own ``TokenizeTextd`` uses ``empty_text="empty"``);
   with none of these the request fails with HTTP 400 and says how to give a text;
2. the bundle's own ``TokenizeTextd`` (part of its ``preprocessing``) tokenises it into ``input_ids`` and
   ``attention_mask``;
3. the network is called with the image and the remaining inputs of the metadata's ``network_data_format.inputs``,
   in their order (``image, input_ids, attention_mask`` for UA-VLS);
4. the bundle's ``postprocessing`` runs without its file writers (``Save*d``: ``SaveImaged``, ``SaveOverlayd``, ...);
   MONAI Label's ``Restored`` and writer return the mask in the source image's grid, ``uint8`` unless
   ``result_dtype`` is asked for. Labels come from the output's ``channel_def`` (background skipped); a one-channel
   (sigmoid) output is written and labelled as value 1.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from fastapi import HTTPException
import numpy as np
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirstd, Lambdad, MapTransform, SaveImaged, SqueezeDim
from monai.utils import convert_to_tensor
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.utils.others.generic import strtobool

from monai_vlseg.transforms import SaveOverlayd
from monai_vlseg.transforms.report import REVIEW_FIELDS
from monai_vlseg.transforms.text import EMPTY_TEXT_POLICIES, TokenizeTextd, normalize_text

__all__ = ["TextBundleInferTask", "SqueezeSingleSliced", "text_beside_image"]

logger = logging.getLogger(__name__)


def text_beside_image(image: str) -> tuple[str | None, str | None]:
    """The text of ``<image stem>.txt`` beside an image file (``case.nii.gz`` -> ``case.txt``), or of ``<folder>.txt``
    beside a DICOM series folder. Returns ``(text, file)``, or ``(None, None)`` when there is no such file or it is
    empty."""
    path = os.fspath(image).rstrip(os.sep)
    if os.path.isdir(path):
        stem = path
    elif path.lower().endswith(".nii.gz"):
        stem = path[: -len(".nii.gz")]
    else:
        stem = os.path.splitext(path)[0]
    txt = stem + ".txt"
    if not os.path.isfile(txt):
        return None, None
    with open(txt, encoding="utf-8") as f:
        text = normalize_text(f.read())
    return (text, txt) if text else (None, None)


def _is_file_writer(t: Any) -> bool:
    """MONAI's naming of dictionary transforms that write files: ``Save*d``."""
    name = type(t).__name__
    return name.startswith("Save") and name.endswith("d")


VOLUME_EXTENSIONS = (".nii", ".nii.gz", ".nrrd")


def _mask_2d(x: Any) -> Any:
    """(1, W, H) -> (W, H): MONAI Label's writer takes a 2D mask without its channel axis (PNG, JPG, ...)."""
    return x[0] if x.ndim == 3 and x.shape[0] == 1 else x


def _mask_slice(x: Any) -> Any:
    """(1, W, H) -> (W, H, 1): a one-slice volume, which MONAI Label's writer saves with the image's affine."""
    return x[0][..., None] if x.ndim == 3 and x.shape[0] == 1 else x


class SqueezeSingleSliced(MapTransform):
    """(C, W, H, 1) -> (C, W, H) for a 2D network: a radiograph stored as a one-slice volume (a NIfTI converted from
    a DICOM series, as MONAI Label's DICOMweb datastore does). The affine loses its third axis and
    ``meta["spatial_shape"]`` becomes 2D, so that MONAI Label's ``Restored`` sizes the mask right; other inputs pass
    unchanged."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.squeeze = SqueezeDim(dim=-1, update_meta=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim == 4 and img.shape[-1] == 1:
                img = self.squeeze(img)
                if isinstance(img, MetaTensor):
                    img.meta["spatial_shape"] = np.asarray(img.shape[1:])
                d[key] = img
        return d


class TextBundleInferTask(BundleInferTask):
    """
    Bundle infer task for text-guided networks ``forward(image, *text_inputs)``, e.g. UA-VLS, and for the image-only
    bundles of this project (``forward(image)``: no ``TokenizeTextd`` in their preprocessing; no text is asked for),
    with the same pre- and post-processing (the bundle's own, its file writers dropped; the uncertainty score in the
    result).

    Args:
        path: the bundle folder (``<app>/model/<name>``).
        conf: the server's ``--conf`` options. Read here: ``empty_text`` (``"empty"``: infer with the learned empty
            prompt when a request has no text; ``"error"``: refuse such requests; default: the bundle's own
            ``TokenizeTextd`` policy), ``load_strict`` (default ``"true"``), ``preload``.
        text_param: the request parameter that holds the text (also shown as a model option to clients, e.g. the
            "Options" table of 3D Slicer's MONAI Label module).
        empty_text: overrides ``conf["empty_text"]``.
        load_strict: overrides ``conf["load_strict"]``; strict loading makes a checkpoint that does not fit the
            config fail at start-up instead of running a half-random network.
        kwargs: passed to :class:`~monailabel.tasks.infer.bundle.BundleInferTask` (e.g. ``const``, ``type``).
    """

    def __init__(
        self,
        path: str,
        conf: Mapping[str, str] | None = None,
        text_param: str = "text",
        empty_text: str | None = None,
        load_strict: bool | None = None,
        **kwargs: Any,
    ) -> None:
        conf = dict(conf or {})
        policy = empty_text if empty_text is not None else conf.get("empty_text")
        if policy is not None and policy not in EMPTY_TEXT_POLICIES:
            raise ValueError(f"empty_text must be one of {EMPTY_TEXT_POLICIES}, got {policy!r}.")
        self.text_param = text_param
        self._empty_text = policy
        strict = strtobool(conf.get("load_strict", "true")) if load_strict is None else load_strict
        kwargs.setdefault("type", "segmentation")
        kwargs.setdefault("post_filter", [SaveImaged, SaveOverlayd])  # and every other Save*d, see post_transforms
        super().__init__(path, conf, load_strict=bool(strict), **kwargs)
        if not self.valid:
            return
        self.valid = False  # until the text inputs check out

        const = self.const if isinstance(self.const, BundleConstants) else BundleConstants()
        with open(os.path.join(path, "configs", const.metadata_json())) as f:
            metadata = json.load(f)
        data_format = metadata["network_data_format"]
        self.bundle_config["_meta_"] = metadata  # as `monai.bundle run` has it: CheckInputd, SaveDicomSegd read it
        self.extra_input_keys: list[str] = list(data_format["inputs"])[1:]
        pred = next(iter(data_format["outputs"].values()))
        if pred.get("num_channels") == 1:
            # one sigmoid channel: its channel_def names the foreground, which the mask writes as 1 (the stock task
            # maps channel index -> label value, right only for softmax outputs with a background channel 0)
            names = [v for v in pred.get("channel_def", {}).values() if v.lower() != "background"]
            self.labels = {(names[0] if names else "foreground").lower(): 1}

        tok = self._tokenizer(self.pre_transforms())
        if tok is None:  # an image-only bundle (vm_unet, segmamba_ct): served the same way, without a text
            if self.extra_input_keys:
                raise ValueError(
                    f"bundle {path}: network inputs {self.extra_input_keys} (metadata network_data_format.inputs) "
                    "beside the image, but its inference preprocessing has no monai_vlseg.transforms.TokenizeTextd."
                )
            self.text_key = None
            self._bundle_empty_text = "error"
            self._check_checkpoint()
            self.valid = True
            return
        produced = set(tok.input_ids_keys) | set(tok.attention_mask_keys)
        missing = [k for k in self.extra_input_keys if k not in produced]
        if missing:
            raise ValueError(
                f"bundle {path}: network inputs {missing} (metadata network_data_format.inputs) are not produced by "
                f"its TokenizeTextd (which writes {sorted(produced)})."
            )
        self.text_key = tok.keys[0]
        self._bundle_empty_text = tok.tokenize.empty_text
        self._check_checkpoint()

        self._config[self.text_param] = ""  # clients list it among the model's options and send it back
        self.valid = True

    # ---------------------------------------------------------------- text

    @property
    def empty_text(self) -> str:
        """What a request without text gets: ``"error"`` (HTTP 400) or ``"empty"`` (the learned empty prompt)."""
        return self._empty_text or self._bundle_empty_text

    def resolve_text(self, request: Mapping[str, Any]) -> tuple[str, str]:
        """The prompt of a request and where it came from: ``"request"``, the path of a ``.txt`` file, or
        ``"empty prompt"`` (the text is then ``""``)."""
        try:
            text = normalize_text(request.get(self.text_param))
        except (TypeError, ValueError) as e:
            raise HTTPException(status_code=400, detail=f"bad '{self.text_param}' parameter: {e}") from e
        if text:
            return text, "request"
        image = request.get("image")
        if isinstance(image, str) and image:
            text, txt = text_beside_image(image)
            if text:
                return text, txt
        if self.empty_text == "empty":
            return "", "empty prompt"
        raise HTTPException(
            status_code=400,
            detail=(
                f"no text prompt for image '{request.get('image')}': send it as params {{\"{self.text_param}\": "
                "\"...\"}, put a <image stem>.txt beside the image in the studies folder, or start the server with "
                "--conf empty_text empty to use the learned empty prompt"
            ),
        )

    @property
    def text_guided(self) -> bool:
        """Whether the bundle reads a text (its preprocessing has a ``TokenizeTextd``)."""
        return self.text_key is not None

    def __call__(self, request, callbacks=None):
        request = dict(request)
        if not self.text_guided:
            return super().__call__(request, callbacks)
        text, source = self.resolve_text(request)
        request[self.text_param] = text
        request[self.text_key] = text
        chars = len(text)  # a report can name the patient: its length is logged, never its words
        logger.info(f"Text prompt from {source}: {chars} characters")
        label, result = super().__call__(request, callbacks)
        result = dict(result or {})
        result["text"] = text
        result["text_source"] = source
        return label, result

    def info(self) -> dict[str, Any]:
        i = super().info()
        if not self.text_guided:
            return i
        i["text_prompt"] = {
            "param": self.text_param,
            "fallback": "<image stem>.txt beside the image",
            "empty_text": self.empty_text,
            "network_inputs": [self.input_key, *self.extra_input_keys],
        }
        return i

    # ---------------------------------------------------------------- pipeline

    @staticmethod
    def _tokenizer(transforms: Sequence[Callable]) -> TokenizeTextd | None:
        return next((t for t in transforms if isinstance(t, TokenizeTextd)), None)

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        pre = list(super().pre_transforms(data))
        tok = self._tokenizer(pre)
        if tok is not None and self._empty_text is not None:
            tok.tokenize.empty_text = self._empty_text
        if self.dimension == 2:  # a one-slice volume in, for a 2D network: drop the slice axis after channel-first
            at = next((i + 1 for i, t in enumerate(pre) if isinstance(t, EnsureChannelFirstd)), None)
            if at is not None:
                pre.insert(at, SqueezeSingleSliced(keys=self.input_key))
        return pre

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """MONAI Label's request fields named ``<image key>_*`` (``image_path``: a string) are set aside while the
        bundle's preprocessing runs: MONAI 1.6's ``Spacingd`` updates every ``image_*`` entry of a NIfTI item as a
        meta dict, and fails on a string."""
        prefix = f"{self.input_key}_"
        aside = {k: data.pop(k) for k in list(data) if isinstance(k, str) and k.startswith(prefix)
                 and not isinstance(data[k], dict)}  # fmt: skip
        try:
            data = super().run_pre_transforms(data, transforms)
        finally:
            data.update(aside)
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # the bundle's file writers (SaveImaged, SaveOverlayd, a DICOM SEG writer, ...) are dropped: the server
        # returns the mask itself (and writes DICOM SEG for ?output=dicom_seg)
        post = [t for t in super().post_transforms(data) if not _is_file_writer(t)]
        if self.dimension == 2:
            ext = str((data or {}).get("result_extension") or (data or {}).get("image_path") or "").lower()
            volume = ext.endswith(VOLUME_EXTENSIONS)  # keep NIfTI/NRRD geometry: write a one-slice volume
            post.append(Lambdad(keys=self.output_label_key, func=_mask_slice if volume else _mask_2d))
        return post

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"):
        """``inferer(image, network, *text_inputs)``: MONAI inferers pass extra arguments on to the network."""
        inferer = self.inferer(data)
        network = self._get_network(device, data)
        if network is None:
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, f"no network for {self.bundle_path}")

        def batch(x: Any) -> torch.Tensor:
            x = x if torch.is_tensor(x) else torch.as_tensor(x)
            return (x[None] if convert_to_batch else x).to(torch.device(device))

        image = batch(data[self.input_key])
        extra = [batch(data[k]) for k in self.extra_input_keys]
        names = [self.input_key, *self.extra_input_keys]
        logger.info(f"Inferer:: {device} => {inferer.__class__.__name__}; network inputs: {names}")
        with torch.no_grad():
            outputs = inferer(image, network, *extra)
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        if convert_to_batch:
            outputs = outputs[0]
        # a MetaTensor, so that the bundle's Invertd maps it back through the preprocessing
        data[self.output_label_key] = convert_to_tensor(outputs, track_meta=True)
        return data

    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        if dtype is None and not data.get("result_dtype"):
            dtype = "uint8"  # label values; PNG writers take no float images
        result_file, result_json = super().writer(data, extension=extension, dtype=dtype)
        # what the bundle's PrepareReportd could not ground, and the uncertainty score (active learning reads it),
        # reach the client (never the report text)
        review = {k: data[k] for k in (*REVIEW_FIELDS, "uncertainty_score") if k in data}
        review = {k: (v.item() if hasattr(v, "item") else v) for k, v in review.items()}
        return result_file, {**(result_json or {}), **review}

    def _check_checkpoint(self) -> None:
        """Fail at start-up, with a hint, when ``models/model.pt`` does not fit ``network_def``."""
        path = self.get_path()
        if self.network is None or not path or not path.endswith(".pt"):
            return
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state = state.get(self.model_state_dict, state) if isinstance(state, Mapping) else state
        expected = {k: tuple(v.shape) for k, v in self.network.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        bad = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        if bad or (self.load_strict and (missing or unexpected)):
            raise ValueError(
                f"{path} does not fit network_def of {self.bundle_config_path}: {len(bad)} shape mismatches "
                f"(e.g. {bad[:3]}), {len(missing)} missing and {len(unexpected)} unexpected keys (e.g. "
                f"{(missing + unexpected)[:3]}). Was it trained with config overrides (e.g. configs/demo.json)? Lay "
                "the app out again with `python -m monai_vlseg.label_app.prepare ... --overrides <that file>`."
            )
