"""Reconstruction metrics of an autoencoder on a shard set, per object and averaged.

Each object is encoded (posterior mode) and decoded twice: at the shard's uniform queries for
volume IoU, and on a grid for a marching-cubes mesh (`decode_mesh`) that is compared with the
shard's surface points by Chamfer-L1, F-score and normal consistency (Occupancy Networks,
Mescheder et al. 2019, Sec. 4; F-score of Tatarchenko et al. 2019).

- Volume IoU: sign agreement (sdf < 0 inside) of the decoded and the stored signed distance on
  the first half of `query.npy`, which the schema makes uniform in [-1, 1]^3.
- Chamfer "l1": 0.5 * (mean_x d(x, Y) + mean_y d(y, X)), unsquared Euclidean (see
  `native3d.metrics.pointcloud`), between `points` area-weighted samples of the mesh and
  (at most) `points` of the shard's surface points.
- F-score at `fscore_threshold` and normal consistency (|cos| between the mesh's face normal at a
  sampled point and the shard's surface normal of its nearest neighbour, both ways).

Meshes and shard points are both in the schema's normalized frame (longest side spans
[-0.9, 0.9]), so no further normalization is applied. An object whose latent decodes to no
surface keeps its IoU, has no mesh metrics, and is listed under `failures` ("no_surface");
the mesh metrics are means over the objects that have a surface.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from native3d.autoencoders.bottleneck import LatentAutoencoder
from native3d.autoencoders.meshing import decode_mesh
from native3d.checkpoints import load_autoencoder
from native3d.data.datamodule import collate, sample_to_tensors
from native3d.data.shards import ShardIndex, batched, iter_samples, load_index
from native3d.evaluation.report import EvaluationReport
from native3d.geometry.marching_cubes import NoSurfaceError, marching_cubes
from native3d.metrics import MetricResult, chamfer_distance, f_score, normal_consistency, volume_iou

log = logging.getLogger(__name__)

CHAMFER_CONVENTION = "l1"
MESH_METRICS = ("chamfer_l1", "f_score", "precision", "recall", "normal_consistency")


@dataclass
class Reconstruction:
    """One object's decoded field at its uniform queries and its mesh (None: no surface)."""

    id: str
    sample: dict  # the decoded shard sample
    pred_sdf: np.ndarray  # (Q/2,) decoded signed distance at the uniform queries
    mesh: trimesh.Trimesh | None
    no_surface: str | None = None  # why there is no mesh


