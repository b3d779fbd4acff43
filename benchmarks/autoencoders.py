"""Autoencoder quality and cost on the embedded data, trained for a fixed time on this CPU.

Data: the real data-prep job builds two shard sets into `--data` (reused if present; the job
resumes): procedural primitives and every OBJ mesh that pybullet_data ships, at CPU sizes
(SIZES). The last shards of each set are held out; `train.json` and `heldout-<set>.json` in
`--data` are ordinary shard-set indexes over the two sets' shards, so training reads both sets
through the stock `ShardDataModule`.

Training: each model runs in its own process through LightningCLI with the same YAML a user
gives `native3d fit` (configs/autoencoder/<model>_cpu.yaml + configs/trainer/cpu.yaml). A short
timing run measures seconds per step; the main run gets max_steps = budget / (s/step), so the
cosine schedule ends with the budget, and `max_time` = the budget as a hard stop. From step
REPLAN_AT on, every REPLAN_EVERY steps, the main run plans again from its own recent pace and the
time left (the timing run's estimate is good to about 10%): a callback of this script sets the
trainer's max_steps and aims the learning-rate schedule at the new last step. `--jobs N` trains
N models at a time, each with cores / N torch threads (on 2 cores, `--jobs 2` gives each model one
core and halves the wall time of the run). `--processes vecset=2` trains a model as two DDP ranks
on this machine (gloo on loopback, as a multi-GPU run is laid out: each rank reads its own shards
with a batch of 8, so a step sees 16 shapes), sharing the model's cores between them. VecSet trains
so by default (DDP_RANKS) when its share of the cores allows two ranks; the others as one process.

Evaluation on the held-out shapes (posterior mode, as validation does):
  - volume IoU: sign agreement on the shard's uniform queries (the first half of `query.npy`),
    on every held-out shape;
  - Chamfer-L1 and F-score@0.02 of `decode_mesh` marching-cubes meshes at 64^3 (2,048 points
    sampled on each mesh) against the shape's surface points, as the training module logs them,
    on the first `--mesh-shapes` held-out shapes of each set (meshing costs seconds per shape here);
  - the same IoU on as many training shapes (the first shards of each set's training part): close
    to the held-out IoU, the model underfits; well above it, it overfits;
  - as a reference without a model, the IoU of the input `sdf.npy` itself read trilinearly at the
    same queries: the ceiling that the grid resolution sets.
Throughput is training samples per second over the main run's training batches; peak memory is
the training process's peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`; a DDP
model's ranks' peaks added).

    .venv/bin/python benchmarks/autoencoders.py [--models vecset,grid,triplane] [--minutes 10] [--jobs 1] [--keep] [--quick]
        [--config MODEL=YAML] [--precision MODEL=PRECISION] [--processes MODEL=N]

`--quick` checks the script on tiny data (48 + 48 shapes) with half a minute per model. `--keep`
reports, next to the models trained now, the results already in `--out` for the others (marked
"kept": an earlier run, with its own threads and budget), so one model can be rerun alone.
`--config triplane=my.yaml` trains a model with another config of the same form (the table names
the config of every row). `--precision triplane=bf16-mixed` trains a model under another Lightning
precision than `configs/trainer/cpu.yaml`'s 32-true (bf16 autocast runs convolutions faster on CPUs
with AVX-512 BF16); evaluation always runs in float32.

The last line is machine-readable: `iou_vecset=<x> iou_grid=<y> iou_triplane=<z>`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from native3d.data.shards import load_index
from native3d.training.optim import warmup_cosine

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
MODELS = ("vecset", "grid", "triplane")
GRID_RESOLUTION = 64
DDP_RANKS = {"vecset": 2}  # default ranks per model; `--processes` overrides
SIZES = [
    "--surface-points",
    "2048",
    "--grid-resolution",
    str(GRID_RESOLUTION),
    "--query-points",
    "4096",
    "--views",
    "0",
    "--view-size",
    "32",
]
CORES = os.cpu_count() or 1
BATCH_SIZE = 8
TRAIN_QUERIES = 2048  # a random half of each shape's queries per step
MESH_RESOLUTION = 64
TIMING_STEPS = 32  # the timing run; its first STEPS_SKIPPED steps are warm-up (oneDNN, the shuffle buffer)
STEPS_SKIPPED = 12
UNDERUSED = 0.9  # a run that trains less of its budget than this gets a warning under the table
REPLAN_AT, REPLAN_EVERY = (
    200,
    500,
)  # the main run plans its steps again at these steps, from its own pace (not with --quick)
PRECISIONS = ("32-true", "bf16-mixed")  # what a CPU trains in


def data_plan(quick: bool) -> dict[str, dict]:
    """Per shard set: the data-prep source arguments, the shard size and how many shards are held out."""
    if quick:
        return {
            "primitives": {
                "source": ["--source", "primitives", "--count", "48"],
                "shard_size": 16,
                "held_out": 1,
            },
            "pybullet": {
                "source": ["--source", "pybullet", "--limit", "48"],
                "shard_size": 16,
                "held_out": 1,
            },
        }
    return {
        "primitives": {
            "source": ["--source", "primitives", "--count", "512"],
            "shard_size": 32,
            "held_out": 1,
        },
        "pybullet": {"source": ["--source", "pybullet"], "shard_size": 32, "held_out": 2},
    }


# ---------------------------------------------------------------------------------------------
# Data


def build_data(data: Path, quick: bool) -> dict[str, Path]:
    """Builds (or resumes) both shard sets and writes the train and held-out indexes; returns their paths."""
    from native3d.data.datamodule import hold_out

    train_shards, sample_shards, sets, held = [], [], {}, {}
    for name, plan in data_plan(quick).items():
        out = data / name
        if (out / "index.json").is_file() and load_index(out).sizes.grid_resolution != GRID_RESOLUTION:
            raise SystemExit(
                f"{out}: built with another grid resolution than {GRID_RESOLUTION}; give another --data"
            )
        if not (out / "index.json").is_file():
            build = [
                "build",
                *plan["source"],
                "--out",
                str(out),
                "--shard-size",
                str(plan["shard_size"]),
                "--workers",
                str(CORES),
                *SIZES,
            ]
            prep(build)
            prep(["index", "--out", str(out)])
        train, heldout = hold_out(load_index(out), plan["held_out"])
        sets[name] = heldout
        train_shards += list(train.shards)
        sample_shards += list(train.shards[: plan["held_out"]])  # as many training shapes as held-out ones
        held[name] = write_index(data / f"heldout-{name}.json", heldout.shards, heldout.info, data)
    first = next(iter(sets.values()))
    for name, index in sets.items():
        if index.info["sizes"] != first.info["sizes"]:
            raise SystemExit(
                f"{data / name}: built with other sizes than the other set; remove {data} and rerun"
            )
    all_held = [s for index in sets.values() for s in index.shards]
    paths = {"train": write_index(data / "train.json", train_shards, first.info, data)}
    paths["heldout"] = write_index(data / "heldout.json", all_held, first.info, data)
    paths["train-sample"] = write_index(data / "train-sample.json", sample_shards, first.info, data)
    return {**paths, **{f"heldout-{name}": path for name, path in held.items()}}


def prep(args: list[str]) -> None:
    """`python -m data_prep ...`, as a user runs it (a subprocess: this folder's data_prep.py would shadow the package)."""
    subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=ROOT, check=True)


