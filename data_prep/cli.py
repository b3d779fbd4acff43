"""`python -m data_prep build|index|report` (also `native3d prep ...`).

A user error ends with one line on stderr and exit code 2 (`native3d.errors`); `report` exits with
1 when the build has damaged shards.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from data_prep.sources import MeshItem
from data_prep.sources.primitives import POSES
from native3d.data.schema import Sizes
from native3d.errors import InputError, run_command
from native3d.geometry.mesh import DEFAULT_MAX_FACES
from native3d.options import OneLineParser, at_least, positive

SOURCES = ("objaverse", "local", "pybullet", "primitives")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m data_prep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_build_arguments(commands.add_parser("build", help="turn a source's meshes into WebDataset shards"))
    index = commands.add_parser("index", help="merge the jobs' shards into <out>/index.json")
    index.add_argument("--out", required=True, type=Path)
    report = commands.add_parser("report", help="counts, failure reasons and stage timings of a build")
    report.add_argument("--out", required=True, type=Path)
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Sizes()
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--limit", type=positive, help="take the first N objects of the source's stable order"
    )
    group = parser.add_argument_group("source options")
    group.add_argument("--root", type=Path, help="local: folder searched recursively for mesh files")
    group.add_argument("--captions-csv", type=Path, help="local/objaverse: CSV of id-or-path,caption")
    group.add_argument("--count", type=positive, default=1000, help="primitives: number of objects")
    group.add_argument("--seed", type=int, default=0, help="primitives: generator seed; all: sampling seed")
    group.add_argument(
        "--poses",
        choices=POSES,
        default="any",
        help="primitives: any orientation (named in the caption) or upright with a random turn about the up axis",
    )
    group.add_argument("--uids-file", type=Path, help="objaverse: file with one uid per line")
    group.add_argument("--cache-dir", type=Path, help="objaverse: the package's cache directory")
    group.add_argument(
        "--lvis-category", action="append", default=[], help="objaverse: LVIS category (repeatable)"
    )
    group.add_argument("--download-processes", type=positive, default=1, help="objaverse: parallel downloads")
    jobs = parser.add_argument_group("jobs")
    jobs.add_argument("--job-index", type=at_least(0), default=0)
    jobs.add_argument("--num-jobs", type=positive, default=1)
    jobs.add_argument("--workers", type=positive, default=1, help="worker processes")
    jobs.add_argument("--shard-size", type=positive, default=64, help="samples per shard")
    jobs.add_argument("--max-faces", type=positive, default=DEFAULT_MAX_FACES)
    jobs.add_argument("--retry-failed", action="store_true", help="redo objects the ledger records as failed")
    jobs.add_argument(
        "--repair",
        action="store_true",
        help="set aside this job's damaged shards (as <name>.damaged) and build their objects again",
    )
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--surface-points", type=positive, default=defaults.surface_points)
    sizes.add_argument("--grid-resolution", type=at_least(2), default=defaults.grid_resolution)
    sizes.add_argument("--query-points", type=positive, default=defaults.query_points)
    sizes.add_argument("--views", type=at_least(0), default=defaults.views)
    sizes.add_argument("--view-size", type=positive, default=defaults.view_size)
    sizes.add_argument("--truncation", type=float, default=defaults.truncation)
    sizes.add_argument(
        "--sharp-points",
        type=at_least(0),
        default=defaults.sharp_points,
        help="points on sharp edges per object (sharp.npy); 0 writes none",
    )
    sizes.add_argument(
        "--sharp-angle",
        type=float,
        default=defaults.sharp_angle,
        help="degrees between adjacent face normals above which an edge is sharp",
    )


def iter_source(args: argparse.Namespace) -> Iterator[MeshItem]:
    """The chosen source's items; each source module is imported only when used."""
    if args.source == "objaverse":
        if args.cache_dir is None:
            raise InputError("--source objaverse needs --cache-dir")
        from data_prep.sources.objaverse import iter_objaverse

        return iter_objaverse(
            cache_dir=str(args.cache_dir),
            uids_file=args.uids_file,
            lvis_categories=args.lvis_category or None,
            limit=args.limit,
            captions_csv=args.captions_csv,
            download_processes=args.download_processes,
        )
    if args.source == "local":
        if args.root is None:
            raise InputError("--source local needs --root")
        from data_prep.sources.local import iter_local

        return iter_local(str(args.root), captions_csv=args.captions_csv, limit=args.limit)
    if args.source == "pybullet":
        from data_prep.sources.pybullet import iter_pybullet

        return iter_pybullet(limit=args.limit)
    from data_prep.sources.primitives import iter_primitives

    return iter_primitives(count=args.count, seed=args.seed, limit=args.limit, poses=args.poses)


SIZE_FIELDS = (
    "surface_points",
    "grid_resolution",
    "query_points",
    "views",
    "view_size",
    "truncation",
    "sharp_points",
    "sharp_angle",
)


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    return Sizes(**{name: getattr(args, name) for name in SIZE_FIELDS})


def size_arguments(sizes: Sizes) -> list[str]:
    """The `build` options that ask for `sizes` (the inverse of `sizes_from_args`)."""
    return [a for name in SIZE_FIELDS for a in (f"--{name.replace('_', '-')}", str(getattr(sizes, name)))]


def source_record(args: argparse.Namespace) -> dict:
    keys = (
        "source",
        "limit",
        "root",
        "captions_csv",
        "count",
        "seed",
        "poses",
        "uids_file",
        "cache_dir",
        "lvis_category",
    )
    return {
        k: (str(v) if isinstance(v, Path) else v) for k in keys if (v := getattr(args, k)) not in (None, [])
    }


def run_build_command(args: argparse.Namespace) -> int:
    from data_prep.build import BuildConfig, run_build

    config = BuildConfig(
        out=args.out,
        sizes=sizes_from_args(args),
        job_index=args.job_index,
        num_jobs=args.num_jobs,
        workers=args.workers,
        shard_size=args.shard_size,
        max_faces=args.max_faces,
        seed=args.seed,
        retry_failed=args.retry_failed,
        repair=args.repair,
        source=source_record(args),
    )
    summary = run_build(iter_source(args), config)
    print(summary.line(f"{args.job_index}/{args.num_jobs}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(run, sys.argv[1:] if argv is None else list(argv), "python -m data_prep")


def run(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "build":
        return run_build_command(args)
    if args.command == "index":
        from data_prep.index import build_index

        index = build_index(args.out)
        print(
            f"{args.out / 'index.json'}: {index['num_samples']} samples in {len(index['shards'])} shards, {index['num_failed']} failed objects"
        )
        return 0
    from data_prep.report import build_report, format_report

    report = build_report(args.out)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["damaged_shards"] else 0


if __name__ == "__main__":
    sys.exit(main())
