"""Latents to meshes: an autoencoder's decoder as a signed-distance field for marching cubes.

The decoder's latent-only work (`decoder_features`: VecSet's self-attention over the tokens, the
grid's feature volume, the triplane's feature planes) is done once per latent; marching cubes
then only pays for `query` on each chunk of points at each refinement level.

For a VecSet decoder the field is a `RegionalField`: before a region of space is refined, it
keeps the `kv_tokens` latent tokens that the region's coarse samples attend to most, and the
region's fine samples cross-attend to those alone (FlashVDM's adaptive KV selection, Lai et al.
2025). Queries run in `dtype` (bfloat16 autocast by default), which the decoders' float32
interpolation of feature grids is unaffected by.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from native3d.autoencoders.bottleneck import LatentAutoencoder
from native3d.autoencoders.decoders import QueryCrossAttentionHead
from native3d.geometry.marching_cubes import Field, extract_mesh

KV_TOKENS = 0.5  # of a VecSet's tokens, the share each region keeps (a float) or how many (an int)


class LatentField:
    """A numpy field (P, 3) -> (P,) that decodes one latent (1, *latent_shape)."""

    def __init__(
        self,
        autoencoder: LatentAutoencoder,
        features: Tensor,
        kv_tokens: int | float | None = KV_TOKENS,
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        self.autoencoder, self.features, self.dtype = autoencoder, features, dtype
        head = getattr(autoencoder, "head", None)
        self.head = head if isinstance(head, QueryCrossAttentionHead) else None
        tokens = features.shape[1]
        self.k = tokens if kv_tokens is None else min(tokens, self.count(kv_tokens, tokens))

    @staticmethod
    def count(kv_tokens: int | float, tokens: int) -> int:
        return max(1, round(kv_tokens * tokens)) if isinstance(kv_tokens, float) else kv_tokens

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.features.device.type, dtype=self.dtype)

    @torch.no_grad()
    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = torch.from_numpy(points).to(device=self.features.device, dtype=torch.float32)[None]  # (1, P, 3)
        with self.autocast():
            return self.autoencoder.query(self.features, pts)[0].float().cpu().numpy()

    @torch.no_grad()
    def refine(self, anchors: np.ndarray) -> Field:
        """This field with only the `k` tokens that the region's anchors (A, 3) attend to most."""
        if self.head is None or self.k >= self.features.shape[1]:
            return self
        pts = torch.from_numpy(anchors).to(device=self.features.device, dtype=torch.float32)[
            None
        ]  # (1, A, 3)
        with self.autocast():
            tokens = self.head.select_tokens(self.features, pts, self.k)  # (1, k, C)
        return LatentField(self.autoencoder, tokens, kv_tokens=None, dtype=self.dtype)


@torch.no_grad()
def latent_field(
    autoencoder: LatentAutoencoder,
    latent: Tensor,
    kv_tokens: int | float | None = KV_TOKENS,
    dtype: torch.dtype = torch.bfloat16,
) -> LatentField:
    """The field of one latent (1, *latent_shape); `kv_tokens=None` and float32 give the exact decoder."""
    return LatentField(autoencoder, autoencoder.decoder_features(latent), kv_tokens, dtype)


def decode_mesh(
    autoencoder: LatentAutoencoder,
    latent: Tensor,
    resolution: int = 64,
    coarse_to_fine: bool = True,
    chunk: int = 2**14,
    fast: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and faces (F, 3) of one latent's zero level set; raises NoSurfaceError if empty.

    `fast` decodes with KV selection and bfloat16 (`latent_field`'s defaults), else the exact float32
    decoder; `coarse_to_fine=False` evaluates every grid corner, with the exact decoder.
    """
    exact = not (fast and coarse_to_fine)
    field = (
        latent_field(autoencoder, latent, kv_tokens=None, dtype=torch.float32)
        if exact
        else latent_field(autoencoder, latent)
    )
    return extract_mesh(field, resolution, coarse_to_fine, chunk=chunk)
