"""Surface and query sampling, triplane projection and offscreen rendering of real meshes."""

from __future__ import annotations

from pathlib import Path

import igl
import numpy as np
import pybullet_data
import pytest
import trimesh

from native3d.data.schema import TRIPLANE_PLANES
from native3d.geometry.mesh import load_mesh, normalize
from native3d.geometry.render import fixed_cameras, render_views
from native3d.geometry.sampling import sample_queries, sample_surface
from native3d.geometry.sdf import signed_distance
from native3d.geometry.triplane import project_triplane

TRUNCATION = 0.1
SIGMAS = (0.01, 0.04)


@pytest.fixture(scope="module")
def duck() -> trimesh.Trimesh:
    mesh, _ = normalize(load_mesh(Path(pybullet_data.getDataPath()) / "duck_vhacd.obj"))
    return mesh


def distance_to(mesh: trimesh.Trimesh, pts: np.ndarray) -> np.ndarray:
    sq_dist, _, _ = igl.point_mesh_squared_distance(
        pts.astype(np.float64), np.asarray(mesh.vertices, dtype=np.float64), mesh.faces.astype(np.int64)
    )
    return np.sqrt(sq_dist)


def test_surface_points_lie_on_the_mesh_with_unit_normals(duck):
    surface = sample_surface(duck, 2000, np.random.default_rng(0))
    assert surface.shape == (2000, 6) and surface.dtype == np.float32
    assert distance_to(duck, surface[:, :3]).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(surface[:, 3:], axis=1), 1.0, atol=1e-5)


def test_surface_normals_are_the_face_normals():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))  # outward-wound: normal = the dominant axis
    surface = sample_surface(box, 600, np.random.default_rng(1))
    pts, normals = surface[:, :3], surface[:, 3:]
    axis = np.abs(pts).argmax(axis=1)
    expected = np.zeros_like(pts)
    expected[np.arange(len(pts)), axis] = np.sign(pts[np.arange(len(pts)), axis])
    np.testing.assert_allclose(normals, expected, atol=1e-6)


def test_surface_sampling_is_area_weighted():
    # two disjoint triangles, the second with 3x the area of the first
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]], dtype=float)
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2], [3, 4, 5]], process=False)
    surface = sample_surface(mesh, 20000, np.random.default_rng(2))
    assert np.mean(surface[:, 2] > 0.5) == pytest.approx(0.75, abs=0.015)


def test_sampling_is_deterministic_given_the_generator(duck):
    def draw(seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        surface = sample_surface(duck, 500, rng)
        return surface, sample_queries(duck.vertices, duck.faces, 301, SIGMAS, TRUNCATION, rng)

    first, again, other = draw(7), draw(7), draw(8)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_queries_layout_and_signed_distance(duck):
    count = 4001
    query = sample_queries(duck.vertices, duck.faces, count, SIGMAS, TRUNCATION, np.random.default_rng(3))
    assert query.shape == (count, 4) and query.dtype == np.float32
    assert np.abs(query[:, :3]).max() <= 1.0
    np.testing.assert_allclose(
        query[:, 3], signed_distance(duck.vertices, duck.faces, query[:, :3], TRUNCATION), atol=1e-6
    )
    uniform, fine, coarse = query[:2000, :3], query[2000:3001, :3], query[3001:, :3]
    assert (
        np.abs(uniform.mean(axis=0)).max() < 0.05 and uniform.std(axis=0).min() > 0.5
    )  # spread over the cube
    d_fine, d_coarse = distance_to(duck, fine), distance_to(duck, coarse)
    assert (
        np.median(d_fine) < SIGMAS[0] < np.median(d_coarse) < SIGMAS[1]
    )  # Gaussian offsets shrink to the surface
    assert np.median(distance_to(duck, uniform)) > 2 * SIGMAS[1]


def test_triplane_reduces_a_hand_made_grid():
    sdf = np.full((3, 3, 3), 0.5, dtype=np.float32)
    sdf[0, 1, 2] = -0.25  # one inside sample at x=0, y=1, z=2
    sdf[2, 0, 0] = -0.5
    sdf[2, 0, 1] = -0.125
    planes = project_triplane(sdf)
    assert planes.shape == (len(TRIPLANE_PLANES), 2, 3, 3) and planes.dtype == np.float32
    xy, xz, yz = planes
    assert xy[0, 0, 1] == -0.25 and xy[1, 0, 1] == pytest.approx(1 / 3)
    assert xy[0, 2, 0] == -0.5 and xy[1, 2, 0] == pytest.approx(2 / 3)
    assert xz[0, 0, 2] == -0.25 and xz[0, 2, 1] == -0.125 and xz[1, 2, 0] == pytest.approx(1 / 3)
    assert yz[0, 1, 2] == -0.25 and yz[0, 0, 0] == -0.5 and yz[1, 0, 1] == pytest.approx(1 / 3)
    assert xy[0, 1, 1] == 0.5 and xy[1, 1, 1] == 0.0  # an all-outside column
    assert planes[:, 1].sum() == pytest.approx(3 * 3 / 3)  # 3 inside samples, seen by each plane


def test_fixed_cameras_are_deterministic_and_spread():
    cameras = fixed_cameras(4)
    assert cameras == fixed_cameras(4) and fixed_cameras(0) == []
    positions = np.array([c["position"] for c in cameras])
    radius = np.linalg.norm(positions, axis=1)
    np.testing.assert_allclose(radius, radius[0], rtol=1e-6)
    elevation = np.degrees(np.arcsin(positions @ np.array(cameras[0]["view_up"]) / radius))
    assert np.all((20 <= elevation) & (elevation <= 30))
    assert len({tuple(p) for p in positions.round(3)}) == 4


def test_render_views_shape_content_and_distinct_cameras(duck):
    views = render_views(duck, fixed_cameras(3), 48)
    assert views.shape == (3, 48, 48, 3) and views.dtype == np.uint8
    for view in views:
        object_pixels = (view < 250).any(axis=-1).mean()
        assert 0.02 < object_pixels < 0.9  # the object is visible, on a white background
        assert (view[0, 0] == 255).all()
    assert np.abs(views[0].astype(int) - views[1].astype(int)).mean() > 1.0
    assert render_views(duck, [], 48).shape == (0, 48, 48, 3)
