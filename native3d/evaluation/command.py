"""`native3d evaluate`: its arguments and the dispatch to the evaluation that they name.

    native3d evaluate --ckpt AE.ckpt --data SHARDS --out DIR          reconstruction metrics
    native3d evaluate --meshes FOLDER --reference SHARDS --out DIR    generated meshes vs a reference
    native3d evaluate --ckpt LDM.ckpt --reference SHARDS --out DIR    sample a diffusion checkpoint
                                                                      into DIR/samples, then as --meshes

With `--ckpt LDM.ckpt` and no --prompt/--image, a conditional model is asked for the reference's
classes ("a <class>" for text, held-out views for images; see `native3d.evaluation.checkpoint`).
"""

from __future__ import annotations

import argparse

from native3d.errors import InputError
from native3d.options import add_sampling_arguments, at_least, non_negative, positive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to evaluate (one of)")
    what.add_argument(
        "--ckpt",
        help="autoencoder checkpoint (with --data) or latent-diffusion checkpoint (with --reference)",
    )
    what.add_argument("--data", help="shard set (folder or index.json) to reconstruct (with --ckpt)")
    what.add_argument(
        "--meshes", help="folder of generated meshes, optionally with samples.json (with --reference)"
    )
    what.add_argument("--reference", help="reference shard set for --meshes or a diffusion --ckpt")
    parser.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
    parser.add_argument(
        "--points", type=positive, default=2048, help="points per shape for point-cloud metrics"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every point subsample")
    recon = parser.add_argument_group("reconstruction (--ckpt --data)")
    parser.add_argument(
        "--resolution",
        type=at_least(2),
        default=64,
        help="marching-cubes cells per axis (reconstructions and samples)",
    )
    recon.add_argument("--limit", type=positive, help="the first N objects of the shard set")
    recon.add_argument(
        "--fscore-threshold", type=non_negative, default=0.02, help="F-score distance, normalized frame"
    )
    parser.add_argument("--batch-size", type=positive, default=8)
    parser.add_argument("--device", default="cpu")
    gen = parser.add_argument_group("generation (--meshes or a diffusion --ckpt, with --reference)")
    gen.add_argument(
        "--metric", choices=("chamfer", "emd"), default="chamfer", help="Chamfer-L1 or exact EMD"
    )
    gen.add_argument(
        "--class-distance",
        choices=("min", "mean"),
        default="min",
        help="prompt accuracy: nearest class by min or mean distance to its references",
    )
    add_sampling_arguments(parser.add_argument_group("sampling (a diffusion --ckpt with --reference)"))


def run(args: argparse.Namespace) -> int:
    from native3d.evaluation.report import write_report

    report = evaluate(args)
    json_path, md_path = write_report(report, args.out)
    numbers = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in report.summary.items()
    )
    print(f"{json_path} and {md_path.name}: {numbers}")
    if report.failures:
        print(
            f"{len(report.failures)} failed: "
            + ", ".join(f"{f['id']} ({f['reason']})" for f in report.failures)
        )
    return 0


def evaluate(args: argparse.Namespace):
    """The `EvaluationReport` of the evaluation the arguments name."""
    if args.ckpt and args.data and not (args.meshes or args.reference):
        from native3d.evaluation.reconstruction import evaluate_reconstruction

        return evaluate_reconstruction(
            args.ckpt,
            args.data,
            resolution=args.resolution,
            limit=args.limit,
            points=args.points,
            fscore_threshold=args.fscore_threshold,
            device=args.device,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    if args.meshes and args.reference and not (args.ckpt or args.data):
        from native3d.evaluation.generation import evaluate_generation

        return evaluate_generation(
            args.meshes,
            args.reference,
            points=args.points,
            metric=args.metric,
            class_distance=args.class_distance,
            seed=args.seed,
        )
    if args.ckpt and args.reference and not (args.meshes or args.data):
        from native3d.evaluation.checkpoint import evaluate_checkpoint
        from native3d.sampling import settings_from_args

        return evaluate_checkpoint(
            settings_from_args(args),
            args.reference,
            args.out,
            points=args.points,
            metric=args.metric,
            class_distance=args.class_distance,
            seed=args.seed,
        )
    raise InputError(
        "native3d evaluate: give --ckpt AE.ckpt --data SHARDS, --meshes FOLDER --reference SHARDS, "
        "or --ckpt LDM.ckpt --reference SHARDS"
    )
