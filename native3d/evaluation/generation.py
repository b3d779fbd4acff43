"""Generated meshes against a reference shard set: MMD, COV, 1-NNA and prompt accuracy.

The distribution metrics are those of `native3d.metrics.generative` (Achlioptas et al. 2018;
Yang et al. 2019), with Chamfer-L1 or exact EMD between point clouds of `points` points drawn
from each generated mesh (area-weighted, seeded) and from each reference's surface points. MMD
and COV compare the samples with every reference; 1-NNA, a two-sample test of sets of one size,
compares as many samples as references, a seeded subset of the larger set (`balanced_subsets`).

Frames: every generated mesh is brought into the shard schema's frame first (bounding box of its
used vertices centred, longest side scaled to [-0.9, 0.9], `geometry.mesh.normalize`, as data
prep does); reference shards are stored in that frame, so the metrics apply no further
normalization. Both facts go into the report's settings.

A samples folder holds mesh files (any format `geometry.mesh.load_mesh` reads, searched
recursively) and optionally `samples.json`, which `native3d sample` writes and a person may
write by hand:

    {"samples": [{"file": "0000.glb", "prompt": "a mug with a handle", "class": "mug"}, ...],
     "settings": {...}}      # how the samples were made: checkpoint, sampler, steps, seed...

(a bare list of sample entries is read too). `file` is relative to the folder; `prompt` and
`class` are optional. A sample's prompted class is its `class`, else the one reference class
name that occurs as a word in its `prompt`. Prompt accuracy is measured when the reference's
`meta.json` carries "class": a sample is correct when the class nearest to it is its prompted
class, nearest by the minimum ("min", the 1-nearest-neighbour classifier) or the mean ("mean")
of its distances to that class's reference shapes. Samples whose prompted class is not among
the reference classes are counted apart and left out of the accuracy.

Unreadable meshes (and files `samples.json` names that do not exist) are named in `failures`
and skipped; an empty folder, a folder with no readable mesh, or an empty reference set raise.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from native3d.data.schema import NORMALIZED_HALF_EXTENT
from native3d.data.shards import iter_samples, load_index
from native3d.evaluation.report import EvaluationReport
from native3d.geometry.mesh import MESH_EXTENSIONS, MeshError, load_mesh, normalize
from native3d.metrics import MetricResult, coverage, minimum_matching_distance, one_nna, pairwise_distances

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.json"
Distance = Literal["chamfer", "emd"]
ClassDistance = Literal["min", "mean"]
CHAMFER_CONVENTION = "l1"
EMD_BACKEND = "exact"
NORMALIZATION = (
    f"generated meshes: bounding box centred, longest side scaled to [-{NORMALIZED_HALF_EXTENT}, "
    f"{NORMALIZED_HALF_EXTENT}] (geometry.mesh.normalize, the schema's frame); reference shards are "
    "stored in that frame; the metrics normalize no further"
)


class NoMeshError(ValueError):
    """A samples folder with no readable mesh; `failures` names what was there instead."""

    def __init__(self, message: str, failures: list[dict]) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass
class PointSet:
    """Point clouds of a set of shapes, (S, K, 3), with a name and labels per shape."""

    names: list[str]
    points: torch.Tensor
    entries: list[dict]  # per shape: "prompt", "class" (None where unknown), ...


def read_samples_file(folder: Path) -> tuple[dict[str, dict], list[dict], dict]:
    """`samples.json` of a folder: {file: entry}, failures of entries without a file, settings.

    An entry whose "file" is null is a sample that wrote no mesh (`native3d sample` records a
    latent that decodes to no surface so, with its "error"); it is a failure, not a sample.
    """
    path = folder / SAMPLES_FILE
    if not path.is_file():
        return {}, [], {}
    data = json.loads(path.read_text())
    entries, settings = (
        (data, {}) if isinstance(data, list) else (data.get("samples", []), data.get("settings", {}))
    )
    if not all(isinstance(e, dict) and "file" in e for e in entries):
        raise ValueError(f"{path}: every sample entry needs a 'file' (null for a sample that wrote no mesh)")
    failures = [
        {
            "id": f"sample {e.get('index', i)} ({e.get('prompt')})",
            "reason": "no_file",
            "detail": e.get("error", ""),
        }
        for i, e in enumerate(entries)
        if not e["file"]
    ]
    return {Path(e["file"]).as_posix(): e for e in entries if e["file"]}, failures, settings


def mesh_files(folder: Path) -> list[str]:
    """Mesh files under `folder`, as sorted paths relative to it."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS
    )


