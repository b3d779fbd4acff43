"""Farthest-point sampling cost: the torch loop against fpsample, at the VecSet encoder's sizes.

For each (N, M): the batched torch loop on CPU (what `farthest_point_sample` was), exact greedy
FPS by fpsample (what it runs on CPU now; the same indices), fpsample's bucket QuickFPS (another
set in another order; for reference, not used), and the torch loop on CUDA where there is one.
Each method runs `--batch` shapes of uniform random points in the unit cube, `--repeats` times;
the table gives the median milliseconds per shape and the speedup over the CPU loop of this run.

    .venv/bin/python benchmarks/fps.py [--sizes 2048:128,8192:512,32768:2048] [--batch 2] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import fpsample
import numpy as np
import torch

from native3d.autoencoders.fps import farthest_point_sample_cpu, farthest_point_sample_torch


def bucket_fps(points: torch.Tensor, num_samples: int, start: torch.Tensor) -> torch.Tensor:
    pc = points.numpy()
    return torch.from_numpy(
        np.stack(
            [
                fpsample.bucket_fps_kdline_sampling(p, num_samples, h=7, start_idx=int(s))
                for p, s in zip(pc, start)
            ]
        ).astype(np.int64)
    )


def cuda_loop(points: torch.Tensor, num_samples: int, start: torch.Tensor) -> torch.Tensor:
    index = farthest_point_sample_torch(points.cuda(), num_samples, start.cuda())
    torch.cuda.synchronize()
    return index


def methods() -> dict:
    found = {
        "torch loop (cpu)": farthest_point_sample_torch,
        "fpsample exact (cpu)": farthest_point_sample_cpu,
        "fpsample bucket h=7 (cpu)": bucket_fps,
    }
    if torch.cuda.is_available():
        found["torch loop (cuda)"] = cuda_loop
    return found


def time_ms(method, points: torch.Tensor, num_samples: int, repeats: int) -> float:
    start = torch.zeros(len(points), dtype=torch.long)
    method(points, min(num_samples, 8), start)  # warm-up (CUDA context, allocator)
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        method(points, num_samples, start)
        times.append((time.perf_counter() - begin) * 1000 / len(points))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2048:128,8192:512,32768:2048", help="N:M pairs")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for pair in args.sizes.split(","):
        N, M = (int(v) for v in pair.split(":"))
        points = torch.rand(args.batch, N, 3, generator=torch.Generator().manual_seed(0))
        exact = farthest_point_sample_cpu(points, M, torch.zeros(args.batch, dtype=torch.long))
        baseline = None
        for name, method in methods().items():
            ms = time_ms(method, points, M, args.repeats)
            baseline = baseline or ms
            same = torch.equal(method(points, M, torch.zeros(args.batch, dtype=torch.long)).cpu(), exact)
            rows.append((N, M, name, ms, baseline / ms, "yes" if same else "no"))
    print(f"batch {args.batch}, median of {args.repeats}, {args.threads} torch thread(s), ms per shape")
    print(f"| {'N':>6} | {'M':>5} | {'method':<26} | {'ms':>9} | {'speedup':>8} | same indices |")
    print(f"|{'-' * 8}|{'-' * 7}|{'-' * 28}|{'-' * 11}|{'-' * 10}|{'-' * 14}|")
    for N, M, name, ms, speedup, same in rows:
        print(f"| {N:>6} | {M:>5} | {name:<26} | {ms:>9.1f} | {speedup:>7.1f}x | {same:<12} |")


if __name__ == "__main__":
    main()
