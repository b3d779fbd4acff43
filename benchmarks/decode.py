"""Mesh extraction from a trained decoder: dense vs coarse-to-fine evaluation, on one CPU thread.

For each field and resolution (cells per axis) it extracts the zero level set with `dense_grid`
(every one of (R+1)^3 corners, the exact float32 decoder, measured once per latent) and with
`coarse_to_fine_grid` (from 32^3, refining only cells that can hold the surface, then tracing the
surface): exact, with only the cells that change sign (safety 0), with bfloat16 queries, and (VecSet
only) with bfloat16 and FlashVDM's adaptive KV selection. It reports
decoder queries, wall seconds (decoder features + grid evaluation + marching cubes, i.e. what
`decode_mesh` costs), the speedup against dense in the same run, the IoU of the two grids' inside
(sdf < 0) and the Chamfer-L1 distance between the meshes (`native3d.metrics.chamfer_distance` on
`--points` points sampled from each mesh with the same fixed seed, so that sampling noise cancels).
A "floor" row counts the corners of the cells that the dense surface crosses: no method that gives
the same mesh asks fewer, so its speedup (at dense's cost per query) bounds the exact methods'.

Fields:
  - analytic sphere and torus (exact SDFs, almost free to evaluate), for reference;
  - a trained autoencoder's decoder on latents (posterior mode) of held-out shapes. Without
    `--ckpt` the script builds a small primitives shard set with the real data-prep job and
    trains each of `configs/autoencoder/<--configs>` briefly through `native3d fit` into `--work`
    (reused when present); the last shard is held out from training and its shapes are decoded.

    PYTHONPATH=. .venv/bin/python benchmarks/decode.py [--ckpt AE.ckpt] [--latents 2] [--steps 300]

The last line is machine-readable: `<config>:<c2f|sign|bf16|kv>_<speedup|iou|chamfer>_256=<x>` for each
decoder (its latents pooled: total dense / total seconds, mean IoU and Chamfer), and
`<config>:floor_speedup_256=<x>`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from native3d.autoencoders.meshing import latent_field  # noqa: E402
from native3d.autoencoders.vecset import VecSetVAE  # noqa: E402
from native3d.checkpoints import load_autoencoder  # noqa: E402
from native3d.cli import main as native3d  # noqa: E402
from native3d.data.datamodule import collate, hold_out, sample_to_tensors  # noqa: E402
from native3d.data.shards import iter_samples, load_index  # noqa: E402
from native3d.geometry.marching_cubes import (  # noqa: E402
    NoSurfaceError,
    active_cells,
    coarse_to_fine_grid,
    corners_of,
    dense_grid,
    marching_cubes,
)
from native3d.geometry.sampling import sample_surface  # noqa: E402
from native3d.metrics import chamfer_distance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SIZES = [
    "--surface-points",
    "2048",
    "--grid-resolution",
    "32",
    "--query-points",
    "4096",
    "--views",
    "1",
    "--view-size",
    "32",
]
START_RESOLUTION = 32


# ---------------------------------------------------------------------------------------------
# A trained decoder


def prep(args: list[str]) -> None:
    """`python -m data_prep ...` in a subprocess: this folder's data_prep.py would shadow the package."""
    subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=ROOT, check=True)


def build_shapes(work: Path, count: int) -> Path:
    data = work / "primitives"
    if not (data / "index.json").is_file():
        prep(
            [
                "build",
                "--source",
                "primitives",
                "--count",
                str(count),
                "--out",
                str(data),
                "--shard-size",
                "8",
                *SIZES,
            ]
        )
        prep(["index", "--out", str(data)])
    return data


