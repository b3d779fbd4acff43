"""Data-prep throughput and sign quality on a fixed list of pybullet_data meshes, on one core.

For each mesh, the full record except views (load, normalize, surface samples, SDF grid, SDF
queries, sharp-edge samples, triplane) at the default `Sizes()` is built with `native3d.geometry`
stage by stage as `data_prep.stages` builds it, each stage timed, and compared,
on the same mesh and the same points, with
  (a) the naive way with trimesh alone: `trimesh.sample.sample_surface` and
      `trimesh.proximity.signed_distance` for the grid and the queries;
  (b) libigl's robust signed distance, `igl.signed_distance` with the fast-winding-number sign,
      for the grid and the queries.
Sign quality is agreement with the exact generalized winding number (`igl.winding_number`,
inside where |w| > 0.5) on the grid and query points. Views are timed on their own.

    .venv/bin/python benchmarks/data_prep.py                       # everything, minutes
    .venv/bin/python benchmarks/data_prep.py --stages-only --limit 5  # our stage timings only, seconds

The naive pipeline costs minutes per mesh, so it runs on every mesh but only on a strided subset
of the points (NAIVE_GRID_STRIDE, NAIVE_QUERY_STRIDE); its time is scaled up by the point count
(trimesh's cost is per point), and the output says so. The exact winding number is O(points x
faces), so for large meshes it runs on all queries plus a random subset of the grid points.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "IGL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core: libigl's parallel_for reads IGL_NUM_THREADS

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import igl  # noqa: E402
import numpy as np  # noqa: E402
import pybullet_data  # noqa: E402
import trimesh  # noqa: E402

from native3d.data.schema import Sizes, grid_points  # noqa: E402
from native3d.geometry.mesh import load_mesh, normalize  # noqa: E402
from native3d.geometry.render import fixed_cameras, render_views  # noqa: E402
from native3d.geometry.sampling import sample_queries, sample_sharp, sample_surface  # noqa: E402
from native3d.geometry.sdf import sdf_grid, signed_distance  # noqa: E402
from native3d.geometry.triplane import project_triplane  # noqa: E402

MESHES = (
    "bunny.obj",  # closed
    "duck.obj",  # open, 10 parts
    "teddy2_VHACD_CHs.obj",  # 15 overlapping convex hulls
    "duck_vhacd.obj",
    "random_urdfs/000/000.obj",  # random_urdfs: overlapping primitive parts
    "random_urdfs/008/008.obj",
    "random_urdfs/109/109.obj",
    "random_urdfs/110/110.obj",
    "sphere_smooth.obj",
    "torus/torus_textured.obj",
    "soccerball.obj",  # 121 separate panels
    "objects/mug.obj",  # open cup
    "lego/lego.obj",
    "toys/concave_box.obj",
    "tray/tray_textured.obj",  # single-sided open tray
    "cube.obj",
    "kuka_iiwa/meshes/link_0.obj",
    "laikago/chassis.obj",  # non-manifold soup, 2001 pieces
    "franka_panda/meshes/visual/link3.obj",
    "a1/meshes/trunk.obj",  # 28,750 faces
    "racecar/meshes/left_front_wheel.obj",
)
NAIVE_GRID_STRIDE = 64  # the naive pipeline evaluates every 64th grid point ...
NAIVE_QUERY_STRIDE = 4  # ... and every 4th query, and is scaled up by the point count
EXACT_WN_BUDGET = 1.5e9  # point-face pairs per mesh for the exact winding number reference
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=len(MESHES), help="the first K meshes of the list")
    parser.add_argument(
        "--stages-only", action="store_true", help="time our stages only, without trimesh/igl or signs"
    )
    args = parser.parse_args()
    sizes = Sizes()
    rows = [measure(relative, sizes, not args.stages_only) for relative in MESHES[: args.limit]]
    print_stages(rows, sizes)
    if not args.stages_only:
        print_table(rows, sizes)


def measure(relative: str, sizes: Sizes, compare: bool = True) -> dict:
    path = Path(pybullet_data.getDataPath()) / relative
    rng = np.random.default_rng(SEED)
    t, row = {}, {"mesh": relative}
    start = time.perf_counter()
    mesh = load_mesh(path)
    t["load"] = lap(start)
    start = time.perf_counter()
    mesh, _ = normalize(mesh)
    merged = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)  # the build's normalize stage makes it
    t["normalize"] = lap(start)
    v, f, trunc = mesh.vertices, mesh.faces, sizes.truncation
    start = time.perf_counter()
    sample_surface(mesh, sizes.surface_points, rng)
    t["surface"] = lap(start)
    start = time.perf_counter()
    grid = sdf_grid(v, f, sizes.grid_resolution, trunc)
    t["sdf_grid"] = lap(start)
    start = time.perf_counter()
    query = sample_queries(v, f, sizes.query_points, sizes.near_surface_sigmas, trunc, rng)
    t["query"] = lap(start)
    start = time.perf_counter()
    # its own generator, so the sign-agreement subset below stays the one earlier runs drew
    sharp = sample_sharp(merged, sizes.sharp_points, sizes.sharp_angle, np.random.default_rng(SEED))
    t["sharp"] = lap(start)
    start = time.perf_counter()
    project_triplane(grid)
    t["triplane"] = lap(start)
    row["faces"], row["stages"], row["record"] = len(f), t, sum(t.values())
    row["sharp_source"], row["sharp_edges"] = sharp.source, sharp.sharp_edges
    if not compare:
        return row

    pts_grid, pts_query = grid_points(sizes.grid_resolution), query[:, :3].astype(np.float64)
    start = time.perf_counter()
    signed_distance(v, f, pts_query, trunc)
    row["ours_sdf"] = t["sdf_grid"] + lap(start)  # grid + query SDF: what (b) replaces
    row["igl_sdf"] = time_igl(v, f, pts_grid, pts_query)
    row["naive_record"] = (
        t["load"] + t["normalize"] + t["triplane"] + time_naive(mesh, sizes, pts_grid, pts_query)
    )
    row.update(sign_agreement(v, f, grid.reshape(-1), query, pts_grid, sizes, rng))
    return row


def lap(start: float) -> float:
    return time.perf_counter() - start


def time_igl(v: np.ndarray, f: np.ndarray, pts_grid: np.ndarray, pts_query: np.ndarray) -> float:
    v, f = np.ascontiguousarray(v, dtype=np.float64), np.ascontiguousarray(f, dtype=np.int64)
    start = time.perf_counter()
    for pts in (pts_grid, pts_query):
        igl.signed_distance(pts, v, f, igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER)
    return lap(start)


def time_naive(mesh: trimesh.Trimesh, sizes: Sizes, pts_grid: np.ndarray, pts_query: np.ndarray) -> float:
    """Seconds for trimesh's surface samples + grid SDF + query SDF, scaled from strided subsets."""
    start = time.perf_counter()
    trimesh.sample.sample_surface(mesh, sizes.surface_points, seed=SEED)
    seconds = lap(start)
    for pts, stride in ((pts_grid, NAIVE_GRID_STRIDE), (pts_query, NAIVE_QUERY_STRIDE)):
        subset = pts[::stride]
        start = time.perf_counter()
        trimesh.proximity.signed_distance(mesh, subset)
        seconds += lap(start) * len(pts) / len(subset)
    return seconds


