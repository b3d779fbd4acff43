"""Cost of every model preset: parameters, FLOPs per sample and, on CUDA, training memory and speed.

Presets are every `configs/autoencoder/*.yaml`, every `configs/diffusion/*.yaml`, and each GPU
diffusion preset with `configs/conditioning/dinov2.yaml` composed on it (`set_dit+dinov2`).
Models are built on the meta device, so the big presets cost no memory, and FLOPs are counted
there with `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; matmuls,
convolutions and attention, which is nearly all of it). "fwd" is one forward pass, "train" a
forward and backward pass, both per sample.

- An autoencoder is run on a shard batch at the default sizes (`Sizes`: 8,192 surface points, the
  preset's grid resolution) and `--queries` query points (configs/data/objaverse.yaml's 4,096).
- A diffusion preset is its backbone at the latent shape of its autoencoder preset
  (`configs/autoencoder/<stem of its autoencoder checkpoint>[_tiny].yaml`, since the checkpoint
  itself fixes the latent) and condition tokens of its encoder's shape (CLIP ViT-L/14: 77 x 768;
  DINOv2-L/14 at 224 px: 257 x 1024). The frozen text/image encoder and autoencoder are not
  counted: their outputs are cached in the latent shards or computed once per sample.

On CUDA each preset also trains `--steps` steps (bf16 autocast, AdamW) at its batch, the batch of
the data config it is paired with (GPU presets: configs/data/objaverse.yaml and
objaverse_latents.yaml; tiny and cpu presets: demo_primitives.yaml and latents.yaml), on random
tensors: the median seconds per step after `--warmup` gives samples/s, and
`torch.cuda.max_memory_allocated` the peak. Without CUDA those columns read "n/a (no CUDA)".

    python benchmarks/presets.py [--presets vecset,set_dit,set_dit+dinov2] [--steps 20] [--warmup 5]
    python benchmarks/presets.py --compile-cpu     # CPU s/step of the tiny presets, eager vs torch.compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from native3d.data.schema import Sizes
from native3d.diffusion import RectifiedFlow

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
IMAGE_OVERRIDE = CONFIGS / "conditioning" / "dinov2.yaml"
# Condition tokens (L) of the encoders the presets name; DINOv2 at 224 px: (224 / 14)^2 patches + class.
IMAGE_TOKENS = {"facebook/dinov2-base": 257, "facebook/dinov2-large": 257}


@dataclass
class Preset:
    name: str
    kind: str  # "autoencoder" | "diffusion"
    config: dict  # the YAML's model.init_args
    gpu: bool  # a GPU preset (paired with the Objaverse data configs)


def compose(base: dict, override: dict) -> dict:
    """Nested override as a later --config applies it: a new class_path replaces the whole entry."""
    if override.get("class_path", base.get("class_path")) != base.get("class_path"):
        return override
    merged = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = compose(base[key], value) if both_dicts else value
    return merged


def model_args(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["model"]["init_args"]


def presets() -> list[Preset]:
    found = []
    for path in sorted((CONFIGS / "autoencoder").glob("*.yaml")):
        found.append(Preset(path.stem, "autoencoder", model_args(path), not is_small(path)))
    for path in sorted((CONFIGS / "diffusion").glob("*.yaml")):
        found.append(Preset(path.stem, "diffusion", model_args(path), not is_small(path)))
        if not is_small(path):
            image = compose(model_args(path), model_args(IMAGE_OVERRIDE))
            found.append(Preset(f"{path.stem}+dinov2", "diffusion", image, True))
    return found


def is_small(path: Path) -> bool:
    return path.stem.endswith(("_tiny", "_cpu"))


def autoencoder_preset_of(preset: Preset) -> Path:
    """The autoencoder YAML whose latent a diffusion preset's checkpoint path names."""
    suffix = "" if preset.gpu else "_tiny"
    return CONFIGS / "autoencoder" / f"{Path(preset.config['autoencoder']).stem}{suffix}.yaml"


def instantiate(config: dict) -> nn.Module:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "module", fail_untyped=False)
    return parser.instantiate(parser.parse_object({"module": config})).module


