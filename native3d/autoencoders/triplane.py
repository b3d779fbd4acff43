"""Triplane VAE: planes (B, 3, 2, R, R) -> latent (B, 3, C, r, r) -> SDF at query points.

The three axis-aligned planes (xy, xz, yz; schema.TRIPLANE_PLANES) are processed by one 2-D
residual conv stack with weights shared over planes (planes folded into the batch). Planes talk
through `PlaneMixing`, the 3D-aware convolution of Rodin (Wang et al. 2023, sec. 3.2): each plane
receives the other two planes' features pooled along the axis it does not share with them and
broadcast along the one it does. The decoder reads the up-sampled feature planes at each query
point's three projections (EG3D, Chan et al. 2022; Convolutional Occupancy Networks, Peng et
al. 2020) and an MLP maps the aggregated features to signed distance.

With `point_channels > 0` the encoder also reads the surface points, as Convolutional Occupancy
Networks' encoder does (Peng et al. 2020, sec. 3.1): a shared MLP embeds every point (Fourier
features of its position, and its normal), and each plane cell averages the embeddings of the
points that project into it. Those features join the stored projections as input channels. The
stored projections say where the shape is seen from each axis; the pooled features can also say
at what depth and with which orientation, which projections alone lose.

With `patch_size` p > 1 the conv stacks run at R / p. `unpatch_features` then ends the decoder
with the stem's mirror, a stride-p transposed convolution (ViT's unpatchify), so that the feature
planes are read at the input's resolution R: p x p features per cell instead of one, for thin
parts, at the cost of one cheap layer.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from jaxtyping import Float
from torch import Tensor, nn

from native3d.autoencoders.bottleneck import DiagonalGaussian, LatentAutoencoder
from native3d.autoencoders.decoders import PLANE_AXES, ImplicitMLPHead, aggregate_planes, sample_planes
from native3d.autoencoders.grid import Downsample, Upsample, decoder_stack, encoder_stack, stem
from native3d.data.schema import TRIPLANE_CHANNELS
from native3d.nn.attention import Mlp
from native3d.nn.embeddings import FourierPointEmbedding
from native3d.nn.resblock import group_norm

PLANES = 3


def axis_context(planes: Float[Tensor, "B P C R R"]) -> Float[Tensor, "B P 2C R R"]:
    """For each plane `ab`, the features of the plane sharing axis a pooled over its other axis
    (broadcast along b), and of the plane sharing b pooled likewise (broadcast along a)."""
    xy, xz, yz = planes.unbind(1)
    R = planes.shape[-1]

    def row(v: Tensor) -> Tensor:  # (B, C, R) over axis a -> (B, C, R, R), constant along b
        return repeat(v, "B C a -> B C a b", b=R)

    def col(v: Tensor) -> Tensor:  # (B, C, R) over axis b -> (B, C, R, R), constant along a
        return repeat(v, "B C b -> B C a b", a=R)

    for_xy = torch.cat([row(xz.mean(-1)), col(yz.mean(-1))], dim=1)  # x from xz, y from yz
    for_xz = torch.cat([row(xy.mean(-1)), col(yz.mean(-2))], dim=1)  # x from xy, z from yz
    for_yz = torch.cat([row(xy.mean(-2)), col(xz.mean(-2))], dim=1)  # y from xy, z from xz
    return torch.stack([for_xy, for_xz, for_yz], dim=1)


class PlaneMixing(nn.Module):
    """x + 1x1 conv over [plane, axis-pooled context from the other two planes] (shared over planes)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.mix = nn.Conv2d(3 * channels, channels, 1)

    def forward(self, x: Float[Tensor, "BP C R R"]) -> Float[Tensor, "BP C R R"]:
        h = rearrange(F.silu(self.norm(x)), "(B P) C H W -> B P C H W", P=PLANES)
        h = torch.cat([h, axis_context(h)], dim=2)  # (B, P, 3C, R, R)
        return x + self.mix(rearrange(h, "B P C H W -> (B P) C H W"))


