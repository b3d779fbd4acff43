"""Where a set latent's tokens are, as a coarse occupancy grid: the structure of a two-stage sampler.

TRELLIS (Xiang et al. 2025, sec. 3.3) generates a shape in two stages: a flow model draws which
voxels of a coarse grid are occupied (the sparse structure), then a second one draws the latent
features at those voxels. An anchored VecSet latent (`VecSetVAE(token_positions=True)`) splits the
same way: its anchors are the structure, its channels the features. `anchor_occupancy` turns the
anchors into the grid a 3-D U-Net learns to generate; `anchors_in_cells` turns a generated grid back
into M anchors, farthest-point sampled from points drawn uniformly in its occupied cells, the way the
encoder's anchors are farthest-point sampled from the surface.

The grid spans the normalized shape's cube [-1, 1]^3; cell (i, j, k) holds x, y, z along its axes.
`fold_cells` moves each patch^3 block of cells into channels (space-to-depth), so a U-Net runs at
(R / patch)^3, as the grid family's does on its latent.
"""

from __future__ import annotations

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from native3d.autoencoders.fps import farthest_point_sample

# Points drawn in the occupied cells before farthest-point sampling picks the anchors among them.
CANDIDATES_PER_ANCHOR = 32
# A sampled cell counts as occupied above this value (training grids are -1 or +1). Farthest-point
# sampling seeks outliers, so every stray cell a half-trained model leaves near 0 would take an anchor
# and the decoder would fill the space around it: between a table's legs, a box (docs/results.md).
OCCUPIED = 0.5


def anchor_occupancy(anchors: Float[Tensor, "B M 3"], resolution: int) -> Float[Tensor, "B 1 R R R"]:
    """+1 in the cells of the R^3 grid over [-1, 1]^3 that hold an anchor, -1 elsewhere (anchors
    outside the cube count in its border cells)."""
    B = anchors.shape[0]
    cells = ((anchors.float() + 1) / 2 * resolution).floor().long().clamp(0, resolution - 1)  # (B, M, 3)
    flat = (cells[..., 0] * resolution + cells[..., 1]) * resolution + cells[..., 2]  # (B, M)
    grid = torch.full((B, resolution**3), -1.0, device=anchors.device)
    grid.scatter_(1, flat, 1.0)
    return grid.view(B, 1, resolution, resolution, resolution)


def anchors_in_cells(
    grid: Float[Tensor, "B 1 R R R"], count: int, generator: torch.Generator | None = None
) -> Float[Tensor, "B M 3"]:
    """`count` anchors per grid: farthest-point sampled from points uniform in the cells above
    `OCCUPIED` (in the highest cell where none is), in [-1, 1]^3."""
    R = grid.shape[-1]
    anchors = []
    for values in grid[:, 0]:  # (R, R, R)
        cells = (values > OCCUPIED).nonzero()  # (K, 3)
        if len(cells) == 0:
            cells = (values == values.max()).nonzero()[:1]
        candidates = count * CANDIDATES_PER_ANCHOR
        pick = torch.randint(len(cells), (candidates,), generator=generator, device=grid.device)
        offset = torch.rand(candidates, 3, generator=generator, device=grid.device)
        points = (cells[pick] + offset) / R * 2 - 1  # (count * 32, 3)
        index = farthest_point_sample(points[None], count)[0]
        anchors.append(points[index])
    return torch.stack(anchors)  # (B, M, 3)


def fold_cells(grid: Float[Tensor, "B 1 R R R"], patch: int) -> Float[Tensor, "B C D H W"]:
    """(B, 1, R, R, R) -> (B, patch^3, R / patch, ...): each block of cells as the channels of one."""
    return rearrange(grid, "b 1 (d p) (h q) (w r) -> b (p q r) d h w", p=patch, q=patch, r=patch)


def unfold_cells(grid: Float[Tensor, "B C D H W"], patch: int) -> Float[Tensor, "B 1 R R R"]:
    """The inverse of `fold_cells`."""
    return rearrange(grid, "b (p q r) d h w -> b 1 (d p) (h q) (w r)", p=patch, q=patch, r=patch)
