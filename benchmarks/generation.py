"""Text- and image-conditioned generation on the primitives, per backbone, trained for a fixed time on this CPU.

Data: the real data-prep job builds procedural primitives (12 classes, each block of 12 items holds
every class once) into `--data` at CPU sizes (SIZES: 32^3 grid, 2,048 surface points, 4,096
queries, 2 views of 64 px); the last shards are held out (24 shapes per class). `train.json` and
`heldout.json` in `--data` are shard-set indexes over them. Nothing held out is trained on,
autoencoders included. The primitives stand upright (`--poses upright`: a random turn about the
up axis, no tilt), as category-aligned data sets do: prompt accuracy classifies a sample by its
nearest held-out shapes, and with any pose that rule mislabels real shapes too (a tilted table
lies nearer a tilted box than the upright tables). The benchmark measures the rule's own accuracy
first: training shapes, never seen by it, classified against the held-out set ("ceiling");
`--poses any --ceiling-only` measures it on primitives in any pose.

Per backbone (SetDiT over VecSet latents, UNet3D over grid latents, TriplaneUNet over triplane
latents), with the YAML a user gives `native3d fit`:
  1. the autoencoder as the demo trains it (`native3d.demo.AUTOENCODERS`: configs/autoencoder/<ae>_tiny.yaml,
     its data options, bfloat16 for the convolutional ones where the CPU has it) for `--minutes-ae`;
  2. its latents of the training shards (`native3d.encode.encode_shard_set`);
  3. text-conditioned latent diffusion (configs/diffusion/<backbone>_tiny.yaml + configs/data/latents.yaml)
     for `--minutes`;
  4. `native3d evaluate --ckpt` of it against the held-out shapes (`evaluate_checkpoint`):
     `--samples-per-class` samples for the prompt "a <class>" of every class, MMD / COV / 1-NNA
     (Chamfer-L1 on EVAL_POINTS points) and prompt accuracy (the class whose nearest held-out
     shape is nearest to the sample; `samples.json` names each sample's class).
Then the backbone with the best text accuracy (or `--image-backbone`) is trained again with configs/conditioning/image_tiny.yaml
composed after its diffusion config (a view encoder trained jointly, a random view per object) and
sampled once per held-out object's view 0 (a PNG), `--samples-per-class` objects per class; the
prompted class is that object's class.

Training runs in this process through LightningCLI (as `native3d fit` does) with `max_time` = the
budget and no step limit, so the learning rate's cosine follows the clock and the EMA weights
(decay 0.99, shorter than the YAML's 0.999 for runs of a few hundred steps) are what is sampled.
The frozen text encoder runs once per distinct caption (`HFTextEncoder`'s cache).
torch uses one thread (another job shares this 2-core machine). Every stage writes its output
under `--out` and a rerun reuses what exists: finished training is never redone.

    .venv/bin/python benchmarks/generation.py [--minutes-ae 3] [--minutes 5] [--samples-per-class 5]
                                              [--backbones setdit,unet3d,triplane] [--image-backbone best|none|NAME] [--poses upright|any] [--ceiling-only] [--quick]

After the table, where each text model loses: the autoencoder's ceiling (its training latents
decoded and classified by the same rule: what a perfect diffusion model reaches) and its held-out
IoU, the diffusion share (sampled / ceiling accuracy), COV against that of as many real training
shapes ("data reference"), and what makes the latent easy or hard to diffuse (per-channel std of the
normalized latents, KL per element, IoU of a decoded shape under noise of std 0.1 and 0.3 on its
normalized latent), and the round trip (held-out latents noised to t = 0.2 and 0.5 and sampled back by
the text model, IoU with their own decoding; for anchored VecSet latents also with the anchors
given). Everything is also written to `<out>/results.json`.

The last line is machine-readable:
`text_acc_setdit=<a> text_acc_unet3d=<b> text_acc_triplane=<c> image_acc_best=<d>` followed by
`ae_ceiling_<name>=<x>` and `cov_ratio_<name>=<y>` per text model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from autoencoders import dd_hh_mm_ss, prep, write_index  # benchmarks/autoencoders.py: the same data plumbing

from native3d.data.shards import load_index

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BACKBONES = {  # name -> (autoencoder, as the demo trains it, diffusion config)
    "setdit": ("vecset", "set_dit_tiny.yaml"),
    "unet3d": ("grid", "unet3d_tiny.yaml"),
    "triplane": ("triplane", "triplane_unet_tiny.yaml"),
}
SIZES = [
    "--surface-points",
    "2048",
    "--grid-resolution",
    "32",
    "--query-points",
    "4096",
    "--views",
    "2",
    "--view-size",
    "64",
]
THREADS = 1
AE_BATCH, AE_QUERIES = 8, 2048
DIFFUSION_BATCH = 32
EMA_DECAY = 0.99
SAMPLE_STEPS, MESH_RESOLUTION = 25, 64  # guidance: each model's own (its YAML's `guidance`)
EVAL_POINTS = 512


ROUND_TRIP_TIMES, ROUND_TRIP_PER_CLASS = (0.2, 0.5), 2
CEILING_SHAPES = 240  # training shapes classified against the held-out set by the prompt-accuracy rule


def data_plan(quick: bool) -> dict:
    """Primitives count, shard size and held-out shards; counts are whole blocks of 12, one of each class."""
    if quick:
        return {"count": 96, "shard_size": 24, "held_out": 1}
    return {"count": 1008, "shard_size": 48, "held_out": 6}  # 720 training, 288 held-out shapes


# ---------------------------------------------------------------------------------------------
# Data


def build_data(data: Path, quick: bool, poses: str) -> dict[str, Path]:
    """Builds (or resumes) the primitives and writes the train and held-out indexes."""
    from native3d.data.datamodule import hold_out

    plan, out = data_plan(quick), data / "primitives"
    source = {"count": plan["count"], "poses": poses, "seed": 0}
    if (out / "index.json").is_file():
        built = [
            {k: s.get(k, "any" if k == "poses" else None) for k in source}
            for s in load_index(out).info.get("sources", [])
        ]
        if built != [source]:
            raise SystemExit(f"{out}: built from {built}, not {source}; give another --data")
    else:
        args = ["--source", "primitives", *(a for k, v in source.items() for a in (f"--{k}", str(v)))]
        prep(
            [
                "build",
                *args,
                "--out",
                str(out),
                "--shard-size",
                str(plan["shard_size"]),
                "--workers",
                str(os.cpu_count() or 1),
                *SIZES,
            ]
        )
        prep(["index", "--out", str(out)])
    train, heldout = hold_out(load_index(out), plan["held_out"])
    return {
        "train": write_index(data / "train.json", train.shards, train.info, data),
        "heldout": write_index(data / "heldout.json", heldout.shards, heldout.info, data),
    }


# ---------------------------------------------------------------------------------------------
# Training (LightningCLI in this process, as `native3d fit`)


def fit(configs: list[Path], overrides: list[str], out: Path, minutes: float) -> Path:
    """Trains for `minutes` (max_time, no step limit); saves `<out>/final.ckpt` and `<out>/train.json`."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    final = out / "final.ckpt"
    if final.is_file():
        return final
    shutil.rmtree(out, ignore_errors=True)  # an interrupted run starts over
    argv = [arg for config in configs for arg in ("--config", str(config))]
    argv += [
        *overrides,
        "--trainer.max_steps",
        "-1",
        "--trainer.max_time",
        dd_hh_mm_ss(60 * minutes),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--seed_everything",
        "0",
    ]
    cli = LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        run=False,
        args=argv,
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    cli.trainer.save_checkpoint(final)  # the EMA weights: WeightAveraging copies them in at the end of fit
    record = {
        "steps": cli.trainer.global_step,
        "minutes": seconds / 60,
        "budget_minutes": minutes,
        "configs": [str(c.relative_to(ROOT)) for c in configs],
    }
    (out / "train.json").write_text(json.dumps(record, indent=2))
    return final


