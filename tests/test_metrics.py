"""Metrics against independent references: scipy cKDTree for Chamfer, POT's exact solver for
EMD, and hand-built point sets and distance matrices with known answers."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from scipy.spatial import cKDTree

from native3d.metrics import (
    chamfer_distance,
    coverage,
    earth_movers_distance,
    f_score,
    generative_metrics,
    minimum_matching_distance,
    nearest_neighbors,
    normal_consistency,
    normalize_pair,
    one_nna,
    pairwise_distances,
    volume_iou,
)
from native3d.metrics.pointcloud import MetricResult, emd_exact, emd_sinkhorn


def clouds(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, 3, generator=torch.Generator().manual_seed(seed))


def kdtree_chamfer(x: np.ndarray, y: np.ndarray, convention: str) -> float:
    d_xy, d_yx = cKDTree(y).query(x)[0], cKDTree(x).query(y)[0]
    if convention == "l2_squared":
        return float(np.mean(d_xy**2) + np.mean(d_yx**2))
    return float(0.5 * (np.mean(d_xy) + np.mean(d_yx)))


def pot_emd(x: np.ndarray, y: np.ndarray) -> float:
    """Exact EMD as mean matched Euclidean distance, from POT's network simplex."""
    cost = ot.dist(x.astype(np.float64), y.astype(np.float64), metric="euclidean")
    return float(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost))


# Point-cloud metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["l2_squared", "l1"])
def test_chamfer_matches_kdtree(convention):
    x, y = clouds(3, 300, seed=1), clouds(3, 211, seed=2) * 1.3
    result = chamfer_distance(x, y, convention=convention, chunk=64)
    expected = [kdtree_chamfer(a.numpy(), b.numpy(), convention) for a, b in zip(x, y)]
    assert result.value.shape == (3,)
    np.testing.assert_allclose(result.value.numpy(), expected, rtol=1e-5)
    assert result.settings["convention"] == convention
    assert result.settings["num_points"] == (300, 211)


def test_chamfer_conventions_on_a_hand_built_pair():
    # One point each, distance 0.5: l2_squared = 0.25 + 0.25, l1 = 0.5 * (0.5 + 0.5).
    x, y = torch.zeros(1, 1, 3), torch.tensor([[[0.5, 0.0, 0.0]]])
    assert chamfer_distance(x, y, convention="l2_squared").value.item() == pytest.approx(0.5)
    assert chamfer_distance(x, y, convention="l1").value.item() == pytest.approx(0.5)
    x2 = torch.tensor([[[0.0, 0, 0], [2.0, 0, 0]]])  # the far point adds 1.5 one way only
    assert chamfer_distance(x2, y, convention="l1").value.item() == pytest.approx(0.5 * (1.0 + 0.5))


def test_chamfer_convention_is_required_and_checked():
    x = clouds(1, 8)
    with pytest.raises(TypeError):
        chamfer_distance(x, x)  # no default convention
    with pytest.raises(ValueError):
        chamfer_distance(x, x, convention="l2")


def test_nearest_neighbors_chunked_equals_unchunked_and_is_exact_near_zero():
    x, y = clouds(2, 500, seed=3), clouds(2, 400, seed=4)
    d_full, i_full = nearest_neighbors(x, y, chunk=10_000)
    d_chunk, i_chunk = nearest_neighbors(x, y, chunk=7)
    assert torch.equal(i_full, i_chunk) and torch.equal(d_full, d_chunk)
    # Tiny offsets far from the origin: a bare matrix-product distance would be off by ~1e-3.
    base = clouds(1, 50, seed=5) + 10.0
    moved = base + 1e-5
    d, idx = nearest_neighbors(moved, base)
    assert torch.equal(idx[0], torch.arange(50))
    expected = (moved.double() - base.double()).norm(dim=-1)  # ~1.7e-5 after float32 rounding
    np.testing.assert_allclose(d.numpy(), expected.numpy(), rtol=1e-3)


