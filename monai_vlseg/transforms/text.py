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

__all__ = ["normalize_text", "TokenizeText", "TokenizeTextd", "RandTextDropoutd", "SetTextd"]

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
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.tokenize = TokenizeText(tokenizer, max_length, empty_text, trust_remote_code)
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
            d[ids_key], d[mask_key] = self.tokenize(d.get(key), name=f"{name} (key {key!r})" if name else None)
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
