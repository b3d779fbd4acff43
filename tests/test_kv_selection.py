"""Adaptive KV selection in VecSet decoding: a region's fine queries attend to its top-k tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from native3d.autoencoders import autoencoder_loss
from native3d.autoencoders.meshing import decode_mesh, latent_field
from native3d.autoencoders.vecset import VecSetVAE
from native3d.geometry.marching_cubes import coarse_to_fine_grid, dense_grid

TRUNCATION, RESOLUTION, START = 0.1, 32, 16


def torus_batch() -> dict[str, torch.Tensor]:
    """A torus (ring 0.5, tube 0.2) as a shard batch: surface points with normals, and sdf queries."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.rand(2, 1024, generator=g) * 2 * torch.pi
    normals = torch.stack([v.cos() * u.cos(), v.cos() * u.sin(), v.sin()], dim=-1)
    centre = torch.stack([0.5 * u.cos(), 0.5 * u.sin(), torch.zeros_like(u)], dim=-1)
    surface = torch.cat([centre + 0.2 * normals, normals], dim=-1)  # (N, 6)
    pts = torch.cat(
        [torch.rand(1024, 3, generator=g) * 2 - 1, surface[:, :3] + 0.05 * torch.randn(1024, 3, generator=g)]
    )
    ring = pts[:, :2].norm(dim=-1) - 0.5
    sdf = (torch.hypot(ring, pts[:, 2]) - 0.2).clamp(-TRUNCATION, TRUNCATION)
    return {"surface": surface[None], "query": torch.cat([pts, sdf[:, None]], dim=-1)[None]}


@pytest.fixture(scope="module", params=[True, False], ids=["anchored", "free"])
def vecset(request):
    """A tiny VecSet (anchored tokens or free ones) fitted for a few seconds to one torus, and that torus's latent."""
    torch.manual_seed(0)
    model = VecSetVAE(
        num_latents=32,
        latent_channels=8,
        width=64,
        heads=4,
        depth=2,
        num_frequencies=6,
        token_positions=request.param,
    )
    batch = torus_batch()
    inputs = model.inputs_from_batch(batch)
    points, target = model.queries_from_batch(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(50):
        sdf, posterior = model(inputs, points)
        loss = autoencoder_loss(sdf, target, posterior, kl_weight=1e-4, clamp=TRUNCATION)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return model, model.encode(inputs).mode()


def grid(field, coarse_to_fine: bool = True) -> np.ndarray:
    if not coarse_to_fine:
        return dense_grid(field, RESOLUTION).values
    return coarse_to_fine_grid(field, RESOLUTION, start_resolution=START, region=2, chunk=4096).values


def exact(model, latent):
    return latent_field(model, latent)


def inside_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a < 0) & (b < 0)).sum() / ((a < 0) | (b < 0)).sum())


def test_attention_weights_are_a_distribution_over_tokens(vecset):
    model, latent = vecset
    tokens = model.decoder_features(latent)
    weights = model.head.attention_weights(tokens, torch.rand(1, 50, 3) * 2 - 1)
    assert weights.shape == (1, 50, model.num_latents)
    if not model.token_positions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(1, 50))
    else:  # anchored: what the tokens leave goes to the null token
        assert ((weights.sum(-1) > 0) & (weights.sum(-1) <= 1 + 1e-6)).all()


def test_selecting_every_token_is_the_full_decoder(vecset):
    model, latent = vecset
    full = grid(exact(model, latent))
    every = grid(latent_field(model, latent, kv_tokens=model.num_latents))
    np.testing.assert_allclose(every, full, rtol=0, atol=1e-6)


def test_regions_attend_to_only_k_tokens(vecset, monkeypatch):
    model, latent = vecset
    keys = []
    query = model.query

    def counted(tokens, points):
        keys.append((tokens.shape[1], points.shape[1]))
        return query(tokens, points)

    monkeypatch.setattr(model, "query", counted)
    grid(latent_field(model, latent, kv_tokens=8))
    full = [points for tokens, points in keys if tokens == model.num_latents]
    assert sum(full) == (START + 1) ** 3, "only the start grid attends to every token"
    assert len(keys) > len(full) + 1 and {tokens for tokens, _ in keys[len(full) :]} == {8}


def test_kv_selected_decoding_gives_the_full_attention_mesh(vecset):
    model, latent = vecset
    dense = grid(exact(model, latent), coarse_to_fine=False)
    assert inside_iou(dense, grid(exact(model, latent))) > 0.999
    # A tiny VecSet spreads its attention: three quarters of the tokens keep the mesh only roughly.
    most = grid(latent_field(model, latent, kv_tokens=0.75))
    assert inside_iou(dense, most) > 0.9
    assert inside_iou(dense, grid(latent_field(model, latent, kv_tokens=0.75, dtype=torch.bfloat16))) > 0.9
    # Keeping far fewer tokens is visibly worse: the selection, not luck, keeps the mesh.
    assert inside_iou(dense, grid(latent_field(model, latent, kv_tokens=2))) < inside_iou(dense, most)


def test_decode_mesh_is_exact_unless_asked_to_be_fast(vecset):
    model, latent = vecset
    exact_vertices, _ = decode_mesh(model, latent, resolution=32)
    vertices, _ = decode_mesh(model, latent, resolution=32, coarse_to_fine=False)
    assert chamfer_l1(vertices, exact_vertices) < 1e-6
    fast, _ = decode_mesh(model, latent, resolution=32, fast=True, kv_tokens=0.75)
    assert 0 < chamfer_l1(fast, exact_vertices) < 0.05


def chamfer_l1(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())
