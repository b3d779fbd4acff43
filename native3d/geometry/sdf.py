"""Truncated signed distance for possibly non-watertight meshes.

Distance is exact (closest point on the triangles, through libigl's AABB tree); the sign comes
from the generalized winding number w (Jacobson, Kavan and Sorkine-Hornung 2013, "Robust
inside-outside segmentation using generalized winding numbers"), evaluated with the fast
Barnes-Hut approximation of Barill et al. 2018 ("Fast winding numbers for soups and clouds").
A point is inside where |w| > 0.5: the absolute value keeps parts with flipped orientation
inside, and overlapping parts (w = 2) stay inside too. No ray parity anywhere.

`sdf_grid` uses the grid's structure so the expensive queries run only where they matter:

1. Band. A point within `truncation` of a triangle lies in that triangle's bounding box grown
   by `truncation`. Boxes are marked on the grid with a 3-D difference array (8 corner updates
   per triangle, then a cumulative sum per axis), after splitting long triangles so a box stays
   close to its triangle. This set contains every band point; exact distance runs on it alone.
2. Sign in the band: winding number at every band point.
3. Sign far from the surface. Two far grid neighbours are joined by a segment that stays at
   distance > truncation - spacing / 2 > 0 from the surface, so w is continuous (harmonic) on
   each 6-connected component of the far region and only jumps across the surface. w is
   evaluated on a coarse lattice; a component whose lattice values are all clearly outside
   or all clearly inside (|w| away from 0.5 by `SIGN_MARGIN`) takes that sign, and any other
   component (an open mesh whose holes let w drift through 0.5, or one the lattice misses)
   is evaluated point by point.
"""

from __future__ import annotations

import logging

import igl
import numpy as np
from scipy import ndimage

from native3d.data.schema import grid_points

logger = logging.getLogger(__name__)

COARSE_STRIDE = 4  # far-region lattice: every 4th grid sample along each axis
SIGN_MARGIN = 0.1  # a far component is decided only if all its lattice |w| are this far from 0.5
MAX_SPLITS = 12  # midpoint subdivision rounds for long triangles (each halves the extent)


def signed_distance(
    vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, truncation: float
) -> np.ndarray:
    """Signed distance (negative inside) at arbitrary points, clamped to +-truncation; (P,) float32."""
    v, f = _igl_arrays(vertices, faces)
    pts = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros(0, dtype=np.float32)
    dist = np.minimum(_unsigned_distance(v, f, pts), truncation)
    inside = _inside(v, f, pts)
    return np.where(inside, -dist, dist).astype(np.float32)


def sdf_grid(vertices: np.ndarray, faces: np.ndarray, resolution: int, truncation: float) -> np.ndarray:
    """Truncated signed distance on the schema's corner grid; (R, R, R) float32, indexed [x, y, z]."""
    v, f = _igl_arrays(vertices, faces)
    pts = grid_points(resolution)
    dist = np.full(resolution**3, truncation, dtype=np.float64)
    band = band_candidates(v, f, resolution, truncation).reshape(-1)
    dist[band] = np.minimum(_unsigned_distance(v, f, pts[band]), truncation)
    # Two grid neighbours both farther than half the spacing from the surface are joined by a
    # segment that cannot cross it; only samples closer than that need their own winding number.
    near = dist <= 1.0 / (resolution - 1)
    inside = _grid_inside(v, f, pts, near.reshape((resolution,) * 3))
    sdf = np.where(inside.reshape(-1), -dist, dist)
    return sdf.reshape((resolution,) * 3).astype(np.float32)


def band_candidates(
    vertices: np.ndarray, faces: np.ndarray, resolution: int, truncation: float
) -> np.ndarray:
    """A (R, R, R) bool superset of the grid samples closer than `truncation` to the surface."""
    spacing = 2.0 / (resolution - 1)
    tris = _split_long(vertices[faces], max_extent=max(truncation, spacing))
    lo = np.ceil((tris.min(axis=1) - truncation + 1.0) / spacing - 1e-9).astype(np.int64)
    hi = np.floor((tris.max(axis=1) + truncation + 1.0) / spacing + 1e-9).astype(np.int64)
    lo, hi = np.clip(lo, 0, resolution), np.clip(hi + 1, 0, resolution)  # half-open [lo, hi)
    keep = (lo < hi).all(axis=1)
    return _mark_boxes(lo[keep], hi[keep], resolution) > 0


