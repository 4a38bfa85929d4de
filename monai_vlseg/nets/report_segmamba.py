"""ReportSegMamba: SegMamba conditioned on a radiology report, for segmenting in a CT volume the findings its report
names (and leaving the ones it does not).

The image path is :class:`~monai_vlseg.nets.segmamba.SegMamba` (TSMamba encoder with tri-oriented Mamba, UNETR-style
decoder) unchanged. The report is encoded once by the frozen text encoder
(:class:`~monai_vlseg.nets.blocks.FrozenTextEncoder`; a learned empty prompt when there is none) and enters where the
network decides *which* lesion: C2Seg's KAN-gated bi-directional complementary attention
(:class:`~monai_vlseg.nets.blocks.C2SegFusion`, the same module as the 2D network's, on the flattened 3D grid) fuses it
into the two deepest encoder maps (1/8, 1/16: organ and side are coarse, global facts) and into the first two decoder
maps (1/16 -> 1/8, 1/8 -> 1/4), so the skip connections that carry every lesion's edges are gated by the text before
the full-resolution decoder draws them. TK-Mamba (text-driven 3D Mamba with KAN) conditions its decoder the same way;
this network reuses the project's KAN attention instead of its group-rational KAN.

With ``finding_head`` (the bundle's default) the output is drawn per *finding sentence*, as the per-class text queries
of CLIP-Driven Universal Model / TK-Mamba's head, with the report's sentences in place of class names: each sentence of
the report is encoded alone by the frozen text encoder (mean-pooled tokens), a small MLP turns it into the weights of a
1x1x1 head over a voxel embedding, and the report's mask is the union (maximum of the logits) of its sentences'
masks. The head also reads the voxel's patient coordinates (``coord_channels``), so a sentence can select a place
("the left kidney") as well as a look. A report whose sentences name nothing present (the header, "no focal lesion",
a finding of another patient) must then draw nothing, and a network that does not read cannot fit two reports of one
volume that name different lesions: each sentence's mask is its own.

``forward(image, input_ids, attention_mask)`` as the 2D text-guided networks; ``forward(image, text=(tokens, mask))``
takes the report already encoded (:meth:`encode_text`), which
:class:`monai_vlseg.engines.TextSlidingWindowInferer` does once per volume for all its windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.utils import convert_to_tensor

from monai_vlseg.nets.blocks.fusion import C2SegFusion
from monai_vlseg.nets.blocks.text_encoder import FrozenTextEncoder, text_or_empty_prompt
from monai_vlseg.nets.segmamba import SEGMAMBA_NUM_SLICES, SegMamba
from monai_vlseg.utils import load_pretrained

__all__ = ["ReportSegMamba", "split_token_sentences"]

#: the largest number of sentences of one report that get a finding query (the rest are dropped, with the tokens
#: beyond ``text_len``)
MAX_SENTENCES = 16


def split_token_sentences(ids: Sequence[int], tokenizer) -> list[list[int]]:
    """The sentences of one tokenized report (its token ids without padding) as token-id lists without special
    tokens: split after ``.``, ``;``, ``!``, ``?`` unless the ``.`` is a decimal point (a digit on both sides)."""
    toks = tokenizer.convert_ids_to_tokens(list(ids))
    special = set(tokenizer.all_special_tokens)
    digit = [t.lstrip("#").isdigit() for t in toks]
    out, cur = [], []
    for i, (tid, t) in enumerate(zip(ids, toks)):
        if t in special:
            continue
        cur.append(int(tid))
        decimal = t == "." and 0 < i < len(toks) - 1 and digit[i - 1] and digit[i + 1]
        if t in (".", ";", "!", "?") and not decimal:
            out.append(cur)
            cur = []
    return [c for c in out + [cur] if any(tokenizer.convert_ids_to_tokens(x) not in ".;!?" for x in c)]


class ReportSegMamba(SegMamba):
    """SegMamba with report conditioning (see the module docstring).

    Args:
        in_channels, out_channels, depths, feature_size, hidden_size, num_slices, norm_name, res_block, d_state,
            d_conv, expand, gsc_fusion, use_checkpoint, slice_axis: :class:`~monai_vlseg.nets.segmamba.SegMamba`'s.
        text_encoder: text model of :class:`~monai_vlseg.nets.blocks.FrozenTextEncoder` ("default": the packaged
            offline MiniLM; a local folder; a cached HuggingFace id).
        text_config: config overrides that build a random-init text tower (tests).
        text_len: tokenizer max_length (the empty prompt's length).
        encoder_fusion: encoder levels (0-3: 1/2 ... 1/16) fused with the text.
        decoder_fusion: decoder outputs fused with the text (0: after ``decoder5`` at 1/8, 1: after ``decoder4`` at
            1/4).
        fusion, k_gate, num_heads, grid_size, spline_order: of :class:`~monai_vlseg.nets.blocks.C2SegFusion`.
        finding_head: draw the mask per report sentence and take their union (see the module docstring); needs
            ``out_channels`` 2 (background, named lesion).
        finding_dim: size of the voxel embedding the sentence queries are matched with.
        coord_channels: the input's last channels that are patient coordinates
            (:class:`monai_vlseg.transforms.PatientCoordinatesd`, 3), not image: the encoder takes the first
            ``in_channels``, and the finding head reads the coordinates beside the voxel embedding, so that a sentence
            can select a place ("the left kidney") as well as a look. 0: none.
        finding_hidden: hidden size of the per-sentence head (two 1x1x1 layers with ReLU, as CLIP-Driven Universal
            Model's text-driven head); 0: one linear layer.
        finding_prior: initial foreground logit of every sentence's head (RetinaNet's prior initialisation: lesions
            are a few voxels in a thousand, and from a logit of 0 cross-entropy first drives every voxel to a
            background logit where the Dice gradient vanishes).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        depths: Sequence[int] = (2, 2, 2, 2),
        feature_size: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        num_slices: Sequence[int | None] | None = SEGMAMBA_NUM_SLICES,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        gsc_fusion: str = "add",
        use_checkpoint: bool = False,
        slice_axis: int = -1,
        text_encoder: str | None = "default",
        text_config: dict | None = None,
        text_len: int = 64,
        encoder_fusion: Sequence[int] = (2, 3),
        decoder_fusion: Sequence[int] = (0, 1),
        fusion: str = "bcam",
        k_gate: bool = True,
        num_heads: int = 1,
        grid_size: int = 5,
        spline_order: int = 3,
        finding_head: bool = False,
        finding_dim: int = 32,
        coord_channels: int = 0,
        finding_hidden: int = 8,
        finding_prior: float = -4.0,
    ) -> None:
        if finding_head and out_channels != 2:
            raise ValueError(f"finding_head draws one 'named lesion' mask: out_channels must be 2, got {out_channels}.")
        self.finding_head = bool(finding_head)
        super().__init__(
            in_channels, finding_dim if finding_head else out_channels, depths, feature_size, hidden_size, num_slices,
            norm_name, res_block, 3,
            d_state, d_conv, expand, gsc_fusion, use_checkpoint, slice_axis,
        )  # fmt: skip
        if any(not 0 <= i <= 3 for i in encoder_fusion) or any(not 0 <= i <= 1 for i in decoder_fusion):
            raise ValueError(f"encoder_fusion levels are 0-3, decoder_fusion 0-1; got {encoder_fusion}, {decoder_fusion}")
        f = list(feature_size)
        self.text_len = int(text_len)
        self.text_encoder = FrozenTextEncoder(
            text_encoder, frozen=True, random_init=text_config is not None, config_overrides=text_config
        )
        text_dim = self.text_encoder.hidden_size
        self.empty_prompt = nn.Parameter(torch.randn(self.text_len, text_dim) * 0.02)
        kw = dict(fusion=fusion, k_gate=k_gate, num_heads=num_heads, spatial_dims=3, grid_size=grid_size,
                  spline_order=spline_order)  # fmt: skip
        self.encoder_fusion = tuple(sorted(set(encoder_fusion)))
        self.decoder_fusion = tuple(sorted(set(decoder_fusion)))
        self.text_enc = nn.ModuleDict({str(i): C2SegFusion(f[i], text_dim, **kw) for i in self.encoder_fusion})
        self.text_dec = nn.ModuleDict({str(i): C2SegFusion(f[3 - i], text_dim, **kw) for i in self.decoder_fusion})
        self.text_name = text_encoder
        self._tokenizer = None
        self.in_channels, self.coord_channels = int(in_channels), int(coord_channels)
        if self.coord_channels and not self.finding_head:
            raise ValueError("coord_channels are read by the finding head: set finding_head=True.")
        if self.finding_head:  # a sentence vector -> the weights and biases of a 1x1x1 head over self.out's embedding
            n_in, h = finding_dim + self.coord_channels, int(finding_hidden)
            self.head_shapes = [(h, n_in), (1, h)] if h else [(1, n_in)]
            n_out = sum(o * i + o for o, i in self.head_shapes)
            self.finding_query = nn.Sequential(nn.Linear(text_dim, 128), nn.GELU(), nn.Linear(128, n_out))
            # generated weights move ~lr x fan-in per Adam step: a fixed output scale slows them to the pace of the
            # rest of the network (a hypernetwork at the image path's learning rate otherwise diverges in steps)
            self.query_scale = 0.05
            self.finding_norm = nn.InstanceNorm3d(finding_dim)  # the voxel embedding at a fixed scale, as the decoder's
            self.finding_scale = nn.Parameter(torch.tensor(4.0))  # the head's weights are unit vectors times this
            with torch.no_grad():  # start from the lesion prior (p = 0.02), not from cross-entropy's collapse
                self.finding_query[-1].bias.zero_()
                self.finding_query[-1].bias[-1] = finding_prior / self.query_scale

    @property
    def tokenizer(self):
        """The text encoder's tokenizer (offline policy of :func:`monai_vlseg.utils.load_pretrained`), to split a
        report into its sentences."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = load_pretrained(AutoTokenizer, self.text_name)
        return self._tokenizer

    def encode_sentences(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each report's sentences (:func:`split_token_sentences`), encoded alone by the frozen text encoder and
        mean-pooled: (B, S, D) and their validity mask (B, S); a row without text has no sentence."""
        tok = self.tokenizer
        rows = [
            split_token_sentences(ids[m.bool()].tolist(), tok)[:MAX_SENTENCES] if m.any() else []
            for ids, m in zip(input_ids, attention_mask)
        ]
        b, s = len(rows), max(1, max(len(r) for r in rows))
        flat = [[tok.cls_token_id, *x[: self.text_len - 2], tok.sep_token_id] for r in rows for x in r]
        out = torch.zeros(b, s, self.text_encoder.hidden_size, device=input_ids.device)
        valid = torch.zeros(b, s, dtype=torch.bool, device=input_ids.device)
        if flat:
            n = max(len(x) for x in flat)
            ids = torch.tensor([x + [tok.pad_token_id] * (n - len(x)) for x in flat], device=input_ids.device)
            mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in flat], device=input_ids.device)
            hidden, _ = self.text_encoder(ids, mask)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            index = torch.tensor([[i, j] for i, r in enumerate(rows) for j in range(len(r))], device=input_ids.device)
            out[index[:, 0], index[:, 1]] = pooled.to(out.dtype)
            valid[index[:, 0], index[:, 1]] = True
        return out, valid

    def _finding_logits(self, features: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
        """Each sentence's head (its weights from :attr:`finding_query`) on the voxel features (B, C, X, Y, Z) ->
        (B, S, X, Y, Z) logits."""
        params, start, h = self.finding_query(sentences) * self.query_scale, 0, features
        for i, (o, n) in enumerate(self.head_shapes):
            w = params[..., start : start + o * n].unflatten(-1, (o, n))  # (B, S, o, n)
            w = nn.functional.normalize(w, dim=-1)
            if i == len(self.head_shapes) - 1:
                w = w * self.finding_scale
            b = params[..., start + o * n : start + o * n + o]
            start += o * n + o
            eq = "bsoc,bcxyz->bsoxyz" if i == 0 else "bsoc,bscxyz->bsoxyz"
            h = torch.einsum(eq, w, h) + b[..., None, None, None]
            if i < len(self.head_shapes) - 1:
                h = torch.relu(h)
        return h[:, :, 0]

    def encode_text(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int = 1
    ) -> tuple[torch.Tensor, ...]:
        """Frozen text tokens (B, text_len, D) and their validity mask; the learned empty prompt (all valid) for rows
        without text (no ``input_ids``, or an all-zero ``attention_mask``). With ``finding_head`` also the sentence
        vectors (B, S, D) and their mask (B, S) of :meth:`encode_sentences`."""
        text = text_or_empty_prompt(self.text_encoder, self.empty_prompt, input_ids, attention_mask, batch)
        if not self.finding_head:
            return text
        if input_ids is None:
            dev = self.empty_prompt.device
            return (*text, torch.zeros(batch, 1, self.empty_prompt.shape[1], device=dev),
                    torch.zeros(batch, 1, dtype=torch.bool, device=dev))  # fmt: skip
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return (*text, *self.encode_sentences(input_ids, mask))

    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text: tuple[torch.Tensor, ...] | None = None,
        return_findings: bool = False,
    ) -> torch.Tensor:
        """(B, in_channels, X, Y, Z) and the report -> (B, out_channels, X, Y, Z) logits; with ``finding_head`` and
        ``return_findings``, the logits of each sentence's mask (B, S, X, Y, Z) instead (-inf for padding)."""
        x = convert_to_tensor(image, track_meta=False)
        if x.ndim != 5 or any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"ReportSegMamba expects (B, C, X, Y, Z) with sizes divisible by 16, got {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels + self.coord_channels:
            raise ValueError(f"ReportSegMamba expects {self.in_channels} image + {self.coord_channels} coordinate "
                             f"channels, got {x.shape[1]}.")  # fmt: skip
        x, coords = x[:, : self.in_channels], x[:, self.in_channels :]
        b = x.shape[0]
        text = self.encode_text(input_ids, attention_mask, b) if text is None else text
        if text[0].shape[0] != b:  # one report for every window of a volume
            text = tuple(t.expand(b, *t.shape[1:]) for t in text)
        tokens, mask = text[:2]
        s = list(self.encoder(x))
        for i in self.encoder_fusion:
            s[i] = s[i] + self.text_enc[str(i)](s[i], tokens, mask)  # residual: the image path stays SegMamba's
        enc1, enc2, enc3, enc4 = self.encoder1(x), self.encoder2(s[0]), self.encoder3(s[1]), self.encoder4(s[2])
        dec = self.decoder5(self.encoder5(s[3]), enc4)
        if 0 in self.decoder_fusion:
            dec = dec + self.text_dec["0"](dec, tokens, mask)
        dec = self.decoder4(dec, enc3)
        if 1 in self.decoder_fusion:
            dec = dec + self.text_dec["1"](dec, tokens, mask)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        out = self.out(self.decoder1(dec))
        if not self.finding_head:
            return out
        sentences, valid = text[2:]
        logits = self._finding_logits(torch.cat([self.finding_norm(out), coords], 1), sentences)
        logits = logits.masked_fill(~valid[..., None, None, None], float("-inf"))
        if return_findings:
            return logits
        fg = logits.amax(1, keepdim=True)  # the union of the sentences' masks; a report without any: background
        fg = torch.where(valid.any(1)[:, None, None, None, None], fg, torch.full_like(fg, -30.0))
        return torch.cat([-fg / 2, fg / 2], 1)
