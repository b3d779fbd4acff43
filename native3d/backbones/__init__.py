"""Diffusion backbones; every one is `forward(x_t, t, cond) -> tensor shaped like x_t`.

t is (B,) in [0, 1] (1 = noise) and cond the dict of `native3d.nn.modulation.Cond` or None.
Each backbone's output layer is zero-initialized, so a fresh model outputs exactly 0.

- `SetDiT`: VecSet latents (B, M, C), permutation-equivariant.
- `UNet3D`: grid latents (B, C, D, H, W).
- `TriplaneUNet`: triplane latents (B, 3, C, H, W).
"""

from native3d.backbones.set_dit import SetDiT, set_dit_base, set_dit_large, set_dit_small, set_dit_tiny
from native3d.backbones.triplane_unet import (
    TriplaneUNet,
    triplane_unet_base,
    triplane_unet_small,
    triplane_unet_tiny,
)
from native3d.backbones.unet import UNet
from native3d.backbones.unet3d import UNet3D, unet3d_base, unet3d_small, unet3d_tiny

__all__ = [
    "SetDiT",
    "TriplaneUNet",
    "UNet",
    "UNet3D",
    "set_dit_base",
    "set_dit_large",
    "set_dit_small",
    "set_dit_tiny",
    "triplane_unet_base",
    "triplane_unet_small",
    "triplane_unet_tiny",
    "unet3d_base",
    "unet3d_small",
    "unet3d_tiny",
]
