"""Classifier-free guidance (Ho & Salimans 2022): condition dropout in training, guided sampling.

The condition is the `Cond` dict of `native3d.nn.modulation` ("tokens" (B, L, Ct), "mask" (B, L)
True = valid, "pooled" (B, Cp); any key optional; None = unconditional). The *null* condition
that dropped samples get, and that guidance contrasts with, has the same keys and shapes:
zeros for tokens and pooled with an all-valid mask by default (`null_condition`), or whatever
the caller passes as `null_cond`, e.g. the encoder's embedding of the empty caption (as in
Stable Diffusion) or a learned parameter, with batch 1 or B.

Training and sampling must use the same null condition, because guidance extrapolates away
from what the model learned for it (eq. 6 of Ho & Salimans: eps_u + w (eps_c - eps_u)).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from native3d.diffusion.objectives import Model
from native3d.nn.modulation import Cond, broadcast_batch, check_cond, expand_like


def null_condition(cond: Cond) -> Cond:
    """Zeros shaped like `cond`; a mask becomes all-valid so attention over it stays finite."""
    return {k: torch.ones_like(v) if k == "mask" else torch.zeros_like(v) for k, v in cond.items()}


def drop_condition(
    cond: Cond | None,
    p: float,
    generator: torch.Generator | None = None,
    null_cond: Cond | None = None,
) -> Cond | None:
    """Replaces each sample's condition by the null condition with probability p.

    All keys of one sample are dropped together, so a dropped sample is fully unconditional.
    `generator` (on the cond's device) makes the choice reproducible.
    """
    if cond is None or p <= 0:
        return cond
    batch = next(iter(cond.values())).shape[0]
    check_cond(cond, batch)
    null = broadcast_batch(null_cond if null_cond is not None else null_condition(cond), batch)
    if set(null) != set(cond):
        raise ValueError(f"null_cond keys {sorted(null)} differ from cond keys {sorted(cond)}")
    device = next(iter(cond.values())).device
    drop = torch.rand(batch, device=device, generator=generator) < p  # (B,)
    return {k: torch.where(expand_like(drop, v), null[k].to(v.dtype), v) for k, v in cond.items()}


def cfg_model(model: Model, scale: float, null_cond: Cond | None = None) -> Model:
    """Wraps `model` as out_u + scale (out_c - out_u), both halves in one batched call.

    scale = 1 is the conditional model and scale = 0 the unconditional one. The mix is linear, so
    it serves a model's output (velocity, eps, v) and its denoised estimate alike, and guiding either
    gives the same samples. A None cond passes through.
    """

    def guided(
        x_t: Float[Tensor, "B ..."], t: Float[Tensor, " B"], cond: Cond | None
    ) -> Float[Tensor, "B ..."]:
        if cond is None:
            return model(x_t, t, cond)
        batch = x_t.shape[0]
        null = broadcast_batch(null_cond if null_cond is not None else null_condition(cond), batch)
        both = {k: torch.cat([v, null[k].to(v.dtype)]) for k, v in cond.items()}
        out_c, out_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both).chunk(2)
        return out_u + scale * (out_c - out_u)

    return guided
