"""Multi-head attention and the pre-norm transformer block shared by every set/token model.

Attention is the scaled dot-product attention of Vaswani et al. 2017 ("Attention Is All You
Need", eq. 1), computed by `torch.nn.functional.scaled_dot_product_attention` so that the
flash / memory-efficient kernels are used where available. The block is the pre-norm variant
(Xiong et al. 2020) with an optional cross-attention sub-layer, as in the Perceiver
(Jaegle et al. 2021) and 3DShape2VecSet (Zhang et al. 2023) encoders and decoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor, nn


def _expand_mask(mask: Tensor | None) -> Tensor | None:
    """Brings a key mask to the (B, heads, L, S) broadcast shape that SDPA expects.

    (B, S) is a key-padding mask, (B, L, S) a full mask; True (or a finite additive bias) means
    "attend". Anything already 4-D is passed through untouched.
    """
    if mask is None or mask.ndim == 4:
        return mask
    if mask.ndim == 2:
        return rearrange(mask, "B S -> B 1 1 S")
    if mask.ndim == 3:
        return rearrange(mask, "B L S -> B 1 L S")
    raise ValueError(f"attention mask must be 2-, 3- or 4-D, got shape {tuple(mask.shape)}")


class DistanceBias(nn.Module):
    """An additive attention bias -beta_h |x - p|^2 between query points x and key points p.

    One learned beta = 1 / (2 sigma^2) per head, initialised with sigma log-spaced over
    [sigma_min, sigma_max], so some heads start local and others wide; passed to `Attention` as its
    float mask, it makes each head a learned Gaussian kernel over distance times the dot-product
    attention (the locality that convolutional features have by construction, as the relative
    position biases of Point Transformer, Zhao et al. 2021, give point attention).
    """

    def __init__(self, heads: int, sigma_min: float = 0.05, sigma_max: float = 0.5) -> None:
        super().__init__()
        sigma = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), heads)
        self.log_beta = nn.Parameter(-torch.log(2 * sigma**2))

    def forward(self, x: Float[Tensor, "B L 3"], p: Float[Tensor, "B S 3"]) -> Float[Tensor, "B h L S"]:
        d2 = torch.cdist(x.float(), p.float()).square()  # (B, L, S)
        return -rearrange(self.log_beta.exp(), "h -> 1 h 1 1") * rearrange(d2, "B L S -> B 1 L S")


class Attention(nn.Module):
    """Multi-head self-attention, or cross-attention onto `context` when `context_dim` is set.

    With `qk_norm`, queries and keys are LayerNorm-ed per head before the dot product, which
    keeps attention logits bounded in large bf16 runs (Dehghani et al. 2023, ViT-22B).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.is_cross = context_dim is not None
        head_dim = dim // heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_kv = nn.Linear(context_dim if self.is_cross else dim, 2 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Float[Tensor, "B L C"],
        context: Float[Tensor, "B S Cc"] | None = None,
        mask: Bool[Tensor, "..."] | Float[Tensor, "..."] | None = None,
    ) -> Float[Tensor, "B L C"]:
        """`mask` (optional): (B, S) key padding, (B, L, S) or (B, heads, L, S); True = attend."""
        if self.is_cross and context is None:
            raise ValueError("this Attention was built for cross-attention; pass `context`")
        if not self.is_cross and context is not None:
            raise ValueError("this Attention was built for self-attention (context_dim=None)")
        source = x if context is None else context
        q = rearrange(self.to_q(x), "B L (h d) -> B h L d", h=self.heads)
        k, v = rearrange(self.to_kv(source), "B S (two h d) -> two B h S d", two=2, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_expand_mask(mask))  # (B, h, L, d)
        return self.proj(rearrange(out, "B h L d -> B L (h d)"))


class Mlp(nn.Module):
    """Two-layer feed-forward network with tanh-approximated GELU, as in ViT / DiT."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)

    def forward(self, x: Float[Tensor, "... C"]) -> Float[Tensor, "... Co"]:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + SelfAttn(LN x) [+ CrossAttn(LN x, LN context)] [+ Mlp(LN x)].

    With `self_attention=False` the block is a pure cross-attention block (a Perceiver-style
    read-out), which is what the 3DShape2VecSet encoder and query decoder use. `mlp_ratio=0`
    leaves out the feed-forward sub-layer, as 3DShape2VecSet's query decoder does.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        self_attention: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        if not self_attention and context_dim is None:
            raise ValueError("a block without self-attention needs a context_dim")
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0: no feed-forward sub-layer), got {mlp_ratio}")
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.attn = Attention(dim, heads, qk_norm=qk_norm) if self_attention else None
        self.norm_cross = nn.LayerNorm(dim) if context_dim is not None else None
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None
        self.cross_attn = (
            Attention(dim, heads, context_dim=context_dim, qk_norm=qk_norm)
            if context_dim is not None
            else None
        )
        has_mlp = mlp_ratio > 0
        self.norm_mlp = nn.LayerNorm(dim) if has_mlp else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio)) if has_mlp else None

    def forward(
        self,
        x: Float[Tensor, "B L C"],
        context: Float[Tensor, "B S Cc"] | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Float[Tensor, "B L C"]:
        """`mask` applies to self-attention, `context_mask` (e.g. (B, S) padding) to cross-attention."""
        if self.attn is not None:
            x = x + self.attn(self.norm_self(x), mask=mask)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this TransformerBlock has cross-attention; pass `context`")
            x = x + self.cross_attn(self.norm_cross(x), self.norm_context(context), mask=context_mask)
        return x if self.mlp is None else x + self.mlp(self.norm_mlp(x))
