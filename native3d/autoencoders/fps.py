"""Farthest-point sampling (Qi et al. 2017, PointNet++ sec. 3.2): the VecSet encoder's token seeds.

Greedy FPS: start from one point, then repeatedly take the point farthest from those chosen so far.
It is inherently sequential in its M steps. On CPU the exact greedy FPS of `fpsample` (C++, one
shape at a time) does each step without a tensor allocation, several times faster than the
torch loop (`benchmarks/fps.py`, figures in docs/results.md). On a
GPU the batched torch loop below keeps the points on the device: each step is a handful of kernels
over all B x N points.

Both give the same indices for the same start, in the order they were chosen, so the first M' of
an M-point sample are the M'-point sample. `fpsample`'s bucket (QuickFPS) variant is exact too and
faster again, but in fpsample 1.0.2 its `start_idx` indexes the points in its
KD-tree's order, not the input's, so it cannot start where the torch loop does; it is not used.
"""

from __future__ import annotations

import fpsample
import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor


@torch.no_grad()
def farthest_point_sample(
    points: Float[Tensor, "B N 3"], num_samples: int, random_start: bool = False
) -> Int[Tensor, "B M"]:
    """Indices of `num_samples` points chosen greedily to be farthest from those already chosen.

    Starts from point 0, or from a random point per sample (global torch RNG, so deterministic
    under `torch.manual_seed`). Runs `fpsample` on CPU tensors and the torch loop on others.
    """
    B, N, _ = points.shape
    if num_samples > N:
        raise ValueError(f"cannot pick {num_samples} points out of {N}")
    start = torch.randint(N, (B,)) if random_start else torch.zeros(B, dtype=torch.long)
    if points.device.type == "cpu":
        return farthest_point_sample_cpu(points, num_samples, start)
    return farthest_point_sample_torch(points, num_samples, start.to(points.device))


def farthest_point_sample_cpu(
    points: Float[Tensor, "B N 3"], num_samples: int, start: Int[Tensor, " B"]
) -> Int[Tensor, "B M"]:
    """Exact greedy FPS by `fpsample`, shape by shape."""
    pc = points.detach().float().cpu().numpy()
    index = [fpsample.fps_sampling(p, num_samples, start_idx=int(s)) for p, s in zip(pc, start)]
    return torch.from_numpy(np.stack(index).astype(np.int64))  # (B, M)


@torch.no_grad()
def farthest_point_sample_torch(
    points: Float[Tensor, "B N 3"], num_samples: int, start: Int[Tensor, " B"]
) -> Int[Tensor, "B M"]:
    """Batched greedy FPS in M sequential steps of O(B N) work, on the points' device."""
    B, N, _ = points.shape
    points = points.float()
    indices = torch.empty(B, num_samples, dtype=torch.long, device=points.device)
    distance = torch.full((B, N), float("inf"), device=points.device)
    farthest = start
    for i in range(num_samples):
        indices[:, i] = farthest
        centre = torch.gather(points, 1, farthest.view(B, 1, 1).expand(B, 1, 3))  # (B, 1, 3)
        torch.minimum(distance, (points - centre).square().sum(-1), out=distance)
        farthest = distance.argmax(dim=-1)
    return indices
