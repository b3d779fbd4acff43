"""The autoencoder objective: reconstruction of signed distance at query points, KL, eikonal.

- "l1": clamped L1 on signed distance (DeepSDF, Park et al. 2019, eq. 9), matching the
  truncation of the stored SDF. DeepSDF clamps both sides, which leaves no gradient once a
  prediction leaves [-clamp, clamp] even where the target lies inside it; here only the target is
  clamped, and a target at the truncation (+-clamp, "at least this far") is a one-sided hinge.
  Where both lie inside the band this equals DeepSDF's loss.
- "bce": occupancy cross-entropy (Occupancy Networks, Mescheder et al. 2019; 3DShape2VecSet)
  with target occupancy = (sdf_target < 0) and logits = -sdf_pred / occupancy_scale. Keeping
  the decoder's output a signed, distance-like number means both kinds decode to a surface at
  level 0 and share `decode`; `occupancy_scale` sets how sharp the implied occupancy is in
  distance units (the output has logit 1 at distance `occupancy_scale` from the surface).
  Such an output is signed but not a distance: far from the surface its magnitude is whatever
  makes the classifier confident. Coarse-to-fine meshing keeps the cells whose corners lie within
  a cell of the surface, which assumes a distance, and then traces the surface from every crossing
  it saw; a part that no coarse sample sees is found only by `native3d sample --dense`.
- "soft_iou": 1 - soft IoU of the implied occupancy with the target's, per shape (the Jaccard loss
  of segmentation, Rahman & Wang 2016). Volume IoU is a per-shape score, and for a thin shape
  (a tray, a chair: a few percent of the cube inside) missing its inside costs little
  cross-entropy but most of its IoU; this term weighs every shape's inside alike. The
  probabilities are sigmoid(-sdf_pred / occupancy_scale), as "bce" reads them, so it applies
  to either kind.
- "kl": the posterior's KL to N(0, I), averaged over latent elements (`DiagonalGaussian.kl`).
- "eikonal": (|grad_x sdf| - 1)^2 (Gropp et al. 2020, IGR eq. 2), only at points whose target
  lies inside the truncation band, because a truncated SDF has zero gradient outside it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from native3d.autoencoders.bottleneck import DiagonalGaussian


def reconstruction_loss(
    sdf_pred: Float[Tensor, "B Q"],
    sdf_target: Float[Tensor, "B Q"],
    clamp: float,
    kind: Literal["l1", "bce"] = "l1",
    occupancy_scale: float = 0.01,
) -> Float[Tensor, " B"]:
    """Per-sample reconstruction loss, averaged over query points."""
    sdf_pred, sdf_target = sdf_pred.float(), sdf_target.float()
    if kind == "l1":
        target = sdf_target.clamp(-clamp, clamp)
        lower = torch.where(target <= -clamp, -torch.inf, target)  # the prediction may lie in [lower, upper]
        upper = torch.where(target >= clamp, torch.inf, target)
        return (F.relu(lower - sdf_pred) + F.relu(sdf_pred - upper)).mean(dim=1)
    if kind == "bce":
        inside = (sdf_target < 0).float()
        return F.binary_cross_entropy_with_logits(-sdf_pred / occupancy_scale, inside, reduction="none").mean(
            dim=1
        )
    raise ValueError(f"unknown reconstruction kind {kind!r}; expected 'l1' or 'bce'")


def soft_iou_loss(
    sdf_pred: Float[Tensor, "B Q"],
    sdf_target: Float[Tensor, "B Q"],
    occupancy_scale: float = 0.01,
    smooth: float = 1.0,
) -> Float[Tensor, " B"]:
    """Per-sample 1 - soft IoU over the query points.

    `smooth` (in points) is added to both counts, so a shape with nothing inside that is predicted
    empty scores 0, and a shape with few points inside does not give a loss of 0/0.
    """
    prob = torch.sigmoid(-sdf_pred.float() / occupancy_scale)
    inside = (sdf_target < 0).float()
    intersection = (prob * inside).sum(dim=1)
    union = (prob + inside - prob * inside).sum(dim=1)
    return 1.0 - (intersection + smooth) / (union + smooth)


def eikonal_loss(
    sdf_pred: Float[Tensor, "B Q"], points: Float[Tensor, "B Q 3"], band: Float[Tensor, "B Q"]
) -> Float[Tensor, " B"]:
    """Per-sample mean of (|d sdf / d x| - 1)^2 over points where `band` is 1."""
    if not points.requires_grad:
        raise ValueError("the eikonal term needs points.requires_grad_() before they are decoded")
    (grad,) = torch.autograd.grad(sdf_pred.float().sum(), points, create_graph=True)  # (B, Q, 3)
    penalty = (grad.float().norm(dim=-1) - 1.0).square()
    return (penalty * band).sum(dim=1) / band.sum(dim=1).clamp_min(1.0)


def autoencoder_loss(
    sdf_pred: Float[Tensor, "B Q"],
    sdf_target: Float[Tensor, "B Q"],
    posterior: DiagonalGaussian,
    kl_weight: float,
    clamp: float,
    kind: Literal["l1", "bce"] = "l1",
    eikonal_weight: float = 0.0,
    points: Float[Tensor, "B Q 3"] | None = None,
    occupancy_scale: float = 0.01,
    reduction: Literal["mean", "none"] = "mean",
    iou_weight: float = 0.0,
) -> dict[str, Tensor]:
    """The terms "recon", "kl", ["soft_iou"], ["eikonal"] and their weighted sum "loss".

    With `reduction="none"` every term has shape (B,), otherwise it is averaged over the batch.
    The eikonal term needs the `points` that produced `sdf_pred`, with `requires_grad` set.
    """
    terms = {
        "recon": reconstruction_loss(sdf_pred, sdf_target, clamp, kind, occupancy_scale),
        "kl": posterior.kl(),
    }
    loss = terms["recon"] + kl_weight * terms["kl"]
    if iou_weight > 0:
        terms["soft_iou"] = soft_iou_loss(sdf_pred, sdf_target, occupancy_scale)
        loss = loss + iou_weight * terms["soft_iou"]
    if eikonal_weight > 0:
        if points is None:
            raise ValueError("eikonal_weight > 0 needs the query points")
        band = (sdf_target.abs() < clamp).float()
        terms["eikonal"] = eikonal_loss(sdf_pred, points, band)
        loss = loss + eikonal_weight * terms["eikonal"]
    terms["loss"] = loss
    if reduction == "mean":
        return {name: value.mean() for name, value in terms.items()}
    return terms
