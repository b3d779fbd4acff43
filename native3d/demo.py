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

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from native3d.data.schema import Sizes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_SIZES = Sizes(surface_points=2048, grid_resolution=32, query_points=4096, views=4, view_size=64)
SHARD_SETS = {  # name -> `native3d prep build` source arguments
    "primitives": ["--source", "primitives", "--count", "240", "--seed", "0", "--shard-size", "24"],
    "primitives_heldout": ["--source", "primitives", "--count", "48", "--seed", "1", "--shard-size", "24"],
    "pybullet": ["--source", "pybullet", "--limit", "96", "--shard-size", "24"],
}
AUTOENCODERS = {"vecset": "vecset_tiny.yaml", "grid": "grid_tiny.yaml", "triplane": "triplane_tiny.yaml"}
DIFFUSION = {  # model name -> (diffusion config, autoencoder, extra configs)
    "set_dit": ("set_dit_tiny.yaml", "vecset", []),
    "unet3d": ("unet3d_tiny.yaml", "grid", []),
    "triplane_unet": ("triplane_unet_tiny.yaml", "triplane", []),
    "triplane_unet_image": ("triplane_unet_tiny.yaml", "triplane", [CONFIGS / "conditioning" / "image_tiny.yaml"]),
}
PROMPTS = ["a mug with a handle", "a wide low table with four legs", "a snowman of three stacked balls", "a torus"]
AE_STEPS, AE_MINUTES = 600, 2
DIFFUSION_STEPS, DIFFUSION_MINUTES = 600, 1.5


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
        self.path.write_text(json.dumps(self.seconds, indent=2))
        return output


def cli(argv: list[str]) -> None:
    from native3d.cli import main

    code = main([str(a) for a in argv])
    if code:
        raise SystemExit(f"native3d {argv[0]} failed with exit code {code}")


def build_shards(folder: Path, source: list[str], workers: int) -> None:
    from data_prep.cli import size_arguments

    cli(["prep", "build", *source, "--out", folder, "--workers", workers, *size_arguments(DEMO_SIZES)])
    cli(["prep", "index", "--out", folder])
    cli(["prep", "report", "--out", folder])