def sign_agreement(v, f, grid, query, pts_grid, sizes: Sizes, rng: np.random.Generator) -> dict:
    """Counts of points whose sign matches the exact winding number, overall and away from the surface."""
    n_grid = int(min(len(pts_grid), max(0.0, EXACT_WN_BUDGET / len(f) - len(query))))
    pick = rng.choice(len(pts_grid), size=max(n_grid, 1024), replace=False)
    pts = np.concatenate([pts_grid[pick], query[:, :3]])
    sdf = np.concatenate([grid[pick], query[:, 3]])
    exact_inside = np.abs(igl.winding_number(np.asarray(v, np.float64), np.asarray(f, np.int64), pts)) > 0.5
    agree = (sdf < 0) == exact_inside
    away = np.abs(sdf) > 2.0 / (sizes.grid_resolution - 1)  # |d| > 1 voxel; our |d| is exact there
    return {
        "checked": len(pts),
        "agree": int(agree.sum()),
        "away": int(away.sum()),
        "agree_away": int(agree[away].sum()),
    }


def time_views(sizes: Sizes) -> float:
    cameras = fixed_cameras(sizes.views)
    meshes = [normalize(load_mesh(Path(pybullet_data.getDataPath()) / m))[0] for m in MESHES[:5]]
    render_views(meshes[0], cameras, sizes.view_size)  # the first plotter pays for the OpenGL context
    start = time.perf_counter()
    for mesh in meshes:
        render_views(mesh, cameras, sizes.view_size)
    return lap(start) / (len(meshes) * len(cameras))


