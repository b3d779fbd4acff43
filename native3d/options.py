"""Command-line option groups that more than one `native3d` command takes.

Kept free of heavy imports: building the parser must not load torch.
"""

from __future__ import annotations

import argparse

FORMATS = ("glb", "obj", "ply")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say what to sample and how (`native3d sample` and `native3d evaluate --ckpt LDM.ckpt`)."""
    parser.add_argument("--prompt", action="append", default=[], help="text prompt (repeatable)")
    parser.add_argument("--image", action="append", default=[], help="conditioning image, PNG or a mesh file to render (repeatable)")
    parser.add_argument("--num", type=int, default=4, help="samples per prompt or image")
    parser.add_argument("--steps", type=int, default=50, help="sampler steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    parser.add_argument("--dense", action="store_true", help="decode the dense grid instead of coarse-to-fine")
    parser.add_argument("--format", default="glb", choices=FORMATS, help="mesh file format")
