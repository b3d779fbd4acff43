"""Surface, sharp-edge and query sampling, triplane projection and offscreen rendering of real meshes."""

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
from native3d.geometry.sampling import sample_queries, sample_sharp, sample_surface
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


def box_edges(extents: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 12 edges of a centred box, as (start, end) corner pairs that differ in one coordinate."""
    corners = [(np.array(c) - 0.5) * extents for c in np.ndindex(2, 2, 2)]
    return [(a, b) for i, a in enumerate(corners) for b in corners[i + 1 :] if (a != b).sum() == 1]


def distance_to_segments(pts: np.ndarray, segments: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each point's distance to the nearest of the segments; (K,)."""
    best = np.full(len(pts), np.inf)
    for a, b in segments:
        t = np.clip((pts - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(pts - (a + t[:, None] * (b - a)), axis=1))
    return best


def test_sharp_points_of_a_box_lie_on_its_edges_length_weighted_with_bisector_normals():
    extents = np.array([1.0, 1.0, 3.0])  # 4 edges of length 3 along z, 8 of length 1
    box = trimesh.creation.box(extents=extents)
    sharp = sample_sharp(box, 4000, 15.0, np.random.default_rng(0))
    assert sharp.source == "edges" and sharp.sharp_edges == 12
    assert sharp.points.shape == (4000, 6) and sharp.points.dtype == np.float32
    pts, normals = sharp.points[:, :3].astype(np.float64), sharp.points[:, 3:]
    edges = box_edges(extents)
    assert len(edges) == 12 and distance_to_segments(pts, edges).max() < 1e-6
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
    # On an edge, the two coordinates at their faces are the two faces' normal axes: the bisector is
    # their signs over sqrt(2).
    on_face = np.isclose(np.abs(pts), extents / 2, atol=1e-9)
    assert (on_face.sum(axis=1) >= 2).all()
    interior = on_face.sum(axis=1) == 2  # not at a corner
    expected = np.where(on_face, np.sign(pts), 0.0) / np.sqrt(2.0)
    np.testing.assert_allclose(normals[interior], expected[interior], atol=1e-6)
    along_z = ~on_face[:, 2]
    assert along_z.mean() == pytest.approx(12 / 20, abs=0.03)  # length-weighted: 4 x 3 of 4 x 3 + 8 x 1
    assert len(np.unique(np.round(pts[along_z, 2], 3))) > 500, "spread along the edges, not at points"


def test_sharp_edges_of_a_real_cube_with_split_vertices_a_face_wound_backwards_and_a_degenerate_face():
    cube, _ = normalize(load_mesh(Path(pybullet_data.getDataPath()) / "cube.obj"))
    assert len(cube.vertices) == 24  # every face has its own corners: no adjacency until merged
    faces = np.array(cube.faces)
    faces[0] = faces[0][::-1]  # an inconsistently wound face: its normal points inwards
    sliver = np.vstack([cube.faces, cube.faces[:1, [0, 1, 1]]])  # zero area, on an edge: a third face there
    variants = (cube.faces, faces, sliver)
    for mesh in (trimesh.Trimesh(cube.vertices, f, process=False) for f in variants):
        merged = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
        sharp = sample_sharp(merged, 500, 15.0, np.random.default_rng(1))
        assert sharp.source == "edges" and sharp.sharp_edges == 12
        assert (
            distance_to_segments(sharp.points[:, :3].astype(np.float64), box_edges(np.full(3, 1.8))).max()
            < 1e-6
        )
        np.testing.assert_allclose(np.linalg.norm(sharp.points[:, 3:], axis=1), 1.0, atol=1e-6)


def test_a_sphere_has_no_sharp_edge_and_is_sampled_by_curvature():
    sphere = trimesh.creation.icosphere(subdivisions=3)  # ~6 degrees between neighbouring faces
    sharp = sample_sharp(sphere, 300, 15.0, np.random.default_rng(2))
    assert sharp.source == "curvature" and sharp.sharp_edges == 0 and sharp.points.shape == (300, 6)
    pts, normals = sharp.points[:, :3], sharp.points[:, 3:]
    assert distance_to(sphere, pts).max() < 1e-6
    radial = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    assert (np.sum(normals * radial, axis=1) > 0.99).all() and np.abs(
        np.linalg.norm(normals, axis=1) - 1
    ).max() < 1e-6


def test_curvature_points_gather_where_the_surface_bends_most():
    # An oblate spheroid bends most at its equator (there 1 and 1/0.4^2 = 6.25; 0.4 at the poles).
    spheroid = trimesh.creation.icosphere(subdivisions=4)  # at most ~7 degrees between faces
    spheroid.apply_scale([1.0, 1.0, 0.4])
    sharp = sample_sharp(spheroid, 4000, 15.0, np.random.default_rng(3))
    uniform = sample_surface(spheroid, 4000, np.random.default_rng(3))
    assert sharp.source == "curvature" and sharp.sharp_edges == 0
    near_equator = [np.mean(np.abs(z) < 0.08) for z in (sharp.points[:, 2], uniform[:, 2])]
    assert near_equator[0] > 1.8 * near_equator[1]
    assert np.abs(sharp.points[:, 2]).mean() < 0.75 * np.abs(uniform[:, 2]).mean()


def test_a_flat_mesh_gets_uniform_surface_points():
    square = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]])
    sharp = sample_sharp(square, 200, 15.0, np.random.default_rng(4))
    assert sharp.source == "uniform" and sharp.sharp_edges == 0 and sharp.points.shape == (200, 6)
    assert np.abs(sharp.points[:, 2]).max() == 0 and sharp.points[:, :2].std(axis=0).min() > 0.2
    np.testing.assert_allclose(np.abs(sharp.points[:, 5]), 1.0)


def test_sharp_sampling_is_deterministic_given_the_generator(duck):
    merged = trimesh.Trimesh(duck.vertices, duck.faces, process=True)
    first, again, other = (
        sample_sharp(merged, 300, 15.0, np.random.default_rng(s)).points for s in (5, 5, 6)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


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