def test_batched_equals_looped():
    x, y = clouds(4, 64, seed=6), clouds(4, 64, seed=7)
    nx, ny = clouds(4, 64, seed=8) - 0.5, clouds(4, 64, seed=9) - 0.5
    metrics = [
        lambda x, y, nx, ny: chamfer_distance(x, y, convention="l1"),
        lambda x, y, nx, ny: f_score(x, y, threshold=0.05),
        lambda x, y, nx, ny: normal_consistency(x, nx, y, ny),
        lambda x, y, nx, ny: earth_movers_distance(x, y, backend="exact"),
    ]
    for metric in metrics:
        looped = [metric(x[i : i + 1], y[i : i + 1], nx[i : i + 1], ny[i : i + 1]).value for i in range(4)]
        torch.testing.assert_close(metric(x, y, nx, ny).value, torch.cat(looped))


def test_f_score_hand_built():
    # Four well-separated reference points; predictions offset by 0.05, 0.2, 0.05, 0.3 along x,
    # plus one stray prediction far away. At tau = 0.1: precision 2/5, recall 2/4.
    ref = torch.tensor([[[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]]])
    offsets = torch.tensor([0.05, 0.2, 0.05, 0.3])
    pred = torch.cat([ref[0] + offsets[:, None] * torch.tensor([1.0, 0, 0]), torch.tensor([[50.0, 50, 50]])])[
        None
    ]
    result = f_score(pred, ref, threshold=0.1)
    p, r = 2 / 5, 2 / 4
    assert result.parts["precision"].item() == pytest.approx(p)
    assert result.parts["recall"].item() == pytest.approx(r)
    assert result.value.item() == pytest.approx(2 * p * r / (p + r))
    assert result.settings["threshold"] == 0.1
    assert f_score(pred, ref, threshold=0.01).value.item() == 0.0  # P + R = 0 gives 0, not nan


def test_normal_consistency_hand_built():
    pts = clouds(1, 100, seed=10)
    normals = torch.nn.functional.normalize(clouds(1, 100, seed=11) - 0.5, dim=-1)
    assert normal_consistency(pts, normals, pts, -normals).value.item() == pytest.approx(1.0)  # flips ignored
    # Rotating every normal by 60 degrees about an axis orthogonal to it: |cos| = 0.5.
    axis = torch.nn.functional.normalize(torch.linalg.cross(normals, torch.randn(1, 100, 3)), dim=-1)
    rotated = 0.5 * normals + math.sin(math.pi / 3) * torch.linalg.cross(axis, normals)
    assert normal_consistency(pts, normals, pts, rotated * 3.0).value.item() == pytest.approx(0.5, abs=1e-5)


def test_exact_emd_matches_pot():
    x, y = clouds(3, 128, seed=12), clouds(3, 128, seed=13) + 0.2
    result = earth_movers_distance(x, y, backend="exact")
    expected = [pot_emd(a.numpy(), b.numpy()) for a, b in zip(x, y)]
    np.testing.assert_allclose(result.value.numpy(), expected, rtol=1e-5)
    assert result.settings["emd_backend"] == "exact"
    assert result.settings["convention"] == "mean_euclidean"


