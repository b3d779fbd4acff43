"""Shape metrics as pure tensor functions (no Lightning): point-cloud distances (`pointcloud`),
volume IoU from occupancy (`mesh`) and set-level MMD / COV / 1-NNA (`generative`).

Every function returns a `MetricResult(value, settings, parts)`; `settings` records the metric,
Chamfer convention, normalization, point counts, EMD backend and seed, so a number in a table
always says how it was computed. Conventions and formulas are in each module's docstring.
"""

from native3d.metrics.generative import (
    coverage,
    generative_metrics,
    minimum_matching_distance,
    one_nna,
    pairwise_distances,
)
from native3d.metrics.mesh import volume_iou
from native3d.metrics.pointcloud import (
    Convention,
    EMDBackend,
    MetricResult,
    Normalization,
    chamfer_distance,
    earth_movers_distance,
    f_score,
    nearest_neighbors,
    normal_consistency,
    normalize_pair,
)

__all__ = [
    "Convention",
    "EMDBackend",
    "MetricResult",
    "Normalization",
    "chamfer_distance",
    "coverage",
    "earth_movers_distance",
    "f_score",
    "generative_metrics",
    "minimum_matching_distance",
    "nearest_neighbors",
    "normal_consistency",
    "normalize_pair",
    "one_nna",
    "pairwise_distances",
    "volume_iou",
]