def condition_tokens(conditioner: dict | None) -> int | None:
    """L, the condition tokens a conditioner config produces, or None for no condition."""
    if conditioner is None:
        return None
    encoder = conditioner["init_args"]["encoder"]
    args = encoder.get("init_args", {})
    if encoder["class_path"].endswith("HFTextEncoder"):
        return args.get("max_length", 77)
    if encoder["class_path"].endswith("HFImageEncoder"):
        return IMAGE_TOKENS[args["name_or_path"]]
    return (args.get("image_size", 64) // args.get("patch", 8)) ** 2  # ViewEncoder


def build(preset: Preset, device: str | torch.device) -> tuple[nn.Module, tuple[int, ...]]:
    """(the preset's trained network, its latent shape), built on `device` (meta costs nothing)."""
    with torch.device(device):
        if preset.kind == "autoencoder":
            model = instantiate(preset.config["autoencoder"])
            return model, tuple(model.latent_shape)
        autoencoder = instantiate(model_args(autoencoder_preset_of(preset))["autoencoder"])
        return instantiate(preset.config["backbone"]), tuple(autoencoder.latent_shape)


def shard_batch(batch: int, resolution: int, queries: int, device: str | torch.device) -> dict:
    """Random tensors in the shard layout (values do not matter for cost)."""
    n, r = Sizes().surface_points, resolution
    return {
        "surface": torch.randn(batch, n, 6, device=device),
        "sharp": torch.randn(batch, Sizes().sharp_points, 6, device=device),
        "sdf": torch.randn(batch, r, r, r, device=device),
        "triplane": torch.randn(batch, 3, 2, r, r, device=device),
        "query": torch.rand(batch, queries, 4, device=device) * 2 - 1,
    }


def loss_fn(preset: Preset, model: nn.Module, latent_shape: tuple, batch: int, queries: int, device):
    """A closure computing the preset's training loss on one random batch of `batch` samples."""
    if preset.kind == "autoencoder":
        resolution = preset.config["autoencoder"]["init_args"].get("resolution", Sizes().grid_resolution)
        data = shard_batch(batch, resolution, queries, device)

        def autoencoder_loss() -> torch.Tensor:
            points, target = model.queries_from_batch(data)
            pred, posterior = model(model.inputs_from_batch(data), points)
            return (pred - target).abs().mean() + 1e-3 * posterior.kl().mean()

        return autoencoder_loss
    backbone_args = preset.config["backbone"]["init_args"]
    tokens = condition_tokens(preset.config.get("conditioner"))
    cond = None
    if tokens is not None and backbone_args.get("context_dim"):
        cond = {
            "tokens": torch.randn(batch, tokens, backbone_args["context_dim"], device=device),
            "mask": torch.ones(batch, tokens, dtype=torch.bool, device=device),
            "pooled": torch.randn(batch, backbone_args["pooled_dim"], device=device),
        }
    x0 = torch.randn(batch, *latent_shape, device=device)
    objective = RectifiedFlow()
    return lambda: objective(model, x0, cond).mean()


def flops_per_sample(preset: Preset, queries: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per sample, counted on the meta device at batch 2."""
    model, latent_shape = build(preset, "meta")
    loss = loss_fn(preset, model, latent_shape, 2, queries, "meta")
    with FlopCounterMode(display=False) as forward:
        value = loss()
    with FlopCounterMode(display=False) as backward:
        value.backward()
    fwd = forward.get_total_flops() / 2
    return fwd, fwd + backward.get_total_flops() / 2


def preset_batch(preset: Preset) -> int:
    data = {
        ("autoencoder", True): "objaverse",
        ("autoencoder", False): "demo_primitives",
        ("diffusion", True): "objaverse_latents",
        ("diffusion", False): "latents",
    }[(preset.kind, preset.gpu)]
    return yaml.safe_load((CONFIGS / "data" / f"{data}.yaml").read_text())["data"]["init_args"]["batch_size"]


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds of `step()` after `warmup` calls, the device synchronized after each."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def train_step(preset: Preset, model: nn.Module, latent_shape, batch: int, queries: int, device, bf16: bool):
    loss = loss_fn(preset, model, latent_shape, batch, queries, device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            value = loss()
        value.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_cuda(preset: Preset, queries: int, steps: int, warmup: int) -> dict:
    device = torch.device("cuda")
    batch = preset_batch(preset)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        torch.manual_seed(0)
        model, latent_shape = build(preset, device)
        step = train_step(preset, model, latent_shape, batch, queries, device, bf16=True)
        seconds = time_steps(step, steps, warmup, device)
    except torch.cuda.OutOfMemoryError:
        return {"batch": batch, "samples_per_s": "OOM", "peak_gib": "OOM"}
    return {
        "batch": batch,
        "samples_per_s": f"{batch / seconds:.1f}",
        "peak_gib": f"{torch.cuda.max_memory_allocated() / 2**30:.2f}",
    }


def compile_on_cpu(names: list[str], steps: int, warmup: int, queries: int) -> None:
    """CPU s/step (float32, batch of the paired data config) of each preset, eager and compiled."""
    device = torch.device("cpu")
    print(
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {warmup} warm-up steps left out"
    )
    print(f"{'preset':22} {'batch':>5} {'eager s/step':>12} {'compiled':>9} {'speedup':>7} {'compile s':>9}")
    for preset in [p for p in presets() if p.name in names]:
        batch = preset_batch(preset)
        row = []
        for compiled in (False, True):
            torch.manual_seed(0)
            model, latent_shape = build(preset, device)
            if compiled:
                model.compile()  # what `compile: true` does in configure_model
            step = train_step(preset, model, latent_shape, batch, queries, device, bf16=False)
            start = time.perf_counter()
            step()  # the first step compiles
            first = time.perf_counter() - start
            row.append((time_steps(step, steps, warmup, device), first))
        (eager, _), (fast, first) = row
        print(f"{preset.name:22} {batch:>5} {eager:>12.4f} {fast:>9.4f} {eager / fast:>6.2f}x {first:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="", help="comma-separated preset names (default: all)")
    parser.add_argument("--queries", type=int, default=4096, help="query points per shape (autoencoders)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--compile-cpu", action="store_true", help="time the tiny presets eager vs compiled")
    args = parser.parse_args()
    if args.warmup >= args.steps:
        raise SystemExit("--warmup must be smaller than --steps")
    known = [p.name for p in presets()]
    names = [n.strip() for n in args.presets.split(",") if n.strip()] or known
    if args.compile_cpu and not args.presets:
        names = [n for n in known if n.endswith("_tiny")]
    if unknown := sorted(set(names) - set(known)):
        raise SystemExit(f"unknown presets {unknown}; known: {', '.join(known)}")
    if args.compile_cpu:
        compile_on_cpu(names, args.steps, args.warmup, args.queries)
        return
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}")
    header = f"{'preset':22} {'kind':11} {'params':>13} {'latent':>12} {'GFLOP fwd':>10} {'GFLOP train':>11} {'batch':>5} {'samples/s':>14} {'peak GiB':>14}"
    print(header)
    for preset in [p for p in presets() if p.name in names]:
        model, latent_shape = build(preset, "meta")
        params = sum(p.numel() for p in model.parameters())
        fwd, train = flops_per_sample(preset, args.queries)
        cost = (
            measure_cuda(preset, args.queries, args.steps, args.warmup)
            if cuda
            else {
                "batch": preset_batch(preset),
                "samples_per_s": "n/a (no CUDA)",
                "peak_gib": "n/a (no CUDA)",
            }
        )
        latent = "x".join(map(str, latent_shape))
        print(
            f"{preset.name:22} {preset.kind:11} {params:>13,} {latent:>12} {fwd / 1e9:>10.2f} {train / 1e9:>11.2f} "
            f"{cost['batch']:>5} {cost['samples_per_s']:>14} {cost['peak_gib']:>14}",
            flush=True,
        )


if __name__ == "__main__":
    main()
