"""VecSet VAE: surface points -> a set of M latent tokens -> SDF at query points.

The structure of 3DShape2VecSet (Zhang et al. 2023, sec. 4, fig. 3) with Michelangelo's use of
surface normals (Zhao et al. 2023): M queries are the farthest-point-sampled (Qi et al. 2017,
PointNet++ sec. 3.2) subset of the surface points, Fourier-embedded, and cross-attend to all N
embedded points; a KL bottleneck shrinks each token to a few channels; the decoder projects the
tokens back up, runs self-attention layers over them, and lets Fourier-embedded query points
cross-attend to the result to read out signed distance.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from native3d.autoencoders.bottleneck import DiagonalGaussian, LatentAutoencoder
from native3d.autoencoders.decoders import QueryCrossAttentionHead
from native3d.autoencoders.fps import farthest_point_sample
from native3d.nn.attention import TransformerBlock
from native3d.nn.embeddings import FourierPointEmbedding


class VecSetVAE(LatentAutoencoder):
    """Surface (B, N, 6) -> latent (B, M, C) -> sdf (B, Q) at query points (B, Q, 3).

    `qk_norm` LayerNorms queries and keys in every attention layer: the encoder's, the
    self-attention blocks' and the query head's.
    """

    latent_channel_dim = -1

    def __init__(
        self,
        *,
        num_latents: int = 512,
        latent_channels: int = 32,
        width: int = 512,
        heads: int = 8,
        depth: int = 8,
        num_frequencies: int = 8,
        use_normals: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__(latent_channels)
        self.num_latents = num_latents
        self.latent_channels = latent_channels
        self.use_normals = use_normals
        self.point_embed = FourierPointEmbedding(width, num_frequencies, feature_dim=3 if use_normals else 0)
        self.encoder = TransformerBlock(
            width, heads, context_dim=width, self_attention=False, qk_norm=qk_norm
        )
        self.to_moments = nn.Linear(width, 2 * latent_channels)
        self.from_latent = nn.Linear(latent_channels, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, qk_norm=qk_norm) for _ in range(depth))
        self.head = QueryCrossAttentionHead(width, heads, num_frequencies, qk_norm=qk_norm)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.num_latents, self.latent_channels)

    def inputs_from_batch(self, batch: dict[str, Tensor]) -> Float[Tensor, "B N 6"]:
        return batch["surface"].float()

    def encode(self, surface: Float[Tensor, "B N 6"]) -> DiagonalGaussian:
        pts, normals = surface[..., :3], surface[..., 3:6]
        embedded = self.point_embed(pts, normals if self.use_normals else None)  # (B, N, C)
        # A random start in training augments which points seed the tokens; eval is deterministic.
        index = farthest_point_sample(pts, self.num_latents, random_start=self.training)
        queries = torch.gather(embedded, 1, index[..., None].expand(-1, -1, embedded.shape[-1]))  # (B, M, C)
        tokens = self.encoder(queries, context=embedded)  # (B, M, C)
        return DiagonalGaussian.from_moments(self.to_moments(tokens), dim=-1)  # (B, M, latent)

    def decoder_features(self, latent: Float[Tensor, "B M Cl"]) -> Float[Tensor, "B M C"]:
        x = self.from_latent(latent)  # (B, M, C)
        for block in self.blocks:
            x = block(x)
        return x

    def query(self, tokens: Float[Tensor, "B M C"], points: Float[Tensor, "B Q 3"]) -> Float[Tensor, "B Q"]:
        return self.head(tokens, points)


def vecset_tiny() -> VecSetVAE:
    """A CPU-test configuration: 32 tokens of 8 channels, width 64, 2 layers."""
    return VecSetVAE(num_latents=32, latent_channels=8, width=64, heads=4, depth=2, num_frequencies=6)


def vecset_base() -> VecSetVAE:
    """A GPU-scale configuration close to 3DShape2VecSet's KL model: 512 tokens x 32, width 512, 8 layers."""
    return VecSetVAE(num_latents=512, latent_channels=32, width=512, heads=8, depth=8, num_frequencies=8)
