"""Adaptive normalization (adaLN, adaLN-Zero) and the embedding of (t, cond) that drives it.

adaLN regresses a per-channel shift and scale of a normalized activation from a conditioning
vector (FiLM, Perez et al. 2018; the `scale_shift_norm` of ADM, Dhariwal & Nichol 2021).
adaLN-Zero (DiT, Peebles & Xie 2023, sec. 3.2) also regresses a residual gate and initializes
the regression to zero, so that every block starts as the identity.

The condition of a diffusion backbone is a dict of tensors, `Cond`, with optional keys

    "tokens": (B, L, Ct) float  sequence features (text/image tokens), read by cross-attention
    "mask":   (B, L) bool       True where a token is valid (padding is False); needs "tokens"
    "pooled": (B, Cp) float     a global vector (pooled text/image embedding), added to t in adaLN

and `None` means unconditional. It lives here, not in `diffusion/`, because backbones read it
and must not import the diffusion package.
"""

from __future__ import annotations

from jaxtyping import Bool, Float
from torch import Tensor, nn

from native3d.nn.embeddings import TimestepEmbedding

Cond = dict[str, Tensor]


def modulate(
    x: Float[Tensor, "B ..."],
    shift: Float[Tensor, "B C"],
    scale: Float[Tensor, "B C"],
    channel_dim: int = -1,
) -> Float[Tensor, "B ..."]:
    """x * (1 + scale) + shift, broadcast over every axis but batch and `channel_dim`.

    `channel_dim=-1` suits tokens (B, M, C); `channel_dim=1` suits feature maps (B, C, D, H, W).
    The `1 +` makes a zero regression the identity.
    """
    return x * (1 + expand_like(scale, x, channel_dim)) + expand_like(shift, x, channel_dim)


def gate(x: Float[Tensor, "B ..."], g: Float[Tensor, "B C"], channel_dim: int = -1) -> Float[Tensor, "B ..."]:
    """x * g with g broadcast like `modulate`'s scale (the adaLN-Zero residual gate)."""
    return x * expand_like(g, x, channel_dim)


def expand_like(
    v: Float[Tensor, " B"] | Float[Tensor, "B C"], x: Float[Tensor, "B ..."], channel_dim: int = 1
) -> Tensor:
    """Per-sample values (B,), or per-sample channels (B, C), shaped to broadcast against x.

    The batch stays on axis 0 and C goes to `channel_dim`; every other axis is 1. This is the one
    helper for per-sample scalars over any latent rank (times, noise levels, dropped conditions)
    and for adaLN's per-channel shift, scale and gate.
    """
    shape = [1] * x.ndim
    shape[0] = v.shape[0]
    if v.ndim == 2:
        shape[channel_dim] = v.shape[1]
    return v.reshape(shape)


class AdaLNModulation(nn.Module):
    """c (B, E) -> `chunks` tensors (B, dim) via SiLU + Linear; zero-initialized for adaLN-Zero."""

    def __init__(self, cond_dim: int, dim: int, chunks: int, zero_init: bool = True) -> None:
        super().__init__()
        self.chunks = chunks
        self.proj = nn.Linear(cond_dim, chunks * dim)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, c: Float[Tensor, "B E"]) -> tuple[Tensor, ...]:
        return self.proj(nn.functional.silu(c)).chunk(self.chunks, dim=-1)


class AdaLNFinalLayer(nn.Module):
    """DiT's final layer: LayerNorm, adaLN shift/scale, then a zero-initialized Linear.

    The zero Linear makes the whole network output exactly 0 at init, so a fresh model predicts
    the mean of the target (zero velocity / zero noise) instead of large random outputs.
    """

    def __init__(self, dim: int, cond_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = AdaLNModulation(cond_dim, dim, chunks=2)
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Float[Tensor, "B M C"], c: Float[Tensor, "B E"]) -> Float[Tensor, "B M Co"]:
        shift, scale = self.modulation(c)
        return self.linear(modulate(self.norm(x), shift, scale))


class ConditionEmbedding(nn.Module):
    """(t, cond) -> the adaLN vector (B, E) and the cross-attention context (B, L, token_dim).

    The vector is TimestepEmbedding(t) + MLP(pooled) (DiT adds its class embedding the same way);
    the context is LayerNorm + Linear of the tokens (PixArt-alpha's caption projection), computed
    once and shared by every cross-attention layer. A model built without `context_dim` or
    `pooled_dim` rejects a cond that carries them rather than silently ignoring them.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        pooled_dim: int | None = None,
        token_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.time = TimestepEmbedding(dim)
        self.pooled = (
            nn.Sequential(nn.Linear(pooled_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if pooled_dim else None
        )
        self.context = (
            nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, token_dim or dim))
            if context_dim
            else None
        )

    def forward(
        self, t: Float[Tensor, " B"], cond: Cond | None
    ) -> tuple[Float[Tensor, "B E"], Float[Tensor, "B L Ck"] | None, Bool[Tensor, "B L"] | None]:
        check_cond(cond, t.shape[0])
        cond = cond or {}
        unknown = set(cond) - {"tokens", "mask", "pooled"}
        if unknown:
            raise ValueError(f"unknown cond keys {sorted(unknown)}; expected tokens, mask, pooled")
        c = self.time(t)
        if "pooled" in cond:
            if self.pooled is None:
                raise ValueError("cond has 'pooled' but the model was built with pooled_dim=None")
            c = c + self.pooled(cond["pooled"])
        if "tokens" not in cond:
            return c, None, None
        if self.context is None:
            raise ValueError("cond has 'tokens' but the model was built with context_dim=None")
        mask = cond.get("mask")
        if mask is not None:
            # A row with no valid token would give softmax over nothing (NaN); let it attend to
            # its (padding) tokens instead, which is as uninformative and stays finite.
            mask = mask.bool() | ~mask.bool().any(dim=-1, keepdim=True)
        return c, self.context(cond["tokens"]), mask


def broadcast_batch(cond: Cond, batch: int) -> Cond:
    """Expands every tensor of a cond with batch 1 to `batch` (e.g. one null cond for all)."""
    return {k: v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in cond.items()}


def check_cond(cond: Cond | None, batch: int) -> None:
    """Raises if a cond's tensors disagree with the batch size or with each other."""
    if cond is None:
        return
    for key, value in cond.items():
        if value.shape[0] != batch:
            raise ValueError(f"cond[{key!r}] has batch {value.shape[0]}, expected {batch}")
    if "mask" in cond and ("tokens" not in cond or cond["mask"].shape != cond["tokens"].shape[:2]):
        raise ValueError("cond['mask'] must be (B, L) and come with cond['tokens'] (B, L, C)")


__all__ = [
    "AdaLNFinalLayer",
    "AdaLNModulation",
    "Cond",
    "ConditionEmbedding",
    "broadcast_batch",
    "check_cond",
    "expand_like",
    "gate",
    "modulate",
]
