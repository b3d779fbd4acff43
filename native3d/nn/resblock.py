"""The residual convolution block shared by the conv autoencoders and the U-Net backbones.

GroupNorm, SiLU and a 3x3(x3) convolution, twice, plus a skip (a 1x1 convolution when the width
changes), in 2-D or 3-D: the residual block of the LDM autoencoder (Rombach et al. 2022,
appendix G) and of the ADM U-Net (Dhariwal & Nichol 2021, sec. 3). Given a conditioning vector
(`cond_dim`), the second GroupNorm is modulated by a shift and scale regressed from it (ADM's
`scale_shift_norm`); `zero_init` starts the residual branch at zero, so that the block starts as
its skip (ADM's `zero_module`), as a diffusion backbone wants it.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from native3d.nn.modulation import modulate

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


def conv(dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
    """A `dims`-D convolution padded to keep the size (at stride 1)."""
    return CONV[dims](in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm over gcd(groups, channels) groups, so that any width gets a valid count."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """skip(x) + conv(SiLU(GN'(conv(SiLU(GN(x)))))), GN' modulated by c when `cond_dim` is set."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dims: int,
        *,
        cond_dim: int | None = None,
        groups: int = 32,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = conv(dims, in_channels, out_channels, 3)
        self.modulation = nn.Linear(cond_dim, 2 * out_channels) if cond_dim else None
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = conv(dims, out_channels, out_channels, 3)
        if zero_init:
            nn.init.zeros_(self.conv2.weight)
            nn.init.zeros_(self.conv2.bias)
        self.skip = conv(dims, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(
        self, x: Float[Tensor, "B Ci *S"], c: Float[Tensor, "B E"] | None = None
    ) -> Float[Tensor, "B Co *S"]:
        h = self.norm2(self.conv1(F.silu(self.norm1(x))))
        if self.modulation is not None:
            if c is None:
                raise ValueError("this ResBlock is conditioned: pass its conditioning vector c")
            shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)
            h = modulate(h, shift, scale, channel_dim=1)
        return self.skip(x) + self.conv2(F.silu(h))
