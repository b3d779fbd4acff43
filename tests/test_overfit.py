"""Each latent family can learn: its tiny backbone, trained for seconds on a few distinct latents,
samples them back when asked for each by its condition.

The backbones are built from the tiny diffusion YAMLs (the demo's), at the latent shapes of the
tiny autoencoders, and trained with the shared stack (rectified flow, the euler sampler), so a
family that cannot fit four latents fails here before any benchmark runs. A YAML with a `structure`
stage trains its token backbone with the anchors given, as `LatentDiffusion` does, and its structure
backbone on the anchors' occupancy grids, each checked on its own.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from scipy.optimize import linear_sum_assignment
from test_training import CONFIGS

from native3d.diffusion import RectifiedFlow, as_denoiser, sample
from native3d.geometry.structure import anchor_occupancy, fold_cells, unfold_cells
from native3d.nn.modulation import Cond

FAMILIES = {  # tiny diffusion config -> the latent shape of its tiny autoencoder
    "set_dit_tiny.yaml": (128, 11),
    "unet3d_tiny.yaml": (8, 8, 8, 8),
    "triplane_unet_tiny.yaml": (3, 8, 8, 8),
}
SET_FAMILIES = {"set_dit_tiny.yaml"}  # a latent set: its tokens have no order, so compare them matched
SHAPES, STEPS = 4, 300
# The largest mean distance of a sample to its latent, relative to the latent's norm, after STEPS.
# A set model is permutation-equivariant, so it must learn each set under every order of its
# tokens at once and fits more slowly. An untrained model returns its noise, which scores about
# 0.84 against a set (matched) and 1.41 against a grid or triplane.
TOLERANCE = {"set_dit_tiny.yaml": 0.7, "unet3d_tiny.yaml": 0.35, "triplane_unet_tiny.yaml": 0.35}


def init_args(config: str) -> dict:
    return yaml.safe_load((CONFIGS / "diffusion" / config).read_text())["model"]["init_args"]


def backbone_of(config: str, key: str = "backbone") -> torch.nn.Module:
    parser = ArgumentParser()
    parser.add_argument("--backbone", type=torch.nn.Module)
    return parser.instantiate_classes(parser.parse_object({"backbone": init_args(config)[key]})).backbone


def fit_and_sample(
    backbone: torch.nn.Module, x0: torch.Tensor, cond: Cond, given: torch.Tensor | None = None
) -> torch.Tensor:
    """`backbone` trained STEPS steps on x0 under cond, then sampled for each (given entries from x0)."""
    objective = RectifiedFlow()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-3)
    for _ in range(STEPS):
        loss = objective(backbone, x0, cond, given=given).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.eval()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    if given is not None:
        noise = torch.where(given, x0, noise)
    return sample("euler", as_denoiser(backbone, objective), noise, objective.schedule, 20, cond, given=given)


def distance(a: torch.Tensor, b: torch.Tensor, is_set: bool) -> float:
    """L2 distance of two latents; of two token sets, after the best one-to-one matching of tokens."""
    if not is_set:
        return (a - b).norm().item()
    rows, cols = linear_sum_assignment(torch.cdist(a, b).numpy())
    return (a[rows] - b[cols]).norm().item()


def class_conditions(count: int, dim: int = 384, tokens: int = 4) -> Cond:
    g = torch.Generator().manual_seed(1)
    return {
        "tokens": torch.randn(count, tokens, dim, generator=g),
        "mask": torch.ones(count, tokens, dtype=torch.bool),
        "pooled": torch.randn(count, dim, generator=g),
    }


@pytest.mark.parametrize("config", sorted(FAMILIES))
def test_a_family_samples_back_the_latents_it_was_trained_on(config):
    torch.manual_seed(0)
    backbone = backbone_of(config)
    latents = torch.randn(SHAPES, *FAMILIES[config], generator=torch.Generator().manual_seed(0))
    cond = class_conditions(SHAPES)
    repeat = 4  # each shape 4 times a batch
    batch = {k: v.repeat(repeat, *[1] * (v.ndim - 1)) for k, v in cond.items()}
    x0 = latents.repeat(repeat, *[1] * (latents.ndim - 1))
    given = torch.arange(x0.shape[-1]) < 3 if "structure" in init_args(config) else None  # the anchors
    samples = fit_and_sample(backbone, x0, batch, given)
    is_set = config in SET_FAMILIES
    distances = torch.tensor([[distance(x, z, is_set) for z in latents] for x in samples])  # (B, SHAPES)
    asked = torch.arange(SHAPES).repeat(repeat)
    assert (distances.argmin(dim=1) == asked).all(), "every sample is nearest to the latent it was asked for"
    relative = distances[torch.arange(len(asked)), asked] / latents.flatten(1).norm(dim=1)[asked]
    print(f"{config}: relative error {relative.mean():.3f}")
    assert relative.mean() < TOLERANCE[config], (
        f"samples are far from their latents: relative error {relative.tolist()}"
    )


STRUCTURED = [c for c in sorted(FAMILIES) if "structure" in init_args(c)]


@pytest.mark.parametrize("config", STRUCTURED)
def test_a_structure_stage_samples_back_the_anchor_grids_it_was_trained_on(config):
    torch.manual_seed(0)
    spec = init_args(config)
    R, patch = spec["structure_resolution"], spec.get("structure_patch", 2)
    M = FAMILIES[config][0]
    u = torch.rand(SHAPES, M, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (SHAPES, M)
    zero = torch.zeros_like(u)
    shapes = [  # four point sets of distinct structure: a line, a ring, a plane, a cross
        torch.stack([u[0] * 0.9, zero[0], zero[0]], -1),
        torch.stack([0.7 * torch.cos(3.2 * u[1]), 0.7 * torch.sin(3.2 * u[1]), zero[1]], -1),
        torch.stack([u[2] * 0.8, u[2].roll(7) * 0.8, zero[2] + 0.5], -1),
        torch.stack([zero[3], u[3] * 0.9, u[3].roll(3).sign() * 0.5], -1),
    ]
    grids = anchor_occupancy(torch.stack(shapes), R)  # (SHAPES, 1, R, R, R)
    repeat = 4
    cond = {k: v.repeat(repeat, *[1] * (v.ndim - 1)) for k, v in class_conditions(SHAPES).items()}
    x0 = fold_cells(grids, patch).repeat(repeat, 1, 1, 1, 1)
    samples = unfold_cells(fit_and_sample(backbone_of(config, "structure"), x0, cond), patch) > 0
    truth = grids > 0
    iou = torch.tensor(
        [[((s & t).sum() / (s | t).sum()).item() for t in truth] for s in samples]
    )  # (B, SHAPES)
    asked = torch.arange(SHAPES).repeat(repeat)
    assert (iou.argmax(dim=1) == asked).all(), "every grid is nearest to the one it was asked for"
    assert iou[torch.arange(len(asked)), asked].mean() > 0.5, f"cells of the asked grid: {iou.tolist()}"
