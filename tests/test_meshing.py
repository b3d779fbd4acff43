"""Latents to meshes: the decoder's features/query split, and dense vs coarse-to-fine decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from native3d.autoencoders import autoencoder_loss, grid_tiny, triplane_tiny, vecset_tiny
from native3d.autoencoders.meshing import decode_mesh, latent_field
from native3d.data.schema import grid_coords
from native3d.geometry.marching_cubes import coarse_to_fine_grid, dense_grid

PRESETS = [vecset_tiny, grid_tiny, triplane_tiny]
RADIUS, TRUNCATION = 0.5, 0.1


@pytest.mark.parametrize("preset", PRESETS)
def test_query_of_decoder_features_is_decode(preset):
    torch.manual_seed(0)
    model = preset().eval()
    latent = torch.randn(2, *model.latent_shape)
    points = torch.rand(2, 300, 3) * 2 - 1
    features = model.decoder_features(latent)
    torch.testing.assert_close(model.query(features, points), model.decode(latent, points), rtol=0, atol=0)
    # The features serve any number of query calls: two halves of the points read the same values.
    halves = torch.cat(
        [model.query(features, points[:, :150]), model.query(features, points[:, 150:])], dim=1
    )
    torch.testing.assert_close(halves, model.decode(latent, points), rtol=1e-5, atol=1e-6)


def test_decode_mesh_computes_the_decoder_features_once(monkeypatch):
    torch.manual_seed(0)
    model = triplane_tiny().eval()
    calls = {"features": 0, "query": 0}
    for name, key in (("decoder_features", "features"), ("query", "query")):
        method = getattr(model, name)

        def counted(*args, method=method, key=key):
            calls[key] += 1
            return method(*args)

        monkeypatch.setattr(model, name, counted)
    field = latent_field(model, torch.randn(1, *model.latent_shape))
    coarse_to_fine_grid(field, 64, start_resolution=32, chunk=2**12)
    assert calls["features"] == 1 and calls["query"] > 2


def sphere_batch() -> dict[str, torch.Tensor]:
    """One sphere of radius 0.5 as a shard batch: triplane of (min sdf, inside fraction) and queries."""
    axis = torch.as_tensor(grid_coords(32), dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (R, R, R, 3)
    sdf_grid = (grid.norm(dim=-1) - RADIUS).clamp(-TRUNCATION, TRUNCATION)  # (R, R, R) indexed [x, y, z]
    planes = [
        torch.stack([sdf_grid.amin(a), (sdf_grid < 0).float().mean(a)]) for a in (2, 1, 0)
    ]  # xy, xz, yz
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(512, 3, generator=g) * 2 - 1
    directions = torch.nn.functional.normalize(torch.randn(512, 3, generator=g), dim=-1)
    near = directions * (RADIUS + 0.05 * torch.randn(512, 1, generator=g))  # a shell around the surface
    pts = torch.cat([uniform, near])  # (Q, 3)
    query = torch.cat([pts, (pts.norm(dim=-1, keepdim=True) - RADIUS).clamp(-TRUNCATION, TRUNCATION)], dim=-1)
    return {"triplane": torch.stack(planes)[None], "query": query[None]}


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


@pytest.fixture(scope="module")
def trained_sphere():
    """A tiny triplane autoencoder fitted for a few seconds to one sphere, and that sphere's latent."""
    torch.manual_seed(0)
    model = triplane_tiny()
    batch = sphere_batch()
    inputs = model.inputs_from_batch(batch)
    points, target = model.queries_from_batch(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        sdf, posterior = model(inputs, points)
        loss = autoencoder_loss(sdf, target, posterior, kl_weight=1e-4, clamp=TRUNCATION)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return model, model.encode(inputs).mode()


def test_dense_and_coarse_to_fine_decode_the_same_mesh(trained_sphere):
    model, latent = trained_sphere
    dense_vertices, _ = decode_mesh(model, latent, resolution=64, coarse_to_fine=False)
    fine_vertices, _ = decode_mesh(model, latent, resolution=64, coarse_to_fine=True)
    # The decoder learned the sphere, so a matching pair of meshes is not a pair of empty or noise surfaces.
    assert np.abs(np.linalg.norm(dense_vertices, axis=1) - RADIUS).mean() < 0.04
    assert chamfer_l1(dense_vertices, fine_vertices) < 1e-3, "coarse-to-fine dropped or moved surface"
    # ... and coarse-to-fine did skip most of the grid on the way.
    field = latent_field(model, latent)
    assert coarse_to_fine_grid(field, 64, start_resolution=32).queries * 2 < dense_grid(field, 64).queries


def finned_sphere(points: np.ndarray) -> np.ndarray:
    """A sphere with a fin 0.024 thick whose faces lie between the 32^3 grid's samples (z = 0, 0.0625)."""
    sphere = np.linalg.norm(points, axis=1) - RADIUS
    fin = np.maximum.reduce(
        [np.abs(points[:, 2] - 0.03) - 0.012, np.abs(points[:, 0]) - 0.9, np.abs(points[:, 1]) - 0.1]
    )
    return np.minimum(sphere, fin)


def test_coarse_to_fine_traces_a_part_that_the_coarse_grid_misses(monkeypatch):
    import native3d.geometry.marching_cubes as mc

    dense = dense_grid(finned_sphere, 128)
    traced = coarse_to_fine_grid(finned_sphere, 128, start_resolution=32, safety=0.0)
    np.testing.assert_array_equal(traced.values < 0, dense.values < 0)
    assert traced.queries * 10 < dense.queries
    # Without tracing the fin ends where the sphere's crossing cells do: the test sees what tracing adds.
    monkeypatch.setattr(mc, "unknown_corners_of_crossings", lambda *args: np.zeros(0, dtype=np.int64))
    cut = coarse_to_fine_grid(finned_sphere, 128, start_resolution=32, safety=0.0)
    assert ((cut.values < 0) != (dense.values < 0)).sum() > 100


def test_tracing_finds_the_unknown_corners_of_every_crossing_cell_next_to_the_changed_samples():
    """The flat-index tracing step against the definition, on grids whose changed samples lie on every
    face and corner of the grid (where a step off the grid must not wrap to another row)."""
    from native3d.geometry.marching_cubes import CORNERS, unknown_corners_of_crossings

    rng = np.random.default_rng(0)
    for shape in [(5, 5, 5), (4, 6, 7)]:
        values = rng.normal(size=shape).astype(np.float32)
        known = rng.random(shape) < 0.5
        changed = np.unique(np.r_[rng.integers(0, values.size, 40), 0, values.size - 1])
        expected = set()
        for sample in np.stack(np.unravel_index(changed, shape), axis=-1):
            for offset in CORNERS:
                cell = sample - offset
                if (cell < 0).any() or (cell >= np.array(shape) - 1).any():
                    continue
                corners = [tuple(cell + c) for c in CORNERS]
                signs = {values[c] < 0 for c in corners}
                if len(signs) == 2:
                    expected |= {np.ravel_multi_index(c, shape) for c in corners if not known[c]}
        found = unknown_corners_of_crossings(values, known, changed)
        assert list(found) == sorted(expected)
