"""The structure stage of a set latent: its anchors as an occupancy grid, and back."""

from __future__ import annotations

import pytest
import torch

from native3d.backbones.set_dit import SetDiT
from native3d.backbones.unet3d import UNet3D
from native3d.diffusion import DDPM
from native3d.geometry.structure import anchor_occupancy, anchors_in_cells, fold_cells, unfold_cells
from native3d.training.diffusion import LatentDiffusion


def test_anchor_occupancy_marks_the_cells_that_hold_anchors():
    anchors = torch.tensor([[[-0.99, -0.99, -0.99], [0.1, 0.6, -0.3], [0.12, 0.61, -0.26], [1.2, 0.0, 0.0]]])
    grid = anchor_occupancy(anchors, 4)
    assert grid.shape == (1, 1, 4, 4, 4)
    occupied = {tuple(c) for c in (grid[0, 0] > 0).nonzero().tolist()}
    # cells of side 0.5 from -1: x = 0.1 -> 2, y = 0.6 -> 3, z = -0.3 -> 1; 1.2 is outside, clamped to 3
    assert occupied == {(0, 0, 0), (2, 3, 1), (3, 2, 2)}
    assert set(grid.unique().tolist()) == {-1.0, 1.0}


def test_anchors_are_spread_over_the_occupied_cells_and_no_grid_is_left_empty():
    grid = torch.full((2, 1, 8, 8, 8), -1.0)
    grid[0, 0, 1, 2, 3] = grid[0, 0, 6, 5, 4] = 1.0  # two cells
    grid[0, 0, 0, 7, 0] = 0.3  # a stray cell a half-trained model leaves: no anchor
    grid[1, 0, 4, 4, 4] = 0.2  # none occupied: its highest cell
    anchors = anchors_in_cells(grid, 6, torch.Generator().manual_seed(0))
    assert anchors.shape == (2, 6, 3)
    cells = ((anchors + 1) / 2 * 8).floor().long()
    first = {tuple(c) for c in cells[0].tolist()}
    assert first == {(1, 2, 3), (6, 5, 4)}, "FPS reaches both cells and nothing else"
    assert {tuple(c) for c in cells[1].tolist()} == {(4, 4, 4)}
    again = anchor_occupancy(anchors[:1], 8)
    assert torch.equal(again > 0, grid[:1] > 0.5), "the anchors' own grid is the one they came from"


def test_folding_cells_into_channels_is_undone_exactly():
    grid = torch.randn(2, 1, 8, 8, 8)
    folded = fold_cells(grid, 2)
    assert folded.shape == (2, 8, 4, 4, 4)
    assert torch.equal(folded[0, :, 0, 0, 0], grid[0, 0, :2, :2, :2].flatten()), (
        "a channel per cell of a block"
    )
    assert torch.equal(unfold_cells(folded, 2), grid)


VECSET = {
    "class_path": "native3d.autoencoders.vecset.VecSetVAE",
    "init_args": {"num_latents": 16, "latent_channels": 4, "width": 32, "heads": 2, "depth": 1},
}


def two_stage(anchored: bool = True, objective=None, resolution: int = 8) -> LatentDiffusion:
    config = {**VECSET, "init_args": {**VECSET["init_args"], "token_positions": anchored}}
    return LatentDiffusion(
        SetDiT(in_channels=4 + 3 * anchored, dim=32, depth=1, heads=2),
        autoencoder="unused",
        autoencoder_config=config,
        objective=objective,
        structure=UNet3D(8, channels=[8, 16], num_blocks=1, attention_levels=[], groups=4),
        structure_resolution=resolution,
    )


def test_a_structure_stage_needs_anchored_tokens_and_a_flow_objective():
    with pytest.raises(ValueError, match="places anchored tokens; VecSetVAE has none"):
        two_stage(anchored=False)
    with pytest.raises(ValueError, match="needs RectifiedFlow, not DDPM"):
        two_stage(objective=DDPM())
    with pytest.raises(ValueError, match="structure_resolution 9 is not a multiple of structure_patch 2"):
        two_stage(resolution=9)


class FixedGrid(torch.nn.Module):
    """A structure backbone whose denoised estimate is always `grid` (flow: x0 = x_t - t v)."""

    def __init__(self, grid: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("grid", grid)

    def forward(self, x_t, t, cond=None):
        return (x_t - self.grid) / t.clamp_min(1e-3).view(-1, 1, 1, 1, 1)


def test_a_two_stage_sample_places_its_tokens_in_the_cells_its_structure_drew():
    model = two_stage().eval()
    grid = torch.full((1, 1, 8, 8, 8), -1.0)
    grid[0, 0, 1, 1, 1] = grid[0, 0, 6, 2, 5] = grid[0, 0, 3, 7, 0] = 1.0
    model.structure = FixedGrid(fold_cells(grid, 2))
    latents = model.generate(2, steps=3, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 16, 7) and torch.isfinite(latents).all()
    cells = ((latents[..., :3] + 1) / 2 * 8).floor().long()
    for drawn in cells:
        assert {tuple(c) for c in drawn.tolist()} == {(1, 1, 1), (6, 2, 5), (3, 7, 0)}
