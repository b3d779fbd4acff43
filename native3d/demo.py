"""`native3d demo`: the whole pipeline on the embedded data, at sizes a 2-core CPU runs in minutes.

1. data prep: captioned primitives with views (a training set, and a held-out set from another seed,
   24 shapes of each class) and the meshes pybullet ships;
2. the three autoencoders (VecSet, Grid, Triplane) on the primitives, then their latents;
3. the three diffusion models on those latents, text-conditioned, and one image-conditioned;
4. meshes sampled from text prompts and from held-out objects' views;
5. reconstruction and generation metrics against the held-out primitives;
6. `report.md`, `metrics.json` and a contact sheet of the samples.

Every stage goes through the same commands a user runs (`native3d prep|fit|encode|evaluate`), each
in a process of its own with its output in `<out>/logs/`, and is skipped when its output exists, so a
rerun reuses what is finished. The models train in `LANES` lanes side by side, each process with its
share of the cores: a small model's step does not use two cores well, so two one-core runs at once do
more work than one after the other (docs/results.md, The demo). Training is bounded by minutes per
model (the cosine of the learning rate follows the clock) and by a step count that only a GPU
reaches; Lightning's `accelerator: auto` takes a GPU where there is one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
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
# (docs/results.md, Generation). It needs enough held-out shapes per class to name the class of real
# shapes, hence 24 of each (docs/results.md, The demo).
PRIMITIVES = ["--source", "primitives", "--poses", "upright"]
SHARD_SETS = {  # name -> `native3d prep build` source arguments
    "primitives": [*PRIMITIVES, "--count", "240", "--seed", "0", "--shard-size", "24"],
    "primitives_heldout": [*PRIMITIVES, "--count", "288", "--seed", "1", "--shard-size", "24"],
    "pybullet": ["--source", "pybullet", "--limit", "48", "--shard-size", "24"],
}


@dataclass(frozen=True)
class Training:
    """What one model trains with: its configs, a budget of minutes (what ends a CPU run) and of steps
    (what ends a GPU run), and options of its own."""

    configs: tuple[Path, ...]
    minutes: float
    steps: int
    options: tuple[str, ...] = ()
    bf16: bool = False  # bfloat16 autocast where the device computes in it (it speeds up convolutions)


def autoencoder(config: str, minutes: float, steps: int, *options: str, bf16: bool = False) -> Training:
    return Training((CONFIGS / "autoencoder" / config,), minutes, steps, options, bf16)


def diffusion(config: str, minutes: float, *extra: str) -> Training:
    configs = (CONFIGS / "diffusion" / config, *(CONFIGS / "conditioning" / e for e in extra))
    return Training(configs, minutes, DIFFUSION_STEPS)


# Minutes on one core of a 2-core CPU, sized so that the demo ends within 20 minutes there. The
# VecSet and its SetDiT learn slowest and get the most; the VecSet reads half its surface and query
# points, which makes its steps cheaper.
DIFFUSION_STEPS = 4000
AUTOENCODERS = {
    "vecset": autoencoder(
        "vecset_tiny.yaml", 6.0, 4000, "--data.surface_points", "512", "--data.query_points", "1024"
    ),
    "grid": autoencoder("grid_tiny.yaml", 4.5, 1500, bf16=True),
    "triplane": autoencoder("triplane_tiny.yaml", 3.0, 2500, bf16=True),
}
DIFFUSION = {  # model name -> (its training, its autoencoder)
    "set_dit": (diffusion("set_dit_tiny.yaml", 6.0), "vecset"),
    "unet3d": (diffusion("unet3d_tiny.yaml", 3.0), "grid"),
    "triplane_unet": (diffusion("triplane_unet_tiny.yaml", 2.75), "triplane"),
    "triplane_unet_image": (diffusion("triplane_unet_tiny.yaml", 2.0, "image_tiny.yaml"), "triplane"),
}
LANES = 2
SAMPLES_PER_CLASS = 3  # text: "a <class>" 3 times; image: view 0 of 3 held-out objects of each class
SAMPLE_STEPS = 25
MESH_RESOLUTION = 64  # marching-cubes cells per axis for reconstructions and samples
EVAL_POINTS = 512  # points per shape for the generation metrics
RECONSTRUCTED = 48  # held-out shapes each autoencoder reconstructs (the first 4 of each class)
# An autoencoder below this held-out IoU has collapsed (e.g. it decodes every shape as outside):
# the demo stops there, naming it, instead of training diffusion on its latents.
MIN_HELD_OUT_IOU = 0.5


class Stages:
    """Runs named stages once; their wall times go to `<out>/stages.json` for the report."""

    def __init__(self, out: Path) -> None:
        self.path = out / "stages.json"
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.lock = threading.Lock()

    def run(self, name: str, output: Path, work: Callable[[], None]) -> Path:
        if output.exists():
            print(f"== {name}: reusing {output}", flush=True)
            return output
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        work()
        with self.lock:
            self.seconds[name] = time.perf_counter() - start
            write_json(self.path, self.seconds)
        print(f"== {name}: done in {self.seconds[name]:.0f} s", flush=True)
        return output


class Commands:
    """`native3d` command lines, each in a child process with `threads` torch threads; its output
    goes to `<logs>/<stage>.log`. A command that fails raises, naming the stage, the command's last
    line (a user error's message) and the log."""

    def __init__(self, logs: Path, threads: int) -> None:
        self.logs, self.threads = logs, threads
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def __call__(self, stage: str, argv: list) -> None:
        argv = [str(a) for a in argv]
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{stage.replace(': ', '-').replace(' ', '_')}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "native3d.cli", *argv],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )
            with self.lock:
                self.running.add(process)
            code = process.wait()
            with self.lock:
                self.running.discard(process)
        if code:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise SystemExit(
                f"demo stage {stage!r}: native3d {argv[0]} failed with exit code {code}: "
                f"{lines[-1] if lines else '(no output)'}; its output is in {log}"
            )

    def stop(self) -> None:
        with self.lock:
            for process in self.running:
                process.terminate()