def fit_autoencoder(name: str, paths: dict, out: Path, minutes: float) -> Path:
    """The demo's recipe for autoencoder `name` (`native3d.demo.AUTOENCODERS`: its config, data
    options and precision), for `minutes`."""
    from native3d.demo import AUTOENCODERS, bf16_precision

    training = AUTOENCODERS[name]
    overrides = [
        "--data",
        "native3d.data.datamodule.ShardDataModule",
        "--data.train",
        str(paths["train"]),
        "--data.batch_size",
        str(AE_BATCH),
        "--data.num_workers",
        "0",
        "--data.query_points",
        str(AE_QUERIES),
        "--data.shuffle_buffer",
        "256",
        "--data.batches_per_epoch",
        "100",
        *training.options,
        "--trainer.precision",
        bf16_precision() if training.bf16 else "32-true",
    ]
    return fit([*training.configs, CONFIGS / "trainer" / "cpu.yaml"], overrides, out, minutes)


def fit_diffusion(config: str, ae_ckpt: Path, latents: Path, out: Path, minutes: float, image: bool) -> Path:
    configs = [CONFIGS / "diffusion" / config]
    configs += [CONFIGS / "conditioning" / "image_tiny.yaml"] if image else []
    configs += [CONFIGS / "trainer" / "cpu.yaml", CONFIGS / "data" / "latents.yaml"]
    overrides = [
        "--data.train",
        str(latents),
        "--data.val_shards",
        "0",
        "--data.batch_size",
        str(DIFFUSION_BATCH),
        "--data.num_workers",
        "0",
        "--data.shuffle_buffer",
        "256",
        "--data.batches_per_epoch",
        "100",
        "--model.init_args.autoencoder",
        str(ae_ckpt),
        "--model.init_args.ema_decay",
        str(EMA_DECAY),
    ]
    return fit(configs, overrides, out, minutes)


