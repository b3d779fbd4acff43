"""Distribution metrics for generated shape sets: MMD, COV (Achlioptas et al. 2018, "Learning
Representations and Generative Models for 3D Point Clouds") and 1-NNA (Lopez-Paz & Oquab 2017,
as used for point clouds by Yang et al. 2019, PointFlow), with Chamfer or EMD as the distance.

All three are functions of pairwise distance matrices, computed once by `pairwise_distances`:
D_sr (S, R) between samples and references, and D_ss (S, S), D_rr (R, R) for 1-NNA.

    MMD   = mean over references r of min over samples s of D_sr[s, r]   (lower is better)
    COV   = |{argmin_r D_sr[s, r] : s}| / R, the fraction of references that are the nearest
            reference of at least one sample                              (higher is better)
    1-NNA = accuracy of the leave-one-out 1-nearest-neighbour classifier on the labelled
            union of both sets, from the (S+R) x (S+R) matrix with self-distances excluded;
            50% means indistinguishable sets, 100% disjoint ones. Below 50% signals sets that
            are *too* close, e.g. samples that copy references: a set compared with an exact
            copy of itself scores 0%, since every shape's nearest neighbour is its copy.

Ties: COV takes the first nearest reference (lowest index). 1-NNA splits a tie evenly: a
shape whose nearest distance is shared by k shapes counts as the fraction of those k that
carry its own label, so exact duplicates do not bias the score toward either set. The (R, S)
block of the union matrix is D_sr transposed, which assumes a symmetric distance (exact for
Chamfer and exact EMD, close for Sinkhorn).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from scipy.spatial import cKDTree
from torch import Tensor

from native3d.metrics.pointcloud import (
    Convention,
    EMDBackend,
    MetricResult,
    Normalization,
    chamfer_from_nn,
    emd_values,
    nearest_neighbors,
    normalize_pair,
    settings_for,
    subsample,
)

logger = logging.getLogger(__name__)

Distance = Literal["chamfer", "emd"]


def pair_distances(
    x: Float[Tensor, "P N 3"],
    y: Float[Tensor, "P M 3"],
    metric: Distance,
    convention: Convention | None,
    emd_backend: EMDBackend | None,
    point_chunk: int,
    eps: float,
) -> Float[Tensor, " P"]:
    """The distance between x[p] and y[p] for each of P pairs."""
    if metric == "chamfer":
        d_xy, d_yx = nearest_neighbors(x, y, point_chunk)[0], nearest_neighbors(y, x, point_chunk)[0]
        return chamfer_from_nn(d_xy, d_yx, convention)
    return emd_values(x, y, emd_backend, eps)


def check_distance_args(
    metric: Distance, convention: Convention | None, emd_backend: EMDBackend | None
) -> None:
    """Chamfer needs a named convention and EMD a named backend: no silent defaults."""
    if metric not in ("chamfer", "emd"):
        raise ValueError(f"unknown metric {metric!r}; use 'chamfer' or 'emd'")
    if metric == "chamfer" and convention is None:
        raise ValueError("metric='chamfer' needs convention='l2_squared' or 'l1'")
    if metric == "emd" and emd_backend is None:
        raise ValueError("metric='emd' needs emd_backend='exact' or 'sinkhorn'")


@torch.no_grad()
def distance_matrix(
    samples: Float[Tensor, "S N 3"],
    refs: Float[Tensor, "R M 3"],
    metric: Distance,
    convention: Convention | None,
    emd_backend: EMDBackend | None,
    pair_chunk: int,
    point_chunk: int,
    eps: float,
) -> Float[Tensor, "S R"]:
    """The raw (S, R) distance matrix, `pair_chunk` pairs at a time (no normalization here).

    Chamfer on CPU tensors goes through KD-trees instead (`chamfer_matrix`); a set against itself
    (`refs is samples`) computes each pair of it once there.
    """
    if metric == "chamfer" and samples.device.type == "cpu" and refs.device.type == "cpu":
        return chamfer_matrix(samples, refs, convention)
    num_s, num_r = samples.shape[0], refs.shape[0]
    logger.info("%s distance matrix: %d x %d pairs, %d per chunk", metric, num_s, num_r, pair_chunk)
    pair = torch.arange(num_s * num_r, device=samples.device)
    out = samples.new_empty(num_s * num_r)
    for start in range(0, num_s * num_r, pair_chunk):
        p = pair[start : start + pair_chunk]
        x, y = samples[p // num_r], refs[p % num_r]  # (P, N, 3), (P, M, 3)
        out[start : start + len(p)] = pair_distances(x, y, metric, convention, emd_backend, point_chunk, eps)
    return out.view(num_s, num_r)


def chamfer_matrix(
    samples: Float[Tensor, "S N 3"], refs: Float[Tensor, "R M 3"], convention: Convention
) -> Float[Tensor, "S R"]:
    """(S, R) Chamfer distances from one scipy KD-tree per cloud, nearest neighbours exact in float64.

    On a CPU this is several times faster than the batched `torch.cdist` of `pair_distances` (each
    point's neighbour is found in log time instead of against every point), and a set against
    itself fills only one triangle.
    """
    symmetric = refs is samples
    a = samples.double().numpy()
    b = a if symmetric else refs.double().numpy()
    trees_a = [cKDTree(cloud) for cloud in a]
    trees_b = trees_a if symmetric else [cKDTree(cloud) for cloud in b]
    out = np.zeros((len(a), len(b)))
    for i, (x, tree_x) in enumerate(zip(a, trees_a)):
        for j in range(i + 1 if symmetric else 0, len(b)):
            d_xy = torch.from_numpy(trees_b[j].query(x)[0])[None]
            d_yx = torch.from_numpy(tree_x.query(b[j])[0])[None]
            out[i, j] = chamfer_from_nn(d_xy, d_yx, convention).item()
    if symmetric:
        out += out.T
    return torch.from_numpy(out).to(samples.dtype)


def distance_settings(
    metric: Distance,
    samples: Tensor,
    refs: Tensor,
    normalization: Normalization,
    seed: int | None,
    convention: Convention | None,
    emd_backend: EMDBackend | None,
    eps: float,
) -> dict:
    """Settings of a distance matrix; EMD's convention is its fixed one, "mean_euclidean"."""
    if metric == "chamfer":
        return settings_for(metric, samples, refs, normalization, seed, convention)
    extra = {"sinkhorn_eps": eps} if emd_backend == "sinkhorn" else {}
    return settings_for(metric, samples, refs, normalization, seed, "mean_euclidean", emd_backend, **extra)


def prepare_sets(
    samples: Float[Tensor, "S N 3"],
    refs: Float[Tensor, "R M 3"],
    normalization: Normalization,
    num_points: int | None,
    seed: int | None,
) -> tuple[Float[Tensor, "S K 3"], Float[Tensor, "R K 3"]]:
    """Subsamples (seeded) then normalizes both sets; "global" uses the references' box."""
    return normalize_pair(
        subsample(samples, num_points, seed), subsample(refs, num_points, seed), normalization
    )


def pairwise_distances(
    samples: Float[Tensor, "S N 3"],
    refs: Float[Tensor, "R M 3"],
    *,
    metric: Distance,
    convention: Convention | None = None,
    emd_backend: EMDBackend | None = None,
    normalization: Normalization = "none",
    num_points: int | None = None,
    seed: int | None = None,
    pair_chunk: int = 16,
    point_chunk: int = 1024,
    eps: float = 1e-3,
) -> MetricResult:
    """The (S, R) matrix of distances between every sample and every reference.

    Chamfer needs `convention`, EMD needs `emd_backend` (see `pointcloud`). Shapes are
    subsampled to `num_points` (seeded) and normalized first (see `pointcloud.normalize_pair`;
    "global" uses the bounding box of all references). Pairs are processed `pair_chunk` at a
    time, so memory does not grow with S * R beyond the output matrix (4 bytes per entry).
    Peak extra memory per chunk, float32:

        chamfer:         ~2 * 4 * pair_chunk * point_chunk * M bytes
                         (defaults, 2,048 points: ~256 MiB, for any S and R)
        emd, sinkhorn:   ~3 * 4 * pair_chunk * N * M bytes (defaults, 2,048 points: ~768 MiB;
                         pair_chunk=4 gives ~200 MiB)
        emd, exact:      8 * pair_chunk * N * M bytes of float64 costs, and O(N^3) time per pair

    So 1,000 x 1,000 sets of 2,048 points fit on CPU: inputs 24 MiB each, output 4 MiB. Chamfer
    between CPU tensors is computed with KD-trees instead (`chamfer_matrix`: the chunks do not apply,
    and a set against itself costs half).
    """
    check_distance_args(metric, convention, emd_backend)
    symmetric = refs is samples
    samples, refs = prepare_sets(samples, refs, normalization, num_points, seed)
    if symmetric:  # the same set, prepared the same way: each pair once where that is cheaper
        refs = samples
    d = distance_matrix(samples, refs, metric, convention, emd_backend, pair_chunk, point_chunk, eps)
    return MetricResult(
        d, distance_settings(metric, samples, refs, normalization, seed, convention, emd_backend, eps)
    )


def summary_settings(statistic: str, d: MetricResult) -> dict:
    """A set statistic's settings: those of its distance matrix, `metric` naming both."""
    return {**d.settings, "metric": f"{statistic}-{d.settings['metric']}", "distance": d.settings["metric"]}


def minimum_matching_distance(d_sr: MetricResult) -> MetricResult:
    """MMD: mean over references of the distance to the closest sample (0-dim value)."""
    value = d_sr.value.min(dim=0).values.mean()
    return MetricResult(value, summary_settings("mmd", d_sr))


def coverage(d_sr: MetricResult) -> MetricResult:
    """COV: fraction of references that are some sample's nearest reference (0-dim value)."""
    matched = d_sr.value.argmin(dim=1).unique()
    value = torch.tensor(matched.numel() / d_sr.value.shape[1], dtype=d_sr.value.dtype)
    return MetricResult(value, summary_settings("cov", d_sr))


def one_nna(d_sr: MetricResult, d_ss: MetricResult, d_rr: MetricResult) -> MetricResult:
    """1-NNA accuracy (0-dim value); accuracies on samples and on references in `parts`."""
    for other in (d_ss, d_rr):
        mismatched = {k for k in d_sr.settings if k != "num_points" and other.settings[k] != d_sr.settings[k]}
        if mismatched:
            raise ValueError(f"distance matrices computed with different settings: {sorted(mismatched)}")
    num_s = d_sr.value.shape[0]
    full = torch.cat(
        [torch.cat([d_ss.value, d_sr.value], dim=1), torch.cat([d_sr.value.T, d_rr.value], dim=1)], dim=0
    )  # (S+R, S+R)
    full = full.clone().fill_diagonal_(float("inf"))
    label = torch.arange(full.shape[0], device=full.device) >= num_s  # True for references
    ties = full == full.min(dim=1, keepdim=True).values  # (S+R, S+R): all nearest neighbours
    correct = (ties & (label[:, None] == label[None, :])).sum(dim=1) / ties.sum(dim=1)  # (S+R,)
    parts = {"accuracy_samples": correct[:num_s].mean(), "accuracy_refs": correct[num_s:].mean()}
    return MetricResult(correct.mean(), summary_settings("1-nna", d_sr), parts)


def generative_metrics(
    samples: Float[Tensor, "S N 3"],
    refs: Float[Tensor, "R M 3"],
    *,
    metric: Distance,
    convention: Convention | None = None,
    emd_backend: EMDBackend | None = None,
    normalization: Normalization = "none",
    num_points: int | None = None,
    seed: int | None = None,
    pair_chunk: int = 16,
    point_chunk: int = 1024,
    eps: float = 1e-3,
) -> dict[str, MetricResult]:
    """MMD, COV and 1-NNA of `samples` against `refs`, keyed "mmd", "cov", "1-nna".

    Computes the three distance matrices D_sr, D_ss and D_rr once each (arguments as in
    `pairwise_distances`); time grows with (S + R)^2 pairs.
    """
    check_distance_args(metric, convention, emd_backend)
    samples, refs = prepare_sets(samples, refs, normalization, num_points, seed)
    settings = distance_settings(metric, samples, refs, normalization, seed, convention, emd_backend, eps)
    args = (metric, convention, emd_backend, pair_chunk, point_chunk, eps)
    d_sr, d_ss, d_rr = (
        MetricResult(distance_matrix(a, b, *args), settings)
        for a, b in ((samples, refs), (samples, samples), (refs, refs))
    )
    return {"mmd": minimum_matching_distance(d_sr), "cov": coverage(d_sr), "1-nna": one_nna(d_sr, d_ss, d_rr)}
