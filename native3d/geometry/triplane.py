"""Axis-aligned triplane projection of an SDF grid, as laid out in `native3d.data.schema`.

A triplane factorizes a volume into three orthogonal feature planes (Chan et al. 2022,
"Efficient geometry-aware 3D GANs", EG3D). Here the planes are fixed projections of the SDF
grid rather than learned features: plane `ab` reduces the [x, y, z] grid along the third axis,
channel 0 with the minimum SDF (a depth-like silhouette) and channel 1 with the fraction of
samples that are inside (a thickness map).
"""

from __future__ import annotations

import numpy as np

from native3d.data.schema import TRIPLANE_PLANES

PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # plane `ab` is indexed [a, b] by these point coordinates
_REDUCED_AXIS = {"xy": 2, "xz": 1, "yz": 0}  # the axis each plane collapses; keeps [a, b] order


def project_triplane(sdf: np.ndarray) -> np.ndarray:
    """(R, R, R) SDF grid -> (P=3, C=2, R, R) float32 planes in the schema's (xy, xz, yz) order."""
    if sdf.ndim != 3 or len(set(sdf.shape)) != 1:
        raise ValueError(f"expected a cubic (R, R, R) grid, got shape {sdf.shape}")
    inside = sdf < 0
    planes = [
        np.stack([sdf.min(axis=_REDUCED_AXIS[name]), inside.mean(axis=_REDUCED_AXIS[name])])  # (C, R, R)
        for name in TRIPLANE_PLANES
    ]
    return np.stack(planes).astype(np.float32)  # (P, C, R, R)
