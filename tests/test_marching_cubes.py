"""Dense and coarse-to-fine field decoding, and marching cubes conventions, on known SDFs."""

from __future__ import annotations

import mcubes
import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from native3d.data.schema import index_to_coord
from native3d.geometry.marching_cubes import (
    NoSurfaceError,
    coarse_to_fine_grid,
    dense_grid,
    extract_mesh,
    marching_cubes,
)


def sphere(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points, axis=1) - 0.5


def torus(points: np.ndarray) -> np.ndarray:
    ring = np.linalg.norm(points[:, :2], axis=1) - 0.5
    return np.hypot(ring, points[:, 2]) - 0.2


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def test_marching_cubes_places_a_sphere_where_its_sdf_says():
    vertices, faces = marching_cubes(dense_grid(sphere, 48).values)
    radii = np.linalg.norm(vertices, axis=1)
    assert np.abs(radii - 0.5).max() < 2.0 / 48
    mesh = trimesh.Trimesh(vertices, faces)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.5**3, rel=0.02), "faces point outward"


def triangles(vertices: np.ndarray, faces: np.ndarray) -> set[tuple]:
    """Each face as its three rounded corners, rotated to start at the smallest: order-free, orientation kept."""
    out = set()
    for corners in np.round(vertices[faces].astype(np.float64), 4):
        rows = [tuple(row) for row in corners]
        first = rows.index(min(rows))
        out.add(tuple(rows[first:] + rows[:first]))
    return out


def test_blocked_marching_cubes_gives_the_triangles_of_one_pass_over_the_grid():
    # 50 cells: blocks of 16 leave a partial block on every axis; the ripples cross many block faces.
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 51)] * 3, indexing="ij")
    values = (np.sqrt(x**2 + y**2 + z**2) - 0.6 + 0.08 * np.sin(9 * x) * np.cos(7 * y)).astype(np.float32)
    vertices, faces = marching_cubes(values, block=16)
    whole_v, whole_f = mcubes.marching_cubes(-values.astype(np.float64), 0.0)
    assert triangles(vertices, faces) == triangles(index_to_coord(whole_v, 51), whole_f)
    assert len(np.unique(vertices, axis=0)) == len(vertices), "shared block-face vertices are merged"


@pytest.mark.parametrize("field", [sphere, torus])
def test_coarse_to_fine_agrees_with_dense_and_queries_less(field):
    dense, fine = dense_grid(field, 128), coarse_to_fine_grid(field, 128, start_resolution=32)
    assert fine.queries * 5 < dense.queries
    a, b = marching_cubes(dense.values)[0], marching_cubes(fine.values)[0]
    assert chamfer_l1(a, b) < 1e-4


def test_coarse_to_fine_keeps_the_surface_of_an_offset_thin_shape():
    def slab(points: np.ndarray) -> np.ndarray:  # thinner than a coarse cell
        return np.abs(points[:, 2] - 0.013) - 0.01

    dense = marching_cubes(dense_grid(slab, 128).values)[0]
    fine = marching_cubes(coarse_to_fine_grid(slab, 128, start_resolution=32).values)[0]
    assert len(fine) > 0.9 * len(dense)


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_a_field_without_surface_is_named(resolution):
    # Above the start resolution, coarse to fine finds no cell to refine: still a named NoSurfaceError.
    with pytest.raises(NoSurfaceError, match="no zero crossing"):
        extract_mesh(lambda p: np.ones(len(p)), resolution)


def test_resolution_must_refine_by_powers_of_two():
    with pytest.raises(ValueError, match="power of 2"):
        coarse_to_fine_grid(sphere, 96, start_resolution=64)


@pytest.mark.parametrize("resolution", [48, 96, 64])
def test_extract_mesh_refines_any_even_resolution(resolution):
    vertices, _ = extract_mesh(sphere, resolution)
    assert np.abs(np.linalg.norm(vertices, axis=1) - 0.5).max() < 2.0 / resolution
