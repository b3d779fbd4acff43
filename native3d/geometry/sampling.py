"""Point samples of one normalized mesh: surface points with normals, and SDF query points.

Surface points are drawn area-weighted (pick a face with probability proportional to its area,
then a uniform barycentric point on it; Osada et al. 2002, "Shape distributions", eq. 1).
Query points follow the usual recipe of occupancy/SDF autoencoders (e.g. 3DShape2VecSet,
Zhang et al. 2023): half uniform in the cube, half surface samples jittered by Gaussian noise
at two scales, so the decoder sees both the coarse shape and the detail near the surface.
Every draw comes from the caller's generator, so a sample is a function of (mesh, seed).
"""

from __future__ import annotations

import numpy as np
import trimesh

from native3d.geometry.mesh import MeshError
from native3d.geometry.sdf import signed_distance


def sample_surface(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """Area-weighted surface points and their unit face normals; (N, 6) float32 [xyz, normal]."""
    pts, normals = surface_points(np.asarray(mesh.vertices), np.asarray(mesh.faces), count, rng)
    return np.concatenate([pts, normals], axis=1).astype(np.float32)


def sample_queries(
    vertices: np.ndarray,
    faces: np.ndarray,
    count: int,
    sigmas: tuple[float, float],
    truncation: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Query points and their truncated SDF; (Q, 4) float32 [xyz, sdf].

    Rows are ordered: Q // 2 uniform in [-1, 1]^3, then the rest split evenly between the
    near-surface scales (surface samples plus N(0, sigma^2) noise per coordinate).
    """
    n_uniform = count // 2
    n_near = _split(count - n_uniform, len(sigmas))
    parts = [rng.uniform(-1.0, 1.0, size=(n_uniform, 3))]
    for sigma, n in zip(sigmas, n_near):
        surface, _ = surface_points(np.asarray(vertices), np.asarray(faces), n, rng)
        # Clipped so every query stays in the cube the grid and the decoder cover.
        parts.append(np.clip(surface + rng.normal(scale=sigma, size=surface.shape), -1.0, 1.0))
    pts = np.concatenate(parts)  # (Q, 3)
    sdf = signed_distance(vertices, faces, pts, truncation)
    return np.concatenate([pts, sdf[:, None]], axis=1).astype(np.float32)


def surface_points(
    vertices: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted points (count, 3) on the triangles and the unit normals (count, 3) of their faces."""
    tris = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # (F, 3, 3)
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    area2 = np.linalg.norm(cross, axis=1)  # twice the face areas
    if not area2.sum() > 0:
        raise MeshError("zero_area", "every face is degenerate; nothing to sample")
    face = rng.choice(len(tris), size=count, p=area2 / area2.sum())
    u, v = rng.random((2, count))
    flip = u + v > 1.0  # reflect into the triangle: uniform barycentric coordinates
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    a, b, c = tris[face, 0], tris[face, 1], tris[face, 2]
    pts = a + u[:, None] * (b - a) + v[:, None] * (c - a)
    normals = cross[face] / area2[face, None]
    return pts, normals


def _split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts, the first ones taking the remainder."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]