def sample_mesh(path: Path, points: int, seed: int) -> np.ndarray:
    """`points` area-weighted points (seeded) of a mesh file, in the schema's frame: (K, 3)."""
    mesh, _ = normalize(load_mesh(path))
    return np.asarray(trimesh.sample.sample_surface(mesh, points, seed=seed)[0], dtype=np.float32)


def load_generated(folder: str | os.PathLike, points: int, seed: int) -> tuple[PointSet, list[dict], dict]:
    """The readable meshes of a samples folder as points, the failures, and the sampler settings."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such samples folder")
    listed, failures, sampler_settings = read_samples_file(folder)
    files = mesh_files(folder)
    if not files and not listed:
        raise NoMeshError(f"{folder}: no mesh files ({', '.join(MESH_EXTENSIONS)}) to evaluate", failures)
    failures += [
        {"id": f, "reason": "missing_file", "detail": f"{SAMPLES_FILE} names it"}
        for f in listed
        if f not in files
    ]
    names, clouds, entries = [], [], []
    for name in tqdm(files, desc="load meshes", unit="mesh"):
        try:
            clouds.append(sample_mesh(folder / name, points, seed))
        except MeshError as error:
            log.warning("skipping %s: %s", name, error)
            failures.append({"id": name, "reason": error.reason, "detail": error.detail})
            continue
        names.append(name)
        entries.append(
            {"prompt": listed.get(name, {}).get("prompt"), "class": listed.get(name, {}).get("class")}
        )
    if not clouds:
        raise NoMeshError(f"{folder}: none of {len(files)} mesh files could be read: {failures}", failures)
    return PointSet(names, torch.from_numpy(np.stack(clouds)), entries), failures, sampler_settings


def load_reference(reference: str | os.PathLike, points: int, seed: int) -> PointSet:
    """At most `points` surface points (seeded subset) of every reference sample, and its class."""
    index = load_index(reference)
    if index.kind != "shapes":
        raise ValueError(f"{index.root}: a {index.kind} shard set; the reference must be a shape shard set")
    if index.num_samples == 0:
        raise ValueError(f"{index.root}: the reference shard set holds no samples; nothing to compare with")
    names, clouds, entries = [], [], []
    for sample in tqdm(iter_samples(index), total=index.num_samples, desc="load reference", unit="shape"):
        surface = sample["surface.npy"][:, :3].astype(np.float32)
        pick = np.random.default_rng(seed).choice(len(surface), min(points, len(surface)), replace=False)
        names.append(sample["__key__"])
        clouds.append(surface[pick])
        entries.append({"class": sample["meta.json"].get("class"), "caption": sample["caption.txt"]})
    return PointSet(names, torch.from_numpy(np.stack(clouds)), entries)


def prompted_class(entry: dict, classes: set[str]) -> tuple[str | None, str | None]:
    """A sample's prompted class and where it came from ("class" or "prompt"); (None, None) if unknown."""
    if entry.get("class"):
        return entry["class"], "class"
    prompt = (entry.get("prompt") or "").lower()
    found = [c for c in sorted(classes) if re.search(rf"\b{re.escape(c.lower())}\b", prompt)]
    return (found[0], "prompt") if len(found) == 1 else (None, None)


