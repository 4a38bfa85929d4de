"""Text prompt transforms: tokenization (offline), prompt dropout and fixed prompts."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import ensure_tuple_rep

from monai_vlseg.utils import load_pretrained

__all__ = ["normalize_text", "TokenizeText", "TokenizeTextd", "RandPickReportsd", "RandTextDropoutd", "SetTextd"]

EMPTY_TEXT_POLICIES = ("error", "empty")


def normalize_text(text: Any) -> str | None:
    """
    Text prompt as a stripped string, or None when it is missing or empty.

    Missing: None, NaN / ``pd.NA`` (empty spreadsheet cells), whitespace-only strings. A list/tuple/array with
    exactly one element is unwrapped (e.g. after collation or from a JSON list); bytes are decoded as UTF-8.
    """
    if isinstance(text, np.ndarray):
        text = text.tolist()
    if isinstance(text, (list, tuple)):
        if len(text) == 0:
            return None
        if len(text) != 1:
            raise ValueError(f"expected one text prompt per item, got {len(text)}: {text!r}")
        text = text[0]
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if isinstance(text, str):
        return text.strip() or None
    if isinstance(text, float) and math.isnan(text):
        return None
    if type(text).__name__ == "NAType":  # pandas.NA, without importing pandas
        return None
    raise TypeError(f"text prompt must be a string, got {type(text).__name__}: {text!r}")


class TokenizeText(Transform):
    """
    Tokenize one text prompt into fixed-length ``(input_ids, attention_mask)`` int64 tensors of shape (max_length,).

    The tokenizer follows the offline policy of :func:`monai_vlseg.utils.load_pretrained` (``None``/"default",
    a local folder, or a HuggingFace id in the local cache; never downloaded). It is loaded lazily on first
    use and cached per instance; pickling drops it, so DataLoader workers receive a cheap copy and load their own.

    Args:
        tokenizer: tokenizer name or folder; must match the text encoder.
        max_length: sequences are padded and truncated to this length.
        empty_text: what to do with missing/empty text. ``"error"``: raise ValueError. ``"empty"``: pad tokens
            with an all-zero attention mask, the "no text" convention of
            :class:`monai_vlseg.nets.blocks.text_encoder.FrozenTextEncoder`.
        trust_remote_code: forwarded to ``AutoTokenizer.from_pretrained``.
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        max_length: int = 24,
        empty_text: str = "error",
        trust_remote_code: bool = False,
    ) -> None:
        if empty_text not in EMPTY_TEXT_POLICIES:
            raise ValueError(f"empty_text must be one of {EMPTY_TEXT_POLICIES}, got {empty_text!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.empty_text = empty_text
        self.trust_remote_code = trust_remote_code
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        """The HuggingFace tokenizer, loaded on first access."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    from transformers import AutoTokenizer

                    self._tokenizer = load_pretrained(
                        AutoTokenizer, self.tokenizer_name, trust_remote_code=self.trust_remote_code
                    )
        return self._tokenizer

    def __call__(self, text: Any, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            text: a string (or one-element list); None/NaN/whitespace count as missing.
            name: what to call the item in error messages (e.g. its image file).
        """
        prompt = normalize_text(text)
        if prompt is None:
            if self.empty_text == "error":
                where = f" for {name!r}" if name else ""
                raise ValueError(
                    f"text prompt{where} is missing or empty ({text!r}); provide one, or use empty_text='empty' "
                    "to train/infer with the empty prompt"
                )
            pad_id = self.tokenizer.pad_token_id or 0
            return (
                torch.full((self.max_length,), pad_id, dtype=torch.int64),
                torch.zeros(self.max_length, dtype=torch.int64),
            )
        tok = self.tokenizer
        with self._lock:  # fast tokenizers are not safe to call from several threads
            enc = tok(prompt, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"][0].to(torch.int64), enc["attention_mask"][0].to(torch.int64)


def _item_name(data: Mapping, image_key: str = "image") -> str | None:
    """The image file of a data item, for error messages."""
    image = data.get(image_key)
    meta = getattr(image, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return None


class TokenizeTextd(MapTransform):
    """
    Dictionary-based wrapper of :class:`TokenizeText`: ``data[key]`` -> ``data[input_ids_key]``,
    ``data[attention_mask_key]``.

    A key absent from the item is skipped when ``allow_missing_keys`` is True; otherwise it is treated as
    missing text (``empty_text`` decides). Error messages name the item by its ``image`` entry.

    Args:
        keys: keys of the text prompts (one output pair per key).
        tokenizer: tokenizer name or folder, see :class:`TokenizeText`.
        max_length: padded/truncated length.
        input_ids_key: output key(s) for the token ids, one per key.
        attention_mask_key: output key(s) for the attention masks, one per key.
        empty_text: ``"error"`` or ``"empty"``, see :class:`TokenizeText`.
        trust_remote_code: forwarded to ``AutoTokenizer.from_pretrained``.
        allow_missing_keys: don't raise for keys absent from the item.
        multiple: a list of prompts (several reports of one image, :func:`monai_vlseg.datalist.group_reports`) gives
            one row each, ``(n, max_length)``; a single string still gives ``(max_length,)``. Off: a list must hold
            exactly one prompt.
    """

    def __init__(
        self,
        keys: KeysCollection = "text",
        tokenizer: str | None = None,
        max_length: int = 24,
        input_ids_key: str | Sequence[str] = "input_ids",
        attention_mask_key: str | Sequence[str] = "attention_mask",
        empty_text: str = "error",
        trust_remote_code: bool = False,
        allow_missing_keys: bool = False,
        multiple: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tokenize = TokenizeText(tokenizer, max_length, empty_text, trust_remote_code)
        self.multiple = multiple
        self.input_ids_keys = ensure_tuple_rep(input_ids_key, len(self.keys))
        self.attention_mask_keys = ensure_tuple_rep(attention_mask_key, len(self.keys))
        outputs = self.input_ids_keys + self.attention_mask_keys
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"output keys must be distinct, one per text key, got {outputs}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, ids_key, mask_key in zip(self.keys, self.input_ids_keys, self.attention_mask_keys):
            if key not in d and self.allow_missing_keys:
                continue
            name = _item_name(d)
            name = f"{name} (key {key!r})" if name else None
            text = d.get(key)
            if self.multiple and isinstance(text, (list, tuple)) and text:
                rows = [self.tokenize(t, name=name) for t in text]
                d[ids_key], d[mask_key] = (torch.stack(r) for r in zip(*rows))
            else:
                d[ids_key], d[mask_key] = self.tokenize(text, name=name)
        return d


def _report_rows(value: Any, is_label: bool) -> Any:
    """``value`` as one entry per report: a list as it is, a 1-D token tensor as one row, other tensors by dim 0."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return value if is_label or value.ndim > 1 else value[None]


class RandPickReportsd(RandomizableTransform, MapTransform):
    """
    Of an image's several reports (stacked along dim 0: label channels, token rows; see
    :func:`monai_vlseg.datalist.group_reports`), pick ``num_reports`` at random, distinct when there are enough. The
    batch then shows the network the same image with reports that name other findings, and masks that differ only
    where the text does: an image-only solution cannot fit both (the report-guided CT bundle's training).
    :class:`monai_vlseg.engines.ReportsPrepareBatch` turns the reports into batch rows.

    Args:
        keys: the per-report entries, first the label (C = reports), then token ids / masks ((reports, L), or (L,)
            for one report) and lists (the texts).
        num_reports: reports kept per image.
        union_key: also store the union of the kept labels (1 channel) here, for a crop sampler
            (``RandCropByPosNegLabeld`` reads a multi-channel label as one-hot and would ignore the first report).
    """

    def __init__(
        self,
        keys: KeysCollection = ("label", "input_ids", "attention_mask"),
        num_reports: int = 2,
        union_key: str | None = "label_union",
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, 1.0)
        MapTransform.__init__(self, keys, allow_missing_keys)
        if num_reports < 1:
            raise ValueError(f"num_reports must be >= 1, got {num_reports}")
        self.num_reports, self.union_key = int(num_reports), union_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rows = {k: _report_rows(d[k], k == self.keys[0]) for k in self.key_iterator(d)}
        counts = {k: len(v) for k, v in rows.items()}
        n = counts[self.keys[0]]
        if len(set(counts.values())) != 1 or n == 0:
            raise ValueError(f"{_item_name(d)}: every key needs one entry per report, got {counts}")
        idx = self.R.choice(n, size=self.num_reports, replace=n < self.num_reports)
        for k, v in rows.items():
            d[k] = [v[i] for i in idx] if isinstance(v, list) else v[torch.as_tensor(idx)]
        if self.union_key is not None:
            d[self.union_key] = (d[self.keys[0]] > 0).any(0, keepdim=True).to(d[self.keys[0]].dtype)
        return d


class RandTextDropoutd(RandomizableTransform, MapTransform):
    """
    With probability ``prob`` drop the text of a sample, so that it trains the network's learned empty prompt.

    Placed after :class:`TokenizeTextd` with ``keys="attention_mask"``, the mask is zeroed (the "no text"
    convention of the networks), independently of the ``empty_text`` policy that guards the data. Placed before
    it with ``keys="text"``, the text becomes ``""`` (then tokenise with ``empty_text="empty"``). All keys are
    dropped together.

    Args:
        keys: attention-mask keys (tensors are zeroed) or text keys (strings become ``""``).
        prob: probability of dropping the text.
        allow_missing_keys: don't raise if a key is absent.
    """

    def __init__(self, keys: KeysCollection = "attention_mask", prob: float = 0.1, allow_missing_keys: bool = False) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = torch.zeros_like(d[key]) if isinstance(d[key], torch.Tensor) else ""
        return d


class SetTextd(MapTransform):
    """
    Set a fixed text prompt, e.g. "one text for all images" at inference.

    Args:
        keys: keys of the text prompts.
        text: the prompt.
        override: if False, only items whose text is missing/empty (absent, None, NaN, whitespace) get ``text``;
            if True, every item does.
        allow_missing_keys: accepted for MONAI API symmetry; absent keys are always set.
    """

    def __init__(
        self, keys: KeysCollection = "text", text: str = "", override: bool = False, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.text = text
        self.override = override

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if self.override or normalize_text(d.get(key)) is None:
                d[key] = self.text
        return d
