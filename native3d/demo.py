"""`native3d demo`: the pipeline on the embedded data sets, at sizes a CPU handles in minutes.

Builds two shard sets: procedural primitives with captions and views (the conditional set) and
the meshes that pybullet ships (the real set), then indexes them and prints their reports.
Every stage resumes, so a rerun reuses what is finished.
"""

from __future__ import annotations

import logging
from pathlib import Path

from native3d.data.schema import Sizes

log = logging.getLogger(__name__)

DEMO_SIZES = Sizes(surface_points=2048, grid_resolution=32, query_points=4096, views=4, view_size=64)
DEMO_SETS = {  # shard-set name -> `data_prep build` source arguments
    "primitives": ["--source", "primitives", "--count", "200", "--seed", "0"],
    "pybullet": ["--source", "pybullet", "--limit", "200"],
}


def size_arguments(sizes: Sizes) -> list[str]:
    return [
        "--surface-points", str(sizes.surface_points),
        "--grid-resolution", str(sizes.grid_resolution),
        "--query-points", str(sizes.query_points),
        "--views", str(sizes.views),
        "--view-size", str(sizes.view_size),
        "--truncation", str(sizes.truncation),
    ]  # fmt: skip


def build_shard_sets(out: Path, workers: int) -> dict[str, Path]:
    from data_prep.cli import main as prep

    folders = {}
    for name, source_args in DEMO_SETS.items():
        folder = out / "shards" / name
        print(f"== data prep: {name} -> {folder}")
        prep(["build", *source_args, "--out", str(folder), "--workers", str(workers), *size_arguments(DEMO_SIZES)])
        prep(["index", "--out", str(folder)])
        prep(["report", "--out", str(folder)])
        folders[name] = folder
    return folders


def run_demo(out: str, workers: int = 2) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_shard_sets(out, workers)
    return 0
