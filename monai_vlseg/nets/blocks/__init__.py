"""Blocks shared by the monai-vlseg networks (written once, imported by every network)."""

from .attention import MultiHeadAttention, sinusoidal_positions
from .mamba import SS2D, MambaLayer, SelectiveSSM, VSSBlock
from .text_encoder import FrozenTextEncoder

__all__ = [
    "FrozenTextEncoder",
    "MambaLayer",
    "MultiHeadAttention",
    "SS2D",
    "SelectiveSSM",
    "VSSBlock",
    "sinusoidal_positions",
]