def train(config: str, data: Path, work: Path, steps: int) -> Path:
    """A short `native3d fit` (the last shard held out for validation); returns last.ckpt."""
    run = work / f"fit-{Path(config).stem}-{steps}"
    if not list(run.rglob("last.ckpt")):
        native3d(
            [
                "fit",
                "--config",
                str(CONFIGS / "autoencoder" / config),
                "--config",
                str(CONFIGS / "trainer" / "cpu.yaml"),
                "--data",
                "native3d.data.datamodule.ShardDataModule",
                "--data.train",
                str(data),
                "--data.val_shards",
                "1",
                "--data.batch_size",
                "8",
                "--data.num_workers",
                "0",
                "--data.query_points",
                "2048",
                "--data.batches_per_epoch",
                str(steps),
                "--trainer.max_steps",
                str(steps),
                "--trainer.val_check_interval",
                str(steps),
                "--trainer.default_root_dir",
                str(run),
                "--trainer.logger.init_args.save_dir",
                str(run),
                "--trainer.enable_progress_bar",
                "false",
                "--model.init_args.stats_batches",
                "2",
                "--model.init_args.mesh_resolution",
                "32",
                "--seed_everything",
                "0",
            ]
        )
    return next(run.rglob("last.ckpt"))


@torch.no_grad()
def held_out_latents(autoencoder, data: Path, count: int) -> list[tuple[str, torch.Tensor]]:
    """(key, latent (1, *latent_shape)) of the first `count` shapes of the held-out last shard."""
    _, heldout = hold_out(load_index(data), 1)
    samples = list(iter_samples(heldout))[:count]
    batch = collate([sample_to_tensors(s, None, np.random.default_rng(0)) for s in samples])
    latents = autoencoder.encode(autoencoder.inputs_from_batch(batch)).mode()
    return [(s["__key__"], latent[None]) for s, latent in zip(samples, latents)]


# ---------------------------------------------------------------------------------------------
# Measurement


def sphere(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points, axis=1) - 0.5


def torus(points: np.ndarray) -> np.ndarray:
    ring = np.linalg.norm(points[:, :2], axis=1) - 0.5
    return np.hypot(ring, points[:, 2]) - 0.2


METHODS = ("dense", "coarse-to-fine", "c2f, sign only", "c2f + bfloat16", "c2f + bf16 + KV sel.")
SIGN_ONLY = METHODS[2]  # coarse-to-fine with safety 0: only the cells that change sign, then tracing
# Not a method: the corners of the cells the dense surface crosses, which any method must ask for the
# same mesh, timed at dense's cost per query. Its speedup bounds every exact method with that cost.
FLOOR = "floor: surface corners"


def extract(field: Callable, resolution: int, method: str, chunk: int):
    """(mesh, grid, seconds) of one method; the clock includes building the field (the decoder features)."""
    start = time.perf_counter()
    field = field(method)
    if method == "dense":
        grid = dense_grid(field, resolution, chunk)
    else:
        safety = 0.0 if method == SIGN_ONLY else 1.5
        grid = coarse_to_fine_grid(field, resolution, START_RESOLUTION, safety=safety, chunk=chunk)
    vertices, faces = marching_cubes(grid.values)
    return trimesh.Trimesh(vertices, faces, process=False), grid, time.perf_counter() - start


def mesh_chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, points: int, seed: int = 0) -> float:
    """Chamfer-L1 of `points` samples per mesh, drawn with the same seed for both: identical meshes
    get identical points (0), so the value measures how the meshes differ, not sampling noise."""
    x = torch.from_numpy(sample_surface(a, points, np.random.default_rng(seed))[:, :3])[None]
    y = torch.from_numpy(sample_surface(b, points, np.random.default_rng(seed))[:, :3])[None]
    return chamfer_distance(x, y, convention="l1").value.item()


