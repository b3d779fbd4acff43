"""UNet3D: the shared U-Net with 3-D convolutions, for grid latents (B, C, D, H, W).

A 3-D U-Net denoiser over a dense latent grid, as in the grid-latent diffusion of XCube
(Ren et al. 2024) and Make-A-Shape (Hui et al. 2024); the layers are ADM's (see `unet.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Float
from torch import Tensor

from native3d.backbones.unet import UNET_BASE, UNET_SMALL, UNET_TINY, UNet
from native3d.nn.modulation import Cond


class UNet3D(UNet):
    """forward(x_t (B, C, D, H, W), t (B,) in [0, 1], cond) -> (B, C, D, H, W); 0 at init."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256),
        num_blocks: int = 2,
        attention_levels: Sequence[int] = (2,),
        heads: int = 4,
        groups: int = 32,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
    ) -> None:
        super().__init__(
            dims=3,
            in_channels=in_channels,
            channels=channels,
            num_blocks=num_blocks,
            attention_levels=attention_levels,
            heads=heads,
            groups=groups,
            context_dim=context_dim,
            pooled_dim=pooled_dim,
        )

    def forward(
        self, x_t: Float[Tensor, "B C D H W"], t: Float[Tensor, " B"], cond: Cond | None = None
    ) -> Float[Tensor, "B C D H W"]:
        return super().forward(x_t, t, cond)


def unet3d_tiny(
    in_channels: int = 4, context_dim: int | None = None, pooled_dim: int | None = None
) -> UNet3D:
    """For tests and CPU smoke runs: two levels, attention at the 4^3 bottom of an 8^3 grid."""
    return UNet3D(in_channels, context_dim=context_dim, pooled_dim=pooled_dim, **UNET_TINY)


def unet3d_small(
    in_channels: int = 8, context_dim: int | None = None, pooled_dim: int | None = None
) -> UNet3D:
    """For 16^3 latents: attention at 8^3 and 4^3."""
    return UNet3D(in_channels, context_dim=context_dim, pooled_dim=pooled_dim, **UNET_SMALL)


def unet3d_base(
    in_channels: int = 8, context_dim: int | None = None, pooled_dim: int | None = None
) -> UNet3D:
    """For 32^3 latents: attention at 8^3 and 4^3 only (full-resolution 3-D attention is too big)."""
    return UNet3D(in_channels, context_dim=context_dim, pooled_dim=pooled_dim, **UNET_BASE)