def print_stages(rows: list[dict], sizes: Sizes) -> None:
    """Seconds per mesh of each stage of our record, and where the sharp-edge points came from."""
    stages = list(rows[0]["stages"])
    print(f"Sizes: {sizes.to_dict()}; one core (OMP/MKL/OpenBLAS/IGL threads = 1)")
    print(
        f"{'mesh':40s} {'faces':>7s} "
        + " ".join(f"{s:>9s}" for s in stages)
        + f" {'sharp from':>10s} {'edges':>6s}"
    )
    for r in rows:
        cells = " ".join(f"{r['stages'][s]:9.4f}" for s in stages)
        print(f"{r['mesh']:40s} {r['faces']:7d} {cells} {r['sharp_source']:>10s} {r['sharp_edges']:6d}")
    mean = {s: sum(r["stages"][s] for r in rows) / len(rows) for s in stages}
    print(f"{'mean s per mesh':48s} " + " ".join(f"{mean[s]:9.4f}" for s in stages))
    print(
        f"sharp stage: {1000 * mean['sharp']:.1f} ms per mesh on average, "
        f"max {1000 * max(r['stages']['sharp'] for r in rows):.1f} ms ({sizes.sharp_points} points, "
        f"{sizes.sharp_angle} degrees), {100 * mean['sharp'] / sum(mean.values()):.1f}% of the record"
    )


def print_table(rows: list[dict], sizes: Sizes) -> None:
    print(
        f"{'mesh':40s} {'faces':>7s} {'record s':>9s} {'sdf s':>7s} {'igl s':>7s} {'naive s*':>9s} {'agree':>8s} {'away':>8s}"
    )
    for r in rows:
        print(
            f"{r['mesh']:40s} {r['faces']:7d} {r['record']:9.3f} {r['ours_sdf']:7.3f} {r['igl_sdf']:7.3f} "
            f"{r['naive_record']:9.2f} {r['agree'] / r['checked']:8.5f} {r['agree_away'] / r['away']:8.5f}"
        )
    total = {k: sum(r[k] for r in rows) for k in ("record", "ours_sdf", "igl_sdf", "naive_record")}
    stages = {s: sum(r["stages"][s] for r in rows) for s in rows[0]["stages"]}
    print(
        "share of record time: "
        + ", ".join(f"{s} {100 * t / total['record']:.1f}%" for s, t in stages.items())
    )
    checked, agree = sum(r["checked"] for r in rows), sum(r["agree"] for r in rows)
    away, agree_away = sum(r["away"] for r in rows), sum(r["agree_away"] for r in rows)
    print(
        f"sign agreement with exact winding number: {agree / checked:.5f} of {checked} points; "
        f"away from the surface (|d| > 1 voxel): {agree_away / away:.6f} of {away}"
    )
    print(
        f"naive s*: trimesh on every {NAIVE_GRID_STRIDE}th grid point and every {NAIVE_QUERY_STRIDE}th query, "
        "scaled by point count; plus the shared load/normalize/triplane time"
    )
    print(
        f"records: ours {total['record']:.2f} s, naive {total['naive_record']:.1f} s (scaled); "
        f"grid+query SDF: ours {total['ours_sdf']:.2f} s, igl.signed_distance(fwn) {total['igl_sdf']:.2f} s"
    )
    print(f"views: {time_views(sizes):.3f} s per view ({sizes.view_size}px, timed separately)")
    print(
        f"speedup_vs_naive={total['naive_record'] / total['record']:.1f} "
        f"speedup_vs_igl={total['igl_sdf'] / total['ours_sdf']:.1f} "
        f"sign_agreement={agree_away / away:.5f} meshes_per_s_per_core={len(rows) / total['record']:.2f}"
    )


if __name__ == "__main__":
    main()
