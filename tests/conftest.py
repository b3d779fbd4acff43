"""Shared fixtures: tiny shard sizes and folders of real meshes from pybullet_data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Tiny models on 2 cores: one intra-op thread per process avoids oversubscription stalls (a second
# process, e.g. the two-node test's, would otherwise make every small op wait on a busy core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from native3d.data.schema import Sizes

torch.set_num_threads(1)

# Small, varied real meshes: a cube, a mug, a table, overlapping convex parts, a duck.
REAL_MESHES = (
    "cube.obj",
    "objects/mug_col.obj",
    "table_square/table.obj",
    "random_urdfs/472/472.obj",
    "random_urdfs/661/661.obj",
    "duck_vhacd.obj",
)


def pybullet_mesh(relative: str) -> Path:
    # Imported here, not at the top, so tests that need no meshes run where pybullet is not installed.
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / relative


@pytest.fixture
def tiny_sizes() -> Sizes:
    return Sizes(
        surface_points=256, grid_resolution=16, query_points=512, views=1, view_size=32, sharp_points=64
    )


@pytest.fixture
def real_mesh_folder(tmp_path: Path) -> Path:
    """A folder of real meshes (copied from pybullet_data) plus three broken files."""
    root = tmp_path / "meshes"
    for relative in REAL_MESHES:
        target = root / relative.replace("/", "_")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pybullet_mesh(relative), target)
    (root / "broken").mkdir()
    (root / "broken" / "empty.stl").write_bytes(b"")
    (root / "broken" / "corrupt.glb").write_bytes(os.urandom(512))
    (root / "broken" / "points.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n1 0 0\n0 1 0\n"
    )
    return root


@pytest.fixture(scope="session")
def primitive_shards(tmp_path_factory) -> Path:
    """A tiny indexed shard set of 24 captioned primitives in 6 shards, built by the real job."""
    from data_prep.cli import main as prep

    out = tmp_path_factory.mktemp("primitive_shards")
    sizes = [
        "--surface-points",
        "512",
        "--grid-resolution",
        "32",
        "--query-points",
        "1024",
        "--views",
        "1",
        "--view-size",
        "32",
        "--sharp-points",
        "128",
    ]  # tests/test_damaged_shards.py rebuilds this set with these sizes
    assert (
        prep(
            [
                "build",
                "--source",
                "primitives",
                "--count",
                "24",
                "--out",
                str(out),
                "--shard-size",
                "4",
                *sizes,
            ]
        )
        == 0
    )
    assert prep(["index", "--out", str(out)]) == 0
    return out
