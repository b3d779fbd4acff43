"""Grid VAE: SDF grid (B, 1, R, R, R) -> latent (B, C, R/f, R/f, R/f) -> SDF at query points.

The encoder and decoder are the residual convolutional stacks of the LDM autoencoder (Rombach
et al. 2022, appendix G; GroupNorm + SiLU residual blocks, strided-conv downsampling,
nearest + conv upsampling) in 3-D, as in SDFusion (Cheng et al. 2023). Instead of decoding a
dense grid, the decoder's feature volume is read at arbitrary points by trilinear interpolation
and a small MLP (Convolutional Occupancy Networks, Peng et al. 2020), so it is trained on the
shard's query points like the other autoencoders. The residual block is `native3d.nn.resblock`'s,
shared with the U-Net backbones; the stacks here are dimension-generic and reused by the triplane VAE.
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from native3d.autoencoders.bottleneck import DiagonalGaussian, LatentAutoencoder
from native3d.autoencoders.decoders import ImplicitMLPHead, sample_volume
from native3d.nn.resblock import CONV, ResBlock, conv, group_norm


def stem(dims: int, in_channels: int, out_channels: int, patch_size: int) -> nn.Module:
    """The first layer: a 3x3(x3) convolution, or with `patch_size` p > 1 a strided p^d convolution
    over non-overlapping patches (ViT's patch embedding), so that no layer runs at full resolution."""
    if patch_size == 1:
        return conv(dims, in_channels, out_channels, 3)
    return CONV[dims](in_channels, out_channels, patch_size, stride=patch_size)


class Downsample(nn.Module):
    """Halves every spatial axis with a stride-2 3x3(x3) convolution."""

    def __init__(self, in_channels: int, out_channels: int, dims: int) -> None:
        super().__init__()
        self.conv = conv(dims, in_channels, out_channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Doubles every spatial axis: nearest neighbour, then a 3x3(x3) convolution (no checkerboard)."""

    def __init__(self, in_channels: int, out_channels: int, dims: int) -> None:
        super().__init__()
        self.conv = conv(dims, in_channels, out_channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def encoder_stack(channels: tuple[int, ...], blocks_per_level: int, dims: int) -> nn.ModuleList:
    """Per level: `blocks_per_level` ResBlocks, then a Downsample into the next level's width."""
    layers: list[nn.Module] = []
    for i, width in enumerate(channels):
        layers += [ResBlock(width, width, dims) for _ in range(blocks_per_level)]
        if i + 1 < len(channels):
            layers.append(Downsample(width, channels[i + 1], dims))
    return nn.ModuleList(layers)


def decoder_stack(channels: tuple[int, ...], blocks_per_level: int, dims: int) -> nn.ModuleList:
    """The mirror of `encoder_stack`: ResBlocks, then an Upsample into the previous level's width."""
    layers: list[nn.Module] = []
    for i in reversed(range(len(channels))):
        layers += [ResBlock(channels[i], channels[i], dims) for _ in range(blocks_per_level)]
        if i > 0:
            layers.append(Upsample(channels[i], channels[i - 1], dims))
    return nn.ModuleList(layers)


class GridVAE(LatentAutoencoder):
    """SDF grid (B, 1, R, R, R) -> latent (B, C, r, r, r), r = R / (p 2^(levels-1)) -> sdf (B, Q)."""

    latent_channel_dim = 0

    def __init__(
        self,
        *,
        resolution: int = 64,
        channels: tuple[int, ...] = (64, 128, 256),
        latent_channels: int = 8,
        blocks_per_level: int = 1,
        feature_channels: int = 32,
        head_hidden: int = 128,
        head_layers: int = 2,
        patch_size: int = 1,
    ) -> None:
        super().__init__(latent_channels)
        factor = patch_size * 2 ** (len(channels) - 1)
        if resolution % factor:
            raise ValueError(f"resolution {resolution} is not divisible by the downsampling factor {factor}")
        self.resolution = resolution
        self.latent_resolution = resolution // factor
        self.latent_channels = latent_channels
        self.conv_in = stem(3, 1, channels[0], patch_size)  # the feature volume: R / p cells a side
        self.down = encoder_stack(channels, blocks_per_level, dims=3)
        self.norm_out = group_norm(channels[-1])
        self.to_moments = conv(3, channels[-1], 2 * latent_channels, 1)
        self.from_latent = conv(3, latent_channels, channels[-1], 3)
        self.up = decoder_stack(channels, blocks_per_level, dims=3)
        self.norm_features = group_norm(channels[0])
        self.to_features = conv(3, channels[0], feature_channels, 3)
        self.head = ImplicitMLPHead(feature_channels, head_hidden, head_layers)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        r = self.latent_resolution
        return (self.latent_channels, r, r, r)

    def inputs_from_batch(self, batch: dict[str, Tensor]) -> Float[Tensor, "B 1 R R R"]:
        return batch["sdf"].float()[:, None]

    def encode(self, sdf: Float[Tensor, "B 1 R R R"]) -> DiagonalGaussian:
        if sdf.shape[-3:] != (self.resolution,) * 3:
            raise ValueError(f"expected a {self.resolution}^3 grid, got {tuple(sdf.shape[-3:])}")
        h = self.conv_in(sdf)  # (B, C0, R/p, R/p, R/p)
        for layer in self.down:
            h = layer(h)  # ends at (B, C_last, r, r, r)
        return DiagonalGaussian.from_moments(self.to_moments(F.silu(self.norm_out(h))), dim=1)

    def decoder_features(self, latent: Float[Tensor, "B Cl r r r"]) -> Float[Tensor, "B Cf Rp Rp Rp"]:
        """The feature volume, R / patch_size cells a side."""
        h = self.from_latent(latent)  # (B, C_last, r, r, r)
        for layer in self.up:
            h = layer(h)  # ends at (B, C0, R/p, R/p, R/p)
        return self.to_features(F.silu(self.norm_features(h)))

    def query(
        self, volume: Float[Tensor, "B Cf Rp Rp Rp"], points: Float[Tensor, "B Q 3"]
    ) -> Float[Tensor, "B Q"]:
        features = sample_volume(volume, points)  # (B, Q, Cf)
        return self.head(features, points)


def grid_tiny() -> GridVAE:
    """A CPU-test configuration: R=32 -> latent 8 x 8^3, widths (8, 16, 32)."""
    return GridVAE(
        resolution=32,
        channels=(8, 16, 32),
        latent_channels=8,
        feature_channels=16,
        head_hidden=32,
        head_layers=1,
    )


def grid_base() -> GridVAE:
    """A GPU-scale configuration: R=64 -> latent 8 x 16^3, widths (64, 128, 256), two blocks per level."""
    return GridVAE(
        resolution=64, channels=(64, 128, 256), latent_channels=8, blocks_per_level=2, feature_channels=32
    )