@dataclass
class Task:
    """A chain of stages that runs in one lane once the tasks named in `after` are done."""

    name: str
    run: Callable[[], None]
    after: tuple[str, ...] = ()


def run_in_lanes(tasks: list[Task], lanes: int, stop: Callable[[], None]) -> None:
    """Runs the tasks `lanes` at a time, each once its `after` are done, otherwise in list order.
    The first failure stops the running ones (`stop`) and is raised."""
    pending, running, done = list(tasks), {}, set()
    with ThreadPoolExecutor(lanes) as pool:
        while pending or running:
            ready = [t for t in pending if set(t.after) <= done][: lanes - len(running)]
            if not ready and not running:
                raise ValueError(f"tasks wait on tasks that do not exist: {[t.name for t in pending]}")
            for task in ready:
                pending.remove(task)
                running[pool.submit(task.run)] = task.name
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                if future.exception() is not None:
                    stop()
                    cancel(running)
                    raise future.exception()
                done.add(name)


def cancel(running: dict[Future, str]) -> None:
    for future in running:
        future.cancel()


def fit_argv(training: Training, data: list, run_dir: Path, precision: str) -> list:
    """`native3d fit` of one model into `run_dir`, ended by its minutes or its steps."""
    minutes = training.minutes
    return [
        "fit",
        *[a for c in training.configs for a in ("--config", c)],
        "--config",
        CONFIGS / "trainer" / "cpu.yaml",
        "--trainer.accelerator",
        "auto",  # a GPU where there is one (encode, sample and evaluate default to it too)
        "--trainer.precision",
        precision if training.bf16 else "32-true",
        *data,
        *training.options,
        "--trainer.max_steps",
        training.steps,
        "--trainer.max_time",
        f"00:00:{int(minutes):02d}:{round(60 * (minutes % 1)):02d}",
        "--trainer.val_check_interval",
        training.steps // 2,
        "--trainer.default_root_dir",
        run_dir,
        "--trainer.logger.init_args.save_dir",
        run_dir,
        "--seed_everything",
        0,
    ]