def nearest_classes(d_sr: torch.Tensor, ref_classes: list[str], reduce: ClassDistance) -> list[str]:
    """For each sample (row of the (S, R) distances), the class with the least min or mean distance."""
    names = sorted(set(ref_classes))
    member = torch.tensor([[c == name for c in ref_classes] for name in names])  # (K, R)
    d = d_sr[:, None, :].expand(-1, len(names), -1)  # (S, K, R)
    if reduce == "min":
        per_class = d.masked_fill(~member, float("inf")).amin(dim=-1)
    elif reduce == "mean":
        per_class = (d * member).sum(-1) / member.sum(-1)
    else:
        raise ValueError(f"unknown class distance {reduce!r}; use 'min' or 'mean'")
    return [names[k] for k in per_class.argmin(dim=1).tolist()]  # (S,)


def nearest_class_accuracy(
    shapes: str | os.PathLike,
    reference: str | os.PathLike,
    points: int,
    count: int | None = None,
    seed: int = 0,
) -> float:
    """Prompt accuracy's rule applied to real shapes: how often the first `count` shapes of a shard set
    (their surface points) are nearest (min Chamfer-L1) to a reference shape of their own class.

    It is the accuracy that a model whose samples are indistinguishable from real shapes reaches, so
    it says whether the reference has enough shapes per class for the rule to work.
    """
    refs = load_reference(reference, points, seed)
    real = load_reference(shapes, points, seed + 1)
    count = len(real.names) if count is None else min(count, len(real.names))
    d = pairwise_distances(
        real.points[:count],
        refs.points,
        metric="chamfer",
        convention=CHAMFER_CONVENTION,
        normalization="none",
    )
    predicted = nearest_classes(d.value, [e["class"] for e in refs.entries], "min")
    return float(np.mean([e["class"] == p for e, p in zip(real.entries[:count], predicted)]))


def prompt_accuracy(
    d_sr: torch.Tensor, samples: PointSet, refs: PointSet, reduce: ClassDistance
) -> tuple[dict, list[dict]]:
    """Prompt accuracy (summary entries) and each sample's prompted and nearest class."""
    ref_classes = [e["class"] for e in refs.entries]
    if any(c is None for c in ref_classes):
        return {"prompt_accuracy": None, "prompt_accuracy_note": "reference samples carry no meta 'class'"}, [
            {}
        ] * len(samples.names)
    classes = set(ref_classes)
    predicted = nearest_classes(d_sr, ref_classes, reduce)
    labels = [prompted_class(e, classes) for e in samples.entries]
    rows = [
        {"prompted_class": c, "class_from": src, "nearest_class": p} for (c, src), p in zip(labels, predicted)
    ]
    scored = [(c, p) for (c, _), p in zip(labels, predicted) if c in classes]
    summary = {
        "prompt_accuracy": float(np.mean([c == p for c, p in scored])) if scored else None,
        "num_prompted": len(scored),
        "num_unlabelled": sum(c is None for c, _ in labels),
        "num_class_not_in_reference": sum(c is not None and c not in classes for c, _ in labels),
    }
    return summary, rows


def distance_matrices(
    samples: PointSet, refs: PointSet, balanced: torch.Tensor, metric: Distance, seed: int
) -> tuple[MetricResult, MetricResult, MetricResult]:
    """D_sr over every reference; D_ss, and D_rr over the references indexed by `balanced`; with one
    set of settings."""
    kwargs = {"chamfer": {"convention": CHAMFER_CONVENTION}, "emd": {"emd_backend": EMD_BACKEND}}[metric]
    chosen = refs.points[balanced]
    pairs = ((samples.points, refs.points), (samples.points, samples.points), (chosen, chosen))
    results = []
    for a, b in tqdm(pairs, desc=f"{metric} distances", unit="matrix"):
        results.append(pairwise_distances(a, b, metric=metric, normalization="none", seed=seed, **kwargs))
    return tuple(results)


