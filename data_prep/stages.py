"""The per-object pipeline: one `MeshItem` in, one schema sample (or a named failure) out.

normalize -> surface samples -> SDF grid -> SDF queries -> sharp-edge samples -> triplane -> views
-> meta.
Every stage is a pure function from `native3d.geometry`; this module only composes and times them.
Randomness is seeded from the object id, so a sample does not depend on which job built it.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import trimesh

from data_prep.sources import MeshItem
from native3d.data.schema import SCHEMA_VERSION, Sizes
from native3d.geometry.mesh import DEFAULT_MAX_FACES, MeshError, check_mesh, load_mesh, normalize
from native3d.geometry.render import fixed_cameras, render_views
from native3d.geometry.sampling import sample_queries, sample_sharp, sample_surface
from native3d.geometry.sdf import sdf_grid
from native3d.geometry.triplane import project_triplane


@dataclass
class ObjectResult:
    id: str
    path: str | None
    sample: dict | None = None  # schema keys -> arrays / caption / meta
    reason: str = ""  # failure code; empty when ok
    detail: str = ""
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.sample is not None


class StageClock:
    """Accumulates wall time per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def object_rng(object_id: str, seed: int) -> np.random.Generator:
    digest = int(hashlib.sha1(object_id.encode("utf-8")).hexdigest()[:16], 16)
    return np.random.default_rng([seed, digest])


def process_item(
    item: MeshItem, sizes: Sizes, max_faces: int = DEFAULT_MAX_FACES, seed: int = 0
) -> ObjectResult:
    """Runs the whole pipeline on one object; failures come back as a result with a reason."""
    start = time.perf_counter()
    result = ObjectResult(id=item.id, path=item.path)
    clock = StageClock()
    try:
        result.sample = build_sample(item, sizes, max_faces, object_rng(item.id, seed), clock)
    except MeshError as error:
        result.reason, result.detail = error.reason, error.detail
    except MemoryError as error:
        result.reason, result.detail = "out_of_memory", str(error)
    except Exception as error:  # a bug or a library failure on one object must not stop the job
        result.reason, result.detail = "processing_error", f"{type(error).__name__}: {error}"
    result.stages = clock.seconds
    result.seconds = time.perf_counter() - start
    if result.sample is not None:
        result.sample["meta.json"]["timings"] = dict(result.stages, total=result.seconds)
    return result


def build_sample(
    item: MeshItem, sizes: Sizes, max_faces: int, rng: np.random.Generator, clock: StageClock
) -> dict:
    with clock("load"):
        mesh = load_item_mesh(item, max_faces)
    with clock("normalize"):
        mesh, norm = normalize(mesh)
        merged = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)  # vertices shared across faces
        watertight = bool(merged.is_watertight)
    v, f, r = mesh.vertices, mesh.faces, sizes.truncation
    with clock("surface"):
        surface = sample_surface(mesh, sizes.surface_points, rng)
    with clock("sdf_grid"):
        grid = sdf_grid(v, f, sizes.grid_resolution, r)
    with clock("query"):
        query = sample_queries(v, f, sizes.query_points, sizes.near_surface_sigmas, r, rng)
    sharp = None  # drawn after the others, so turning it off leaves every other array as it is
    if sizes.sharp_points > 0:
        with clock("sharp"):
            sharp = sample_sharp(merged, sizes.sharp_points, sizes.sharp_angle, rng)
    with clock("triplane"):
        planes = project_triplane(grid)
    cameras = fixed_cameras(sizes.views)
    with clock("views"):
        views = render_views(mesh, cameras, sizes.view_size)
    meta = {
        "id": item.id,
        "path": item.path,
        "schema_version": SCHEMA_VERSION,
        **item.meta,
        "normalization": norm.to_dict(),
        "face_count": int(len(f)),
        "vertex_count": int(len(v)),
        "watertight": watertight,
        "cameras": cameras,
    }
    arrays = {"surface.npy": surface.astype("<f2")}
    if sharp is not None:
        arrays["sharp.npy"] = sharp.points.astype("<f2")
        meta.update(sharp_source=sharp.source, sharp_edges=sharp.sharp_edges)
    return {
        **arrays,
        "sdf.npy": grid.astype("<f2"),
        "query.npy": query.astype("<f2"),
        "triplane.npy": planes.astype("<f2"),
        "views.npy": views.astype("u1"),
        "caption.txt": item.caption,
        "meta.json": meta,
    }


def load_item_mesh(item: MeshItem, max_faces: int) -> trimesh.Trimesh:
    if item.mesh is not None:
        return check_mesh(item.mesh, max_faces, item.id)
    if item.path is None:
        raise MeshError("unreadable_file", f"object {item.id} has neither a path nor a mesh")
    return load_mesh(item.path, max_faces)