def write_index(path: Path, shards, info: dict, root: Path) -> Path:
    """An index.json over shards of other sets (urls relative to `root`, where it lives)."""
    entries = [{"url": os.path.relpath(url, root), "count": count} for url, count in shards]
    merged = {k: info[k] for k in ("schema_version", "sizes")}
    merged.update(shards=entries, num_samples=sum(c for _, c in shards), num_failed=0)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True))
    return path


# ---------------------------------------------------------------------------------------------
# Training and evaluation, one model per process


class BatchTimer:
    """When every training batch starts and ends: steps, their period (data included) and the loop's span."""

    def __init__(self) -> None:
        import lightning as L

        timer = self

        class Callback(L.Callback):
            def on_train_batch_start(self, *args) -> None:
                timer.starts.append(time.perf_counter())

            def on_train_batch_end(self, *args) -> None:
                timer.end = time.perf_counter()

        self.callback, self.starts, self.end = Callback(), [], None
        self.replans: list[tuple[int, int, float]] = []  # (at step, planned steps, s/step) of each re-plan

    def replan_callback(self, world: int, limit: int):
        """A callback that sets max_steps to what the rest of the budget allows at the run's own recent pace.

        A timing run measured too slow ends minutes early; one measured too fast is cut by the time
        limit before its schedule ends. It plans at step REPLAN_AT, then every REPLAN_EVERY steps
        from the median s/step of the last REPLAN_EVERY steps, so a pace that changes during the run
        is followed too. `max_time` stays the hard stop; at most `limit` steps (the loader's epoch)
        are planned; on DDP ranks the slowest rank's pace and the least time left count, so every
        rank plans the same steps.
        """
        import lightning as L
        from lightning.pytorch.callbacks import Timer

        timer = self

        class Replan(L.Callback):
            def on_train_batch_end(self, trainer, *args) -> None:
                step = trainer.global_step
                if step < REPLAN_AT or (step - REPLAN_AT) % REPLAN_EVERY:
                    return
                pace = timer.seconds_per_step(max(STEPS_SKIPPED, len(timer.starts) - REPLAN_EVERY - 1))
                remaining = next(c for c in trainer.callbacks if isinstance(c, Timer)).time_remaining()
                if world > 1:
                    pace = all_reduce(pace, torch.distributed.ReduceOp.MAX)
                    remaining = all_reduce(remaining, torch.distributed.ReduceOp.MIN)
                # 1% to spare, so that the schedule ends before the time limit rather than being cut by it
                steps = min(limit, step + int(0.99 * remaining / pace))
                trainer.fit_loop.epoch_loop.max_steps = steps  # Lightning reads it at every step
                aim_schedule(trainer, steps)
                timer.replans.append((step, steps, pace))

        return Replan()

    @property
    def steps(self) -> int:
        return len(self.starts)

    @property
    def span(self) -> float:
        return self.end - self.starts[0]

    def seconds_per_step(self, skipped: int) -> float:
        """Median start-to-start time after `skipped` warm-up steps: compute, data and loop overhead."""
        return statistics.median(b - a for a, b in zip(self.starts[skipped:], self.starts[skipped + 1 :]))


