"""Symmetries of the cube [-1, 1]^3, applied to every geometric field of a shape sample.

An axis permutation followed by sign flips, x'_k = s_k x_{p_k}, maps the cube onto itself and is
an isometry, so it carries a shape's signed distance exactly: sdf'(x') = sdf(x). Transforming the
surface points, normals, query points, SDF grid and triplane of a sample together therefore yields
another correctly labelled sample, with no resampling and no interpolation. The 48 such maps form
the octahedral group; the 8 pure sign flips are a subgroup. Training on them is the rotation and
reflection augmentation that point-cloud autoencoders use, restricted to the maps under which the
stored grids and planes transform without error.

Views (rendered images) do not transform with the shape; `transform_shape_batch` leaves them out.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from native3d.geometry.triplane import PLANE_AXES

Symmetries = Literal["none", "flips", "octahedral"]


def random_cube_symmetries(
    batch_size: int, group: Symmetries, generator: torch.Generator | None = None
) -> tuple[Int[Tensor, "B 3"], Float[Tensor, "B 3"]]:
    """Uniform draws from `group`: per sample an axis permutation `perm` and signs (+-1)."""
    if group not in ("none", "flips", "octahedral"):
        raise ValueError(f"unknown symmetry group {group!r}; expected 'none', 'flips' or 'octahedral'")
    perm = torch.arange(3).repeat(batch_size, 1)
    signs = torch.ones(batch_size, 3)
    if group == "octahedral":
        perm = torch.argsort(torch.rand(batch_size, 3, generator=generator), dim=1)
    if group != "none":
        signs = torch.randint(0, 2, (batch_size, 3), generator=generator).float() * 2 - 1
    return perm, signs


def transform_points(
    points: Float[Tensor, "B N 3"], perm: Int[Tensor, "B 3"], signs: Float[Tensor, "B 3"]
) -> Float[Tensor, "B N 3"]:
    """x'_k = s_k x_{p_k}; normals transform the same way, the maps being orthogonal."""
    index = perm.to(points.device)[:, None, :].expand(-1, points.shape[1], -1)
    return points.gather(-1, index) * signs.to(points)[:, None, :]


def transform_grid(
    grid: Float[Tensor, "R R R"], perm: Int[Tensor, "3"], signs: Float[Tensor, "3"]
) -> Float[Tensor, "R R R"]:
    """A corner-convention [x, y, z] grid: new axis k is old axis p_k, reversed where s_k < 0."""
    grid = grid.permute(*perm.tolist())
    return grid.flip([k for k in range(3) if signs[k] < 0])


def transform_planes(
    planes: Float[Tensor, "P C R R"], perm: Int[Tensor, "3"], signs: Float[Tensor, "3"]
) -> Float[Tensor, "P C R R"]:
    """Triplanes that reduce their third axis symmetrically (min, mean), as `project_triplane` does.

    New plane (a, b) is the old plane over axes (p_a, p_b), transposed when p_a > p_b, flipped
    along its axes whose sign is negative. A flip of the reduced axis leaves a plane unchanged.
    """
    p = perm.tolist()
    out = []
    for a, b in PLANE_AXES:
        old = PLANE_AXES.index(tuple(sorted((p[a], p[b]))))
        plane = planes[old] if p[a] < p[b] else planes[old].transpose(-1, -2)  # (C, R, R) indexed [a', b']
        out.append(plane.flip([dim for dim, k in ((-2, a), (-1, b)) if signs[k] < 0]))
    return torch.stack(out)


def transform_shape_batch(batch: dict, perm: Int[Tensor, "B 3"], signs: Float[Tensor, "B 3"]) -> dict:
    """The batch with every sample's geometry mapped by its symmetry; views are dropped, ids kept."""
    out = {key: value for key, value in batch.items() if key != "views"}
    for key in ("surface", "sharp"):  # (B, N, 6), (B, S, 6): points, normals
        if key in batch:
            points = batch[key]
            out[key] = torch.cat(
                [
                    transform_points(points[..., :3], perm, signs),
                    transform_points(points[..., 3:6], perm, signs),
                    points[..., 6:],
                ],
                dim=-1,
            )
    if "query" in batch:
        query = batch["query"]  # (B, Q, 4): points, sdf
        out["query"] = torch.cat([transform_points(query[..., :3], perm, signs), query[..., 3:]], dim=-1)
    if "sdf" in batch:
        out["sdf"] = torch.stack([transform_grid(g, p, s) for g, p, s in zip(batch["sdf"], perm, signs)])
    if "triplane" in batch:
        out["triplane"] = torch.stack(
            [transform_planes(t, p, s) for t, p, s in zip(batch["triplane"], perm, signs)]
        )
    return out
