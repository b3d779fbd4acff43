"""Latents to meshes: an autoencoder's decoder as a signed-distance field for marching cubes.

The decoder's latent-only work (`decoder_features`: VecSet's self-attention over the tokens, the
grid's feature volume, the triplane's feature planes) is done once per latent; marching cubes
then only pays for `query` on each chunk of points at each refinement level.

With `kv_tokens` a VecSet decoder's field is a `RegionalField`: before a region of space is
refined, it keeps the `kv_tokens` latent tokens that the region's coarse samples attend to most,
and the region's fine samples cross-attend to those alone (FlashVDM's adaptive KV selection, Lai
et al. 2025). Queries run in `dtype` (bfloat16 autocast by default); the grid and triplane
decoders interpolate their feature grids in float32 regardless.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor

from native3d.autoencoders.bottleneck import LatentAutoencoder
from native3d.autoencoders.decoders import QueryCrossAttentionHead
from native3d.geometry.marching_cubes import Field, extract_mesh

KV_TOKENS = None  # off: KV selection is not exact enough to be the default (docs/results.md, Decoding)


class LatentField:
    """A numpy field (P, 3) -> (P,) that decodes one latent's decoder features, in `dtype`."""

    def __init__(self, autoencoder: LatentAutoencoder, features: Tensor, dtype: torch.dtype) -> None:
        self.autoencoder, self.features, self.dtype = autoencoder, features, dtype

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.features.device.type, dtype=self.dtype)

    @torch.no_grad()
    def __call__(self, points: np.ndarray) -> np.ndarray:
        pts = torch.from_numpy(points).to(device=self.features.device, dtype=torch.float32)[None]  # (1, P, 3)
        with self.autocast():
            return self.autoencoder.query(self.features, pts)[0].float().cpu().numpy()


class TokenSelectingField(LatentField):
    """A VecSet's field whose regions attend only to the `k` tokens their coarse samples attend to most."""

    def __init__(
        self, autoencoder: LatentAutoencoder, head: QueryCrossAttentionHead, tokens: Tensor, k: int, dtype
    ) -> None:
        super().__init__(autoencoder, tokens, dtype)
        self.head, self.k = head, min(k, tokens.shape[1])

    @torch.no_grad()
    def refine(self, anchors: np.ndarray) -> Field:
        pts = torch.from_numpy(anchors).to(device=self.features.device, dtype=torch.float32)[
            None
        ]  # (1, A, 3)
        with self.autocast():
            tokens = self.head.select_tokens(self.features, pts, self.k)  # (1, k, C)
        return LatentField(self.autoencoder, tokens, self.dtype)


@torch.no_grad()
def latent_field(
    autoencoder: LatentAutoencoder,
    latent: Tensor,
    kv_tokens: int | float | None = KV_TOKENS,
    dtype: torch.dtype = torch.float32,
) -> LatentField:
    """The field of one latent (1, *latent_shape), queried in `dtype` (autocast; float32: none).

    `kv_tokens` (a VecSet only): how many tokens each region keeps, as a count or a share of the
    tokens; None attends to all of them. None and float32 give the exact decoder.
    """
    features = autoencoder.decoder_features(latent)
    head = getattr(autoencoder, "head", None)
    if kv_tokens is None or not isinstance(head, QueryCrossAttentionHead):
        return LatentField(autoencoder, features, dtype)
    tokens = features.shape[1]
    k = max(1, round(kv_tokens * tokens)) if isinstance(kv_tokens, float) else kv_tokens
    return TokenSelectingField(autoencoder, head, features, k, dtype)


def decode_mesh(
    autoencoder: LatentAutoencoder,
    latent: Tensor,
    resolution: int = 64,
    coarse_to_fine: bool = True,
    chunk: int = 2**14,
    fast: bool = False,
    kv_tokens: int | float | None = KV_TOKENS,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and faces (F, 3) of one latent's zero level set; raises NoSurfaceError if empty.

    `fast` queries coarse-to-fine decoding in bfloat16 with `kv_tokens` KV selection; otherwise, and
    with `coarse_to_fine=False` (every grid corner), the decoder is the exact float32 one. Not the
    default: bfloat16 moves the mesh measurably (docs/results.md, Decoding).
    """
    if fast and coarse_to_fine:
        field = latent_field(autoencoder, latent, kv_tokens, torch.bfloat16)
    else:
        field = latent_field(autoencoder, latent, None, torch.float32)
    return extract_mesh(field, resolution, coarse_to_fine, chunk=chunk)
