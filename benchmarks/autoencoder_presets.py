"""Training memory and throughput of the full autoencoder presets (configs/autoencoder/<model>.yaml).

Each preset trains for `--steps` steps in a Lightning Trainer set up as `native3d fit` sets it up
with configs/trainer/gpu.yaml (its precision and gradient clipping; one device), at the batch
and query sizes of configs/data/objaverse.yaml and the default shard sizes (`Sizes`: 8,192
surface points, 64^3 grid and planes). The batches are synthetic spheres in the shard layout,
made once and kept in host memory: the numbers are the model's (forward, backward, optimizer
step and the host-to-device copy of each batch), not those of reading and decoding shards.

Reported per model: parameters, latent shape, median seconds per step after `--warmup` steps
(the GPU is synchronized at the end of every step), samples per second, and the peak of
`torch.cuda.max_memory_allocated` / `max_memory_reserved` over the run. A batch that does not
fit is reported as such, and the model is retried at half the batch.

    python benchmarks/autoencoder_presets.py [--models vecset,grid,triplane,<other.yaml>] [--steps 40] [--device cuda]

`--device cpu` runs the same code on the CPU in float32 (to check the script; the full presets are
GPU-sized). The last line is machine-readable: `samples_per_s_<model>=<x> peak_gib_<model>=<y>`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from native3d.autoencoders.bottleneck import autoencoder_from_config
from native3d.data.schema import Sizes, grid_coords
from native3d.training.autoencoder import AutoencoderModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODELS = ("vecset", "grid", "triplane")
DISTINCT_BATCHES = 4


def sphere_batch(batch_size: int, sizes: Sizes, queries: int, seed: int) -> dict:
    """Spheres of random centre and radius in the shard layout (float16, as shards store them)."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.2 * (torch.rand(batch_size, 1, 3, generator=g) * 2 - 1)
    radii = 0.3 + 0.4 * torch.rand(batch_size, 1, 1, generator=g)
    normals = torch.nn.functional.normalize(
        torch.randn(batch_size, sizes.surface_points, 3, generator=g), dim=-1
    )
    surface = torch.cat([centres + radii * normals, normals], dim=-1)  # (B, N, 6)

    def sdf(points: torch.Tensor) -> torch.Tensor:  # (B, ..., 3) -> (B, ...)
        shape = (batch_size, *[1] * (points.ndim - 2))
        return ((points - centres.view(*shape, 3)).norm(dim=-1) - radii.view(shape)).clamp(
            -sizes.truncation, sizes.truncation
        )

    R = sizes.grid_resolution
    axis = torch.as_tensor(grid_coords(R), dtype=torch.float32)
    grid = sdf(
        torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).expand(batch_size, R, R, R, 3)
    )
    planes = [torch.stack([grid.amin(a), (grid < 0).float().mean(a)], dim=1) for a in (3, 2, 1)]  # xy, xz, yz
    uniform = torch.rand(batch_size, queries // 2, 3, generator=g) * 2 - 1
    near = surface[:, : queries // 2, :3] + 0.02 * torch.randn(batch_size, queries // 2, 3, generator=g)
    points = torch.cat([uniform, near], dim=1)
    tensors = dict(
        surface=surface,
        sdf=grid,
        triplane=torch.stack(planes, dim=1),
        query=torch.cat([points, sdf(points)[..., None]], dim=-1),
    )
    return {
        **{k: v.half() for k, v in tensors.items()},
        "id": [f"sphere-{seed}-{i}" for i in range(batch_size)],
    }


class Batches(Dataset):
    def __init__(self, batches: list[dict], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


class StepTimer(L.Callback):
    """Wall time of every training step, the device synchronized at its end."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        self.times.append(time.perf_counter() - self.start)


def config_path(model: str) -> Path:
    """configs/autoencoder/<model>.yaml for a preset's name; else `model` is a YAML file of the same form."""
    return CONFIGS / "autoencoder" / f"{model}.yaml" if model in MODELS else Path(model)


def preset(model: str) -> tuple[dict, dict]:
    """(autoencoder config, the module's other init_args) of the model's YAML."""
    init_args = dict(yaml.safe_load(config_path(model).read_text())["model"]["init_args"])
    return init_args.pop("autoencoder"), init_args


def measure(model: str, batch_size: int, queries: int, steps: int, warmup: int, device: str) -> dict:
    trainer_config = yaml.safe_load((CONFIGS / "trainer" / "gpu.yaml").read_text())["trainer"]
    autoencoder_config, module_args = preset(model)
    torch.manual_seed(0)
    module = AutoencoderModule(autoencoder_from_config(autoencoder_config), **module_args)
    batches = [sphere_batch(batch_size, Sizes(), queries, seed) for seed in range(DISTINCT_BATCHES)]
    loader = DataLoader(Batches(batches, steps), batch_size=None, shuffle=False, pin_memory=device == "cuda")
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=trainer_config["precision"] if device == "cuda" else "32-true",
        gradient_clip_val=trainer_config.get("gradient_clip_val"),
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)
    seconds = statistics.median(timer.times[warmup:])
    return {
        "model": config_path(model).stem,
        "params": sum(p.numel() for p in module.autoencoder.parameters()),
        "latent": "x".join(str(d) for d in module.autoencoder.latent_shape),
        "batch": batch_size,
        "precision": trainer.precision,
        "seconds_per_step": seconds,
        "samples_per_s": batch_size / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
        "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = yaml.safe_load((CONFIGS / "data" / "objaverse.yaml").read_text())["data"]["init_args"]
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=data["batch_size"])
    parser.add_argument(
        "--queries", type=int, default=data["query_points"], help="query points per shape and step"
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the median")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu")
    )
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.warmup >= args.steps:
        raise SystemExit("--warmup must be smaller than --steps")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if unknown := [m for m in models if not config_path(m).is_file()]:
        raise SystemExit(f"unknown models {unknown}: give one of {MODELS} or a YAML file")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"device: {name}, torch {torch.__version__}; {args.queries} queries per shape; sizes {Sizes().to_dict()}"
    )
    results = []
    for model in models:
        batch_size = args.batch_size
        while True:
            try:
                results.append(measure(model, batch_size, args.queries, args.steps, args.warmup, args.device))
                break
            except torch.cuda.OutOfMemoryError:
                print(f"{model}: batch {batch_size} does not fit in GPU memory; trying {batch_size // 2}")
                if batch_size == 1:
                    raise
                batch_size //= 2
        print(f"{model}: done", flush=True)
    print(
        f"{'model':14} {'params':>12} {'latent':>12} {'batch':>5} {'precision':>10} {'s/step':>8} {'samples/s':>9} {'peak GiB':>8} {'reserved':>8}"
    )
    for r in results:
        print(
            f"{r['model']:14} {r['params']:>12,} {r['latent']:>12} {r['batch']:>5} {r['precision']:>10} {r['seconds_per_step']:>8.4f} "
            f"{r['samples_per_s']:>9.1f} {r['peak_gib']:>8.2f} {r['reserved_gib']:>8.2f}"
        )
    print(
        " ".join(
            f"samples_per_s_{r['model']}={r['samples_per_s']:.1f} peak_gib_{r['model']}={r['peak_gib']:.2f}"
            for r in results
        )
    )


if __name__ == "__main__":
    main()