# ---------------------------------------------------------------------------------------------
# Sampling and evaluation


def sample_and_evaluate(ckpt: Path, num: int, folder: Path, reference: Path) -> dict:
    """`native3d evaluate --ckpt` of a checkpoint against the held-out set (its class conditions); returns the summary."""
    from native3d.evaluation.checkpoint import evaluate_checkpoint
    from native3d.evaluation.report import write_report
    from native3d.sampling import SampleSettings

    metrics = folder / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())["summary"]
    settings = SampleSettings(
        ckpt=str(ckpt),
        num=num,
        steps=SAMPLE_STEPS,
        resolution=MESH_RESOLUTION,
        batch_size=num,
        format="ply",
    )
    report = evaluate_checkpoint(
        settings, reference, folder, points=EVAL_POINTS, metric="chamfer", class_distance="min"
    )
    write_report(report, folder)
    class_sheet(folder / "samples")
    return report.to_dict()["summary"]


def class_sheet(samples: Path) -> None:
    """`<samples>/class_sheet.png`: a row per asked class, its samples side by side."""
    from native3d.sampling import labelled_sheet

    rows: dict[str, list[dict]] = {}
    for record in json.loads((samples / "samples.json").read_text())["samples"]:
        rows.setdefault(record.get("class") or record["prompt"], []).append(record)
    labelled_sheet(
        [(label, records, samples) for label, records in rows.items()], samples / "class_sheet.png"
    )


def classifier_ceiling(paths: dict, out: Path) -> dict:
    """Prompt accuracy's rule applied to real shapes: CEILING_SHAPES training shapes (their stored
    surface points) classified by their nearest held-out shapes (min Chamfer-L1, EVAL_POINTS points)."""
    from native3d.evaluation.generation import nearest_class_accuracy

    def compute() -> dict:
        count = min(CEILING_SHAPES, load_index(paths["train"]).num_samples)
        return {
            "shapes": count,
            "accuracy": nearest_class_accuracy(paths["train"], paths["heldout"], EVAL_POINTS, count),
        }

    return cached(out / "ceiling.json", compute)


# ---------------------------------------------------------------------------------------------
# Where a family loses: the autoencoder's ceiling, the latent's diffusability, the data's own COV


NOISE_LEVELS = (0.1, 0.3)  # std of the Gaussian noise added to a normalized latent
STAT_SHAPES = 48  # held-out shapes for IoU and the noise test; training latents for the statistics


def cached(path: Path, compute) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return result


