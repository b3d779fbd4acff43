"""Embeddings of continuous inputs: 3-D points (Fourier features) and diffusion time.

- `FourierPointEmbedding`: NeRF positional encoding (Mildenhall et al. 2020, eq. 4) with the
  log-spaced frequencies 2^k * pi, k = 0..F-1, that 3DShape2VecSet (Zhang et al. 2023, sec. 4.1)
  uses for its point and query embeddings, followed by a linear projection. Extra per-point
  features (e.g. surface normals, as in Michelangelo, Zhao et al. 2023) can be concatenated
  before the projection.
- `TimestepEmbedding`: the sinusoidal embedding of the Transformer (Vaswani et al. 2017, sec. 3.5)
  followed by a two-layer MLP, as `TimestepEmbedder` in DiT (Peebles & Xie 2023).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn


class FourierPointEmbedding(nn.Module):
    """(B, Q, 3) points -> (B, Q, out_dim) via [sin(2^k pi x), cos(2^k pi x), x] and a Linear.

    Points are expected in the normalized cube [-1, 1]^3, where frequency 2^0 * pi makes the
    lowest band span the cube once and 2^(F-1) * pi sets the finest resolvable detail.
    """

    def __init__(
        self,
        out_dim: int,
        num_frequencies: int = 8,
        include_input: bool = True,
        in_dim: int = 3,
        feature_dim: int = 0,
    ) -> None:
        super().__init__()
        self.include_input = include_input
        self.feature_dim = feature_dim
        frequencies = (2.0 ** torch.arange(num_frequencies, dtype=torch.float32)) * math.pi  # (F,)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.fourier_dim = in_dim * (2 * num_frequencies + int(include_input))
        self.proj = nn.Linear(self.fourier_dim + feature_dim, out_dim)

    def fourier_features(self, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch E"]:
        """The raw, unprojected encoding (dim `fourier_dim`)."""
        angles = (points[..., :, None] * self.frequencies).flatten(-2)  # (*batch, 3 F)
        parts = [angles.sin(), angles.cos()] + ([points] if self.include_input else [])
        return torch.cat(parts, dim=-1)

    def forward(
        self,
        points: Float[Tensor, "*batch 3"],
        features: Float[Tensor, "*batch Cf"] | None = None,
    ) -> Float[Tensor, "*batch C"]:
        """`features` (dim `feature_dim`, e.g. normals) are concatenated before the projection."""
        encoded = self.fourier_features(points)
        if self.feature_dim:
            if features is None:
                raise ValueError(f"this embedding expects {self.feature_dim} extra features per point")
            encoded = torch.cat([encoded, features.to(encoded.dtype)], dim=-1)
        elif features is not None:
            raise ValueError("this embedding was built with feature_dim=0; got features")
        return self.proj(encoded)


def timestep_sinusoid(
    t: Float[Tensor, " B"], dim: int, max_period: float = 10_000.0
) -> Float[Tensor, "B dim"]:
    """[cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)), as in DiT / GLIDE."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs  # (B, dim/2)
    embedding = torch.cat([args.cos(), args.sin()], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedding(nn.Module):
    """Diffusion time (B,) -> (B, dim): sinusoid of `t * time_scale`, then Linear-SiLU-Linear.

    The sinusoid's frequencies are DiT's (periods 2 pi .. 2 pi * 10^4), which resolve arguments in
    roughly [0, 1000]. `time_scale` maps the caller's time to that range: the default 1000 suits
    continuous time t in [0, 1] (rectified flow, v-prediction); pass `time_scale=1.0` for integer
    DDPM steps in [0, 1000). Any float scale works; only the product `t * time_scale` matters.
    """

    def __init__(self, dim: int, frequency_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Float[Tensor, " B"]) -> Float[Tensor, "B dim"]:
        if t.ndim != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        return self.mlp(timestep_sinusoid(t * self.time_scale, self.frequency_dim))
