"""Blocks shared by the monai-vlseg networks (written once, imported by every network)."""

from .attention import MultiHeadAttention, sinusoidal_positions
from .clip import CLIPImageEncoder, CLIPTowers
from .fusion import BCAM, C2SegFusion, DualAttention, KGate
from .kan import KAN, KANLinear, OverlapPatchEmbed, TokenizedKANBlock
from .mamba import SS2D, MambaLayer, PVMLayer, SelectiveSSM, VSSBlock, token_dims
from .text_encoder import FrozenTextEncoder

__all__ = [
    "BCAM",
    "C2SegFusion",
    "DualAttention",
    "KGate",
    "CLIPImageEncoder",
    "CLIPTowers",
    "KAN",
    "FrozenTextEncoder",
    "KANLinear",
    "MambaLayer",
    "MultiHeadAttention",
    "OverlapPatchEmbed",
    "PVMLayer",
    "SS2D",
    "SelectiveSSM",
    "TokenizedKANBlock",
    "VSSBlock",
    "sinusoidal_positions",
    "token_dims",
]
