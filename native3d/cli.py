"""The `native3d` command: `native3d prep ...` runs the data-prep jobs, `native3d demo` the demo."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "prep":
        from data_prep.cli import main as prep_main

        return prep_main(argv[1:])
    parser = argparse.ArgumentParser(prog="native3d", description="3D-native latent diffusion: data, models, sampling.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prep", help="data-prep jobs: build | index | report (see `native3d prep --help`)")
    demo = commands.add_parser("demo", help="the whole pipeline on the embedded data")
    demo.add_argument("--out", default="runs/demo", help="output folder; a rerun reuses finished stages")
    demo.add_argument("--workers", type=int, default=2, help="data-prep worker processes")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from native3d.demo import run_demo

        return run_demo(args.out, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