def _mark_boxes(lo: np.ndarray, hi: np.ndarray, resolution: int) -> np.ndarray:
    """Counts, per grid sample, the half-open index boxes [lo, hi) covering it; (R, R, R) int."""
    size = resolution + 1
    diff = np.zeros(size**3, dtype=np.int64)
    for corner in range(8):
        pick = [(corner >> axis) & 1 for axis in range(3)]  # 0 -> lo, 1 -> hi on that axis
        idx = np.stack([hi[:, a] if pick[a] else lo[:, a] for a in range(3)], axis=1)
        sign = -1 if sum(pick) % 2 else 1
        flat = np.ravel_multi_index(idx.T, (size,) * 3)
        diff += sign * np.bincount(flat, minlength=size**3)
    counts = diff.reshape((size,) * 3).cumsum(0).cumsum(1).cumsum(2)
    return counts[:resolution, :resolution, :resolution]


def _split_long(tris: np.ndarray, max_extent: float) -> np.ndarray:
    """Midpoint-subdivides triangles (F, 3, 3) until each bounding box is at most `max_extent` wide.

    The pieces cover exactly the original triangles, so their grown boxes still contain the band,
    but a long diagonal triangle no longer marks its whole bounding box.
    """
    done = []
    for _ in range(MAX_SPLITS):
        long = (tris.max(axis=1) - tris.min(axis=1)).max(axis=1) > max_extent
        done.append(tris[~long])
        tris = tris[long]
        if len(tris) == 0:
            break
        a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        tris = np.concatenate(
            [np.stack(t, axis=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))]
        )
    return np.concatenate(done + [tris])


def _grid_inside(v: np.ndarray, f: np.ndarray, pts: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Inside flags (R^3,) for all grid samples: exact in the band, by component vote far away."""
    labels, count = ndimage.label(~near)  # 6-connected far components, 1..count
    lattice = np.zeros(near.shape, dtype=bool)
    lattice[::COARSE_STRIDE, ::COARSE_STRIDE, ::COARSE_STRIDE] = True
    lattice &= ~near
    near, lattice, labels = near.reshape(-1), lattice.reshape(-1), labels.reshape(-1)
    first = np.flatnonzero(near | lattice)
    w = np.zeros(len(pts))
    w[first] = np.abs(_winding_number(v, f, pts[first]))
    decided, component_inside = _vote(labels[lattice], w[lattice], count)
    rest = np.flatnonzero((labels > 0) & ~decided[labels] & ~lattice)
    if len(rest):
        logger.debug(
            "far sign: %d of %d components undecided, %d points evaluated",
            (~decided[1:]).sum(),
            count,
            len(rest),
        )
        w[rest] = np.abs(_winding_number(v, f, pts[rest]))
    far_decided = (labels > 0) & decided[labels]
    return np.where(far_decided, component_inside[labels], w > 0.5)


def _vote(labels: np.ndarray, w: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per component 0..count: (decided, inside); decided only if every lattice |w| is clear."""
    clear_in = w > 0.5 + SIGN_MARGIN
    clear_out = w < 0.5 - SIGN_MARGIN
    samples = np.bincount(labels, minlength=count + 1)
    n_in = np.bincount(labels, weights=clear_in, minlength=count + 1)
    n_out = np.bincount(labels, weights=clear_out, minlength=count + 1)
    decided = (samples > 0) & ((n_in == samples) | (n_out == samples))
    decided[0] = False  # label 0 is the band, never voted on
    return decided, n_in == samples


def _inside(v: np.ndarray, f: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.abs(_winding_number(v, f, pts)) > 0.5


def _winding_number(v: np.ndarray, f: np.ndarray, pts: np.ndarray) -> np.ndarray:
    if len(pts) == 0:
        return np.zeros(0)
    return igl.fast_winding_number(v, f, np.ascontiguousarray(pts, dtype=np.float64))


def _unsigned_distance(v: np.ndarray, f: np.ndarray, pts: np.ndarray) -> np.ndarray:
    if len(pts) == 0:
        return np.zeros(0)
    sq_dist, _, _ = igl.point_mesh_squared_distance(np.ascontiguousarray(pts, dtype=np.float64), v, f)
    return np.sqrt(sq_dist)


def _igl_arrays(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(vertices, dtype=np.float64)
    f = np.ascontiguousarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"expected vertices (V, 3) and faces (F>0, 3), got {v.shape} and {f.shape}")
    return v, f
