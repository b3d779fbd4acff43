"""Volumetric IoU between a predicted and a reference shape from values at shared query points
(Occupancy Networks, Mescheder et al. 2019, Sec. 4).

Inside means sdf < 0 (the project's sign convention: negative inside) or occupancy >= 0.5
(probabilities or booleans, as in Occupancy Networks' `compute_iou`). IoU is
|inside_pred & inside_ref| / |inside_pred | inside_ref| per shape; where both are empty the
shapes agree everywhere and IoU is defined as 1. The estimate is only as good as the query
points: uniform points in the cube give the volume IoU papers report, near-surface points
a much harsher number, so the caller's query distribution belongs in the report.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from native3d.metrics.pointcloud import MetricResult

FieldKind = Literal["sdf", "occupancy"]


def inside(values: Float[Tensor, "B Q"], kind: FieldKind) -> Bool[Tensor, "B Q"]:
    """Which query points lie inside the shape, for a signed distance or an occupancy field."""
    if kind == "sdf":
        return values < 0
    if kind == "occupancy":
        return values.float() >= 0.5
    raise ValueError(f"unknown field kind {kind!r}; use 'sdf' or 'occupancy'")


def volume_iou(pred: Float[Tensor, "B Q"], ref: Float[Tensor, "B Q"], *, kind: FieldKind) -> MetricResult:
    """IoU per shape, `value` of shape (B,), from `pred` and `ref` evaluated at the same Q points."""
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref must be sampled at the same points, got {pred.shape} and {ref.shape}")
    a, b = inside(pred, kind), inside(ref, kind)
    intersection, union = (a & b).sum(dim=-1).float(), (a | b).sum(dim=-1).float()
    value = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
    settings = {"metric": "volume_iou", "field": kind, "num_queries": pred.shape[-1]}
    return MetricResult(value, settings)
