"""Symmetries of the cube carry every field of a shape sample exactly (`native3d.geometry.symmetry`).

The reference is an off-centre box with three different extents, whose signed distance is known
in closed form: mapped by a symmetry, it is again such a box, so each transformed field can be
compared with the same field computed from scratch for the mapped box.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from native3d.autoencoders import vecset_tiny
from native3d.data.schema import grid_points
from native3d.geometry.symmetry import random_cube_symmetries, transform_shape_batch
from native3d.geometry.triplane import project_triplane
from native3d.training.autoencoder import AutoencoderModule

CENTRE, HALF = torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.5, 0.3, 0.15])
SYMMETRIES = [
    (torch.tensor(p), torch.tensor(s, dtype=torch.float32))
    for p in itertools.permutations(range(3))
    for s in itertools.product((1, -1), repeat=3)
]


def box_sdf(points: torch.Tensor, centre: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    q = (points - centre).abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0)


def box_fields(centre: torch.Tensor, half: torch.Tensor, points: torch.Tensor, resolution: int = 17) -> dict:
    """A batch of one sample of the box: surface and sharp (points, normals), query (points, sdf), sdf grid, triplane."""
    points = points.clone().requires_grad_()
    sdf = box_sdf(points, centre, half)
    (normals,) = torch.autograd.grad(sdf.sum(), points)
    grid = box_sdf(torch.from_numpy(grid_points(resolution)).float(), centre, half).reshape(3 * (resolution,))
    return {
        "id": ["box"],
        "surface": torch.cat([points, normals], dim=-1).detach()[None],
        "sharp": torch.cat([points, normals], dim=-1).detach()[None, :32],  # any (points, normals) subset
        "query": torch.cat([points, sdf[:, None]], dim=-1).detach()[None],
        "sdf": grid[None],
        "triplane": torch.from_numpy(project_triplane(grid.numpy()))[None],
        "views": torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8),
    }


def test_every_field_of_a_mapped_box_is_the_mapped_box_field():
    # Off the box's surface and edges, where the normal is well defined.
    points = torch.rand(256, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = box_fields(CENTRE, HALF, points)
    for perm, signs in SYMMETRIES:
        mapped = transform_shape_batch(batch, perm[None], signs[None])
        expected = box_fields(signs * CENTRE[perm], HALF[perm], points[:, perm] * signs)
        assert mapped.keys() == expected.keys() - {"views"}, "views do not transform with the shape"
        assert mapped["id"] == ["box"]
        for key in ("surface", "sharp", "query", "sdf", "triplane"):
            torch.testing.assert_close(
                mapped[key],
                expected[key],
                atol=1e-5,
                rtol=0,
                msg=f"{key} under {perm.tolist()}, {signs.tolist()}",
            )


def test_each_sample_of_a_batch_gets_its_own_map():
    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    one = box_fields(CENTRE, HALF, points)
    batch = {key: torch.cat([one[key]] * 2) if key != "id" else ["a", "b"] for key in one}
    (p0, s0), (p1, s1) = (
        SYMMETRIES[0],
        SYMMETRIES[-1],
    )  # the identity, and the last permutation with every flip
    mapped = transform_shape_batch(batch, torch.stack([p0, p1]), torch.stack([s0, s1]))
    for key in ("surface", "sharp", "query", "sdf", "triplane"):
        torch.testing.assert_close(mapped[key][0], one[key][0])
        torch.testing.assert_close(mapped[key][1], transform_shape_batch(one, p1[None], s1[None])[key][0])


@pytest.mark.parametrize(("group", "size"), [("octahedral", 48), ("flips", 8), ("none", 1)])
def test_random_symmetries_draw_the_whole_group_evenly(group, size):
    perm, signs = random_cube_symmetries(4800, group, generator=torch.Generator().manual_seed(0))
    drawn = [tuple(p) + tuple(s) for p, s in zip(perm.tolist(), signs.tolist())]
    counts = {element: drawn.count(element) for element in set(drawn)}
    assert len(counts) == size
    assert min(counts.values()) > 0.7 * 4800 / size, "every element is about equally likely"
    if group != "octahedral":
        assert (perm == torch.arange(3)).all()


def test_an_unknown_group_is_refused():
    with pytest.raises(ValueError, match="'rotations'"):
        random_cube_symmetries(2, "rotations")


@pytest.mark.parametrize("augment", ["none", "octahedral"])
def test_only_training_steps_see_mapped_shapes(augment):
    points = torch.rand(2, 128, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    sdf = box_sdf(points, CENTRE, HALF)
    batch = {
        "id": ["a", "b"],
        "surface": torch.cat([points, torch.nn.functional.normalize(points, dim=-1)], dim=-1),
        "query": torch.cat([points, sdf[..., None]], dim=-1),
    }
    module = AutoencoderModule(vecset_tiny(), augment=augment)
    seen, forward = [], module.autoencoder.forward

    def recording_forward(inputs, pts, sample_posterior=True):
        seen.append((inputs, pts))
        return forward(inputs, pts, sample_posterior)

    module.autoencoder.forward = recording_forward
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # logging without a trainer
        module.step(batch, "train")
        module.step(batch, "val")
    (train_inputs, train_points), (val_inputs, val_points) = seen
    assert torch.equal(val_inputs, batch["surface"]) and torch.equal(val_points, points)
    if augment == "none":
        assert torch.equal(train_points, points)
        return
    assert not torch.equal(train_points, points)
    # Each sample's points are mapped by one symmetry: the sorted |coordinates| of every point stay.
    torch.testing.assert_close(train_points.abs().sort(dim=-1).values, points.abs().sort(dim=-1).values)
    torch.testing.assert_close(train_inputs[..., :3], train_points)
