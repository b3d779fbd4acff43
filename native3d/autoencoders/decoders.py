"""Implicit query heads shared by the autoencoders: latent features -> signed distance at points.

Every decoder here is an occupancy / SDF network in the sense of Occupancy Networks (Mescheder
et al. 2019) and DeepSDF (Park et al. 2019): it is queried at arbitrary 3-D points.
- `sample_volume` / `sample_planes` read features at points from a feature volume or a
  triplane by (tri/bi)linear interpolation (Convolutional Occupancy Networks, Peng et al. 2020;
  EG3D, Chan et al. 2022), following the grid and plane conventions of `native3d.data.schema`.
- `ImplicitMLPHead` maps interpolated features plus Fourier features of the point to SDF.
- `QueryCrossAttentionHead` is the 3DShape2VecSet decoder (Zhang et al. 2023, sec. 4.3): the
  embedded query point cross-attends to the latent tokens, biased toward nearby tokens where the
  tokens are anchored at points. `select_tokens` is FlashVDM's adaptive KV selection (Lai et al.
  2025, sec. 3.3): the tokens that a region's coarse queries attend to most, so that the region's
  fine queries can attend to those alone.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from native3d.geometry.triplane import PLANE_AXES
from native3d.nn.attention import DistanceBias, Mlp, TransformerBlock
from native3d.nn.embeddings import FourierPointEmbedding


def sample_volume(
    volume: Float[Tensor, "B C R R R"], points: Float[Tensor, "B Q 3"]
) -> Float[Tensor, "B Q C"]:
    """Trilinear features at points of [-1, 1]^3 from a corner-convention volume indexed [x, y, z].

    `grid_sample`'s last grid coordinate indexes the volume's first spatial axis reversed
    (coordinate 0 -> W, the last axis), so an [x, y, z] volume is read with (z, y, x).
    Sampling runs in float32: bf16 coordinates would be off by a fraction of a cell.
    """
    grid = rearrange(points.flip(-1).float(), "B Q xyz -> B Q 1 1 xyz")
    features = F.grid_sample(volume.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return rearrange(features, "B C Q 1 1 -> B Q C")


def sample_planes(
    planes: Float[Tensor, "B P C R R"], points: Float[Tensor, "B Q 3"]
) -> Float[Tensor, "B Q P C"]:
    """Bilinear features of the three planes (xy, xz, yz) at the points' projections.

    Plane `ab` is indexed [a, b], so its grid coordinates are (b, a): `grid_sample`'s first
    coordinate indexes the last (width) axis.
    """
    uv = torch.stack([points[..., [b, a]] for a, b in PLANE_AXES], dim=1).float()  # (B, P, Q, 2)
    grid = rearrange(uv, "B P Q uv -> (B P) Q 1 uv")
    flat = rearrange(planes.float(), "B P C H W -> (B P) C H W")
    features = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return rearrange(features, "(B P) C Q 1 -> B Q P C", P=len(PLANE_AXES))


def sdf_output_layer(in_dim: int, initial_std: float = 0.02) -> nn.Linear:
    """The final Linear -> sdf, initialised so that the first predictions are ~`initial_std`.

    Outputs of order 1 would lie far outside the truncation band (|sdf| <= 0.1) and saturate the
    occupancy logits (-sdf / occupancy_scale) of the BCE loss; starting near the surface level
    does neither. Not zero, so that gradients reach the whole network from the first step.
    """
    layer = nn.Linear(in_dim, 1)
    nn.init.normal_(layer.weight, std=initial_std / math.sqrt(in_dim))  # its input is LayerNorm-ed
    nn.init.zeros_(layer.bias)
    return layer


class ImplicitMLPHead(nn.Module):
    """(features at the point, the point) -> sdf, with a residual pre-norm MLP.

    Fourier features of the point (6 octaves) let the head add detail finer than the feature grid
    spacing.
    """

    def __init__(self, feature_dim: int, hidden_dim: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, hidden_dim)
        self.point_embed = FourierPointEmbedding(hidden_dim, num_frequencies=6)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(num_layers))
        self.mlps = nn.ModuleList(Mlp(hidden_dim, 2 * hidden_dim) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = sdf_output_layer(hidden_dim)

    def forward(
        self, features: Float[Tensor, "B Q C"], points: Float[Tensor, "B Q 3"]
    ) -> Float[Tensor, "B Q"]:
        x = self.feature_proj(features) + self.point_embed(points)  # (B, Q, hidden)
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.out(self.norm(x)).squeeze(-1)


class QueryCrossAttentionHead(nn.Module):
    """Fourier-embedded query points cross-attend to latent tokens, then a linear layer -> sdf.

    The block, with its feed-forward sub-layer, runs once per query point. `qk_norm` as in `Attention`.

    `anchored`: each token comes with the point it describes, as the last 3 channels of the features
    (B, M, C + 3), and attention is biased toward the tokens near the query (`DistanceBias`). A
    query far from every token would then copy its nearest token's value and grow floaters at the
    faces of the cube; a learned null token, at no distance from anything, is what it reads instead.
    """

    def __init__(
        self, width: int, heads: int, num_frequencies: int = 8, qk_norm: bool = False, anchored: bool = False
    ) -> None:
        super().__init__()
        self.point_embed = FourierPointEmbedding(width, num_frequencies)
        self.cross = TransformerBlock(width, heads, context_dim=width, self_attention=False, qk_norm=qk_norm)
        self.norm = nn.LayerNorm(width)
        self.out = sdf_output_layer(width)
        self.distance_bias = DistanceBias(heads) if anchored else None
        self.null = nn.Parameter(0.02 * torch.randn(1, 1, width)) if anchored else None

    def keys(
        self, features: Float[Tensor, "B M Cf"], points: Float[Tensor, "B Q 3"]
    ) -> tuple[Float[Tensor, "B K C"], Float[Tensor, "B h Q K"] | None]:
        """The tokens the queries attend to and the attention bias: the features as they are, or
        (anchored) the null token and the tokens without their anchors, with the distance bias."""
        if self.distance_bias is None:
            return features, None
        tokens, anchors = features[..., :-3], features[..., -3:]
        bias = F.pad(self.distance_bias(points, anchors), (1, 0))  # (B, h, Q, 1 + M): the null's is 0
        return torch.cat([self.null.expand(len(tokens), -1, -1).to(tokens.dtype), tokens], 1), bias

    def forward(
        self, features: Float[Tensor, "B M Cf"], points: Float[Tensor, "B Q 3"]
    ) -> Float[Tensor, "B Q"]:
        tokens, bias = self.keys(features, points)
        # The eikonal loss differentiates sdf w.r.t. points twice over; only the math kernel of
        # scaled_dot_product_attention has a double backward, so use it when points need grad.
        with sdpa_kernel(SDPBackend.MATH) if points.requires_grad else nullcontext():
            x = self.cross(self.point_embed(points), context=tokens, context_mask=bias)  # (B, Q, C)
        return self.out(self.norm(x)).squeeze(-1)

    def attention_weights(
        self, features: Float[Tensor, "B M Cf"], points: Float[Tensor, "B Q 3"]
    ) -> Float[Tensor, "B Q M"]:
        """How much each query point attends to each of the M tokens, averaged over heads (the
        softmax of the head's cross-attention, whose output `forward` computes with a fused kernel)."""
        tokens, bias = self.keys(features, points)
        block, attention = self.cross, self.cross.cross_attn
        q = rearrange(
            attention.to_q(block.norm_cross(self.point_embed(points))),
            "B Q (h d) -> B h Q d",
            h=attention.heads,
        )
        k = attention.to_kv(block.norm_context(tokens))[..., : q.shape[1] * q.shape[-1]]  # (B, K, C)
        k = rearrange(k, "B K (h d) -> B h K d", h=attention.heads)
        q, k = attention.q_norm(q), attention.k_norm(k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, Q, K)
        weights = torch.softmax(logits if bias is None else logits + bias, dim=-1).mean(dim=1)
        return weights if bias is None else weights[..., 1:]  # the null token is always read

    def select_tokens(
        self, features: Float[Tensor, "B M Cf"], anchors: Float[Tensor, "B A 3"], k: int
    ) -> Float[Tensor, "B k Cf"]:
        """The `k` tokens with the most attention from the anchor points, kept in their order.

        Attention is summed over the anchors, so the chosen tokens carry the most of the region's
        attention mass; what the rest carried is what the fine queries lose. With k = M the
        tokens come back unchanged.
        """
        mass = self.attention_weights(features, anchors).sum(dim=1)  # (B, M)
        index = mass.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, k)
        return torch.gather(features, 1, index[..., None].expand(-1, -1, features.shape[-1]))


def aggregate_planes(features: Float[Tensor, "B Q P C"], mode: Literal["sum", "concat"]) -> Tensor:
    """Sum (EG3D) or concatenate (keeps which plane said what) the three planes' features."""
    if mode == "sum":
        return features.sum(dim=2)
    return rearrange(features, "B Q P C -> B Q (P C)")
