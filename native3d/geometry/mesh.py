"""Mesh loading and normalization.

Scenes (GLB/GLTF) are flattened with their node transforms applied and multi-part files are
merged into one triangle mesh. Anything unusable is rejected with a `MeshError` whose reason
is one of a small set of named codes, so data-prep failures can be grouped and counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import trimesh

from native3d.data.schema import NORMALIZED_HALF_EXTENT

DEFAULT_MAX_FACES = 2_000_000
MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


class MeshError(ValueError):
    """An unusable mesh. `reason` is a short code (e.g. "no_faces"), `detail` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def load_mesh(path: str | os.PathLike, max_faces: int = DEFAULT_MAX_FACES) -> trimesh.Trimesh:
    """Reads a mesh file trimesh understands and returns one checked triangle mesh."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MeshError("unreadable_file", f"{path} does not exist")
    try:
        loaded = trimesh.load(path, process=False, skip_materials=True)
    except Exception as error:  # trimesh raises many types for corrupt files
        raise MeshError("unreadable_file", f"{path}: {type(error).__name__}: {error}") from error
    return check_mesh(as_triangle_mesh(loaded, path), max_faces, path)


def as_triangle_mesh(loaded: object, name: str = "mesh") -> trimesh.Trimesh:
    """Flattens a Scene (node transforms applied) or a list of meshes into one Trimesh."""
    if isinstance(loaded, trimesh.Scene):
        geometry = loaded.to_geometry() if len(loaded.geometry) else None
        loaded = geometry
    if isinstance(loaded, (list, tuple)):
        parts = [m for m in loaded if isinstance(m, trimesh.Trimesh)]
        loaded = trimesh.util.concatenate(parts) if parts else None
    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    if loaded is None:
        raise MeshError("no_faces", f"{name} holds no triangle geometry")
    raise MeshError("no_faces", f"{name} holds {type(loaded).__name__}, not a triangle mesh")


def check_mesh(
    mesh: trimesh.Trimesh, max_faces: int = DEFAULT_MAX_FACES, name: str = "mesh"
) -> trimesh.Trimesh:
    """Rejects meshes that no later stage can use; returns the mesh unchanged otherwise."""
    if len(mesh.faces) == 0:
        raise MeshError("no_faces", f"{name} has no faces")
    if len(mesh.faces) > max_faces:
        raise MeshError("too_many_faces", f"{name} has {len(mesh.faces)} faces, the cap is {max_faces}")
    if not np.isfinite(mesh.vertices).all():
        raise MeshError("non_finite_vertices", f"{name} has NaN or infinite vertex coordinates")
    used = mesh.vertices[np.unique(mesh.faces)]
    if float((used.max(axis=0) - used.min(axis=0)).max()) <= 0.0:
        raise MeshError("zero_extent", f"{name} has a zero-size bounding box")
    return mesh


@dataclass(frozen=True)
class Normalization:
    """normalized = (original - offset) * scale; original = normalized / scale + offset."""

    scale: float
    offset: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {"scale": self.scale, "offset": list(self.offset)}


def normalize(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, Normalization]:
    """Centres the bounding box of the used vertices and scales its longest side to [-0.9, 0.9]."""
    used = np.unique(mesh.faces)
    remap = np.full(len(mesh.vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    vertices = np.asarray(mesh.vertices, dtype=np.float64)[used]
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    offset = (lo + hi) / 2.0
    scale = 2.0 * NORMALIZED_HALF_EXTENT / float((hi - lo).max())
    normalized = trimesh.Trimesh((vertices - offset) * scale, remap[mesh.faces], process=False)
    return normalized, Normalization(scale=scale, offset=tuple(float(v) for v in offset))