def test_emd_of_a_shuffled_translation_is_the_shift():
    # W1 >= |mean(x) - mean(y)| by convexity of the norm, and the identity matching attains it.
    x = clouds(1, 64, seed=14)
    shift = torch.tensor([0.03, -0.04, 0.0])
    y = (x + shift)[:, torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    assert emd_exact(x, y).item() == pytest.approx(0.05, rel=1e-5)


def test_sinkhorn_emd_is_within_tolerance_above_exact():
    x, y = clouds(2, 120, seed=15), clouds(2, 90, seed=16) * 0.8
    exact = torch.tensor([pot_emd(a.numpy(), b.numpy()) for a, b in zip(x, y)])  # unequal sizes
    approx = earth_movers_distance(x, y, backend="sinkhorn")
    assert approx.settings["emd_backend"] == "sinkhorn" and approx.settings["sinkhorn_eps"] == 1e-3
    assert torch.all(approx.value >= exact.float() * (1 - 1e-4))  # a feasible plan's cost
    torch.testing.assert_close(approx.value, exact.float(), rtol=0.04, atol=0)
    x2, y2 = clouds(2, 96, seed=17), clouds(2, 96, seed=18)
    torch.testing.assert_close(emd_sinkhorn(x2, y2), emd_exact(x2, y2), rtol=0.04, atol=0)


def test_exact_emd_needs_equal_sizes():
    with pytest.raises(ValueError):
        earth_movers_distance(clouds(1, 10), clouds(1, 12), backend="exact")


def test_normalization_options():
    x = clouds(2, 100, seed=19) * torch.tensor([2.0, 1.0, 0.5]) + 3.0
    ref = clouds(2, 100, seed=20) * 4.0
    unit_x, unit_ref = normalize_pair(x, ref, "unit_box")
    for pts in (unit_x, unit_ref):
        extent = pts.amax(dim=1) - pts.amin(dim=1)  # (B, 3)
        torch.testing.assert_close(extent.amax(dim=1), torch.ones(2))
        torch.testing.assert_close(pts.amax(dim=1) + pts.amin(dim=1), torch.zeros(2, 3), atol=1e-6, rtol=0)
    glob_x, glob_ref = normalize_pair(x, ref, "global")
    flat = glob_ref.reshape(-1, 3)
    assert (flat.amax(0) - flat.amin(0)).amax().item() == pytest.approx(1.0)
    # One shared map keeps the ratio of distances between the two sets.
    ratio = (
        chamfer_distance(glob_x, glob_ref, convention="l1").value
        / chamfer_distance(x, ref, convention="l1").value
    )
    torch.testing.assert_close(ratio, ratio[:1].expand(2))
    scaled = chamfer_distance(x * 7.0, ref, convention="l1", normalization="unit_box")
    base = chamfer_distance(x, ref, convention="l1", normalization="unit_box")
    torch.testing.assert_close(scaled.value, base.value)
    assert scaled.settings["normalization"] == "unit_box"


def test_subsampling_is_seeded_and_recorded():
    x, y = clouds(2, 500, seed=21), clouds(2, 400, seed=22)
    a = chamfer_distance(x, y, convention="l2_squared", num_points=100, seed=3)
    b = chamfer_distance(x, y, convention="l2_squared", num_points=100, seed=3)
    c = chamfer_distance(x, y, convention="l2_squared", num_points=100, seed=4)
    assert torch.equal(a.value, b.value) and not torch.equal(a.value, c.value)
    assert a.settings["num_points"] == (100, 100) and a.settings["seed"] == 3


# Volume IoU ---------------------------------------------------------------------------------


def test_volume_iou_hand_built():
    sdf_ref = torch.tensor([[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    sdf_pred = torch.tensor([[-0.5, -0.5, 0.5, -0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 1.0, 1.0, 1.0]])
    result = volume_iou(sdf_pred, sdf_ref, kind="sdf")
    # Row 0: inside_ref {0,1,2}, inside_pred {0,1,3}: 2 / 4. Row 1: both empty, defined as 1.
    torch.testing.assert_close(result.value, torch.tensor([0.5, 1.0]))
    occ = volume_iou((sdf_pred < 0).float(), (sdf_ref < 0), kind="occupancy")
    torch.testing.assert_close(occ.value, result.value)
    assert result.settings == {"metric": "volume_iou", "field": "sdf", "num_queries": 6}
    looped = torch.cat(
        [volume_iou(sdf_pred[i : i + 1], sdf_ref[i : i + 1], kind="sdf").value for i in range(2)]
    )
    torch.testing.assert_close(looped, result.value)


def test_volume_iou_of_two_spheres():
    # Spheres of radius 0.5 centred 0.5 apart, on a fine grid, against the closed form.
    axis = torch.linspace(-1, 1, 81)
    q = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
    sdf_a = (q - torch.tensor([-0.25, 0, 0])).norm(dim=-1) - 0.5
    sdf_b = (q - torch.tensor([0.25, 0, 0])).norm(dim=-1) - 0.5
    r, d = 0.5, 0.5
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    expected = lens / (2 * 4 / 3 * math.pi * r**3 - lens)
    assert volume_iou(sdf_a, sdf_b, kind="sdf").value.item() == pytest.approx(expected, abs=0.01)


# Generative metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["l2_squared", "l1"])
def test_pairwise_chamfer_matches_every_pair_on_its_own(convention):
    s, r = clouds(5, 40, seed=23), clouds(7, 50, seed=24)
    d = pairwise_distances(s, r, metric="chamfer", convention=convention)
    expected = torch.tensor([[kdtree_chamfer(a.numpy(), b.numpy(), convention) for b in r] for a in s])
    torch.testing.assert_close(d.value, expected, rtol=1e-5, atol=1e-7)
    one_by_one = torch.stack(
        [chamfer_distance(a[None].expand(len(r), -1, -1), r, convention=convention).value for a in s]
    )
    torch.testing.assert_close(d.value, one_by_one, rtol=1e-5, atol=1e-7)  # the batched cdist path
    assert d.value.shape == (5, 7) and d.settings["metric"] == "chamfer"


def test_a_set_against_itself_is_the_matrix_against_a_copy_of_it():
    s = clouds(6, 30, seed=27)
    own = pairwise_distances(s, s, metric="chamfer", convention="l1", num_points=20, seed=0)
    copy = pairwise_distances(s, s.clone(), metric="chamfer", convention="l1", num_points=20, seed=0)
    torch.testing.assert_close(own.value, copy.value, rtol=0, atol=1e-7)
    assert (own.value.diagonal() == 0).all() and (own.value == own.value.T).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_pairwise_chamfer_on_cuda_matches_the_cpu_and_its_chunking():
    s, r = clouds(5, 40, seed=23), clouds(7, 40, seed=24)
    cpu = pairwise_distances(s, r, metric="chamfer", convention="l2_squared")
    full = pairwise_distances(
        s.cuda(), r.cuda(), metric="chamfer", convention="l2_squared", pair_chunk=1000, point_chunk=1000
    )
    chunked = pairwise_distances(
        s.cuda(), r.cuda(), metric="chamfer", convention="l2_squared", pair_chunk=3, point_chunk=6
    )
    torch.testing.assert_close(full.value, chunked.value, rtol=0, atol=0)
    torch.testing.assert_close(full.value.cpu(), cpu.value, rtol=1e-5, atol=1e-7)


def test_pairwise_emd_matches_pot():
    s, r = clouds(3, 32, seed=25), clouds(4, 32, seed=26)
    d = pairwise_distances(s, r, metric="emd", emd_backend="exact", pair_chunk=5)
    expected = torch.tensor([[pot_emd(a.numpy(), b.numpy()) for b in r] for a in s])
    torch.testing.assert_close(d.value, expected.float(), rtol=1e-5, atol=1e-7)
    assert d.settings["emd_backend"] == "exact" and d.settings["convention"] == "mean_euclidean"
    with pytest.raises(ValueError):
        pairwise_distances(s, r, metric="emd")  # backend must be named
    with pytest.raises(ValueError):
        pairwise_distances(s, r, metric="chamfer")  # convention must be named


def as_result(matrix: list[list[float]]) -> MetricResult:
    return MetricResult(torch.tensor(matrix), {"metric": "chamfer", "num_points": (1, 1)})


def test_mmd_and_cov_hand_built():
    # Samples (rows) x references (columns). Nearest references of the samples: 0, 0, 2.
    d_sr = as_result([[0.1, 0.9, 0.8, 0.7], [0.2, 0.3, 0.9, 0.9], [0.5, 0.6, 0.4, 0.6]])
    assert minimum_matching_distance(d_sr).value.item() == pytest.approx((0.1 + 0.3 + 0.4 + 0.6) / 4)
    cov = coverage(d_sr)
    assert cov.value.item() == pytest.approx(2 / 4)
    assert cov.settings["metric"] == "cov-chamfer" and cov.settings["distance"] == "chamfer"


def test_one_nna_hand_built_with_ties():
    # Two samples, two references. Sample 0's nearest is sample 1 (correct). Sample 1 ties
    # between sample 0 and reference 0 (half correct). Reference 0's nearest is sample 1
    # (wrong); reference 1's nearest is reference 0 (correct). Accuracy (1 + 0.5 + 0 + 1) / 4.
    d_ss = as_result([[0.0, 0.2], [0.2, 0.0]])
    d_sr = as_result([[0.9, 0.9], [0.2, 0.8]])
    d_rr = as_result([[0.0, 0.5], [0.5, 0.0]])
    result = one_nna(d_sr, d_ss, d_rr)
    assert result.value.item() == pytest.approx(2.5 / 4)
    assert result.parts["accuracy_samples"].item() == pytest.approx(0.75)
    assert result.parts["accuracy_refs"].item() == pytest.approx(0.5)
    other = MetricResult(d_rr.value, {"metric": "emd", "num_points": (1, 1)})
    with pytest.raises(ValueError):
        one_nna(d_sr, d_ss, other)


def test_generative_metrics_identical_iid_and_disjoint_sets():
    kwargs = dict(metric="chamfer", convention="l2_squared", pair_chunk=4096)
    same = clouds(30, 16, seed=27)
    copy = generative_metrics(same, same.clone(), **kwargs)
    assert copy["mmd"].value.item() == 0.0
    assert copy["cov"].value.item() == 1.0
    assert copy["1-nna"].value.item() == 0.0  # every shape's nearest neighbour is its copy

    # I.i.d. sets from one law: one draw of 200 + 200 scatters by ~0.05, so average five.
    draws = [(clouds(200, 16, seed=2 * k), clouds(200, 16, seed=2 * k + 1)) for k in range(5)]
    nna = [generative_metrics(s, r, **kwargs)["1-nna"].value.item() for s, r in draws]
    assert np.mean(nna) == pytest.approx(0.5, abs=0.04)
    samples, refs = draws[0]

    far = generative_metrics(samples[:40], refs[:40] + 10.0, **kwargs)
    assert far["1-nna"].value.item() == 1.0
    assert far["mmd"].value.item() > 100
    assert far["1-nna"].settings["metric"] == "1-nna-chamfer"
    assert far["1-nna"].settings["convention"] == "l2_squared"


def test_generative_metrics_with_emd_and_global_normalization_records_settings():
    samples, refs = clouds(6, 24, seed=30) * 2.0, clouds(5, 24, seed=31) * 2.0
    results = generative_metrics(
        samples, refs, metric="emd", emd_backend="exact", normalization="global", num_points=20, seed=7
    )
    d_sr = pairwise_distances(
        samples, refs, metric="emd", emd_backend="exact", normalization="global", num_points=20, seed=7
    )
    assert results["mmd"].value.item() == pytest.approx(d_sr.value.min(dim=0).values.mean().item())
    settings = results["cov"].settings
    assert settings["normalization"] == "global" and settings["emd_backend"] == "exact"
    assert settings["seed"] == 7 and settings["num_points"] == (20, 20)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = clouds(3, 300, seed=32), clouds(3, 250, seed=33)
    for convention in ("l2_squared", "l1"):
        cpu = chamfer_distance(x, y, convention=convention).value
        gpu = chamfer_distance(x.cuda(), y.cuda(), convention=convention).value
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(emd_sinkhorn(x.cuda(), y.cuda()).cpu(), emd_sinkhorn(x, y), rtol=1e-3, atol=0)
    s, r = clouds(8, 64, seed=34), clouds(9, 64, seed=35)
    d_cpu = pairwise_distances(s, r, metric="chamfer", convention="l1").value
    d_gpu = pairwise_distances(s.cuda(), r.cuda(), metric="chamfer", convention="l1").value
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-5, atol=1e-7)