def fit(
    config: Path,
    paths: dict,
    out: Path,
    max_steps: int,
    max_seconds: float | None,
    quick: bool,
    precision: str,
    world: int,
):
    """Trains the model of `config` through LightningCLI (as `native3d fit` does); returns (module, datamodule, timer).

    With `world` > 1 this process is one DDP rank of `world` (its environment names the rank).
    A budgeted run (`max_seconds`, not `quick`) re-plans its steps as it goes, up to twice `max_steps`.
    """
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    replan = max_seconds is not None and not quick and max_steps > 2 * REPLAN_AT
    epoch = 2 * max_steps if replan else max_steps  # the loader's length: room for a re-plan to grow
    argv = [
        "--config",
        str(config),
        "--config",
        str(CONFIGS / "trainer" / "cpu.yaml"),
        "--data",
        "native3d.data.datamodule.ShardDataModule",
        "--data.train",
        str(paths["train"]),
        "--data.val",
        str(paths["heldout"]),
        "--data.batch_size",
        str(BATCH_SIZE),
        "--data.num_workers",
        "0",
        "--data.query_points",
        str(TRAIN_QUERIES),
        "--data.shuffle_buffer",
        "64" if quick else "256",
        "--data.batches_per_epoch",
        str(epoch),
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.precision",
        precision,
        "--seed_everything",
        "0",
    ]
    if max_seconds is not None:
        argv += ["--trainer.max_time", dd_hh_mm_ss(max_seconds)]
    if world > 1:
        argv += ["--trainer.devices", str(world), "--trainer.strategy", "ddp"]
    cli = LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        run=False,
        args=argv,
    )
    timer = BatchTimer()
    cli.trainer.callbacks.append(timer.callback)
    if replan:
        cli.trainer.callbacks.append(timer.replan_callback(world, limit=epoch))
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli.model, cli.datamodule, timer


def aim_schedule(trainer, steps: int) -> None:
    """Re-aims the run's warm-up + cosine schedule (`native3d.training.optim.warmup_cosine`) at `steps`.

    The library's schedule reads the run length once, when the optimizers are configured; a re-plan
    replaces its factor so that the decay still ends with the run's last step.
    """
    warmup = trainer.lightning_module.hparams.warmup_steps

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup, steps)

    for config in trainer.lr_scheduler_configs:
        config.scheduler.lr_lambdas = [factor] * len(config.scheduler.lr_lambdas)