def autoencoder_ceiling(ae_ckpt: Path, latents: Path, paths: dict, out: Path) -> dict:
    """What a perfect diffusion model would reach with this autoencoder: training shapes' own latents
    (the ones diffusion learns), decoded to meshes and classified by the prompt-accuracy rule against
    the held-out set, like the samples; and the held-out reconstruction IoU."""

    def compute() -> dict:
        import numpy as np
        import trimesh

        from native3d.autoencoders.meshing import decode_mesh
        from native3d.checkpoints import load_autoencoder
        from native3d.data.shards import iter_samples
        from native3d.evaluation.generation import load_reference, nearest_classes
        from native3d.evaluation.reconstruction import evaluate_reconstruction
        from native3d.geometry.marching_cubes import NoSurfaceError
        from native3d.geometry.sampling import sample_surface
        from native3d.metrics import pairwise_distances

        autoencoder = load_autoencoder(ae_ckpt)
        refs = load_reference(paths["heldout"], EVAL_POINTS, seed=0)
        clouds, truth, failed = [], [], 0
        for i, sample in enumerate(iter_samples(latents)):
            if i == CEILING_SHAPES:
                break
            latent = torch.from_numpy(sample["latent_mean.npy"]).float()[None]
            try:
                vertices, faces = decode_mesh(autoencoder, latent, MESH_RESOLUTION)
            except NoSurfaceError:
                failed += 1
                continue
            mesh = trimesh.Trimesh(vertices, faces, process=False)
            clouds.append(
                torch.from_numpy(sample_surface(mesh, EVAL_POINTS, np.random.default_rng(0))[:, :3])
            )
            truth.append(sample["meta.json"]["class"])
        distances = pairwise_distances(
            torch.stack(clouds), refs.points, metric="chamfer", normalization="none", seed=0, convention="l1"
        )
        predicted = nearest_classes(distances.value, [e["class"] for e in refs.entries], "min")
        correct = sum(a == b for a, b in zip(truth, predicted))
        recon = evaluate_reconstruction(
            ae_ckpt, paths["heldout"], resolution=MESH_RESOLUTION, limit=STAT_SHAPES, points=EVAL_POINTS
        )
        return {
            "shapes": len(truth) + failed,
            "accuracy": correct / (len(truth) + failed),
            "no_surface": failed,
            "heldout_iou": recon.summary["volume_iou"],
        }

    return cached(out / "ceiling.json", compute)


