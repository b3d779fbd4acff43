"""`native3d demo`: the whole pipeline on the embedded data, at sizes a 2-core CPU runs in minutes.

1. data prep: captioned primitives with views (train set, and a held-out set from another seed)
   and the meshes pybullet ships;
2. the three autoencoders (VecSet, Grid, Triplane) on the primitives, then their latents;
3. the three diffusion models on those latents, text-conditioned, and one image-conditioned;
4. meshes sampled from text prompts and from a held-out object's view;
5. reconstruction and generation metrics against the held-out primitives;
6. `report.md`, `metrics.json` and a contact sheet of every sample.

Every stage goes through the same commands a user runs (`native3d prep|fit|encode|sample|evaluate`)
and is skipped when its output exists, so a rerun reuses what is finished.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from native3d.checkpoints import read_checkpoint
from native3d.data.schema import Sizes
from native3d.errors import BadModelError
from native3d.files import atomic_path, write_atomic, write_json

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_SIZES = Sizes(
    surface_points=2048, grid_resolution=32, query_points=4096, views=4, view_size=64, sharp_points=512
)
# The primitives stand upright, as category-aligned data sets do: prompt accuracy classifies a sample
# by its nearest held-out shapes, a rule that mislabels a third of real shapes in any pose
# (docs/results.md, Generation).
PRIMITIVES = ["--source", "primitives", "--poses", "upright"]
SHARD_SETS = {  # name -> `native3d prep build` source arguments
    "primitives": [*PRIMITIVES, "--count", "240", "--seed", "0", "--shard-size", "24"],
    "primitives_heldout": [*PRIMITIVES, "--count", "48", "--seed", "1", "--shard-size", "24"],
    "pybullet": ["--source", "pybullet", "--limit", "48", "--shard-size", "24"],
}
# name -> (config, budget: multiples of AE_STEPS and AE_MINUTES); the VecSet learns slowest
# (docs/results.md, The demo).
AUTOENCODERS = {
    "vecset": ("vecset_tiny.yaml", 3),
    "grid": ("grid_tiny.yaml", 1),
    "triplane": ("triplane_tiny.yaml", 1),
}
DIFFUSION = {  # model name -> (diffusion config, autoencoder, extra configs)
    "set_dit": ("set_dit_tiny.yaml", "vecset", []),
    "unet3d": ("unet3d_tiny.yaml", "grid", []),
    "triplane_unet": ("triplane_unet_tiny.yaml", "triplane", []),
    "triplane_unet_image": (
        "triplane_unet_tiny.yaml",
        "triplane",
        [CONFIGS / "conditioning" / "image_tiny.yaml"],
    ),
}
SAMPLE_STEPS = 25
MESH_RESOLUTION = 64  # marching-cubes cells per axis for reconstructions and samples
EVAL_POINTS = 1024  # points per shape for the generation metrics
# An autoencoder below this held-out IoU has collapsed (e.g. it decodes every shape as outside):
# the demo stops there, naming it, instead of training diffusion on its latents.
MIN_HELD_OUT_IOU = 0.5
AE_STEPS, AE_MINUTES = 600, 1.5
# On a CPU the minutes end each diffusion run (a few hundred steps per minute); on a GPU the steps.
DIFFUSION_STEPS, DIFFUSION_MINUTES = 1500, 1.75


class Stages:
    """Runs named stages once; their wall times go to `<out>/stages.json` for the report."""

    def __init__(self, out: Path) -> None:
        self.path = out / "stages.json"
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, output: Path, work: Callable[[], None]) -> Path:
        if output.exists():
            print(f"== {name}: reusing {output}")
            return output
        print(f"== {name}")
        start = time.perf_counter()
        work()
        self.seconds[name] = time.perf_counter() - start
        write_json(self.path, self.seconds)
        return output


Command = Callable[[list[str]], int]  # `native3d.cli.run`: a `native3d` command line -> its exit code


def checked(command: Command) -> Callable[[list], None]:
    """`command` over arguments of any type, a nonzero exit code raised; a user error propagates as it is."""

    def run(argv: list) -> None:
        code = command([str(a) for a in argv])
        if code:
            raise SystemExit(f"native3d {argv[0]} failed with exit code {code}")

    return run


def build_shards(cli: Callable[[list], None], folder: Path, source: list[str], workers: int) -> None:
    from data_prep.cli import size_arguments

    cli(["prep", "build", *source, "--out", folder, "--workers", workers, *size_arguments(DEMO_SIZES)])
    cli(["prep", "index", "--out", folder])
    cli(["prep", "report", "--out", folder])


def fit(
    cli: Callable[[list], None],
    configs: list[Path],
    run_dir: Path,
    data: list[str],
    steps: int,
    minutes: float,
    target: Path,
) -> None:
    """`native3d fit`, then the run's last checkpoint copied to `target`."""
    config_args = [a for c in configs for a in ("--config", c)]
    cli(
        [
            "fit",
            *config_args,
            "--config",
            CONFIGS / "trainer" / "cpu.yaml",
            "--trainer.accelerator",
            "auto",  # a GPU where there is one (encode, sample and evaluate default to it too)
            *data,
            "--trainer.max_steps",
            steps,
            "--trainer.max_time",
            f"00:00:{int(minutes):02d}:{int(60 * (minutes % 1)):02d}",
            "--trainer.val_check_interval",
            steps // 2,
            "--trainer.default_root_dir",
            run_dir,
            "--trainer.logger.init_args.save_dir",
            run_dir,
            "--seed_everything",
            0,
        ]
    )
    last = max(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    with atomic_path(target) as tmp:
        shutil.copy(last, tmp)


def run_demo(out: str, command: Command, workers: int = 2) -> int:
    """Every stage through `command` (the `native3d` commands), skipping those whose output exists."""
    cli = checked(command)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    print(f"== device: {device_name()}")
    for name, source in SHARD_SETS.items():
        folder = out / "shards" / name
        stages.run(
            f"data prep: {name}",
            folder / "index.json",
            lambda f=folder, s=source: build_shards(cli, f, s, workers),
        )
    train_data = [
        "--data",
        "native3d.data.datamodule.ShardDataModule",
        "--data.train",
        out / "shards" / "primitives",
        "--data.val_shards",
        1,
        "--data.batch_size",
        8,
        "--data.num_workers",
        0,
        "--data.batches_per_epoch",
        100,
    ]
    for name, (config, budget) in AUTOENCODERS.items():
        ckpt = out / "autoencoders" / f"{name}.ckpt"
        run_dir = out / "autoencoders" / name
        configs = [CONFIGS / "autoencoder" / config]
        stages.run(
            f"autoencoder: {name}",
            ckpt,
            lambda c=configs, r=run_dir, k=ckpt, b=budget: fit(
                cli, c, r, train_data, b * AE_STEPS, b * AE_MINUTES, k
            ),
        )
        latents = out / "latents" / name
        stages.run(
            f"encode: {name}",
            latents / "index.json",
            lambda k=ckpt, d=latents: cli(
                ["encode", "--ckpt", k, "--data", out / "shards" / "primitives", "--out", d]
            ),
        )
        stages.run(
            f"evaluate: {name} reconstruction",
            out / "reconstruction" / name / "metrics.json",
            lambda k=ckpt, n=name: cli(
                [
                    "evaluate",
                    "--ckpt",
                    k,
                    "--data",
                    out / "shards" / "primitives_heldout",
                    "--out",
                    out / "reconstruction" / n,
                    "--resolution",
                    MESH_RESOLUTION,
                    "--limit",
                    12,
                ]
            ),
        )
        check_autoencoder(name, out / "reconstruction" / name / "metrics.json", run_dir)
    heldout = out / "shards" / "primitives_heldout"
    for name, (config, ae, extra) in DIFFUSION.items():
        ckpt = out / "diffusion" / f"{name}.ckpt"
        data = [
            "--config",
            CONFIGS / "data" / "latents.yaml",
            "--data.train",
            out / "latents" / ae,
            "--data.num_workers",
            0,
            "--model.init_args.autoencoder",
            out / "autoencoders" / f"{ae}.ckpt",
        ]
        configs = [CONFIGS / "diffusion" / config, *extra]
        stages.run(
            f"diffusion: {name}",
            ckpt,
            lambda c=configs, n=name, d=data, k=ckpt: fit(
                cli, c, out / "diffusion" / n, d, DIFFUSION_STEPS, DIFFUSION_MINUTES, k
            ),
        )
        # Text models: "a <class>" per held-out class; the image model: view 0 of the first held-out object of each class.
        stages.run(
            f"sample and evaluate: {name}",
            out / "generation" / name / "metrics.json",
            lambda k=ckpt, n=name: cli(
                [
                    "evaluate",
                    "--ckpt",
                    k,
                    "--reference",
                    heldout,
                    "--out",
                    out / "generation" / n,
                    "--num",
                    1,
                    "--steps",
                    SAMPLE_STEPS,
                    "--resolution",
                    MESH_RESOLUTION,
                    "--points",
                    EVAL_POINTS,
                ]
            ),
        )
    write_contact_sheet(out)
    write_report(out, stages.seconds)
    print(f"== done: {out / 'report.md'}")
    return 0


def check_autoencoder(name: str, metrics: Path, run_dir: Path) -> None:
    """Stops the demo, naming the model, when its held-out IoU says it has collapsed."""
    iou = json.loads(metrics.read_text())["summary"].get("volume_iou")
    if iou is None or iou < MIN_HELD_OUT_IOU:
        raise BadModelError(
            f"autoencoder {name}: held-out IoU {iou if iou is None else round(iou, 3)} (below "
            f"{MIN_HELD_OUT_IOU}; {metrics}): it has collapsed, so no diffusion model is trained on it; "
            f"its run is in {run_dir}"
        )


def loss_trend(run_dir: Path, warmup_steps: int) -> tuple[float, float] | None:
    """Mean training loss of the first and of the last fifth of the logged steps after warm-up
    (from the run's CSV log); None when too few steps were logged to tell."""
    logs = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    with logs[-1].open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss") and int(r["step"]) >= warmup_steps]
    losses = [float(r["train/loss"]) for r in rows]
    if len(losses) < 5:
        return None
    fifth = len(losses) // 5
    return statistics.fmean(losses[:fifth]), statistics.fmean(losses[-fifth:])


def write_contact_sheet(out: Path) -> None:
    """`contact_sheet.png`: a row per diffusion model, a column per sample, each labelled with its prompt."""
    from native3d.sampling import labelled_sheet

    rows = []
    for name in DIFFUSION:
        listed = out / "generation" / name / "samples" / "samples.json"
        if listed.exists():
            rows.append((name, json.loads(listed.read_text())["samples"], listed.parent))
    if rows:
        labelled_sheet(rows, out / "contact_sheet.png")


def device_name() -> str:
    """What trains and samples: the GPU Lightning's `accelerator: auto` picks, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} torch threads)"


def checkpoint_steps(ckpt: Path) -> int | None:
    """The optimizer steps a checkpoint was trained for (None where it does not exist)."""
    return read_checkpoint(ckpt).get("global_step") if ckpt.exists() else None


def write_report(out: Path, seconds: dict[str, float]) -> None:
    """`metrics.json` (every evaluation's summary) and `report.md` (what was trained, stage times, metrics)."""
    metrics = {
        f"{p.parent.parent.name}_{p.parent.name}": json.loads(p.read_text()).get("summary", {})
        for kind in ("reconstruction", "generation")
        for p in sorted((out / kind).glob("*/metrics.json"))
    }
    write_json(out / "metrics.json", metrics)
    lines = [
        "# native3d demo",
        "",
        f"Produced by `native3d demo --out {out}` on the embedded data "
        f"(primitives with captions and views, {DEMO_SIZES.grid_resolution}^3 grids, {DEMO_SIZES.surface_points} surface points).",
        "",
        f"Device: {device_name()}.",
        "",
        "## What was trained",
        "",
        "| model | config | steps | minutes |",
        "|---|---|---|---|",
    ]
    trained = {
        **{
            f"autoencoder: {n}": (c, out / "autoencoders" / f"{n}.ckpt") for n, (c, _) in AUTOENCODERS.items()
        },
        **{
            f"diffusion: {n}": (" + ".join([c, *(e.name for e in extra)]), out / "diffusion" / f"{n}.ckpt")
            for n, (c, _, extra) in DIFFUSION.items()
        },
    }
    for stage, (config, ckpt) in trained.items():
        lines.append(
            f"| {stage} | {config} | {checkpoint_steps(ckpt)} | {seconds.get(stage, float('nan')) / 60:.1f} |"
        )
    lines += [
        "",
        "## Reconstruction (held-out primitives)",
        "",
        "| autoencoder | IoU | Chamfer-L1 | F-score | no surface |",
        "|---|---|---|---|---|",
    ]
    for name in AUTOENCODERS:
        m = metrics.get(f"reconstruction_{name}", {})
        lines.append(
            f"| {name} | {fmt(m.get('volume_iou'))} | {fmt(m.get('chamfer_l1'))} | {fmt(m.get('f_score'))} | {m.get('num_no_surface')} |"
        )
    lines += [
        "",
        "## Generation (against the held-out primitives)",
        "",
        "| model | meshed | prompt accuracy | MMD | COV | 1-NNA | s per sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in DIFFUSION:
        m = metrics.get(f"generation_{name}", {})
        listed = out / "generation" / name / "samples" / "samples.json"
        per_sample = json.loads(listed.read_text())["seconds_per_sample"] if listed.exists() else None
        lines.append(
            f"| {name} | {m.get('num_samples')}/{m.get('num_requested')} | {fmt(m.get('prompt_accuracy_of_requested'))} | "
            f"{fmt(m.get('mmd'))} | {fmt(m.get('cov'))} | {fmt(m.get('1-nna'))} | {fmt(per_sample)} |"
        )
    lines += [
        "",
        "Prompt accuracy: the held-out class nearest to a sample (Chamfer-L1) is the one it was asked for; a sample "
        'without a surface counts as wrong; chance is 1/12. Text models were asked "a <class>"; the image model got '
        "view 0 of a held-out object of each class. s per sample: the diffusion steps, marching cubes "
        f"at {MESH_RESOLUTION}^3 (coarse to fine) and the render, in one batch per condition.",
        "",
        "## Diffusion training loss (after warm-up)",
        "",
        "| model | first fifth | last fifth | |",
        "|---|---|---|---|",
        *[loss_row(name, out) for name in DIFFUSION],
        "",
        "## Stages",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {s:.1f} |" for name, s in seconds.items()]
    lines += [
        "",
        f"Total: {sum(seconds.values()) / 60:.1f} minutes.",
        "",
        "Samples: `generation/<model>/samples/` (meshes, renders, samples.json); all of them in `contact_sheet.png`.",
        "",
        "![samples](contact_sheet.png)",
        "",
    ]
    write_atomic(out / "report.md", "\n".join(lines))


def loss_row(name: str, out: Path) -> str:
    """A diffusion run's loss trend as a report row; a loss that did not fall is named."""
    ckpt = out / "diffusion" / f"{name}.ckpt"
    warmup = read_checkpoint(ckpt)["hyper_parameters"].get("warmup_steps", 0) if ckpt.exists() else 0
    trend = loss_trend(out / "diffusion" / name, warmup)
    if trend is None:
        return f"| {name} | n/a | n/a | too few logged steps after warm-up to tell |"
    first, last = trend
    verdict = "falls" if last < first else "**did not fall below its start: this model has not learned**"
    return f"| {name} | {first:.4f} | {last:.4f} | {verdict} |"


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