def all_reduce(value: float, op) -> float:
    """`value` reduced over the DDP ranks (the process group that Lightning set up stays until exit)."""
    tensor = torch.tensor(value, dtype=torch.float64)
    torch.distributed.all_reduce(tensor, op)
    return tensor.item()


def dd_hh_mm_ss(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours // 24:02d}:{hours % 24:02d}:{m:02d}:{s:02d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_config(model: str) -> Path:
    return CONFIGS / "autoencoder" / f"{model}_cpu.yaml"


def per_model(flag: str, items: list[str], name: str, valid, expected: str) -> list[tuple[str, str]]:
    """Parses repeated `flag MODEL=VALUE` options; a bad one stops with an error naming it."""
    pairs = []
    for item in items:
        model, _, value = item.partition("=")
        if model not in MODELS or not valid(value):
            raise SystemExit(
                f"{flag} {item}: expected MODEL={name} with MODEL in {MODELS} and {name} {expected}"
            )
        pairs.append((model, value))
    return pairs


@torch.no_grad()
def evaluate(autoencoder, train: Path, heldout: Path, mesh_shapes: int | None) -> dict[str, list[float]]:
    """Per shape of `heldout` (any shard-set index): IoU; Chamfer-L1 / F-score of its 64^3 mesh for the first `mesh_shapes` (all if None)."""
    from native3d.data.datamodule import ShardDataModule
    from native3d.metrics import volume_iou
    from native3d.training.autoencoder import mesh_scores
    from native3d.training.previews import decode_previews

    autoencoder.eval()
    scores = {"iou": [], "chamfer_l1": [], "fscore": [], "no_surface": []}
    datamodule = ShardDataModule(str(train), val=str(heldout), batch_size=BATCH_SIZE, num_workers=0)
    for batch in datamodule.val_dataloader():  # every shape of `heldout` once, with all its queries
        latent = autoencoder.encode(autoencoder.inputs_from_batch(batch)).mode()
        uniform = batch["query"][:, : batch["query"].shape[1] // 2]  # (B, Q/2, 4), uniform in the cube
        pred = autoencoder.decode(latent, uniform[..., :3])
        scores["iou"] += volume_iou(pred, uniform[..., 3], kind="sdf").value.tolist()
        for i in range(len(latent)):
            if (
                mesh_shapes is not None
                and len(scores["chamfer_l1"]) + len(scores["no_surface"]) >= mesh_shapes
            ):
                break
            previews = decode_previews(autoencoder, latent[i : i + 1], MESH_RESOLUTION)
            mesh = mesh_scores(previews.points, batch["surface"][i : i + 1, :, :3])
            if "chamfer_l1" in mesh:
                scores["chamfer_l1"].append(float(mesh["chamfer_l1"]))
                scores["fscore"].append(float(mesh["fscore_0.02"]))
            else:
                scores["no_surface"].append(batch["id"][i])
    expected = load_index(heldout).num_samples
    if len(scores["iou"]) != expected:
        raise RuntimeError(f"{heldout}: scored {len(scores['iou'])} of its {expected} shapes")
    return scores


@torch.no_grad()
def input_grid_iou(train: Path, heldout: Path) -> list[float]:
    """Per held-out shape: IoU of the stored `sdf.npy` grid itself, read trilinearly at the uniform queries.

    What a perfect decoder of the input grid would score: the ceiling set by the grid's resolution.
    """
    from native3d.autoencoders.decoders import sample_volume
    from native3d.data.datamodule import ShardDataModule
    from native3d.metrics import volume_iou

    ious = []
    for batch in ShardDataModule(
        str(train), val=str(heldout), batch_size=BATCH_SIZE, num_workers=0
    ).val_dataloader():
        uniform = batch["query"][:, : batch["query"].shape[1] // 2]
        pred = sample_volume(batch["sdf"][:, None], uniform[..., :3])[..., 0]  # (B, Q/2)
        ious += volume_iou(pred, uniform[..., 3], kind="sdf").value.tolist()
    return ious


def summary(scores: dict[str, list]) -> dict:
    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    meshed = len(scores["chamfer_l1"]) + len(scores["no_surface"])
    return {
        "shapes": len(scores["iou"]),
        "iou": mean(scores["iou"]),
        "meshed": meshed,
        "found": len(scores["chamfer_l1"]),
        "chamfer_l1": mean(scores["chamfer_l1"]),
        "fscore": mean(scores["fscore"]),
    }


def run_model(
    model: str,
    paths: dict,
    out: Path,
    minutes: float,
    quick: bool,
    mesh_shapes: int | None,
    result_path: Path,
    threads: int,
    config: Path,
    precision: str,
    rank: int = 0,
    world: int = 1,
    port: int = 0,
) -> None:
    """One model, or one DDP rank of it: timing run, budgeted run, evaluation (rank 0); writes a JSON result."""
    torch.set_num_threads(threads)
    if world > 1:  # ranks started here, as a cluster launcher would start them: Lightning reads these
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            NODE_RANK="0",
            LOCAL_RANK=str(rank),
            GLOO_SOCKET_IFNAME="lo",
        )
    sys.argv = sys.argv[:1]  # LightningCLI gets its arguments from `fit`, not from this script's command line
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    timing_steps, skipped = (6, 2) if quick else (TIMING_STEPS, STEPS_SKIPPED)
    _, _, timing = fit(config, paths, out / "timing", timing_steps, None, quick, precision, world)
    seconds_per_step = timing.seconds_per_step(skipped)
    if world > 1:  # every rank plans the same steps, from the slowest rank's timing
        seconds_per_step = all_reduce(seconds_per_step, torch.distributed.ReduceOp.MAX)
    budget = 60.0 * minutes
    steps = max(skipped + 1, int(budget / seconds_per_step))
    module, _, timer = fit(config, paths, out / "run", steps, budget, quick, precision, world)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    if world > 1:
        peak_rss_mb = all_reduce(peak_rss_mb, torch.distributed.ReduceOp.SUM)  # the ranks' peaks, added
        # Every rank leaves the group before it goes on or exits: a rank that exits with the group
        # alive can abort in its teardown. Evaluation then runs on rank 0 alone, on every held-out
        # shape (without the group the shard sets are no longer split by rank), on all the model's cores.
        torch.distributed.destroy_process_group()
        if rank > 0:
            return
        torch.set_num_threads(threads * world)
    done = timer.steps
    result = {
        "model": model,
        "config": os.path.relpath(config, ROOT),
        "params": sum(p.numel() for p in module.autoencoder.parameters()),
        "latent_shape": list(module.autoencoder.latent_shape),
        "seconds_per_step_timed": seconds_per_step,
        "budget_minutes": minutes,
        "planned_steps": steps,
        "replans": timer.replans,  # [at step, planned steps, s/step] of each re-plan
        "steps": done,
        "train_minutes": timer.span / 60,
        "samples_per_second": done * BATCH_SIZE * world / timer.span,
        "peak_rss_mb": peak_rss_mb,
        "threads": threads,
        "processes": world,
        "precision": precision,
    }
    per_set = {
        name[len("heldout-") :]: evaluate(module.autoencoder, paths["train"], path, mesh_shapes)
        for name, path in paths.items()
        if name.startswith("heldout-")
    }
    result["heldout"] = summary(
        {key: [v for scores in per_set.values() for v in scores[key]] for key in next(iter(per_set.values()))}
    )
    result.update({f"heldout-{name}": summary(scores) for name, scores in per_set.items()})
    # The same score on training shapes: near the held-out IoU, the model underfits; far above it, it overfits.
    result["train-sample"] = summary(evaluate(module.autoencoder, paths["train"], paths["train-sample"], 0))
    result_path.write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# Report


def wait_all(running: list[tuple[str, multiprocessing.Process]]) -> None:
    """Waits for every process; the first one that fails stops the others (a DDP rank left alone would wait forever)."""
    pending = dict(running)
    while pending:
        multiprocessing.connection.wait([process.sentinel for process in pending.values()])
        for name, process in list(pending.items()):
            if process.exitcode is None:
                continue
            del pending[name]
            if process.exitcode != 0:
                for other in pending.values():
                    other.terminate()
                raise SystemExit(f"{name}: training process exited with {process.exitcode}")
            print(f"{name}: done", flush=True)


def threads_column(result: dict) -> str:
    processes = result.get("processes", 1)
    return f"{processes}x{result['threads']}" if processes > 1 else str(result["threads"])


def print_table(results: list[dict], paths: dict, load: tuple, jobs: int) -> None:
    train, held = load_index(paths["train"]), load_index(paths["heldout"])
    print(
        f"data: {train.num_samples} training shapes, {held.num_samples} held-out shapes "
        f"({', '.join(f'{k[8:]} {load_index(v).num_samples}' for k, v in paths.items() if k.startswith('heldout-'))}; "
        f"the last shards of each set); sizes {train.info['sizes']}"
    )
    print(
        f"training: batch {BATCH_SIZE}, {TRAIN_QUERIES} random queries per shape, {jobs} model(s) at a time on {CORES} cores; "
        f"load average before/after: {load[0]} / {load[1]}"
    )
    header = f"{'model':9} {'run':4} {'thr':>4} {'params':>9} {'latent':>14} {'steps':>6} {'budget':>6} {'min':>5} {'samples/s':>9} {'peakRSS MB':>10} "
    header += (
        f"{'IoU':>6} {'IoU prim':>8} {'IoU pyb':>8} {'IoU trn':>7} {'CD-L1':>7} {'F@0.02':>7} {'meshes':>7}"
    )
    print(header)
    for r in results:
        h, p, b = r["heldout"], r["heldout-primitives"], r["heldout-pybullet"]
        latent = "x".join(str(d) for d in r["latent_shape"])
        print(
            f"{r['model']:9} {'kept' if r.get('kept') else 'now':4} {threads_column(r):>4} {r['params']:>9,} {latent:>14} {r['steps']:>6} {r['budget_minutes']:>6.1f} {r['train_minutes']:>5.1f} "
            f"{r['samples_per_second']:>9.1f} {r['peak_rss_mb']:>10.0f} {h['iou']:>6.3f} {p['iou']:>8.3f} {b['iou']:>8.3f} {r.get('train-sample', {}).get('iou', float('nan')):>7.3f} "
            f"{h['chamfer_l1']:>7.4f} {h['fscore']:>7.3f} {h['found']:>3}/{h['meshed']:<3}"
        )
    print(
        "configs: "
        + ", ".join(f"{r['model']} {r['config']} ({r.get('precision', '32-true')})" for r in results)
    )
    for r in results:
        plan = f"{r['model']}: {r['planned_steps']:,} steps planned from the timing run ({r['seconds_per_step_timed']:.3f} s/step)"
        if r.get("replans"):
            (first_at, first, first_pace), (last_at, last, last_pace) = r["replans"][0], r["replans"][-1]
            plan += f"; re-planned {len(r['replans'])} times from its own pace: {first:,} at step {first_at:,} ({first_pace:.3f} s/step)"
            plan += (
                f", ..., {last:,} at step {last_at:,} ({last_pace:.3f} s/step)"
                if len(r["replans"]) > 1
                else ""
            )
        print(plan)
        if r["train_minutes"] < UNDERUSED * r["budget_minutes"]:
            print(
                f"warning: {r['model']} trained {r['train_minutes']:.1f} of its {r['budget_minutes']:.1f} minutes: it ran "
                f"faster than planned (was the machine busy while it timed its steps?)"
            )
    print(
        "IoU: sign agreement on the uniform half of each held-out shape's queries; IoU trn: the same on as many "
        "training shapes (the first shards of each set); CD-L1 / F@0.02: 64^3 decode_mesh "
        "meshes (2,048 points) vs the shape's surface points, over the meshes with a surface (meshes = found/tried); "
        "peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss of the training process (summed over DDP ranks); "
        "thr: torch threads (ranks x threads for a DDP run; batch 8 per rank); "
        "min: minutes of training (the budget caps it)"
    )
    ceiling = {
        k[len("heldout-") :]: input_grid_iou(paths["train"], v)
        for k, v in paths.items()
        if k.startswith("heldout-")
    }
    every = [v for values in ceiling.values() for v in values]
    print(
        f"reference, no model: the input sdf.npy ({train.sizes.grid_resolution}^3) read trilinearly at the same queries: IoU {statistics.fmean(every):.3f} "
        f"({', '.join(f'{k} {statistics.fmean(v):.3f}' for k, v in ceiling.items())})"
    )
    print(
        "the full presets (configs/autoencoder/<model>.yaml) are GPU-sized: benchmarks/autoencoder_presets.py measures their GPU memory and throughput"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model (at most 20)")
    parser.add_argument(
        "--data",
        type=Path,
        help=f"shard cache (default runs/bench/ae_data{GRID_RESOLUTION}, or ..._quick with --quick)",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder (default runs/bench/ae, or ae_quick with --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny data, 0.5 minutes per model, 4 meshes per set"
    )
    parser.add_argument(
        "--mesh-shapes",
        type=int,
        default=16,
        help="mesh the first N held-out shapes of each set (0: none, -1: all)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="models trained at a time; each gets cores / jobs torch threads"
    )
    parser.add_argument(
        "--keep", action="store_true", help="also report the other models' results already in --out"
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="MODEL=YAML",
        help="train MODEL with this config instead of configs/autoencoder/MODEL_cpu.yaml",
    )
    parser.add_argument(
        "--precision",
        action="append",
        default=[],
        metavar="MODEL=PRECISION",
        help="train MODEL under this Lightning precision (default 32-true)",
    )
    parser.add_argument(
        "--processes",
        action="append",
        default=[],
        metavar="MODEL=N",
        help="train MODEL as N DDP ranks (gloo), sharing its cores (default: DDP_RANKS, at most its cores)",
    )
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; choose from {MODELS}")
    configs = {model: model_config(model) for model in MODELS}
    for model, path in per_model(
        "--config", args.config, "YAML", lambda path: Path(path).is_file(), "an existing file"
    ):
        configs[model] = Path(path).resolve()
    precisions = {model: "32-true" for model in MODELS}
    precisions.update(
        per_model(
            "--precision",
            args.precision,
            "PRECISION",
            lambda precision: precision in PRECISIONS,
            f"one of {PRECISIONS}",
        )
    )
    # VecSet trains as DDP ranks of one thread each where it has the cores: 1.2x the samples per
    # second of one process with their threads (docs/results.md).
    processes = {model: min(DDP_RANKS.get(model, 1), max(1, CORES // args.jobs)) for model in MODELS}
    processes.update(
        (m, int(n))
        for m, n in per_model(
            "--processes", args.processes, "N", lambda n: n.isdigit() and int(n) >= 1, "a positive integer"
        )
    )
    if args.minutes > 20:
        raise SystemExit("--minutes is at most 20")
    minutes = 0.5 if args.quick else args.minutes
    suffix = "_quick" if args.quick else ""
    data = args.data or ROOT / "runs" / "bench" / f"ae_data{GRID_RESOLUTION}{suffix}"
    out = args.out or ROOT / "runs" / "bench" / f"ae{suffix}"
    mesh_shapes = 4 if args.quick else (None if args.mesh_shapes < 0 else args.mesh_shapes)
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    paths = build_data(data, args.quick)
    # One process per model (per rank of a DDP model): a clean peak RSS and no state shared between runs; `--jobs` models at a time.
    running: list[
        tuple[str, multiprocessing.Process]
    ] = []  # the processes of the models started since the last wait
    for i, model in enumerate(models, start=1):
        result_path = out / model / "result.json"
        result_path.parent.mkdir(parents=True, exist_ok=True)
        world, port = processes[model], free_port()
        threads = max(1, CORES // args.jobs // world)
        for rank in range(world):
            work = (
                model,
                paths,
                out / model,
                minutes,
                args.quick,
                mesh_shapes,
                result_path,
                threads,
                configs[model],
                precisions[model],
                rank,
                world,
                port,
            )
            # Daemonic: they end with this process, whichever way it ends.
            process = multiprocessing.get_context("spawn").Process(target=run_model, args=work, daemon=True)
            running.append((model if world == 1 else f"{model} rank {rank}", process))
            process.start()
        if i % args.jobs == 0 or i == len(models):
            wait_all(running)
            running = []
    results = []
    for model in MODELS:
        path = out / model / "result.json"
        if model in models or (args.keep and path.is_file()):
            results.append({**json.loads(path.read_text()), "kept": model not in models})
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    print_table(results, paths, (load_before, load_after), args.jobs)
    by_model = {r["model"]: r["heldout"]["iou"] for r in results}
    print(" ".join(f"iou_{m}={by_model[m]:.4f}" if m in by_model else f"iou_{m}=nan" for m in MODELS))


if __name__ == "__main__":
    main()