def balanced_subsets(num_samples: int, num_refs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of as many samples as references (seeded subsets of the larger set) for 1-NNA, which
    needs two sets of one size: against 8x as many references, a reference's nearest neighbour is
    another reference almost always, and 1-NNA reads near 1 whatever the samples are."""
    generator = torch.Generator().manual_seed(seed)
    count = min(num_samples, num_refs)

    def subset(total: int) -> torch.Tensor:
        return (
            torch.arange(total)
            if total == count
            else torch.randperm(total, generator=generator)[:count].sort().values
        )

    return subset(num_samples), subset(num_refs)


def distribution_metrics(
    samples: PointSet, refs: PointSet, metric: Distance, seed: int
) -> tuple[MetricResult, dict[str, MetricResult]]:
    """D_sr, and MMD, COV (every sample against every reference) and 1-NNA (balanced subsets)."""
    balanced_samples, balanced_refs = balanced_subsets(len(samples.names), len(refs.names), seed)
    d_sr, d_ss, d_rr = distance_matrices(samples, refs, balanced_refs, metric, seed)
    pick = balanced_samples
    nna = one_nna(
        MetricResult(d_sr.value[pick][:, balanced_refs], d_sr.settings),
        MetricResult(d_ss.value[pick][:, pick], d_ss.settings),
        d_rr,
    )
    return d_sr, {"mmd": minimum_matching_distance(d_sr), "cov": coverage(d_sr), "1-nna": nna}


def evaluate_generation(
    samples_folder: str | os.PathLike,
    reference: str | os.PathLike,
    *,
    points: int = 2048,
    metric: Distance = "chamfer",
    class_distance: ClassDistance = "min",
    seed: int = 0,
) -> EvaluationReport:
    """MMD / COV / 1-NNA and prompt accuracy of the meshes in `samples_folder` against `reference`.

    This is where a diffusion checkpoint's evaluation ends: `native3d sample` writes meshes and
    `samples.json` into a folder, and this function scores that folder.
    """
    if metric not in ("chamfer", "emd"):
        raise ValueError(f"unknown metric {metric!r}; use 'chamfer' or 'emd'")
    refs = load_reference(reference, points, seed)
    count = refs.points.shape[1]  # the reference may hold fewer surface points than asked for
    if count < points:
        log.warning(
            "the reference holds %d surface points per shape; using %d points, not %d", count, count, points
        )
    samples, failures, sampler_settings = load_generated(samples_folder, count, seed)
    d_sr, stats = distribution_metrics(samples, refs, metric, seed)
    accuracy, class_rows = prompt_accuracy(d_sr.value, samples, refs, class_distance)
    nearest = d_sr.value.min(dim=1)
    rows = [
        {
            "file": name,
            "prompt": entry["prompt"],
            **cls,
            "nearest_reference": refs.names[j],
            "nearest_distance": float(d),
        }
        for name, entry, cls, d, j in zip(
            samples.names, samples.entries, class_rows, nearest.values, nearest.indices.tolist()
        )
    ]
    summary = {
        "num_samples": len(samples.names),
        "num_failed": len(failures),
        "num_reference": len(refs.names),
        **{name: r.mean() for name, r in stats.items()},
        "1-nna_samples": float(stats["1-nna"].parts["accuracy_samples"]),
        "1-nna_refs": float(stats["1-nna"].parts["accuracy_refs"]),
        **accuracy,
    }
    settings = {
        "metric": metric,
        "chamfer_convention": CHAMFER_CONVENTION if metric == "chamfer" else None,
        "emd_backend": EMD_BACKEND if metric == "emd" else None,
        "points_requested": points,
        "points": count,
        "point_sampling": "generated: area-weighted on the mesh; reference: subset of the shard's surface points",
        "normalization": NORMALIZATION,
        "class_distance": class_distance,
        "1-nna_sets": "as many samples as references, a seeded subset of the larger set",
        "seed": seed,
        "metrics": {name: r.settings for name, r in stats.items()},
        "sampler_settings": sampler_settings,
    }
    inputs = {"meshes": str(samples_folder), "reference": str(reference)}
    return EvaluationReport("generation", inputs, settings, summary, rows, failures)
