"""Signed distance on real pybullet meshes, against independent references.

Sign: trimesh's ray-based `contains` on watertight meshes and libigl's exact generalized winding
number; distance: trimesh's closest-point query. The grid's shortcuts (band boxes, far-field
component vote) are checked against the point-by-point evaluation they replace.
"""

from __future__ import annotations

from pathlib import Path

import igl
import numpy as np
import pybullet_data
import pytest
import trimesh

from native3d.data.schema import grid_points
from native3d.geometry.mesh import load_mesh, normalize
from native3d.geometry.sdf import band_candidates, sdf_grid, signed_distance

TRUNCATION = 0.1
WATERTIGHT = ("bunny.obj", "duck_vhacd.obj", "random_urdfs/000/000.obj")  # the last two: overlapping parts
OPEN = ("objects/mug.obj", "tray/tray_textured.obj", "laikago/upper_leg_left.obj")


def normalized(relative: str, merge: bool = False) -> trimesh.Trimesh:
    mesh, _ = normalize(load_mesh(Path(pybullet_data.getDataPath()) / relative))
    if merge:  # welded so trimesh sees the watertightness the OBJ's split vertices hide
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
    return mesh


def query_points(mesh: trimesh.Trimesh, rng: np.random.Generator) -> np.ndarray:
    uniform = rng.uniform(-1, 1, size=(3000, 3))
    near = mesh.sample(1000, seed=int(rng.integers(1 << 31))) + rng.normal(scale=0.02, size=(1000, 3))
    return np.concatenate([uniform, near])


@pytest.mark.parametrize("relative", WATERTIGHT[:1])
def test_sign_matches_contains_on_watertight_mesh(relative):
    mesh = normalized(relative, merge=True)
    assert mesh.is_watertight
    pts = query_points(mesh, np.random.default_rng(0))
    sdf = signed_distance(mesh.vertices, mesh.faces, pts, TRUNCATION)
    assert np.mean((sdf < 0) == mesh.contains(pts)) >= 0.99


@pytest.mark.parametrize("relative", WATERTIGHT)
def test_sign_matches_exact_winding_number(relative):
    mesh = normalized(relative)
    pts = query_points(mesh, np.random.default_rng(1))
    sdf = signed_distance(mesh.vertices, mesh.faces, pts, TRUNCATION)
    exact = np.abs(igl.winding_number(mesh.vertices, mesh.faces.astype(np.int64), pts)) > 0.5
    assert np.mean((sdf < 0) == exact) >= 0.99


def test_distance_matches_closest_point_reference():
    mesh = normalized("duck_vhacd.obj")
    pts = query_points(mesh, np.random.default_rng(2))[::8]
    sdf = signed_distance(mesh.vertices, mesh.faces, pts, TRUNCATION)
    _, reference, _ = trimesh.proximity.closest_point(mesh, pts)
    voxel = 2.0 / 63
    assert np.abs(np.abs(sdf) - np.minimum(reference, TRUNCATION)).max() < 0.01 * voxel
    assert np.abs(sdf).max() <= TRUNCATION


@pytest.mark.parametrize("relative", WATERTIGHT + OPEN)
def test_grid_matches_pointwise_evaluation(relative):
    mesh = normalized(relative)
    resolution = 40
    grid = sdf_grid(mesh.vertices, mesh.faces, resolution, TRUNCATION)
    pointwise = signed_distance(mesh.vertices, mesh.faces, grid_points(resolution), TRUNCATION)
    assert grid.shape == (resolution,) * 3 and grid.dtype == np.float32
    np.testing.assert_allclose(np.abs(grid).reshape(-1), np.abs(pointwise), atol=1e-6)
    assert np.mean((grid.reshape(-1) < 0) == (pointwise < 0)) >= 0.999


@pytest.mark.parametrize("relative", ("bunny.obj", "lego/lego.obj"))
def test_band_candidates_contain_the_band(relative):
    mesh = normalized(relative)
    resolution = 48
    sq_dist, _, _ = igl.point_mesh_squared_distance(
        grid_points(resolution), mesh.vertices, mesh.faces.astype(np.int64)
    )
    band = np.sqrt(sq_dist).reshape((resolution,) * 3) < TRUNCATION
    candidates = band_candidates(mesh.vertices, mesh.faces, resolution, TRUNCATION)
    assert not (band & ~candidates).any()
    assert candidates.sum() < 2 * band.sum()  # a superset, but not the whole grid


def test_sign_survives_holes():
    closed = normalized("bunny.obj", merge=True)
    rng = np.random.default_rng(3)
    keep = np.ones(len(closed.faces), dtype=bool)
    keep[rng.choice(len(closed.faces), size=len(closed.faces) // 10, replace=False)] = (
        False  # 10% of faces gone
    )
    holed = trimesh.Trimesh(closed.vertices, closed.faces[keep], process=False)
    assert not holed.is_watertight
    pts = rng.uniform(-1, 1, size=(4000, 3))
    reference = signed_distance(closed.vertices, closed.faces, pts, TRUNCATION) < 0
    assert reference.mean() > 0.05  # the test needs inside points to mean anything
    assert np.mean((signed_distance(holed.vertices, holed.faces, pts, TRUNCATION) < 0) == reference) >= 0.97
    grid = sdf_grid(holed.vertices, holed.faces, 32, TRUNCATION).reshape(-1) < 0
    closed_grid = sdf_grid(closed.vertices, closed.faces, 32, TRUNCATION).reshape(-1) < 0
    assert np.mean(grid == closed_grid) >= 0.97


def test_sphere_grid_is_analytic_and_corner_indexed():
    center, radius, resolution = np.array([0.3, -0.2, 0.1]), 0.45, 33
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    grid = sdf_grid(sphere.vertices + center, sphere.faces, resolution, TRUNCATION)
    axis = np.linspace(-1, 1, resolution)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    analytic = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2) - radius
    np.testing.assert_allclose(grid, np.clip(analytic, -TRUNCATION, TRUNCATION), atol=2e-3)
    assert grid.max() == pytest.approx(TRUNCATION) and grid.min() == pytest.approx(-TRUNCATION)


def test_rejects_malformed_input():
    with pytest.raises(ValueError):
        signed_distance(np.zeros((3, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros((1, 3)), TRUNCATION)
    with pytest.raises(ValueError):
        sdf_grid(np.zeros((3, 2)), np.array([[0, 1, 2]]), 8, TRUNCATION)
