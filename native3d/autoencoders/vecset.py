"""VecSet VAE: surface points -> a set of M latent tokens -> SDF at query points.

The structure of 3DShape2VecSet (Zhang et al. 2023, sec. 4, fig. 3) with Michelangelo's use of
surface normals (Zhao et al. 2023): M queries are the farthest-point-sampled (Qi et al. 2017,
PointNet++ sec. 3.2) subset of the surface points, Fourier-embedded, and cross-attend to all N
embedded points; a KL bottleneck shrinks each token to a few channels; the decoder projects the
tokens back up, runs self-attention layers over them, and lets Fourier-embedded query points
cross-attend to the result to read out signed distance.

Two options after Dora (Chen et al. 2024):
- `train_tokens`: the token count of each training batch is drawn from this list (Dora sec. 3.4),
  so one model encodes and decodes at any of them; eval and encode use `num_latents`, or the
  `num_tokens` asked for. The decoder is a set transformer, so any count decodes.
- `sharp_tokens`: that many of the `num_latents` queries are FPS-sampled from the sharp-edge points
  (`sharp`, B x S x 6), the rest from the uniform surface points, and the queries cross-attend to the
  union of both sets (Dora's sharp-edge sampling, sec. 3.2; Hunyuan3D-2.1 and Step1X-3D concatenate
  the two sets the same way). One cross-attention over the union rather than Dora's dual
  cross-attention keeps the encoder's parameters those of the uniform-only model (a checkpoint
  trained without sharp points fine-tunes with them), at the cost of N + S keys. At another token
  count M the sharp share stays `sharp_tokens / num_latents`.

`token_positions`: each token keeps the surface point it was seeded at (its anchor) as 3 more
latent channels, first, with no KL, and every cross-attention is biased toward
nearby points (`DistanceBias`): the encoder's queries read the surface around their anchor, the
decoder adds a Fourier embedding of each anchor to its token, and a query point reads the tokens
around it. Without anchors, the few channels of a token must also encode where the token is, and
the decoder must learn that locality from them; thin parts (chair legs, table tops, mug walls) are
what it learns last. A latent of positioned features is what Mosaic-SDF (Yariv et al. 2024) and
TRELLIS's structured latents (Xiang et al. 2025) diffuse; a diffusion model generates the anchors
with the features, and the latent is still an unordered set.

`anchor_std`: the posterior gives the anchors this fixed std instead of 0, so the decoder trains
on anchors jittered by it and the diffusion model on latents drawn with it. A decoder trained on
exact anchors is fragile to where they are, and generated anchors are never exact
(docs/results.md, "The latent set with anchored tokens").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from native3d.autoencoders.bottleneck import DiagonalGaussian, LatentAutoencoder
from native3d.autoencoders.decoders import QueryCrossAttentionHead
from native3d.autoencoders.fps import farthest_point_sample
from native3d.errors import InputError
from native3d.nn.attention import DistanceBias, TransformerBlock
from native3d.nn.embeddings import FourierPointEmbedding


class VecSetVAE(LatentAutoencoder):
    """Surface (B, N, 6) -> latent (B, M, C) -> sdf (B, Q) at query points (B, Q, 3); with
    `token_positions` the latent is (B, M, 3 + C), each token's anchor point first.

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
        train_tokens: Sequence[int] | None = None,
        sharp_tokens: int = 0,
        token_positions: bool = False,
        anchor_std: float = 0.0,
    ) -> None:
        super().__init__(latent_channels + 3 * token_positions)
        if train_tokens is not None and (not train_tokens or min(train_tokens) < 1):
            raise ValueError(f"train_tokens must be a non-empty list of positive counts, got {train_tokens}")
        if anchor_std < 0 or (anchor_std > 0 and not token_positions):
            raise ValueError(f"anchor_std must be >= 0 and needs token_positions, got {anchor_std}")
        if not 0 <= sharp_tokens < num_latents:
            raise ValueError(f"sharp_tokens must be in [0, num_latents={num_latents}), got {sharp_tokens}")
        self.num_latents = num_latents
        self.train_tokens = list(train_tokens) if train_tokens is not None else None
        self.sharp_tokens = sharp_tokens
        self.latent_channels = latent_channels
        self.token_positions = token_positions
        self.anchor_std = anchor_std
        self.use_normals = use_normals
        self.point_embed = FourierPointEmbedding(width, num_frequencies, feature_dim=3 if use_normals else 0)
        self.encoder = TransformerBlock(
            width, heads, context_dim=width, self_attention=False, qk_norm=qk_norm
        )
        self.to_moments = nn.Linear(width, 2 * latent_channels)
        self.from_latent = nn.Linear(latent_channels, width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, qk_norm=qk_norm) for _ in range(depth))
        self.head = QueryCrossAttentionHead(
            width, heads, num_frequencies, qk_norm=qk_norm, anchored=token_positions
        )
        self.encoder_bias = DistanceBias(heads) if token_positions else None
        self.anchor_embed = FourierPointEmbedding(width, num_frequencies) if token_positions else None

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.num_latents, self.latent_channels + 3 * self.token_positions)

    def inputs_from_batch(self, batch: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """The surface points (B, N, 6); with `sharp_tokens`, {"surface": (B, N, 6), "sharp": (B, S, 6)}."""
        if not self.sharp_tokens:
            return batch["surface"].float()
        if "sharp" not in batch:
            raise InputError(
                f"VecSetVAE(sharp_tokens={self.sharp_tokens}) reads the batch key 'sharp' (sharp.npy), which this "
                "batch lacks; rebuild the shard set with `python -m data_prep build --sharp-points S`"
            )
        return {"surface": batch["surface"].float(), "sharp": batch["sharp"].float()}

    def token_count(self, num_tokens: int | None = None) -> int:
        """M for this encode: as asked, else drawn from `train_tokens` in training, else `num_latents`."""
        if num_tokens is not None:
            return num_tokens
        if self.training and self.train_tokens:
            return self.train_tokens[int(torch.randint(len(self.train_tokens), ()))]  # the global torch RNG
        return self.num_latents

    def encode(self, inputs: Tensor | dict[str, Tensor], num_tokens: int | None = None) -> DiagonalGaussian:
        M = self.token_count(num_tokens)
        if isinstance(inputs, dict):
            sets = [inputs["surface"], inputs["sharp"]]
            sharp = round(M * self.sharp_tokens / self.num_latents)
            counts = [M - sharp, sharp]
        else:
            sets, counts = [inputs], [M]
        queries, context, anchors = [], [], []
        for points, count in zip(sets, counts):
            embedded = self.point_embed(points[..., :3], points[..., 3:6] if self.use_normals else None)
            context.append(embedded)  # (B, N or S, C)
            if count == 0:
                continue
            # A random start in training augments which points seed the tokens; eval is deterministic.
            index = farthest_point_sample(points[..., :3], count, random_start=self.training)
            queries.append(torch.gather(embedded, 1, index[..., None].expand(-1, -1, embedded.shape[-1])))
            anchors.append(torch.gather(points[..., :3], 1, index[..., None].expand(-1, -1, 3)))
        anchors = torch.cat(anchors, 1)  # (B, M, 3)
        bias = None
        if self.token_positions:
            bias = self.encoder_bias(anchors, torch.cat([points[..., :3] for points in sets], 1))
        tokens = self.encoder(torch.cat(queries, 1), context=torch.cat(context, 1), context_mask=bias)
        mean, logvar = self.to_moments(tokens).chunk(2, dim=-1)  # (B, M, latent) each
        if not self.token_positions:
            return DiagonalGaussian(mean, logvar)
        fixed = torch.arange(3 + self.latent_channels, device=mean.device) < 3  # the anchors' channels
        anchor_logvar = torch.full_like(
            anchors, 2 * math.log(self.anchor_std) if self.anchor_std else -math.inf
        )
        return DiagonalGaussian(
            torch.cat([anchors.to(mean.dtype), mean], -1),
            torch.cat([anchor_logvar.to(logvar.dtype), logvar], -1),
            fixed,
        )

    def decoder_features(self, latent: Float[Tensor, "B M Cl"]) -> Float[Tensor, "B M Cf"]:
        """The processed tokens (B, M, width); with `token_positions`, their anchors appended (B, M, width + 3)."""
        if not self.token_positions:
            x = self.from_latent(latent)  # (B, M, C)
        else:
            anchors, latent = latent[..., :3], latent[..., 3:]
            x = self.from_latent(latent) + self.anchor_embed(anchors)  # (B, M, C)
        for block in self.blocks:
            x = block(x)
        return x if not self.token_positions else torch.cat([x, anchors.to(x.dtype)], -1)

    def query(self, tokens: Float[Tensor, "B M C"], points: Float[Tensor, "B Q 3"]) -> Float[Tensor, "B Q"]:
        return self.head(tokens, points)


def vecset_tiny() -> VecSetVAE:
    """A CPU-test configuration: 32 anchored tokens of 8 channels, width 64, 2 layers."""
    return VecSetVAE(
        num_latents=32, latent_channels=8, width=64, heads=4, depth=2, num_frequencies=6, token_positions=True
    )


def vecset_base() -> VecSetVAE:
    """A GPU-scale configuration close to 3DShape2VecSet's KL model: 512 tokens x 32, width 512, 8 layers."""
    return VecSetVAE(num_latents=512, latent_channels=32, width=512, heads=8, depth=8, num_frequencies=8)
