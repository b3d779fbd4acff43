"""Mesh extraction from a trained decoder: dense vs coarse-to-fine evaluation, on one CPU thread.

For each field and resolution (cells per axis) it extracts the zero level set twice, with
`dense_grid` (every one of (R+1)^3 corners) and with `coarse_to_fine_grid` (from 32^3, refining
only cells that can hold the surface), and reports decoder queries, wall seconds (decoder
features + grid evaluation + marching cubes, i.e. what `decode_mesh` costs) and the Chamfer-L1
distance between the two meshes (`native3d.metrics.chamfer_distance`, convention "l1", on
`--points` points sampled from each mesh with the same fixed seed, so that sampling noise cancels).

Fields:
  - analytic sphere and torus (exact SDFs, almost free to evaluate), for reference;
  - a trained autoencoder's decoder on latents (posterior mode) of held-out shapes. Without
    `--ckpt` the script builds a small primitives shard set with the real data-prep job and
    trains `configs/autoencoder/<--config>` briefly through `native3d fit` into `--work`
    (reused when present); the last shard is held out from training and its shapes are decoded.

    PYTHONPATH=. .venv/bin/python benchmarks/decode.py [--ckpt AE.ckpt] [--latents 2] [--steps 300]

The last line is machine-readable: `query_ratio_256=<x> speedup_256=<y> chamfer_256=<z>`
(the trained decoder's latents pooled: total dense / total c2f queries and seconds, mean Chamfer).
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
from native3d.checkpoints import load_autoencoder  # noqa: E402
from native3d.cli import main as native3d  # noqa: E402
from native3d.data.datamodule import collate, hold_out, sample_to_tensors  # noqa: E402
from native3d.data.shards import iter_samples, load_index  # noqa: E402
from native3d.geometry.marching_cubes import NoSurfaceError, coarse_to_fine_grid, dense_grid, marching_cubes  # noqa: E402
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


def extract(make_field: Callable, resolution: int, coarse_to_fine: bool, chunk: int):
    """(mesh, queries, seconds); the clock includes building the field (the decoder features)."""
    start = time.perf_counter()
    field = make_field()
    if coarse_to_fine:
        grid = coarse_to_fine_grid(field, resolution, START_RESOLUTION, chunk=chunk)
    else:
        grid = dense_grid(field, resolution, chunk)
    vertices, faces = marching_cubes(grid.values)
    return trimesh.Trimesh(vertices, faces, process=False), grid.queries, time.perf_counter() - start


def mesh_chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, points: int, seed: int = 0) -> float:
    """Chamfer-L1 of `points` samples per mesh, drawn with the same seed for both: identical meshes
    get identical points (0), so the value measures how the meshes differ, not sampling noise."""
    x = torch.from_numpy(sample_surface(a, points, np.random.default_rng(seed))[:, :3])[None]
    y = torch.from_numpy(sample_surface(b, points, np.random.default_rng(seed))[:, :3])[None]
    return chamfer_distance(x, y, convention="l1").value.item()


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


def compare(name: str, make_field: Callable, resolution: int, chunk: int, points: int) -> dict | None:
    try:
        dense, dense_q, dense_s = extract(make_field, resolution, False, chunk)
        fine, fine_q, fine_s = extract(make_field, resolution, True, chunk)
    except NoSurfaceError as error:
        print(f"{name:<22}{resolution:>5}  no surface ({error})", flush=True)
        return None
    row = {
        "name": name,
        "resolution": resolution,
        "dense_q": dense_q,
        "c2f_q": fine_q,
        "dense_s": dense_s,
        "c2f_s": fine_s,
        "chamfer": mesh_chamfer(dense, fine, points),
    }
    print(format_row(row), flush=True)
    return row


HEADER = f"{'field':<22}{'res':>5}{'dense q':>12}{'c2f q':>11}{'q ratio':>9}{'dense s':>9}{'c2f s':>8}{'speedup':>9}{'chamfer-L1':>12}"


def format_row(row: dict) -> str:
    return (
        f"{row['name']:<22}{row['resolution']:>5}{row['dense_q']:>12,}{row['c2f_q']:>11,}"
        f"{row['dense_q'] / row['c2f_q']:>9.1f}{row['dense_s']:>9.2f}{row['c2f_s']:>8.2f}"
        f"{row['dense_s'] / row['c2f_s']:>9.1f}{row['chamfer']:>12.2e}"
    )


def pooled(rows: list[dict], resolution: int) -> dict:
    """Totals over the trained decoder's latents at one resolution (Chamfer averaged)."""
    rows = [r for r in rows if r["resolution"] == resolution]
    total = {k: sum(r[k] for r in rows) for k in ("dense_q", "c2f_q", "dense_s", "c2f_s")}
    return {
        "name": f"decoder, {len(rows)} latents",
        "resolution": resolution,
        **total,
        "chamfer": float(np.mean([r["chamfer"] for r in rows])),
    }


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="an autoencoder checkpoint (else one is trained into --work)")
    parser.add_argument(
        "--data", help="with --ckpt: the shard set whose last shard's shapes are decoded (else built)"
    )
    parser.add_argument("--config", default="triplane_tiny.yaml", help="configs/autoencoder/ file to train")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument(
        "--shapes", type=int, default=64, help="primitives to build (8 per shard, last shard held out)"
    )
    parser.add_argument("--latents", type=int, default=2, help="held-out shapes to decode")
    parser.add_argument("--resolutions", default="64,128,256", help="64 is what the demo samples at")
    parser.add_argument(
        "--chunk", type=int, default=2**16, help="points per decoder call (decode_mesh's default)"
    )
    parser.add_argument("--points", type=int, default=20000, help="points sampled on each mesh for Chamfer")
    parser.add_argument(
        "--work", help="folder for the shards and the training run (default: a temporary folder)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="native3d-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = Path(args.data) if args.data else build_shapes(work, args.shapes)
    ckpt = Path(args.ckpt) if args.ckpt else train(args.config, data, work, args.steps)
    autoencoder = load_autoencoder(ckpt)
    latents = held_out_latents(autoencoder, data, args.latents)
    print(
        f"\ncheckpoint {ckpt} ({type(autoencoder).__name__}, latent {autoencoder.latent_shape}); "
        f"setup {time.perf_counter() - start:.0f} s"
    )
    print(
        f"torch threads = {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}); "
        f"coarse-to-fine from {START_RESOLUTION}^3; chunk {args.chunk}; Chamfer-L1 on {args.points} points per mesh"
    )
    print(caching_cost(autoencoder, latents[0][1], args.chunk))
    print(HEADER)
    rows: list[dict] = []
    for resolution in resolutions:
        for name, field in (("sphere (analytic)", sphere), ("torus (analytic)", torus)):
            compare(name, lambda f=field: f, resolution, args.chunk, args.points)
        for key, latent in latents:
            row = compare(
                f"decoder {key[-12:]}",
                lambda z=latent: latent_field(autoencoder, z),
                resolution,
                args.chunk,
                args.points,
            )
            rows += [row] if row else []
    print("pooled over the decoder's latents (sum of queries and seconds, mean Chamfer):")
    summary = {r: pooled(rows, r) for r in resolutions if any(row["resolution"] == r for row in rows)}
    for row in summary.values():
        print(format_row(row))
    print(f"total {time.perf_counter() - start:.0f} s")
    last = summary.get(256)
    if last is None:
        print("query_ratio_256=nan speedup_256=nan chamfer_256=nan")
    else:
        print(
            f"query_ratio_256={last['dense_q'] / last['c2f_q']:.2f} speedup_256={last['dense_s'] / last['c2f_s']:.2f} "
            f"chamfer_256={last['chamfer']:.2e}"
        )


if __name__ == "__main__":
    main()