def volume_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the inside (sdf < 0) of two corner grids: the occupancy each mesh encloses, per sample."""
    inside_a, inside_b = a < 0, b < 0
    return float((inside_a & inside_b).sum() / max((inside_a | inside_b).sum(), 1))


@torch.no_grad()
def caching_cost(autoencoder, latent: torch.Tensor, chunk: int, repeats: int = 5) -> str:
    """What computing the decoder features once per latent (not once per chunk) saves."""
    points = torch.rand(1, chunk, 3) * 2 - 1
    start = time.perf_counter()
    for _ in range(repeats):
        features = autoencoder.decoder_features(latent)
    features_s = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        autoencoder.query(features, points)
    query_s = (time.perf_counter() - start) / repeats
    return (
        f"decoder_features {features_s * 1e3:.1f} ms per latent, query {query_s * 1e3:.1f} ms per {chunk:,} points: "
        f"decoding without the cache would add {features_s / query_s:.0%} to every chunk"
    )


def decoder_field(autoencoder, latent: torch.Tensor, kv_tokens) -> Callable:
    """method -> field: the exact float32 decoder, in bfloat16 (decode_mesh's default), or with KV selection."""

    def make(method: str):
        if method == METHODS[4]:
            return latent_field(autoencoder, latent, kv_tokens=kv_tokens)
        dtype = torch.bfloat16 if method == METHODS[3] else torch.float32
        return latent_field(autoencoder, latent, kv_tokens=None, dtype=dtype)

    return make


def compare(name: str, field: Callable, resolution: int, methods, chunk: int, points: int) -> list[dict]:
    """One row per method; dense is measured once and is the reference of the others."""
    try:
        dense, dense_grid_, dense_s = extract(field, resolution, "dense", chunk)
        rows = [row(name, resolution, "dense", dense_grid_.queries, dense_s, dense_s, 1.0, 0.0)]
        floor = int(corners_of(active_cells(dense_grid_.values, 2.0 / resolution, safety=0.0)).sum())
        rows.append(
            row(name, resolution, FLOOR, floor, dense_s * floor / dense_grid_.queries, dense_s, 1.0, 0.0)
        )
        print(*map(format_row, rows), sep="\n", flush=True)
        for method in methods[1:]:
            mesh, grid, seconds = extract(field, resolution, method, chunk)
            iou, chamfer = volume_iou(dense_grid_.values, grid.values), mesh_chamfer(dense, mesh, points)
            rows.append(row(name, resolution, method, grid.queries, seconds, dense_s, iou, chamfer))
            print(format_row(rows[-1]), flush=True)
    except NoSurfaceError as error:
        print(f"{name:<22}{resolution:>5}  no surface ({error})", flush=True)
        return []
    return rows


def row(name, resolution, method, queries, seconds, dense_s, iou, chamfer) -> dict:
    return {
        "name": name,
        "resolution": resolution,
        "method": method,
        "queries": queries,
        "seconds": seconds,
        "dense_s": dense_s,
        "iou": iou,
        "chamfer": chamfer,
    }


HEADER = f"{'field':<22}{'res':>5}  {'method':<20}{'queries':>12}{'seconds':>9}{'speedup':>9}{'IoU':>8}{'chamfer-L1':>12}"


def format_row(row: dict) -> str:
    return (
        f"{row['name']:<22}{row['resolution']:>5}  {row['method']:<20}{row['queries']:>12,}{row['seconds']:>9.2f}"
        f"{row['dense_s'] / row['seconds']:>9.1f}{row['iou']:>8.4f}{row['chamfer']:>12.2e}"
    )


def pooled(rows: list[dict], resolution: int, method: str) -> dict:
    """Totals over a decoder's latents at one resolution (IoU and Chamfer averaged)."""
    rows = [r for r in rows if r["resolution"] == resolution and r["method"] == method]
    return {
        "name": f"{len(rows)} latents",
        "resolution": resolution,
        "method": method,
        **{k: sum(r[k] for r in rows) for k in ("queries", "seconds", "dense_s")},
        **{k: float(np.mean([r[k] for r in rows])) for k in ("iou", "chamfer")},
    }


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="an autoencoder checkpoint (else one is trained into --work)")
    parser.add_argument(
        "--data", help="with --ckpt: the shard set whose last shard's shapes are decoded (else built)"
    )
    parser.add_argument(
        "--configs",
        default="vecset_tiny.yaml,grid_tiny.yaml,triplane_tiny.yaml",
        help="configs/autoencoder/ files to train, comma-separated",
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument(
        "--shapes", type=int, default=64, help="primitives to build (8 per shard, last shard held out)"
    )
    parser.add_argument("--latents", type=int, default=1, help="held-out shapes to decode per decoder")
    parser.add_argument("--resolutions", default="64,256", help="64 is what the demo samples at")
    parser.add_argument(
        "--chunk", type=int, default=2**14, help="points per decoder call (decode_mesh's default)"
    )
    parser.add_argument(
        "--kv-tokens",
        type=lambda text: float(text) if "." in text else int(text),
        default=0.5,
        help="tokens each region of a VecSet keeps with KV selection: a share (0.5) or a count (16)",
    )
    parser.add_argument("--points", type=int, default=20000, help="points sampled on each mesh for Chamfer")
    parser.add_argument(
        "--work", help="folder for the shards and the training run (default: a temporary folder)"
    )
    return parser.parse_args()


def benchmark_decoder(ckpt: Path, data: Path, resolutions: list[int], args) -> dict[int, dict[str, dict]]:
    """Rows of one decoder's latents, printed as they come; returns {resolution: {method: pooled row}}."""
    autoencoder = load_autoencoder(ckpt)
    latents = held_out_latents(autoencoder, data, args.latents)
    print(f"\ncheckpoint {ckpt} ({type(autoencoder).__name__}, latent {autoencoder.latent_shape})")
    print(caching_cost(autoencoder, latents[0][1], args.chunk))
    print(HEADER)
    rows: list[dict] = []
    methods = METHODS if isinstance(autoencoder, VecSetVAE) else METHODS[:4]  # KV selection: VecSet only
    for resolution in resolutions:
        for key, latent in latents:
            field = decoder_field(autoencoder, latent, args.kv_tokens)
            rows += compare(f"decoder {key[-12:]}", field, resolution, methods, args.chunk, args.points)
    print("pooled over the latents (sum of queries and seconds, mean IoU and Chamfer):")
    summary = {}
    for resolution in resolutions:
        if any(r["resolution"] == resolution for r in rows):
            summary[resolution] = {m: pooled(rows, resolution, m) for m in (*methods, FLOOR)}
            for pooled_row in summary[resolution].values():
                print(format_row(pooled_row))
    return summary


def machine_line(summaries: dict[str, dict[int, dict[str, dict]]], resolution: int = 256) -> str:
    """`<decoder>:<metric>_256=<value>` for coarse-to-fine (c2f_), sign only (sign_), in bfloat16 (bf16_),
    with KV selection (kv_), and `<decoder>:floor_speedup_256`, the bound of exact methods."""
    fields = []
    for name, summary in summaries.items():
        methods = summary.get(resolution, {})
        if FLOOR in methods:
            fields.append(
                f"{name}:floor_speedup_{resolution}={methods[FLOOR]['dense_s'] / methods[FLOOR]['seconds']:.2f}"
            )
        for prefix, method in zip(("c2f", "sign", "bf16", "kv"), METHODS[1:]):
            r = methods.get(method)
            speedup, iou, chamfer = (
                (r["dense_s"] / r["seconds"], r["iou"], r["chamfer"]) if r else (np.nan,) * 3
            )
            fields += [
                f"{name}:{prefix}_speedup_{resolution}={speedup:.2f}",
                f"{name}:{prefix}_iou_{resolution}={iou:.4f}",
                f"{name}:{prefix}_chamfer_{resolution}={chamfer:.2e}",
            ]
    return " ".join(fields)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="native3d-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = Path(args.data) if args.data else build_shapes(work, args.shapes)
    configs = [args.ckpt] if args.ckpt else args.configs.split(",")
    ckpts = {Path(c).stem: Path(c) if args.ckpt else train(c, data, work, args.steps) for c in configs}
    print(
        f"\nsetup {time.perf_counter() - start:.0f} s; torch threads = {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}); coarse-to-fine from {START_RESOLUTION}^3; "
        f"chunk {args.chunk}; Chamfer-L1 on {args.points} points per mesh; IoU of the grids' inside"
    )
    print(HEADER)
    for resolution in resolutions:
        for name, field in (("sphere (analytic)", sphere), ("torus (analytic)", torus)):
            compare(name, lambda method, f=field: f, resolution, METHODS[:3], args.chunk, args.points)
    summaries = {name: benchmark_decoder(ckpt, data, resolutions, args) for name, ckpt in ckpts.items()}
    print(f"total {time.perf_counter() - start:.0f} s")
    print(machine_line(summaries))


if __name__ == "__main__":
    main()