def interleave_mixing(stack: nn.ModuleList) -> nn.ModuleList:
    """Follows every change of resolution in a conv stack with a PlaneMixing at the new width."""
    layers: list[nn.Module] = []
    for layer in stack:
        layers.append(layer)
        if isinstance(layer, (Downsample, Upsample)):
            layers.append(PlaneMixing(layer.conv.out_channels))
    return nn.ModuleList(layers)


class PointPooling(nn.Module):
    """Surface points (B, N, 6) -> per-plane mean of point embeddings (B, 3, C, R, R).

    A point is pooled into the cell of the corner-convention grid nearest to its projection;
    cells that no point reaches get zeros.
    """

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.embed = FourierPointEmbedding(channels, num_frequencies=6, feature_dim=3)
        self.mlp = Mlp(channels, 2 * channels)

    def forward(self, surface: Float[Tensor, "B N 6"]) -> Float[Tensor, "B 3 C R R"]:
        points, normals = surface[..., :3].float(), surface[..., 3:6].float()
        h = self.embed(points, normals)
        h = h + self.mlp(h)  # (B, N, C)
        R = self.resolution
        cells = ((points.clamp(-1, 1) + 1) * 0.5 * (R - 1)).round().long()  # (B, N, 3), nearest grid corner
        pooled = []
        for a, b in PLANE_AXES:
            index = (cells[..., a] * R + cells[..., b])[:, None].expand(-1, h.shape[-1], -1)  # (B, C, N)
            total = h.new_zeros(h.shape[0], h.shape[-1], R * R).scatter_add_(2, index, h.transpose(1, 2))
            count = h.new_zeros(h.shape[0], 1, R * R).scatter_add_(
                2, index[:, :1], torch.ones_like(index[:, :1], dtype=h.dtype)
            )
            pooled.append(total / count.clamp_min(1.0))
        return rearrange(torch.stack(pooled, dim=1), "B P C (H W) -> B P C H W", H=R)


