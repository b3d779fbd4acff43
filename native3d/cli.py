"""The `native3d` command.

    native3d fit|validate --config configs/autoencoder/vecset.yaml --config configs/data/primitives.yaml ...
    native3d encode --ckpt AE.ckpt --data SHARDS --out LATENTS
    native3d prep build|index|report ...
    native3d demo
"""

from __future__ import annotations

import argparse
import sys

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
    encode.add_argument("--device", default="cpu")
    demo = commands.add_parser("demo", help="the whole pipeline on the embedded data")
    demo.add_argument("--out", default="runs/demo", help="output folder; a rerun reuses finished stages")
    demo.add_argument("--workers", type=int, default=2, help="data-prep worker processes")
    return parser


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
    from native3d.demo import run_demo

    return run_demo(args.out, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
