"""TriplaneUNet: the shared 2-D U-Net over the three planes rolled out side by side.

Triplane latents (B, P=3, C, H, W) are laid out as one image (B, C, H, 3W) in plane order
(xy, xz, yz), the "roll-out" of Rodin (Wang et al. 2023, sec. 3.2), so one 2-D U-Net denoises
all three planes and shares its weights across them. The planes exchange information in two
ways: convolutions cross the borders between neighbouring planes, and the self-attention at the
low-resolution levels (and the middle block) attends over the tokens of all three planes at
once, which couples every plane with every other. A learned per-plane embedding added after
the stem tells the shared convolutions which plane they are on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from native3d.backbones.unet import UNET_BASE, UNET_SMALL, UNET_TINY, UNet
from native3d.nn.modulation import Cond

PLANES = 3


class PlaneEmbeddedStem(nn.Module):
    """The stem convolution, then a learned (P, C) vector added to each plane's features."""

    def __init__(self, stem: nn.Module, channels: int) -> None:
        super().__init__()
        self.stem = stem
        self.plane_embedding = nn.Parameter(torch.randn(PLANES, channels) * 0.02)

    def forward(self, x: Float[Tensor, "B C H PW"]) -> Float[Tensor, "B C0 H PW"]:
        h = rearrange(self.stem(x), "B C H (P W) -> B C H P W", P=PLANES)
        h = h + rearrange(self.plane_embedding, "P C -> C 1 P 1")
        return rearrange(h, "B C H P W -> B C H (P W)")


class TriplaneUNet(UNet):
    """forward(x_t (B, 3, C, H, W), t (B,) in [0, 1], cond) -> (B, 3, C, H, W); 0 at init."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256),
        num_blocks: int = 2,
        attention_levels: Sequence[int] = (1, 2),
        heads: int = 4,
        groups: int = 32,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
    ) -> None:
        super().__init__(
            dims=2,
            in_channels=in_channels,
            channels=channels,
            num_blocks=num_blocks,
            attention_levels=attention_levels,
            heads=heads,
            groups=groups,
            context_dim=context_dim,
            pooled_dim=pooled_dim,
        )
        self.stem = PlaneEmbeddedStem(self.stem, channels[0])

    def forward(
        self, x_t: Float[Tensor, "B P C H W"], t: Float[Tensor, " B"], cond: Cond | None = None
    ) -> Float[Tensor, "B P C H W"]:
        if x_t.ndim != 5 or x_t.shape[1] != PLANES:
            raise ValueError(f"expected triplanes (B, 3, C, H, W), got {tuple(x_t.shape)}")
        # UNet checks 3W is divisible by 2^levels, hence W is, so each plane's width halves evenly
        # and downsampling keeps plane borders aligned.
        rolled = rearrange(x_t, "B P C H W -> B C H (P W)")
        out = super().forward(rolled, t, cond)  # (B, C, H, 3W)
        return rearrange(out, "B C H (P W) -> B P C H W", P=PLANES)


def triplane_unet_tiny(
    in_channels: int = 4, context_dim: int | None = None, pooled_dim: int | None = None
) -> TriplaneUNet:
    """For tests and CPU smoke runs: two levels, cross-plane attention at the bottom."""
    return TriplaneUNet(in_channels, context_dim=context_dim, pooled_dim=pooled_dim, **UNET_TINY)


def triplane_unet_small(
    in_channels: int = 8, context_dim: int | None = None, pooled_dim: int | None = None
) -> TriplaneUNet:
    """For 32^2 planes: cross-plane attention at 16^2 and 8^2 per plane."""
    return TriplaneUNet(in_channels, context_dim=context_dim, pooled_dim=pooled_dim, **UNET_SMALL)


def triplane_unet_base(
    in_channels: int = 8, context_dim: int | None = None, pooled_dim: int | None = None
) -> TriplaneUNet:
    """For 64^2 planes: cross-plane attention at 16^2 and 8^2 per plane."""
    return TriplaneUNet(in_channels, context_dim=context_dim, pooled_dim=pooled_dim, **UNET_BASE)