class TriplaneVAE(LatentAutoencoder):
    """Triplane (B, 3, 2, R, R) -> latent (B, 3, C, r, r), r = R / (p 2^(levels-1)) -> sdf (B, Q).

    The two input channels per plane are the schema's `TRIPLANE_CHANNELS`; `point_channels` > 0
    adds as many of pooled surface-point features.
    """

    latent_channel_dim = 1

    def __init__(
        self,
        *,
        resolution: int = 64,
        channels: tuple[int, ...] = (64, 128, 256),
        latent_channels: int = 8,
        blocks_per_level: int = 1,
        feature_channels: int = 32,
        aggregate: Literal["sum", "concat"] = "sum",
        head_hidden: int = 128,
        head_layers: int = 2,
        point_channels: int = 0,
        patch_size: int = 1,
        unpatch_features: bool = False,
    ) -> None:
        super().__init__(latent_channels)
        factor = patch_size * 2 ** (len(channels) - 1)
        if unpatch_features and patch_size == 1:
            raise ValueError(
                "unpatch_features needs patch_size > 1: without patches the feature planes are already at the full resolution"
            )
        if resolution % factor:
            raise ValueError(f"resolution {resolution} is not divisible by the downsampling factor {factor}")
        self.resolution = resolution
        self.latent_resolution = resolution // factor
        self.latent_channels = latent_channels
        self.aggregate = aggregate
        self.point_pooling = PointPooling(point_channels, resolution) if point_channels else None
        in_channels = len(TRIPLANE_CHANNELS) + point_channels
        self.conv_in = stem(2, in_channels, channels[0], patch_size)  # feature planes: R / p a side
        self.down = interleave_mixing(encoder_stack(channels, blocks_per_level, dims=2))
        self.mix_latent = PlaneMixing(channels[-1])
        self.norm_out = group_norm(channels[-1])
        self.to_moments = nn.Conv2d(channels[-1], 2 * latent_channels, 1)
        self.from_latent = nn.Conv2d(latent_channels, channels[-1], 3, padding=1)
        self.up = interleave_mixing(decoder_stack(channels, blocks_per_level, dims=2))
        self.norm_features = group_norm(channels[0])
        if unpatch_features:  # the stem's mirror: feature planes back at R a side
            self.to_features = nn.ConvTranspose2d(
                channels[0], feature_channels, patch_size, stride=patch_size
            )
        else:
            self.to_features = nn.Conv2d(channels[0], feature_channels, 3, padding=1)
        head_in = feature_channels * (PLANES if aggregate == "concat" else 1)
        self.head = ImplicitMLPHead(head_in, head_hidden, head_layers)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        r = self.latent_resolution
        return (PLANES, self.latent_channels, r, r)

    def inputs_from_batch(self, batch: dict[str, Tensor]) -> Float[Tensor, "B 3 Cin R R"] | dict[str, Tensor]:
        """The stored planes; with point pooling, {"triplane": planes, "surface": (B, N, 6) points}."""
        if self.point_pooling is None:
            return batch["triplane"].float()
        return {"triplane": batch["triplane"].float(), "surface": batch["surface"].float()}

    def encode(self, inputs: Float[Tensor, "B 3 Cin R R"] | dict[str, Tensor]) -> DiagonalGaussian:
        planes = inputs["triplane"] if isinstance(inputs, dict) else inputs
        if planes.shape[-2:] != (self.resolution,) * 2:
            raise ValueError(f"expected {self.resolution}^2 planes, got {tuple(planes.shape[-2:])}")
        if self.point_pooling is not None:
            if not isinstance(inputs, dict):
                raise ValueError(
                    "this TriplaneVAE pools surface points too; encode {'triplane': ..., 'surface': ...}"
                )
            planes = torch.cat([planes, self.point_pooling(inputs["surface"])], dim=2)
        h = self.conv_in(rearrange(planes, "B P C H W -> (B P) C H W"))  # (B P, C0, R/p, R/p)
        for layer in self.down:
            h = layer(h)  # ends at (B P, C_last, r, r)
        h = self.mix_latent(h)
        moments = self.to_moments(F.silu(self.norm_out(h)))  # (B P, 2 Cl, r, r)
        return DiagonalGaussian.from_moments(rearrange(moments, "(B P) C H W -> B P C H W", P=PLANES), dim=2)

    def decoder_features(self, latent: Float[Tensor, "B 3 Cl r r"]) -> Float[Tensor, "B 3 Cf R R"]:
        """The feature planes."""
        h = self.from_latent(rearrange(latent, "B P C H W -> (B P) C H W"))  # (B P, C_last, r, r)
        for layer in self.up:
            h = layer(h)  # ends at (B P, C0, R/p, R/p)
        features = self.to_features(F.silu(self.norm_features(h)))
        return rearrange(features, "(B P) C H W -> B P C H W", P=PLANES)

    def query(
        self, planes: Float[Tensor, "B 3 Cf R R"], points: Float[Tensor, "B Q 3"]
    ) -> Float[Tensor, "B Q"]:
        features = sample_planes(planes, points)  # (B, Q, P, Cf)
        return self.head(aggregate_planes(features, self.aggregate), points)


def triplane_tiny() -> TriplaneVAE:
    """A CPU-test configuration: R=32 planes -> latent 3 x 8 x 8^2, widths (16, 32, 32)."""
    return TriplaneVAE(
        resolution=32,
        channels=(16, 32, 32),
        latent_channels=8,
        feature_channels=16,
        head_hidden=32,
        head_layers=1,
    )


def triplane_base() -> TriplaneVAE:
    """A GPU-scale configuration: R=64 planes -> latent 3 x 8 x 16^2, widths (64, 128, 256), two blocks per level."""
    return TriplaneVAE(
        resolution=64, channels=(64, 128, 256), latent_channels=8, blocks_per_level=2, feature_channels=32
    )