def fit(configs: list[Path], run_dir: Path, data: list[str], steps: int, minutes: float, target: Path) -> None:
    """`native3d fit`, then the run's last checkpoint copied to `target`."""
    config_args = [a for c in configs for a in ("--config", c)]
    cli([
        "fit", *config_args, "--config", CONFIGS / "trainer" / "cpu.yaml", *data,
        "--trainer.max_steps", steps, "--trainer.max_time", f"00:00:{int(minutes):02d}:{int(60 * (minutes % 1)):02d}",
        "--trainer.val_check_interval", steps // 2, "--trainer.default_root_dir", run_dir,
        "--trainer.logger.init_args.save_dir", run_dir, "--seed_everything", 0,
    ])  # fmt: skip
    last = max(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    shutil.copy(last, target.with_name(target.name + ".tmp"))
    target.with_name(target.name + ".tmp").rename(target)


def heldout_image(out: Path) -> Path:
    """View 0 of the first held-out primitive, as the image prompt."""
    from native3d.data.shards import iter_samples

    sample = next(iter(iter_samples(out / "shards" / "primitives_heldout")))
    path = out / "image_prompt.png"
    Image.fromarray(sample["views.npy"][0]).resize((256, 256)).save(path)
    (out / "image_prompt.json").write_text(json.dumps({"class": sample["meta.json"].get("class"), "caption": sample["caption.txt"]}))
    return path


def run_demo(out: str, workers: int = 2) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out)
    for name, source in SHARD_SETS.items():
        folder = out / "shards" / name
        stages.run(f"data prep: {name}", folder / "index.json", lambda f=folder, s=source: build_shards(f, s, workers))
    train_data = ["--data", "native3d.data.datamodule.ShardDataModule", "--data.train", out / "shards" / "primitives",
                  "--data.val_shards", 1, "--data.batch_size", 8, "--data.num_workers", 0, "--data.batches_per_epoch", 100]  # fmt: skip
    for name, config in AUTOENCODERS.items():
        ckpt = out / "autoencoders" / f"{name}.ckpt"
        run_dir = out / "autoencoders" / name
        configs = [CONFIGS / "autoencoder" / config]
        stages.run(f"autoencoder: {name}", ckpt, lambda c=configs, r=run_dir, k=ckpt: fit(c, r, train_data, AE_STEPS, AE_MINUTES, k))
        latents = out / "latents" / name
        stages.run(f"encode: {name}", latents / "index.json",
                   lambda k=ckpt, l=latents: cli(["encode", "--ckpt", k, "--data", out / "shards" / "primitives", "--out", l]))  # fmt: skip
        stages.run(f"evaluate: {name} reconstruction", out / "metrics" / f"reconstruction_{name}" / "metrics.json",
                   lambda k=ckpt, n=name: cli(["evaluate", "--ckpt", k, "--data", out / "shards" / "primitives_heldout",
                                               "--out", out / "metrics" / f"reconstruction_{n}", "--resolution", 64, "--limit", 16]))  # fmt: skip
    image = heldout_image(out)
    for name, (config, ae, extra) in DIFFUSION.items():
        ckpt = out / "diffusion" / f"{name}.ckpt"
        data = ["--config", CONFIGS / "data" / "latents.yaml", "--data.train", out / "latents" / ae,
                "--data.num_workers", 0, "--model.init_args.autoencoder", out / "autoencoders" / f"{ae}.ckpt"]  # fmt: skip
        configs = [CONFIGS / "diffusion" / config, *extra]
        stages.run(f"diffusion: {name}", ckpt,
                   lambda c=configs, n=name, d=data, k=ckpt: fit(c, out / "diffusion" / n, d, DIFFUSION_STEPS, DIFFUSION_MINUTES, k))  # fmt: skip
        samples = out / "samples" / name
        condition = ["--image", image] if extra else [a for p in PROMPTS for a in ("--prompt", p)]
        stages.run(f"sample: {name}", samples / "samples.json",
                   lambda k=ckpt, s=samples, c=condition: cli(["sample", "--ckpt", k, *c, "--num", 2, "--steps", 25,
                                                               "--resolution", 64, "--format", "glb", "--out", s]))  # fmt: skip
        stages.run(f"evaluate: {name} samples", out / "metrics" / f"generation_{name}" / "metrics.json",
                   lambda s=samples, n=name: cli(["evaluate", "--meshes", s, "--reference", out / "shards" / "primitives_heldout",
                                                  "--out", out / "metrics" / f"generation_{n}"]))  # fmt: skip
    write_contact_sheet(out)
    write_report(out, stages.seconds)
    print(f"== done: {out / 'report.md'}")
    return 0


def write_contact_sheet(out: Path) -> None:
    from native3d.sampling import save_png

    rows = []
    for name in DIFFUSION:
        sheet = out / "samples" / name / "contact_sheet.png"
        if sheet.exists():
            rows.append(np.asarray(Image.open(sheet).convert("RGB")))
    if rows:
        width = max(r.shape[1] for r in rows)
        padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        save_png(np.concatenate(padded, axis=0), out / "contact_sheet.png")


def write_report(out: Path, seconds: dict[str, float]) -> None:
    metrics = {p.parent.name: json.loads(p.read_text()).get("summary", {}) for p in sorted((out / "metrics").glob("*/metrics.json"))}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = ["# native3d demo", "", f"Everything below was produced by `native3d demo --out {out}` on the embedded data.", "",
             "## Stages", "", "| stage | seconds |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {s:.1f} |" for name, s in seconds.items()]
    lines += ["", f"Total: {sum(seconds.values()) / 60:.1f} minutes.", "", "## Metrics", ""]
    for name, summary in metrics.items():
        cells = ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))
        lines.append(f"- **{name}**: {cells}")
    lines += ["", "Samples: `samples/<model>/` (meshes, renders, samples.json); all of them in `contact_sheet.png`.", ""]
    (out / "report.md").write_text("\n".join(lines))
