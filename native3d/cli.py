"""The `native3d` command.

    native3d fit|validate --config configs/autoencoder/vecset.yaml --config configs/data/primitives.yaml ...
    native3d encode --ckpt AE.ckpt --data SHARDS --out LATENTS
    native3d evaluate --ckpt AE.ckpt --data SHARDS --out DIR | --meshes FOLDER --reference SHARDS --out DIR
    native3d sample --ckpt LDM.ckpt --prompt "a mug" --num 4 --out samples/
    native3d prep build|index|report ...
    native3d demo
"""

from __future__ import annotations

import argparse
import sys

from native3d.evaluation.command import add_arguments as add_evaluate_arguments
from native3d.options import add_sampling_arguments

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: list[str]) -> None:
    """LightningCLI over any LightningModule and DataModule given by `class_path` in the YAML."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="native3d", description="3D-native latent diffusion: data, models, sampling.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_COMMANDS:
        commands.add_parser(name, help=f"LightningCLI {name} (see `native3d {name} --help`)", add_help=False)
    commands.add_parser("prep", help="data-prep jobs: build | index | report (see `native3d prep --help`)", add_help=False)
    encode = commands.add_parser("encode", help="a shard set to a latent shard set with an autoencoder checkpoint")
    encode.add_argument("--ckpt", required=True)
    encode.add_argument("--data", required=True, help="shard set folder or index.json")
    encode.add_argument("--out", required=True)
    encode.add_argument("--batch-size", type=int, default=16)
    encode.add_argument("--device", default="cuda" if _cuda() else "cpu")
    sample = commands.add_parser("sample", help="meshes from a latent-diffusion checkpoint")
    sample.add_argument("--ckpt", required=True)
    add_sampling_arguments(sample)
    sample.add_argument("--resolution", type=int, default=128, help="marching-cubes cells per axis")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=8)
    sample.add_argument("--device", default="cuda" if _cuda() else "cpu")
    sample.add_argument("--out", required=True)
    evaluate = commands.add_parser("evaluate", help="reconstruction metrics of an autoencoder, or generated meshes against a reference set")
    add_evaluate_arguments(evaluate)
    demo = commands.add_parser("demo", help="the whole pipeline on the embedded data")
    demo.add_argument("--out", default="runs/demo", help="output folder; a rerun reuses finished stages")
    demo.add_argument("--workers", type=int, default=2, help="data-prep worker processes")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_sample(args: argparse.Namespace) -> int:
    from native3d.sampling import sample_to_folder, settings_from_args

    summary = sample_to_folder(settings_from_args(args), args.out)
    written = sum(1 for s in summary["samples"] if s["file"])
    print(f"{args.out}: {written} of {len(summary['samples'])} samples meshed, {summary['seconds_per_sample']:.2f}s per sample")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return 0
    if argv and argv[0] == "prep":
        from data_prep.cli import main as prep_main

        return prep_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "encode":
        from native3d.encode import encode_shard_set

        info = encode_shard_set(args.ckpt, args.data, args.out, args.batch_size, args.device)
        print(f"{args.out}/index.json: {info['num_samples']} latents of shape {tuple(info['latent_shape'])} in {len(info['shards'])} shards")
        return 0
    if args.command == "sample":
        return run_sample(args)
    if args.command == "evaluate":
        from native3d.evaluation.command import run as run_evaluate

        return run_evaluate(args)
    from native3d.demo import run_demo

    return run_demo(args.out, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
