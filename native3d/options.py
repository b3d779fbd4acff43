"""Command-line option groups that more than one `native3d` command takes.

Kept free of heavy imports: building the parser must not load torch.
"""

from __future__ import annotations

import argparse

FORMATS = ("glb", "obj", "ply")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit 2), pointing to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def non_negative(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value


positive = at_least(1)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say what to sample and how (`native3d sample` and `native3d evaluate --ckpt LDM.ckpt`)."""
    parser.add_argument("--prompt", action="append", default=[], help="text prompt (repeatable)")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        help="conditioning image, PNG or a mesh file to render (repeatable)",
    )
    parser.add_argument("--num", type=positive, default=4, help="samples per prompt or image")
    parser.add_argument(
        "--sampler",
        help="euler or heun (rectified flow), ddim or dpm++ (DDPM); default: the checkpoint's own",
    )
    parser.add_argument("--steps", type=positive, help="sampler steps; default: the checkpoint's own")
    parser.add_argument(
        "--guidance",
        type=non_negative,
        help="classifier-free guidance scale (1 = off); default: the checkpoint's own",
    )
    parser.add_argument(
        "--dense", action="store_true", help="decode the dense grid instead of coarse-to-fine"
    )
    parser.add_argument("--format", default="glb", choices=FORMATS, help="mesh file format")
