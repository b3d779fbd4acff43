"""A convolutional U-Net for any number of spatial axes (2-D planes, 3-D grids): the shared core.

This is the ADM U-Net (Dhariwal & Nichol 2021, sec. 3) trimmed to what latent diffusion needs:
residual blocks (`native3d.nn.resblock`, shared with the conv autoencoders) whose second GroupNorm
is modulated by the (time + pooled condition) vector (`scale_shift_norm`), transformer blocks with
self- and cross-attention at chosen resolutions (latent diffusion, Rombach et al. 2022, sec. 3.3),
skip connections between levels, and a zero-initialized output convolution (so the network
outputs exactly 0 at init).
`UNet3D` and `TriplaneUNet` are thin wrappers that only decide the layout of their input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import pack, rearrange, unpack
from jaxtyping import Float
from torch import Tensor, nn

from native3d.nn.attention import Attention, Mlp
from native3d.nn.modulation import Cond, ConditionEmbedding
from native3d.nn.resblock import CONV, ResBlock, conv, group_norm

# The preset sizes that `UNet3D` and `TriplaneUNet` share (`unet3d_small`, `triplane_unet_small`, ...);
# small and base suit a latent grid of side S and latent planes of side 2S alike.
UNET_TINY = {"channels": (16, 32), "num_blocks": 1, "attention_levels": (1,), "heads": 2, "groups": 8}
UNET_SMALL = {"channels": (64, 128, 256), "num_blocks": 2, "attention_levels": (1, 2), "heads": 4}
UNET_BASE = {"channels": (128, 256, 384, 512), "num_blocks": 2, "attention_levels": (2, 3), "heads": 8}


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class SpatialTransformer(nn.Module):
    """A pre-norm transformer block over all positions of a feature map (B, C, *S).

    Cross-attention to the condition tokens runs only when a context is given, so the same
    weights serve conditional and unconditional calls. No positional encoding is added: the
    convolutions before it have already made features position-aware (as in latent diffusion).
    """

    def __init__(self, channels: int, heads: int, context_dim: int | None) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, qk_norm=True)
        self.norm_cross = nn.LayerNorm(channels) if context_dim else None
        self.cross_attn = (
            Attention(channels, heads, context_dim=context_dim, qk_norm=True) if context_dim else None
        )
        self.norm_mlp = nn.LayerNorm(channels)
        self.mlp = Mlp(channels, 4 * channels)
        _zero(self.mlp.fc2)  # the block starts as the identity on its feature map

    def forward(
        self, h: Float[Tensor, "B C *S"], context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Float[Tensor, "B C *S"]:
        x, packed_shape = pack([rearrange(h, "B C ... -> B ... C")], "B * C")  # (B, prod(S), C)
        x = x + self.attn(self.norm_attn(x))
        if context is not None and self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, mask=context_mask)
        x = x + self.mlp(self.norm_mlp(x))
        [x] = unpack(x, packed_shape, "B * C")
        return rearrange(x, "B ... C -> B C ...")


class Level(nn.Module):
    """The blocks of one resolution: `num_blocks` ResBlocks, each optionally followed by attention."""

    def __init__(
        self,
        dims: int,
        in_ch: int,
        out_ch: int,
        num_blocks: int,
        cond_dim: int,
        groups: int,
        heads: int,
        attention: bool,
        context_dim: int | None,
    ) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(
                in_ch if i == 0 else out_ch, out_ch, dims, cond_dim=cond_dim, groups=groups, zero_init=True
            )
            for i in range(num_blocks)
        )
        self.attn = nn.ModuleList(
            SpatialTransformer(out_ch, heads, context_dim) if attention else nn.Identity()
            for _ in range(num_blocks)
        )

    def forward(self, h: Tensor, c: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        for res, attn in zip(self.res, self.attn):
            h = res(h, c)
            if isinstance(attn, SpatialTransformer):
                h = attn(h, context, context_mask)
        return h


class UNet(nn.Module):
    """forward(x_t (B, C, *S), t (B,) in [0, 1], cond) -> (B, C, *S), for len(S) = `dims`.

    Level i has `channels[i]` channels at resolution S / 2^i; `attention_levels` lists the levels
    (0 = full resolution) whose blocks carry self- and cross-attention; the middle block always
    does. Every spatial size must be divisible by 2^(len(channels) - 1).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256),
        num_blocks: int = 2,
        attention_levels: Sequence[int] = (2,),
        heads: int = 4,
        groups: int = 32,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dims not in CONV:
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        self.dims = dims
        self.num_levels = len(channels)
        cond_dim = 4 * channels[0]
        # Tokens are projected once to cond_dim; each cross-attention maps them to its own width.
        self.cond_embed = ConditionEmbedding(
            cond_dim, context_dim=context_dim, pooled_dim=pooled_dim, token_dim=cond_dim
        )
        context = cond_dim if context_dim else None

        def level(i: int, in_ch: int) -> Level:
            return Level(
                dims, in_ch, channels[i], num_blocks, cond_dim, groups, heads, i in attention_levels, context
            )

        def mid_res() -> ResBlock:
            return ResBlock(
                channels[-1], channels[-1], dims, cond_dim=cond_dim, groups=groups, zero_init=True
            )

        self.stem = conv(dims, in_channels, channels[0], 3)
        self.down = nn.ModuleList(level(i, channels[max(i - 1, 0)]) for i in range(self.num_levels))
        self.downsample = nn.ModuleList(conv(dims, ch, ch, 3, stride=2) for ch in channels[:-1])
        self.mid_res1 = mid_res()
        self.mid_attn = SpatialTransformer(channels[-1], heads, context)
        self.mid_res2 = mid_res()
        # Going up, level i reads the level below (channels[i + 1], or the middle) plus its skip.
        self.up = nn.ModuleList(
            level(i, channels[min(i + 1, self.num_levels - 1)] + channels[i]) for i in range(self.num_levels)
        )
        self.upsample = nn.ModuleList(conv(dims, ch, ch, 3) for ch in channels[1:])  # after 2x nearest
        self.out_norm = group_norm(channels[0], groups)
        self.out_conv = _zero(conv(dims, channels[0], in_channels, 3))

    def forward(
        self, x_t: Float[Tensor, "B C *S"], t: Float[Tensor, " B"], cond: Cond | None = None
    ) -> Float[Tensor, "B C *S"]:
        factor = 2 ** (self.num_levels - 1)
        if x_t.ndim != self.dims + 2 or any(size % factor for size in x_t.shape[2:]):
            raise ValueError(
                f"expected (B, C) + {self.dims} spatial axes divisible by {factor}, got {tuple(x_t.shape)}"
            )
        c, context, context_mask = self.cond_embed(t, cond)  # (B, E), (B, L, E)
        h = self.stem(x_t)
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, c, context, context_mask)
            skips.append(h)
            if i < self.num_levels - 1:
                h = self.downsample[i](h)  # (B, C_i, *S / 2^(i+1))
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, c), context, context_mask), c)
        for i in reversed(range(self.num_levels)):
            if i < self.num_levels - 1:
                h = self.upsample[i](
                    F.interpolate(h, scale_factor=2.0, mode="nearest")
                )  # (B, C_{i+1}, *S / 2^i)
            h = self.up[i](torch.cat([h, skips.pop()], dim=1), c, context, context_mask)
        return self.out_conv(F.silu(self.out_norm(h)))
