"""SetDiT: a Diffusion Transformer over a set of latent tokens (VecSet latents, (B, M, C)).

The blocks are DiT's adaLN-Zero blocks (Peebles & Xie 2023, sec. 3.2, Fig. 3) with a
cross-attention sub-layer to condition tokens between self-attention and the MLP, as in
PixArt-alpha (Chen et al. 2024, sec. 2.3). Time and the pooled condition enter through adaLN.
There is no positional encoding: a VecSet latent is an unordered set (3DShape2VecSet, Zhang et
al. 2023), so the network is permutation-equivariant over tokens. As in 3DShape2VecSet's and
CLAY's (Zhang et al. 2024) latent diffusion, a set latent is denoised by a plain transformer.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from native3d.nn.attention import Attention, Mlp
from native3d.nn.modulation import AdaLNFinalLayer, AdaLNModulation, Cond, ConditionEmbedding, gate, modulate


class DiTBlock(nn.Module):
    """x + g1 SelfAttn(adaLN(x)) [+ CrossAttn(LN x, context)] + g2 Mlp(adaLN(x))."""

    def __init__(self, dim: int, heads: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=True)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if cross_attention else None
        self.cross_attn = Attention(dim, heads, context_dim=dim, qk_norm=True) if cross_attention else None
        if self.cross_attn is not None:
            # Start with conditioning switched off, as PixArt-alpha does, so a fresh block is the
            # identity whatever the condition.
            nn.init.zeros_(self.cross_attn.proj.weight)
            nn.init.zeros_(self.cross_attn.proj.bias)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.modulation = AdaLNModulation(dim, dim, chunks=6)

    def forward(
        self,
        x: Float[Tensor, "B M C"],
        c: Float[Tensor, "B C"],
        context: Float[Tensor, "B L C"] | None = None,
        context_mask: Tensor | None = None,
    ) -> Float[Tensor, "B M C"]:
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate(self.attn(modulate(self.norm_attn(x), shift_attn, scale_attn)), gate_attn)
        if context is not None and self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, mask=context_mask)
        return x + gate(self.mlp(modulate(self.norm_mlp(x), shift_mlp, scale_mlp)), gate_mlp)


class SetDiT(nn.Module):
    """forward(x_t (B, M, C), t (B,) in [0, 1], cond) -> (B, M, C); output is 0 at init."""

    def __init__(
        self,
        in_channels: int,
        dim: int = 384,
        depth: int = 12,
        heads: int = 6,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.x_embed = nn.Linear(in_channels, dim)
        self.cond_embed = ConditionEmbedding(dim, context_dim=context_dim, pooled_dim=pooled_dim)
        self.blocks = nn.ModuleList(
            DiTBlock(dim, heads, cross_attention=context_dim is not None) for _ in range(depth)
        )
        self.final = AdaLNFinalLayer(dim, dim, in_channels)

    def forward(
        self, x_t: Float[Tensor, "B M C"], t: Float[Tensor, " B"], cond: Cond | None = None
    ) -> Float[Tensor, "B M C"]:
        c, context, context_mask = self.cond_embed(t, cond)  # (B, dim), (B, L, dim)
        x = self.x_embed(x_t)  # (B, M, dim)
        for block in self.blocks:
            x = block(x, c, context, context_mask)
        return self.final(x, c)  # (B, M, C)


def set_dit_tiny(
    in_channels: int = 8, context_dim: int | None = None, pooled_dim: int | None = None
) -> SetDiT:
    """For tests and CPU smoke runs (~60 k parameters)."""
    return SetDiT(in_channels, dim=32, depth=2, heads=2, context_dim=context_dim, pooled_dim=pooled_dim)


def set_dit_small(
    in_channels: int = 32, context_dim: int | None = None, pooled_dim: int | None = None
) -> SetDiT:
    """DiT-S widths (~40 M parameters with 768-d tokens and pooled vector)."""
    return SetDiT(in_channels, dim=384, depth=12, heads=6, context_dim=context_dim, pooled_dim=pooled_dim)


def set_dit_base(
    in_channels: int = 32, context_dim: int | None = None, pooled_dim: int | None = None
) -> SetDiT:
    """DiT-B widths (~160 M parameters with 768-d tokens and pooled vector)."""
    return SetDiT(in_channels, dim=768, depth=12, heads=12, context_dim=context_dim, pooled_dim=pooled_dim)


def set_dit_large(
    in_channels: int = 64, context_dim: int | None = None, pooled_dim: int | None = None
) -> SetDiT:
    """DiT-L widths (~560 M parameters with 768-d tokens and pooled vector)."""
    return SetDiT(in_channels, dim=1024, depth=24, heads=16, context_dim=context_dim, pooled_dim=pooled_dim)