def uniform_queries(query: np.ndarray) -> np.ndarray:
    """The uniform half of a shard's queries (the schema puts it first): (Q/2, 4)."""
    return query[: len(query) // 2]


@torch.no_grad()
def iter_reconstructions(
    autoencoder: LatentAutoencoder,
    data: ShardIndex | str | os.PathLike,
    resolution: int = 64,
    limit: int | None = None,
    batch_size: int = 8,
) -> Iterator[Reconstruction]:
    """Encodes and decodes the first `limit` objects of a shard set, in order."""
    device = autoencoder.latent_mean.device
    for chunk in batched(islice(iter_samples(data), limit), batch_size):
        batch = collate([sample_to_tensors(s, None, np.random.default_rng(0)) for s in chunk])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        latent = autoencoder.encode(autoencoder.inputs_from_batch(batch)).mode()  # (B, *latent_shape)
        uniform = batch["query"].shape[1] // 2
        pred = autoencoder.decode(latent, batch["query"][:, :uniform, :3]).float().cpu().numpy()  # (B, Q/2)
        for i, sample in enumerate(chunk):
            mesh, reason = decoded_mesh(autoencoder, latent[i : i + 1], resolution)
            yield Reconstruction(sample["__key__"], sample, pred[i], mesh, reason)


def decoded_mesh(
    autoencoder: LatentAutoencoder, latent: torch.Tensor, resolution: int
) -> tuple[trimesh.Trimesh | None, str | None]:
    try:
        vertices, faces = decode_mesh(autoencoder, latent, resolution)
    except NoSurfaceError as error:
        return None, str(error)
    return trimesh.Trimesh(vertices, faces, process=False), None


def reference_mesh(sample: dict) -> trimesh.Trimesh:
    """The shard's own shape: marching cubes of its stored SDF grid (corner convention)."""
    vertices, faces = marching_cubes(sample["sdf.npy"].astype(np.float32))
    return trimesh.Trimesh(vertices, faces, process=False)


def mesh_points(mesh: trimesh.Trimesh, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` area-weighted points on the mesh and the normals of their faces: (K, 3) each."""
    points, face = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return torch.from_numpy(np.asarray(points, np.float32)), torch.from_numpy(
        np.asarray(mesh.face_normals[face], np.float32)
    )


def reference_points(sample: dict, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `count` of the shard's surface points (seeded subset) and their normals."""
    surface = sample["surface.npy"].astype(np.float32)
    if count < len(surface):
        surface = surface[np.random.default_rng(seed).choice(len(surface), count, replace=False)]
    return torch.from_numpy(surface[:, :3]), torch.from_numpy(surface[:, 3:])


def score(
    rec: Reconstruction, points: int, threshold: float, seed: int
) -> tuple[dict, dict[str, MetricResult]]:
    """One object's row and the metric results behind it (for their settings)."""
    stored = torch.from_numpy(uniform_queries(rec.sample["query.npy"])[:, 3].astype(np.float32))
    results = {"volume_iou": volume_iou(torch.from_numpy(rec.pred_sdf)[None], stored[None], kind="sdf")}
    row = {
        "id": rec.id,
        "class": rec.sample["meta.json"].get("class"),
        "status": "ok" if rec.mesh else "no_surface",
    }
    if rec.mesh is not None:
        x, x_normals = (t[None] for t in mesh_points(rec.mesh, points, seed))  # (1, K, 3)
        ref, ref_normals = (t[None] for t in reference_points(rec.sample, points, seed))  # (1, N', 3)
        results["chamfer_l1"] = chamfer_distance(x, ref, convention=CHAMFER_CONVENTION)
        results["f_score"] = f_score(x, ref, threshold=threshold)
        results["normal_consistency"] = normal_consistency(x, x_normals, ref, ref_normals)
        row |= {"vertices": len(rec.mesh.vertices), "faces": len(rec.mesh.faces)}
    row |= {name: r.mean() for name, r in results.items()}
    if "f_score" in results:
        row |= {k: float(v.mean()) for k, v in results["f_score"].parts.items()}
    return row, results


def score_reconstructions(
    recs: Iterator[Reconstruction] | list[Reconstruction],
    points: int = 2048,
    fscore_threshold: float = 0.02,
    seed: int = 0,
    total: int | None = None,
) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Per-object rows, the no-surface failures and each metric's settings."""
    rows, failures, metric_settings = [], [], {}
    for rec in tqdm(recs, total=total, desc="reconstruct", unit="object"):
        row, results = score(rec, points, fscore_threshold, seed)
        rows.append(row)
        metric_settings |= {name: r.settings for name, r in results.items()}
        if rec.mesh is None:
            log.warning("%s decodes to no surface: %s", rec.id, rec.no_surface)
            failures.append({"id": rec.id, "reason": "no_surface", "detail": rec.no_surface})
    return rows, failures, metric_settings


def summarize(rows: list[dict]) -> dict:
    """Means over objects: IoU over all of them, mesh metrics over those with a surface."""
    meshed = [r for r in rows if r["status"] == "ok"]
    summary = {"num_objects": len(rows), "num_meshed": len(meshed), "num_no_surface": len(rows) - len(meshed)}
    summary["volume_iou"] = float(np.mean([r["volume_iou"] for r in rows])) if rows else None
    for name in MESH_METRICS:
        summary[name] = float(np.mean([r[name] for r in meshed])) if meshed else None
    return summary


def evaluate_reconstruction(
    ckpt: str | os.PathLike,
    data: str | os.PathLike,
    *,
    resolution: int = 64,
    limit: int | None = None,
    points: int = 2048,
    fscore_threshold: float = 0.02,
    device: str = "cpu",
    batch_size: int = 8,
    seed: int = 0,
) -> EvaluationReport:
    """Reconstruction metrics of the autoencoder checkpoint `ckpt` on the shard set `data`."""
    autoencoder = load_autoencoder(ckpt, device)
    index = load_index(data)
    if index.num_samples == 0 or (limit is not None and limit < 1):
        raise ValueError(f"{index.root}: nothing to evaluate ({index.num_samples} samples, limit {limit})")
    total = index.num_samples if limit is None else min(limit, index.num_samples)
    recs = iter_reconstructions(autoencoder, index, resolution, limit, batch_size)
    rows, failures, metric_settings = score_reconstructions(recs, points, fscore_threshold, seed, total)
    settings = {
        "resolution": resolution,
        "limit": limit,
        "mesh_points": points,
        "reference_points": min(points, index.sizes.surface_points),
        "fscore_threshold": fscore_threshold,
        "chamfer_convention": CHAMFER_CONVENTION,
        "latent": "posterior mode",
        "iou_queries": f"uniform half of query.npy ({index.sizes.query_points // 2} points), sign agreement",
        "normalization": "none: meshes and shard points are both in the schema's normalized frame",
        "mesh_means_over": "objects with a surface (num_meshed)",
        "seed": seed,
        "device": device,
        "metrics": metric_settings,
    }
    inputs = {"ckpt": str(ckpt), "data": str(index.root)}
    return EvaluationReport("reconstruction", inputs, settings, summarize(rows), rows, failures)
