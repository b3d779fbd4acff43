"""Latents to meshes: an autoencoder's decoder as a signed-distance field for marching cubes.

The decoder's latent-only work (`decoder_features`: VecSet's self-attention over the tokens, the
grid's feature volume, the triplane's feature planes) is done once per latent; marching cubes
then only pays for `query` on each chunk of points at each refinement level.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from native3d.autoencoders.bottleneck import LatentAutoencoder
from native3d.geometry.marching_cubes import Field, extract_mesh


@torch.no_grad()
def latent_field(autoencoder: LatentAutoencoder, latent: Tensor) -> Field:
    """A numpy field (P, 3) -> (P,) that decodes one latent (1, *latent_shape)."""
    device = latent.device
    features = autoencoder.decoder_features(latent)

    @torch.no_grad()
    def field(points: np.ndarray) -> np.ndarray:
        pts = torch.from_numpy(points).to(device=device, dtype=torch.float32)[None]  # (1, P, 3)
        return autoencoder.query(features, pts)[0].float().cpu().numpy()

    return field


def decode_mesh(
    autoencoder: LatentAutoencoder,
    latent: Tensor,
    resolution: int = 64,
    coarse_to_fine: bool = True,
    chunk: int = 2**16,
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and faces (F, 3) of one latent's zero level set; raises NoSurfaceError if empty."""
    return extract_mesh(latent_field(autoencoder, latent), resolution, coarse_to_fine, chunk=chunk)
