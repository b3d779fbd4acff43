"""VecSet's Dora options on a CPU: held-out quality against the token count, and with sharp-edge input.

Data: `python -m data_prep build --source primitives` at CPU sizes into `--data` (reused if there;
primitives have sharp edges, and the build writes 2,048 sharp-edge points per shape by default);
the last `--held-out` shards are held out. Each model trains in this process with AdamW on the
occupancy BCE + soft-IoU loss for `--minutes` of wall time (batch 8, 2,048 queries), then is
evaluated on every held-out shape (posterior mode):

- `--mode tokens`: one model with `train_tokens` (`--train-tokens`, default 16,32,64 of
  num_latents 64); volume IoU on the uniform queries at each count of `--eval-tokens`.
- `--mode sharp`: the same model without and with `sharp_tokens` (`--sharp-tokens`, default 16 of
  64), the same budget each: IoU; Chamfer-L1 and normal consistency of a 48^3 marching-cubes mesh
  (4,096 points; the first 8 held-out shapes) against the surface points; and "sharp Chamfer", the mean distance from each
  shard sharp-edge point to the mesh's points (how well the edges are reproduced).

    .venv/bin/python benchmarks/vecset_options.py --mode tokens|sharp [--minutes 3] [--data /tmp/vecset-options]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from native3d.autoencoders import VecSetVAE, autoencoder_loss
from native3d.data.datamodule import ShardDataModule
from native3d.metrics import chamfer_distance, normal_consistency, volume_iou
from native3d.training.previews import decode_previews

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--surface-points", "2048", "--grid-resolution", "32", "--query-points", "4096", "--views", "0"]
MESH_RESOLUTION, MESH_POINTS, MESH_SHAPES = 48, 4096, 8  # meshing costs seconds per shape on a CPU


def build_data(data: Path, count: int) -> Path:
    out = data / "primitives"
    if not (out / "index.json").is_file():
        for args in (
            [
                "build",
                "--source",
                "primitives",
                "--count",
                str(count),
                "--out",
                str(out),
                "--shard-size",
                "16",
            ],
            ["index", "--out", str(out)],
        ):
            extra = [*SIZES, "--workers", "1"] if args[0] == "build" else []
            subprocess.run([sys.executable, "-m", "data_prep", *args, *extra], cwd=ROOT, check=True)
    return out


def vecset(**options) -> VecSetVAE:
    return VecSetVAE(
        num_latents=64, latent_channels=32, width=64, heads=2, depth=2, num_frequencies=6, **options
    )


def train(model: VecSetVAE, datamodule: ShardDataModule, minutes: float) -> int:
    """AdamW with a linear warm-up for `minutes` of wall time; returns the steps taken."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    end, step = time.monotonic() + 60 * minutes, 0
    for batch in datamodule.train_dataloader():
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50)
        inputs = model.inputs_from_batch(batch)
        points, target = model.queries_from_batch(batch)
        pred, posterior = model(inputs, points)
        loss = autoencoder_loss(
            pred, target, posterior, kl_weight=1e-4, clamp=0.1, kind="bce", iou_weight=1.0
        )
        loss["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if time.monotonic() > end:
            return step
    return step


@torch.no_grad()
def token_ious(model: VecSetVAE, datamodule: ShardDataModule, counts: list[int]) -> dict[int, float]:
    model.eval()
    ious = {M: [] for M in counts}
    for batch in datamodule.val_dataloader():
        inputs = model.inputs_from_batch(batch)
        uniform = batch["query"][:, : batch["query"].shape[1] // 2]  # (B, Q/2, 4), uniform in the cube
        for M in counts:
            pred = model.decode(model.encode(inputs, num_tokens=M).mode(), uniform[..., :3])
            ious[M] += volume_iou(pred, uniform[..., 3], kind="sdf").value.tolist()
    return {M: statistics.fmean(v) for M, v in ious.items()}


@torch.no_grad()
def shape_scores(model: VecSetVAE, datamodule: ShardDataModule) -> dict[str, float]:
    """IoU, mesh Chamfer-L1 / normal consistency, sharp Chamfer, each averaged over held-out shapes."""
    model.eval()
    scores = {"iou": [], "chamfer_l1": [], "normal_consistency": [], "sharp_chamfer": [], "no_surface": 0}
    for batch in datamodule.val_dataloader():
        latent = model.encode(model.inputs_from_batch(batch)).mode()
        uniform = batch["query"][:, : batch["query"].shape[1] // 2]
        scores["iou"] += volume_iou(
            model.decode(latent, uniform[..., :3]), uniform[..., 3], kind="sdf"
        ).value.tolist()
        meshed = len(scores["chamfer_l1"]) + scores["no_surface"]
        if meshed >= MESH_SHAPES:
            continue
        previews = decode_previews(model, latent[: MESH_SHAPES - meshed], MESH_RESOLUTION)
        for i, mesh in enumerate(previews.meshes):
            if mesh is None:
                scores["no_surface"] += 1
                continue
            points, faces = trimesh.sample.sample_surface(mesh, MESH_POINTS, seed=0)
            pts = torch.from_numpy(points.astype(np.float32))[None]  # (1, P, 3)
            normals = torch.from_numpy(mesh.face_normals[faces].astype(np.float32))[None]
            surface, sharp = batch["surface"][i : i + 1], batch["sharp"][i : i + 1, :, :3]
            scores["chamfer_l1"].append(
                float(chamfer_distance(pts, surface[..., :3], convention="l1").mean())
            )
            scores["normal_consistency"].append(
                float(normal_consistency(pts, normals, surface[..., :3], surface[..., 3:6]).value.mean())
            )
            scores["sharp_chamfer"].append(float(torch.cdist(sharp, pts).amin(-1).mean()))
    return {k: v if isinstance(v, int) else statistics.fmean(v) for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("tokens", "sharp"), required=True)
    parser.add_argument("--data", type=Path, default=Path("/tmp/vecset-options"))
    parser.add_argument("--count", type=int, default=128, help="primitives built")
    parser.add_argument("--held-out", type=int, default=2, help="shards of 16 shapes")
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall time per model")
    parser.add_argument("--train-tokens", default="16,32,64")
    parser.add_argument("--eval-tokens", default="8,16,32,48,64,96")
    parser.add_argument("--sharp-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shards = build_data(args.data, args.count)
    datamodule = ShardDataModule(
        str(shards),
        val_shards=args.held_out,
        batch_size=8,
        num_workers=0,
        query_points=2048,
        shuffle_buffer=32,
        batches_per_epoch=10**9,
    )
    held = datamodule.val_index.num_samples
    if args.mode == "tokens":
        train_tokens = [int(v) for v in args.train_tokens.split(",")]
        model = vecset(train_tokens=train_tokens)
        steps = train(model, datamodule, args.minutes)
        ious = token_ious(model, datamodule, [int(v) for v in args.eval_tokens.split(",")])
        print(
            f"train_tokens {train_tokens}, num_latents 64; {steps} steps in {args.minutes} min; {held} held-out shapes"
        )
        print("| M | held-out IoU |\n|---:|---:|")
        for M, iou in ious.items():
            print(f"| {M} | {iou:.4f} |")
        return
    rows = []
    for sharp_tokens in (0, args.sharp_tokens):
        model = vecset(sharp_tokens=sharp_tokens)
        steps = train(model, datamodule, args.minutes)
        rows.append((sharp_tokens, steps, shape_scores(model, datamodule)))
    print(
        f"{args.minutes} min per model; {held} held-out shapes; mesh {MESH_RESOLUTION}^3, {MESH_POINTS} points"
    )
    print("| sharp_tokens | steps | IoU | Chamfer-L1 | normal consistency | sharp Chamfer | no surface |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for sharp_tokens, steps, s in rows:
        print(
            f"| {sharp_tokens} | {steps} | {s['iou']:.4f} | {s['chamfer_l1']:.4f} | "
            f"{s['normal_consistency']:.4f} | {s['sharp_chamfer']:.4f} | {s['no_surface']} |"
        )


if __name__ == "__main__":
    main()