def keep_last(run_dir: Path, target: Path) -> None:
    """The run's last checkpoint, copied to `target`."""
    last = max(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    with atomic_path(target) as tmp:
        shutil.copy(last, tmp)


def run_demo(out: str, workers: int = 2, lanes: int = LANES) -> int:
    """Every stage, as `native3d` commands in child processes, skipping those whose output exists."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    threads = max(1, (os.cpu_count() or 1) // lanes)
    print(f"== device: {device_name()}; {lanes} lanes of {threads} torch thread(s)", flush=True)
    build = Commands(out / "logs", os.cpu_count() or 1)
    for name, source in SHARD_SETS.items():
        folder = out / "shards" / name
        stages.run(
            f"data prep: {name}",
            folder / "index.json",
            lambda f=folder, s=source: build_shards(build, f, s, workers),
        )
    command = Commands(out / "logs", threads)
    tasks = [Task(name, lambda n=name: train_autoencoder(n, out, stages, command)) for name in AUTOENCODERS]
    tasks += [
        Task(name, lambda n=name: train_diffusion(n, out, stages, command), after=(ae,))
        for name, (_, ae) in DIFFUSION.items()
    ]
    run_in_lanes(tasks, lanes, command.stop)
    write_contact_sheet(out)
    write_report(out, stages, lanes, threads, time.perf_counter() - start)
    print(f"== done: {out / 'report.md'}", flush=True)
    return 0


def build_shards(command: Commands, folder: Path, source: list[str], workers: int) -> None:
    from data_prep.cli import size_arguments

    name = f"data prep: {folder.name}"
    command(
        name, ["prep", "build", *source, "--out", folder, "--workers", workers, *size_arguments(DEMO_SIZES)]
    )
    command(name + " index", ["prep", "index", "--out", folder])
    command(name + " report", ["prep", "report", "--out", folder])


def train_autoencoder(name: str, out: Path, stages: Stages, command: Commands) -> None:
    """Fit, encode the training shapes, reconstruct held-out ones; stop if the model has collapsed."""
    training, ckpt, run_dir = (
        AUTOENCODERS[name],
        out / "autoencoders" / f"{name}.ckpt",
        out / "autoencoders" / name,
    )
    data = [
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

    fit_stage(
        f"autoencoder: {name}",
        fit_argv(training, data, run_dir, bf16_precision()),
        run_dir,
        ckpt,
        stages,
        command,
    )
    latents = out / "latents" / name
    command_stage(
        f"encode: {name}",
        latents / "index.json",
        ["encode", "--ckpt", ckpt, "--data", out / "shards" / "primitives", "--out", latents],
        stages,
        command,
    )
    metrics = out / "reconstruction" / name / "metrics.json"
    command_stage(
        f"evaluate: {name} reconstruction",
        metrics,
        [
            "evaluate",
            "--ckpt",
            ckpt,
            "--data",
            out / "shards" / "primitives_heldout",
            "--out",
            metrics.parent,
            "--resolution",
            MESH_RESOLUTION,
            "--limit",
            RECONSTRUCTED,
        ],
        stages,
        command,
    )
    check_autoencoder(name, metrics, run_dir)


def train_diffusion(name: str, out: Path, stages: Stages, command: Commands) -> None:
    """Fit on the autoencoder's latents, then sample the held-out classes and score the samples."""
    training, ae = DIFFUSION[name]
    ckpt, run_dir = out / "diffusion" / f"{name}.ckpt", out / "diffusion" / name
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

    fit_stage(
        f"diffusion: {name}", fit_argv(training, data, run_dir, "32-true"), run_dir, ckpt, stages, command
    )
    generation = out / "generation" / name
    command_stage(
        f"sample and evaluate: {name}",
        generation / "metrics.json",
        [
            "evaluate",
            "--ckpt",
            ckpt,
            "--reference",
            out / "shards" / "primitives_heldout",
            "--out",
            generation,
            "--num",
            SAMPLES_PER_CLASS,
            "--steps",
            SAMPLE_STEPS,
            "--resolution",
            MESH_RESOLUTION,
            "--points",
            EVAL_POINTS,
        ],
        stages,
        command,
    )


def command_stage(stage: str, output: Path, argv: list, stages: Stages, command: Commands) -> None:
    """A stage that is one `native3d` command writing `output`."""
    stages.run(stage, output, lambda: command(stage, argv))


def fit_stage(stage: str, argv: list, run_dir: Path, ckpt: Path, stages: Stages, command: Commands) -> None:
    """A `native3d fit` stage into `run_dir` whose last checkpoint is kept as `ckpt`."""

    def fit() -> None:
        command(stage, argv)
        keep_last(run_dir, ckpt)

    stages.run(stage, ckpt, fit)


def check_autoencoder(name: str, metrics: Path, run_dir: Path) -> None:
    """Stops the demo, naming the model, when its held-out IoU says it has collapsed."""
    iou = json.loads(metrics.read_text())["summary"].get("volume_iou")
    if iou is None or iou < MIN_HELD_OUT_IOU:
        raise BadModelError(
            f"autoencoder {name}: held-out IoU {iou if iou is None else round(iou, 3)} (below "
            f"{MIN_HELD_OUT_IOU}; {metrics}): it has collapsed, so no diffusion model is trained on it; "
            f"its run is in {run_dir}"
        )


def bf16_precision() -> str:
    """ "bf16-mixed" where the device computes in bfloat16 (a CUDA GPU that supports it, a CPU with
    AVX-512 BF16 or AMX), otherwise "32-true": emulated bfloat16 is slower than float32."""
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    try:
        return "bf16-mixed" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "32-true"
    except (AttributeError, RuntimeError):
        return "32-true"


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
    """`contact_sheet.png`: a row per diffusion model, its first sample of each class, labelled, the
    classes in the same order in every row."""
    from native3d.sampling import labelled_sheet

    rows, order = [], {}
    for name in DIFFUSION:
        listed = out / "generation" / name / "samples" / "samples.json"
        if not listed.exists():
            continue
        first = {}
        for record in json.loads(listed.read_text())["samples"]:
            first.setdefault(record.get("class") or record["prompt"], record)
        order.update((label, len(order)) for label in first if label not in order)
        rows.append(
            (name, sorted(first.values(), key=lambda r: order[r.get("class") or r["prompt"]]), listed.parent)
        )
    if rows:
        labelled_sheet(rows, out / "contact_sheet.png")


def rule_ceiling(out: Path, count: int = 48) -> float:
    """How often prompt accuracy's rule names the class of a real shape: `count` training primitives
    (4 of each class) classified by their nearest held-out shape. A perfect model reaches this."""
    from native3d.evaluation.generation import nearest_class_accuracy

    return nearest_class_accuracy(
        out / "shards" / "primitives", out / "shards" / "primitives_heldout", EVAL_POINTS, count
    )


def device_name() -> str:
    """What trains and samples: the GPU Lightning's `accelerator: auto` picks, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({os.cpu_count()} cores)"


def checkpoint_steps(ckpt: Path) -> int | None:
    """The optimizer steps a checkpoint was trained for (None where it does not exist)."""
    return read_checkpoint(ckpt).get("global_step") if ckpt.exists() else None


def write_report(out: Path, stages: Stages, lanes: int, threads: int, wall: float) -> None:
    """`metrics.json` (every evaluation's summary) and `report.md` (what was trained, stage times, metrics)."""
    seconds = stages.seconds
    metrics = {
        f"{p.parent.parent.name}_{p.parent.name}": json.loads(p.read_text()).get("summary", {})
        for kind in ("reconstruction", "generation")
        for p in sorted((out / kind).glob("*/metrics.json"))
    }
    ceiling = rule_ceiling(out)
    metrics["rule_ceiling"] = {"prompt_accuracy_of_real_shapes": ceiling}
    write_json(out / "metrics.json", metrics)
    lines = [
        "# native3d demo",
        "",
        f"Produced by `native3d demo --out {out}` on the embedded data "
        f"(primitives with captions and views, {DEMO_SIZES.grid_resolution}^3 grids, {DEMO_SIZES.surface_points} surface points).",
        "",
        f"Device: {device_name()}; the models trained in {lanes} lanes side by side, {threads} torch thread(s) each.",
        "",
        "## What was trained",
        "",
        "| model | config | steps | minutes |",
        "|---|---|---|---|",
    ]
    trained = {
        **{f"autoencoder: {n}": (t, out / "autoencoders" / f"{n}.ckpt") for n, t in AUTOENCODERS.items()},
        **{f"diffusion: {n}": (t, out / "diffusion" / f"{n}.ckpt") for n, (t, _) in DIFFUSION.items()},
    }
    for stage, (training, ckpt) in trained.items():
        config = " + ".join(c.name for c in training.configs)
        lines.append(
            f"| {stage} | {config} | {checkpoint_steps(ckpt)} | {seconds.get(stage, float('nan')) / 60:.1f} |"
        )
    lines += [
        "",
        f"## Reconstruction (the first {RECONSTRUCTED} held-out primitives)",
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
        f'without a surface counts as wrong; chance is 1/12. Text models were asked "a <class>" {SAMPLES_PER_CLASS} '
        f"times per class; the image model got view 0 of {SAMPLES_PER_CLASS} held-out objects of each class. The same "
        f"rule names the class of {fmt(ceiling)} of 48 real training shapes: what a perfect model would reach. "
        f"s per sample: the diffusion steps, marching cubes at {MESH_RESOLUTION}^3 (coarse to fine) and the render, "
        "in one batch per condition.",
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
        f"This run took {wall / 60:.1f} minutes (stages it reused cost nothing); the stages' times add up to "
        f"{sum(seconds.values()) / 60:.1f} minutes, run in {lanes} lanes. The commands' output is in `logs/`.",
        "",
        "Samples: `generation/<model>/samples/` (meshes, renders, samples.json); the first of each class in "
        "`contact_sheet.png`.",
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
