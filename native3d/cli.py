"""The `native3d` command.

    native3d fit|validate --config configs/autoencoder/vecset.yaml --config configs/data/primitives.yaml ...
    native3d encode --ckpt AE.ckpt --data SHARDS --out LATENTS
    native3d evaluate --ckpt AE.ckpt --data SHARDS --out DIR | --meshes FOLDER --reference SHARDS --out DIR
    native3d sample --ckpt LDM.ckpt --prompt "a mug" --num 4 --out samples/
    native3d prep build|index|report ...
    native3d demo

A user error (a missing or damaged file, a wrong option) ends with one line on stderr and exit
code 2; `native3d --verbose ...` (or NATIVE3D_VERBOSE=1) shows its traceback (`native3d.errors`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from contextlib import contextmanager

from native3d.evaluation.command import add_arguments as add_evaluate_arguments
from native3d.options import OneLineParser, add_sampling_arguments, at_least, positive

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: list[str]) -> None:
    """LightningCLI over any LightningModule and DataModule given by `class_path` in the YAML.

    A wrong key or value in the YAML or on the command line is a `UserError` naming it.
    """
    import lightning as L
    from jsonargparse import ArgumentError
    from lightning.pytorch.cli import LightningCLI

    from native3d.errors import InputError

    quiet_lightning()
    try:
        with command_line(argv):
            LightningCLI(
                L.LightningModule,
                L.LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False},
            )
    except ArgumentError as error:
        raise InputError(f"native3d {argv[0]}: {parser_problem(str(error))}") from error


def parser_problem(message: str) -> str:
    """The part of a jsonargparse error that names the option, where it has one.

    A wrong key under `--model` or `--data` fails every subtype of the Union that jsonargparse
    tried; the line that matters is the one about the class the YAML names.
    """
    flat = " ".join(message.split())
    found = re.search(r"Problem with given class_path '([^']+)': (.+?)(?: - Expected a|$)", flat)
    key = re.match(r'Parser key "([^"]+)"', flat)
    if not found:
        return flat
    return f"{key.group(1) + ': ' if key else ''}{found.group(1)}: {found.group(2)}"


NOISE = (  # what Lightning prints on every run that asks nothing of the user
    (
        FutureWarning,
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    ),  # Lightning's own use of a torch API
    (
        UserWarning,
        r"No seed found, seed set to",
    ),  # LightningCLI seeds the run itself; `--seed_everything N` picks the seed
    # A latent-diffusion model's frozen autoencoder and condition encoders stay in eval mode by design.
    (UserWarning, r"Found \d+ module\(s\) in eval mode at the start of training"),
)


def quiet_lightning() -> None:
    for category, message in NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in str(record.msg)
    )


@contextmanager
def command_line(argv: list[str]):
    """`sys.argv` as `native3d <argv>` while LightningCLI parses it.

    LightningCLI warns (with the whole argument list) when it is given `args` while `sys.argv` holds
    arguments too, as it does under `native3d demo` or a test; the command line it should read is
    `argv`, so it reads it from where it looks by default.
    """
    saved = sys.argv
    sys.argv = ["native3d", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="native3d", description="3D-native latent diffusion: data, models, sampling.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_COMMANDS:
        commands.add_parser(name, help=f"LightningCLI {name} (see `native3d {name} --help`)", add_help=False)
    commands.add_parser(
        "prep", help="data-prep jobs: build | index | report (see `native3d prep --help`)", add_help=False
    )
    encode = commands.add_parser(
        "encode", help="a shard set to a latent shard set with an autoencoder checkpoint"
    )
    encode.add_argument("--ckpt", required=True)
    encode.add_argument("--data", required=True, help="shard set folder or index.json")
    encode.add_argument("--out", required=True)
    encode.add_argument("--batch-size", type=positive, default=16)
    encode.add_argument("--device", default="cuda" if _cuda() else "cpu")
    encode.add_argument(
        "--tokens",
        type=positive,
        default=None,
        help="VecSet only: latent tokens per shape (default: the model's num_latents)",
    )
    sample = commands.add_parser("sample", help="meshes from a latent-diffusion checkpoint")
    sample.add_argument("--ckpt", required=True)
    add_sampling_arguments(sample)
    sample.add_argument("--resolution", type=at_least(2), default=128, help="marching-cubes cells per axis")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=positive, default=8)
    sample.add_argument("--device", default="cuda" if _cuda() else "cpu")
    sample.add_argument("--out", required=True)
    evaluate = commands.add_parser(
        "evaluate",
        help="reconstruction metrics of an autoencoder, or generated meshes against a reference set",
    )
    add_evaluate_arguments(evaluate)
    demo = commands.add_parser("demo", help="the whole pipeline on the embedded data")
    demo.add_argument("--out", default="runs/demo", help="output folder; a rerun reuses finished stages")
    demo.add_argument("--workers", type=positive, default=2, help="data-prep worker processes")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_sample(args: argparse.Namespace) -> int:
    from native3d.sampling import sample_to_folder, settings_from_args

    summary = sample_to_folder(settings_from_args(args), args.out)
    written = sum(1 for s in summary["samples"] if s["file"])
    print(
        f"{args.out}: {written} of {len(summary['samples'])} samples meshed, {summary['seconds_per_sample']:.2f}s per sample"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from native3d.errors import run_command

    return run_command(run, sys.argv[1:] if argv is None else list(argv), "native3d")


def run(argv: list[str]) -> int:
    if argv and argv[0] in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return 0
    if argv and argv[0] == "prep":
        from data_prep.cli import run as run_prep

        return run_prep(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "encode":
        from native3d.encode import encode_shard_set

        info = encode_shard_set(args.ckpt, args.data, args.out, args.batch_size, args.device, args.tokens)
        print(
            f"{args.out}/index.json: {info['num_samples']} latents of shape {tuple(info['latent_shape'])} in {len(info['shards'])} shards"
        )
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
