"""Point samples of one normalized mesh: surface points with normals, sharp-edge points, and SDF
query points.

Surface points are drawn area-weighted (pick a face with probability proportional to its area,
then a uniform barycentric point on it; Osada et al. 2002, "Shape distributions", eq. 1).
Query points follow the usual recipe of occupancy/SDF autoencoders (e.g. 3DShape2VecSet,
Zhang et al. 2023): half uniform in the cube, half surface samples jittered by Gaussian noise
at two scales, so the decoder sees both the coarse shape and the detail near the surface.
Sharp-edge points follow the sharp edge sampling of Dora (Chen et al., CVPR 2025; also Hunyuan3D-2.1
and Step1X-3D): uniform samples lose thin features and creases, so points are also drawn on the
edges whose two faces' normals differ by more than a threshold (15 degrees), length-weighted. Each
point lies on its edge and carries the unit bisector of the two face normals, the normal the crease
has as the limit of a rounded edge (it is symmetric and does not jump between one face and the
other along the edge). A mesh without sharp edges gets its points where its mean curvature lies:
on a triangle mesh all of it sits on the edges, |H| dA = length x dihedral angle / 2 per edge
(Cohen-Steiner and Morvan 2003), so the same edge sampler weighted by length x angle does it. A
flat mesh gets area-weighted surface points.
Every draw comes from the caller's generator, so a sample is a function of (mesh, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from native3d.geometry.mesh import MeshError
from native3d.geometry.sdf import signed_distance


def sample_surface(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    """Area-weighted surface points and their unit face normals; (N, 6) float32 [xyz, normal]."""
    pts, normals = surface_points(np.asarray(mesh.vertices), np.asarray(mesh.faces), count, rng)
    return np.concatenate([pts, normals], axis=1).astype(np.float32)


FLAT_ANGLE = np.radians(0.1)  # below this, an angle between face normals is taken as rounding noise


@dataclass(frozen=True)
class SharpSample:
    points: np.ndarray  # (S, 6) float32 [xyz, unit normal]
    source: str  # "edges" (sharp edges), "curvature" (no sharp edge) or "uniform" (flat mesh)
    sharp_edges: int  # how many edges exceed the angle threshold


@dataclass(frozen=True)
class InteriorEdges:
    """The edges shared by exactly two non-degenerate faces, one row per edge."""

    ends: np.ndarray  # (E, 2, 3) the edge's two vertices
    angle: np.ndarray  # (E,) radians in [0, pi] between the faces' normals (0: coplanar)
    normal: np.ndarray  # (E, 3) unit bisector of the faces' normals


def sample_sharp(
    mesh: trimesh.Trimesh, count: int, angle_deg: float, rng: np.random.Generator
) -> SharpSample:
    """`count` points on the edges sharper than `angle_deg`, with normals (see the module docstring).

    `mesh` must have merged vertices (`trimesh.Trimesh(v, f, process=True)`): trimesh finds adjacent
    faces through shared vertex indices. Boundary and non-manifold edges are not considered.
    """
    keep = mesh.nondegenerate_faces()
    if not keep.all():  # a zero-area face on an edge would make it non-manifold, and hide it
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=False)
    edges = interior_edges(mesh)
    length = np.linalg.norm(edges.ends[:, 1] - edges.ends[:, 0], axis=1)  # (E,)
    sharp = edges.angle > np.radians(angle_deg)
    if sharp.any():
        weight, source = length * sharp, "edges"
    else:
        weight, source = length * edges.angle * (edges.angle > FLAT_ANGLE), "curvature"
    if not weight.sum() > 0:
        pts, normals = surface_points(np.asarray(mesh.vertices), np.asarray(mesh.faces), count, rng)
        return SharpSample(np.concatenate([pts, normals], axis=1).astype(np.float32), "uniform", 0)
    pick = rng.choice(len(weight), size=count, p=weight / weight.sum())
    t = rng.random((count, 1))
    a, b = edges.ends[pick, 0], edges.ends[pick, 1]
    pts = a + t * (b - a)  # (S, 3)
    points = np.concatenate([pts, edges.normal[pick]], axis=1).astype(np.float32)
    return SharpSample(points, source, int(sharp.sum()))


def interior_edges(mesh: trimesh.Trimesh) -> InteriorEdges:
    """The mesh's interior edges with the angle between their faces' normals, winding made consistent."""
    pairs, edges = mesh.face_adjacency, mesh.face_adjacency_edges  # (A, 2) faces, (A, 2) vertices
    angle = np.asarray(mesh.face_adjacency_angles, dtype=np.float64)  # (A,)
    normals = np.asarray(mesh.face_normals, dtype=np.float64)[pairs]  # (A, 2, 3)
    # Two faces wound the same way hold their shared edge in opposite directions. Where they do not
    # (common in unprocessed assets), one normal is flipped and a smooth fold would read as ~180 degrees.
    faces = np.asarray(mesh.faces)
    flipped = runs_forward(faces[pairs[:, 0]], edges) == runs_forward(faces[pairs[:, 1]], edges)
    angle = np.where(flipped, np.pi - angle, angle)
    normals[flipped, 1] *= -1.0
    valid = (np.linalg.norm(normals, axis=2) > 0.5).all(axis=1)  # trimesh gives degenerate faces zero
    bisector = normals[:, 0] + normals[:, 1]  # (A, 3)
    size = np.linalg.norm(bisector, axis=1, keepdims=True)
    # A knife edge (faces folded flat onto each other) has no bisector; it takes its first face's normal.
    bisector = np.where(size > 1e-6, bisector / np.maximum(size, 1e-12), normals[:, 0])
    ends = np.asarray(mesh.vertices, dtype=np.float64)[edges]  # (A, 2, 3)
    return InteriorEdges(ends[valid], angle[valid], bisector[valid])


def runs_forward(faces: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Whether each face (A, 3) holds its edge (A, 2) = (u, v) in the order u -> v."""
    after = np.roll(faces, -1, axis=1)  # the corner that follows each corner
    return ((faces == edges[:, :1]) & (after == edges[:, 1:])).any(axis=1)


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