def latent_statistics(ae_ckpt: Path, latents: Path, paths: dict, out: Path) -> dict:
    """What makes a latent hard or easy to diffuse: the per-channel std of the normalized training
    latents (1 is what the noise expects), the KL of the posterior per element, and how much the
    decoded shape moves (IoU of the occupancy at the uniform queries) when the normalized latent of a
    held-out shape gets Gaussian noise of std NOISE_LEVELS."""

    def compute() -> dict:
        import numpy as np

        from native3d.checkpoints import load_autoencoder
        from native3d.data.datamodule import collate, sample_to_tensors
        from native3d.data.shards import iter_samples

        autoencoder = load_autoencoder(ae_ckpt)
        means, kl = [], []
        for i, sample in enumerate(iter_samples(latents)):
            if i == CEILING_SHAPES:
                break
            mean = torch.from_numpy(sample["latent_mean.npy"]).float()
            std = torch.from_numpy(sample["latent_std.npy"]).float()
            means.append(autoencoder.normalize_latent(mean[None])[0])
            kl.append((0.5 * (mean**2 + std**2 - 1 - 2 * std.clamp_min(1e-12).log())).mean().item())
        normalized = torch.stack(means)  # (S, *latent_shape)
        per_channel = channel_std(normalized, autoencoder.latent_channel_dim)
        generator = torch.Generator().manual_seed(0)
        drops = {level: [] for level in NOISE_LEVELS}
        with torch.no_grad():
            for i, sample in enumerate(iter_samples(paths["heldout"])):
                if i == STAT_SHAPES:
                    break
                batch = collate([sample_to_tensors(sample, None, np.random.default_rng(0))])
                z = autoencoder.normalize_latent(
                    autoencoder.encode(autoencoder.inputs_from_batch(batch)).mean
                )
                uniform = batch["query"][:, : batch["query"].shape[1] // 2, :3]  # the uniform half
                clean = decode_inside(autoencoder, z, uniform)
                for level in NOISE_LEVELS:
                    noisy = z + level * torch.randn(z.shape, generator=generator)
                    drops[level].append(occupancy_iou(clean, decode_inside(autoencoder, noisy, uniform)))
        return {
            "channel_std_mean": per_channel.mean().item(),
            "channel_std_min": per_channel.min().item(),
            "channel_std_max": per_channel.max().item(),
            "kl_per_element": statistics.fmean(kl),
            **{f"iou_under_noise_{level}": statistics.fmean(drops[level]) for level in NOISE_LEVELS},
        }

    return cached(out / "latent_stats.json", compute)


def round_trip(ckpt: Path, paths: dict, out: Path) -> dict:
    """What the diffusion model does with real latents: a held-out shape's normalized latent z is noised
    to time t (x_t = (1 - t) z + t noise, the training path), integrated back to 0 with Euler and the
    model's guidance for the prompt of its class, decoded, and compared with z's own decoding
    (occupancy IoU at the uniform queries), ROUND_TRIP_PER_CLASS shapes per class. A model that has
    learned its latents restores them from small t; at large t it has to generate more of the shape.
    For a VecSet latent with anchored tokens it is done again with the anchors given (the anchor
    channels set to the training path's value at every step): the gap between the two is what the
    model loses on where its tokens are, against what it loses on their features. A two-stage model
    (`structure`) is told the clean anchors, as in its training, so it has only the second row."""

    def compute() -> dict:
        import numpy as np

        from native3d.data.datamodule import collate, sample_to_tensors
        from native3d.data.shards import iter_samples
        from native3d.diffusion import as_denoiser
        from native3d.diffusion.guidance import cfg_model
        from native3d.diffusion.samplers import flow_timesteps
        from native3d.training.diffusion import load_diffusion

        model = load_diffusion(ckpt)
        autoencoder = model.autoencoder
        anchored = getattr(autoencoder, "token_positions", False)
        two_stage = model.structure is not None
        denoise = as_denoiser(
            cfg_model(model.backbone, model.hparams.guidance, model.conditioner.null_cond(1)), model.objective
        )
        generator = torch.Generator().manual_seed(0)
        ious: dict[str, list[float]] = {}
        taken: dict[str, int] = {}
        with torch.no_grad():
            for sample in iter_samples(paths["heldout"]):
                name = sample["meta.json"]["class"]
                if taken.get(name, 0) == ROUND_TRIP_PER_CLASS:
                    continue
                taken[name] = taken.get(name, 0) + 1
                batch = collate([sample_to_tensors(sample, None, np.random.default_rng(0))])
                z = autoencoder.normalize_latent(
                    autoencoder.encode(autoencoder.inputs_from_batch(batch)).mean
                )
                uniform = batch["query"][:, : batch["query"].shape[1] // 2, :3]
                clean = decode_inside(autoencoder, z, uniform)
                cond = model.conditioner.encode_texts([f"a {name}"])
                for t0 in ROUND_TRIP_TIMES:
                    noise = torch.randn(z.shape, generator=generator)
                    if two_stage:  # its token model is trained with the anchors clean
                        noise[..., :3] = z[..., :3]
                    ts = flow_timesteps(max(2, round(SAMPLE_STEPS * t0))) * t0  # t0 .. 0
                    for given in [True] if two_stage else [False, True] if anchored else [False]:
                        x = (1 - t0) * z + t0 * noise
                        for t, t_next in zip(ts[:-1], ts[1:]):
                            x = x + (t_next - t) * (x - denoise(x, t.expand(1), cond)) / t
                            if given:
                                x[..., :3] = ((1 - t_next) * z + t_next * noise)[..., :3]
                        key = f"round_trip_{t0}" + ("_anchors_given" if given else "")
                        ious.setdefault(key, []).append(
                            occupancy_iou(clean, decode_inside(autoencoder, x, uniform))
                        )
        return {key: statistics.fmean(values) for key, values in ious.items()}

    return cached(out / "round_trip.json", compute)


def channel_std(latents: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Std per latent channel over every sample and position; `channel_dim` is the autoencoder's
    `latent_channel_dim` (the channel axis of one latent, without the batch axis)."""
    dim = channel_dim % (latents.ndim - 1) + 1
    return latents.movedim(dim, -1).reshape(-1, latents.shape[dim]).std(dim=0)


def decode_inside(autoencoder, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Inside (SDF < 0) at `points` of the normalized latent z."""
    features = autoencoder.decoder_features(autoencoder.denormalize_latent(z))
    return autoencoder.query(features, points) < 0


def occupancy_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def data_reference(paths: dict, count: int, out: Path) -> dict:
    """MMD / COV / 1-NNA of `count` real training shapes (a whole number of class blocks, so every
    class as often as the samples have it) against the held-out set: what "diverse enough" is."""

    def compute() -> dict:
        from native3d.evaluation.generation import PointSet, distribution_metrics, load_reference

        refs = load_reference(paths["heldout"], EVAL_POINTS, seed=0)
        shapes = load_reference(paths["train"], EVAL_POINTS, seed=1)
        real = PointSet(shapes.names[:count], shapes.points[:count], shapes.entries[:count])
        _, stats = distribution_metrics(real, refs, "chamfer", seed=0)
        return {"shapes": len(real.names), **{name: result.mean() for name, result in stats.items()}}

    return cached(out / f"reference_statistics_{count}.json", compute)


def run_backbone(name: str, paths: dict, out: Path, minutes_ae: float, minutes: float, num: int) -> dict:
    from native3d.encode import encode_shard_set

    ae_name, diffusion_config = BACKBONES[name]
    ae_ckpt = fit_autoencoder(ae_name, paths, out / "autoencoders" / name, minutes_ae)
    latents = out / "latents" / name
    if not (latents / "index.json").is_file():
        encode_shard_set(str(ae_ckpt), str(paths["train"]), str(latents))
    ckpt = fit_diffusion(
        diffusion_config, ae_ckpt, latents, out / "diffusion" / f"{name}-text", minutes, image=False
    )
    summary = sample_and_evaluate(ckpt, num, out / "eval" / f"{name}-text", paths["heldout"])
    return {
        "backbone": name,
        "condition": "text",
        "ae": train_record(ae_ckpt),
        "diffusion": train_record(ckpt),
        "ceiling": autoencoder_ceiling(ae_ckpt, latents, paths, out / "eval" / f"{name}-ae"),
        "latent": latent_statistics(ae_ckpt, latents, paths, out / "eval" / f"{name}-ae"),
        "round_trip": round_trip(ckpt, paths, out / "eval" / f"{name}-text"),
        **summary,
    }


def run_image(name: str, paths: dict, out: Path, minutes: float, per_class: int) -> dict:
    ae_ckpt = out / "autoencoders" / name / "final.ckpt"
    ckpt = fit_diffusion(
        BACKBONES[name][1],
        ae_ckpt,
        out / "latents" / name,
        out / "diffusion" / f"{name}-image",
        minutes,
        image=True,
    )
    summary = sample_and_evaluate(ckpt, per_class, out / "eval" / f"{name}-image", paths["heldout"])
    return {
        "backbone": name,
        "condition": "image",
        "ae": train_record(ae_ckpt),
        "diffusion": train_record(ckpt),
        **summary,
    }


def train_record(ckpt: Path) -> dict:
    return json.loads((ckpt.parent / "train.json").read_text())


# ---------------------------------------------------------------------------------------------
# Report


def cov_ratio(result: dict, reference: dict) -> float | None:
    cov = result.get("cov")
    return None if cov is None or not reference["cov"] else cov / reference["cov"]


def print_table(
    results: list[dict],
    paths: dict,
    args: argparse.Namespace,
    load: tuple,
    ceiling: dict,
    reference: dict,
) -> None:
    train, held = load_index(paths["train"]), load_index(paths["heldout"])
    print(
        f"data: primitives ({args.poses} poses), {train.num_samples} training / {held.num_samples} held-out shapes (the last shards), "
        f"12 classes, sizes {train.info['sizes']}"
    )
    print(
        f"budgets: autoencoder {args.minutes_ae} min, diffusion {args.minutes} min per model (max_time; the lr's cosine "
        f"follows the clock, EMA {EMA_DECAY}); diffusion batch {DIFFUSION_BATCH}; torch threads {THREADS}; load average before/after: {load[0]} / {load[1]}"
    )
    print(
        f"sampling: Euler {SAMPLE_STEPS} steps, each model's own guidance, marching cubes {MESH_RESOLUTION}^3; text: prompt "
        f"'a <class>', {args.samples_per_class} samples per class; image: view 0 of {args.samples_per_class} held-out objects per class, 1 sample each"
    )
    print(
        f"metrics: Chamfer-L1 on {EVAL_POINTS} points per shape vs the held-out set; accuracy = nearest class (min distance) is the prompted one; chance 1/12 = 0.083"
    )
    print(
        f"reference, no model: {ceiling['shapes']} training shapes classified by the same rule: accuracy {ceiling['accuracy']:.3f} (the rule's ceiling)"
    )
    header = f"{'backbone':9} {'cond':5} {'AE steps':>8} {'LDM steps':>9} {'LDM min':>7} {'meshed':>7} {'accuracy':>8} {'acc/meshed':>10} {'MMD':>7} {'COV':>6} {'1-NNA':>6}"
    print(header)
    for r in results:
        meshed = f"{r['num_samples']}/{r['num_samples'] + r['num_failed']}"
        print(
            f"{r['backbone']:9} {r['condition']:5} {r['ae']['steps']:>8} {r['diffusion']['steps']:>9} {r['diffusion']['minutes']:>7.1f} "
            f"{meshed:>7} {fmt(r['prompt_accuracy_of_requested']):>8} {fmt(r.get('prompt_accuracy')):>10} {fmt(r.get('mmd')):>7} "
            f"{fmt(r.get('cov')):>6} {fmt(r.get('1-nna')):>6}"
        )
    print(
        "accuracy: over all samples asked for (one that decodes to no surface is wrong); acc/meshed: over the meshed ones (the evaluation's prompt_accuracy)"
    )
    print(
        f"data reference: {reference['shapes']} real training shapes against the same held-out set: "
        f"MMD {fmt(reference['mmd'])}, COV {fmt(reference['cov'])}, 1-NNA {fmt(reference['1-nna'])}"
    )
    print("where each text model loses (ceiling: training latents decoded and classified like samples):")
    print(
        f"{'backbone':9} {'AE IoU':>7} {'ceiling':>7} {'sampled':>7} {'share':>6} {'COV/data':>8} "
        f"{'ch std':>17} {'KL/elem':>8} {'IoU@0.1':>7} {'IoU@0.3':>7}"
    )
    for r in results:
        if r["condition"] != "text":
            continue
        c, z = r["ceiling"], r["latent"]
        share = r["prompt_accuracy_of_requested"] / c["accuracy"] if c["accuracy"] else float("nan")
        stds = f"{z['channel_std_min']:.2f}/{z['channel_std_mean']:.2f}/{z['channel_std_max']:.2f}"
        print(
            f"{r['backbone']:9} {fmt(c['heldout_iou']):>7} {fmt(c['accuracy']):>7} "
            f"{fmt(r['prompt_accuracy_of_requested']):>7} {fmt(share):>6} {fmt(cov_ratio(r, reference)):>8} "
            f"{stds:>17} {z['kl_per_element']:>8.3f} {fmt(z['iou_under_noise_0.1']):>7} {fmt(z['iou_under_noise_0.3']):>7}"
        )
    print(
        "share: sampled / ceiling accuracy (the diffusion model's part); ch std: min/mean/max per-channel std "
        "of the normalized latents (the noise has 1); IoU@s: occupancy IoU of a held-out shape's decoding "
        "with and without Gaussian noise of std s on its normalized latent"
    )
    print(
        "round trip: held-out latents noised to time t and sampled back by the text model, IoU with their own decoding:"
    )
    times = [f"t={t}" for t in ROUND_TRIP_TIMES]
    print(
        f"{'backbone':9} "
        + " ".join(f"{t:>7}" for t in times)
        + " "
        + " ".join(f"{t + ', anchors given':>21}" for t in times)
    )
    for r in results:
        trip = r.get("round_trip")
        if r["condition"] != "text" or trip is None:
            continue
        noised = [trip.get(f"round_trip_{t}") for t in ROUND_TRIP_TIMES]  # none for a two-stage model
        given = [trip.get(f"round_trip_{t}_anchors_given") for t in ROUND_TRIP_TIMES]
        print(
            f"{r['backbone']:9} "
            + " ".join(f"{fmt(v) if v is not None else '':>7}" for v in noised)
            + " "
            + " ".join(f"{fmt(g) if g is not None else '':>21}" for g in given)
        )


def fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes-ae", type=float, default=3.0, help="autoencoder training budget per model")
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="diffusion training budget per model (at most 30)"
    )
    parser.add_argument("--samples-per-class", type=int, default=5)
    parser.add_argument(
        "--data",
        type=Path,
        help="shard cache (default runs/bench/gen_<poses>_data, or ..._quick with --quick)",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder (default runs/bench/gen_<poses>, or ..._quick with --quick)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="96 shapes, 0.5 min per autoencoder, 0.5 per diffusion model, 2 samples per class",
    )
    parser.add_argument(
        "--backbones", default=",".join(BACKBONES), help="which text-conditioned models to train"
    )
    parser.add_argument(
        "--image-backbone",
        default="best",
        help="the image-conditioned model: 'best' (by text accuracy), 'none', or a backbone",
    )
    parser.add_argument(
        "--poses",
        choices=("upright", "any"),
        default="upright",
        help="the primitives' poses (data-prep --poses)",
    )
    parser.add_argument(
        "--ceiling-only",
        action="store_true",
        help="build the data, print the accuracy rule's ceiling and stop",
    )
    args = parser.parse_args()
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if set(backbones) - set(BACKBONES) or not backbones:
        raise SystemExit(f"--backbones: choose from {sorted(BACKBONES)}")
    if args.image_backbone not in ("best", "none", *BACKBONES):
        raise SystemExit(f"--image-backbone: 'best', 'none' or one of {sorted(BACKBONES)}")
    if args.minutes > 30:
        raise SystemExit("--minutes is at most 30")
    if args.quick:
        args.minutes_ae, args.minutes, args.samples_per_class = 0.5, 0.5, 2
    suffix = "_quick" if args.quick else ""
    data = args.data or ROOT / "runs" / "bench" / f"gen_{args.poses}_data{suffix}"
    out = args.out or ROOT / "runs" / "bench" / f"gen_{args.poses}{suffix}"
    torch.set_num_threads(THREADS)
    sys.argv = sys.argv[:1]  # LightningCLI gets its arguments from `fit`, not from this script's command line
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    paths = build_data(data, args.quick, args.poses)
    ceiling = classifier_ceiling(paths, out)
    print(
        f"prompt-accuracy rule on {ceiling['shapes']} real training shapes ({args.poses} poses): {ceiling['accuracy']:.3f}",
        flush=True,
    )
    if args.ceiling_only:
        return
    results = []
    for name in backbones:
        results.append(run_backbone(name, paths, out, args.minutes_ae, args.minutes, args.samples_per_class))
        print(f"{name} text: accuracy {fmt(results[-1]['prompt_accuracy_of_requested'])}", flush=True)
    if args.image_backbone != "none":
        best = max(results, key=lambda r: r["prompt_accuracy_of_requested"])["backbone"]
        image_backbone = best if args.image_backbone == "best" else args.image_backbone
        results.append(run_image(image_backbone, paths, out, args.minutes, args.samples_per_class))
    reference = data_reference(paths, 12 * args.samples_per_class, out)
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    print_table(results, paths, args, (load_before, load_after), ceiling, reference)
    texts = {r["backbone"]: r for r in results if r["condition"] == "text"}
    image = [r["prompt_accuracy_of_requested"] for r in results if r["condition"] == "image"]
    (out / "results.json").write_text(
        json.dumps({"results": results, "rule_ceiling": ceiling, "data_reference": reference}, indent=2)
    )
    print(
        " ".join(
            f"text_acc_{name}={fmt(texts[name]['prompt_accuracy_of_requested'] if name in texts else None)}"
            for name in BACKBONES
        )
        + f" image_acc_best={fmt(max(image, default=None))} "
        + " ".join(f"ae_ceiling_{name}={fmt(r['ceiling']['accuracy'])}" for name, r in texts.items())
        + " "
        + " ".join(f"cov_ratio_{name}={fmt(cov_ratio(r, reference))}" for name, r in texts.items())
    )


if __name__ == "__main__":
    main()
