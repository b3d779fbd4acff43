"""Shared network blocks: attention, transformer blocks, point and timestep embeddings.

Import from the submodules (`native3d.nn.attention`, `native3d.nn.embeddings`, ...); the names
below are re-exported for convenience.
"""

from native3d.nn.attention import Attention, Mlp, TransformerBlock
from native3d.nn.embeddings import FourierPointEmbedding, TimestepEmbedding, timestep_sinusoid

__all__ = [
    "Attention",
    "FourierPointEmbedding",
    "Mlp",
    "TimestepEmbedding",
    "TransformerBlock",
    "timestep_sinusoid",
]
