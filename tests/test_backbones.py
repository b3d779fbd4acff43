"""Contract tests over every diffusion backbone (tiny configs): forward(x_t, t, cond) -> x_t's shape."""

from __future__ import annotations

import pytest
import torch

from native3d.backbones import set_dit_tiny, triplane_unet_tiny, unet3d_tiny
from native3d.diffusion import DDPM, RectifiedFlow, cfg_model, drop_condition

CONTEXT_DIM, POOLED_DIM, TOKENS = 12, 10, 5
# name -> (preset, x_t shape at batch 2)
BACKBONES = {
    "set_dit": (set_dit_tiny, (2, 16, 8)),  # (B, M, C)
    "unet3d": (unet3d_tiny, (2, 4, 8, 8, 8)),  # (B, C, D, H, W)
    "triplane_unet": (triplane_unet_tiny, (2, 3, 4, 8, 8)),  # (B, 3, C, H, W)
}


def build(name: str, seed: int = 0, conditional: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    preset, shape = BACKBONES[name]
    channels = shape[-1] if name == "set_dit" else shape[-3] if name == "triplane_unet" else shape[1]
    if not conditional:
        return preset(channels)
    return preset(channels, context_dim=CONTEXT_DIM, pooled_dim=POOLED_DIM)


def perturb_zero_init(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Gives every all-zero parameter small random values, so zero init no longer blocks gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def inputs(name: str, seed: int = 2, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *BACKBONES[name][1][1:])
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)
    mask[0, 3:] = False  # the first sample has two padding tokens
    cond = {
        "tokens": torch.randn(batch, TOKENS, CONTEXT_DIM, generator=g),
        "mask": mask,
        "pooled": torch.randn(batch, POOLED_DIM, generator=g),
    }
    return torch.randn(shape, generator=g), torch.rand(batch, generator=g), cond


names = pytest.mark.parametrize("name", BACKBONES)


@names
def test_output_shape_and_exactly_zero_at_init(name):
    model = build(name)
    x_t, t, cond = inputs(name)
    for c in (None, cond):
        out = model(x_t, t, c)
        assert out.shape == x_t.shape and out.dtype == x_t.dtype
        assert torch.equal(out, torch.zeros_like(x_t))


@names
def test_gradients_reach_every_parameter(name):
    model = perturb_zero_init(build(name))
    x_t, t, cond = inputs(name)
    out = model(x_t, t, cond)
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@names
def test_zero_init_only_blocks_gradients_until_the_first_step(name):
    """Without perturbation, two optimizer steps on a real objective make the output non-zero."""
    model = build(name)
    x0, _, cond = inputs(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        RectifiedFlow()(model, x0, cond).mean().backward()
        optimizer.step()
    assert model(x0, torch.full((2,), 0.5), cond).abs().sum() > 0


@names
def test_same_seed_same_result(name):
    x_t, t, cond = inputs(name)
    outs = [perturb_zero_init(build(name, seed=3))(x_t, t, cond) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    other = perturb_zero_init(build(name, seed=4))(x_t, t, cond)
    assert not torch.allclose(outs[0], other)


@names
def test_condition_is_used_and_padding_is_ignored(name):
    model = perturb_zero_init(build(name)).eval()
    x_t, t, cond = inputs(name)
    with torch.no_grad():
        base = model(x_t, t, cond)
        assert torch.isfinite(base).all()
        for partial in (None, {"pooled": cond["pooled"]}, {"tokens": cond["tokens"]}):
            out = model(x_t, t, partial)
            assert torch.isfinite(out).all() and not torch.allclose(out, base)
        # Changing padded tokens (masked out in sample 0) changes nothing; changing valid ones does.
        padded = {**cond, "tokens": cond["tokens"].clone()}
        # (Random, not constant, offsets: the context LayerNorm would erase a constant one.)
        padded["tokens"][0, 3:] += torch.randn(2, CONTEXT_DIM, generator=torch.Generator().manual_seed(6))
        assert torch.allclose(model(x_t, t, padded), base, atol=1e-5)
        valid = {**cond, "tokens": cond["tokens"].clone()}
        valid["tokens"][0, :3] += torch.randn(3, CONTEXT_DIM, generator=torch.Generator().manual_seed(6))
        assert not torch.allclose(model(x_t, t, valid)[0], base[0], atol=1e-5)
        assert torch.allclose(model(x_t, t, valid)[1], base[1], atol=1e-5)  # samples stay separate
        # Time matters too.
        assert not torch.allclose(model(x_t, 1 - t, cond), base)


@names
def test_unconditional_model_rejects_a_condition(name):
    model = build(name, conditional=False)
    x_t, t, cond = inputs(name)
    assert model(x_t, t, None).shape == x_t.shape
    with pytest.raises(ValueError):
        model(x_t, t, {"tokens": cond["tokens"]})
    with pytest.raises(ValueError):
        model(x_t, t, {"pooled": cond["pooled"]})


@names
def test_bf16_autocast_on_cpu(name):
    model = perturb_zero_init(build(name))
    x_t, t, cond = inputs(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_t, t, cond)
        loss = DDPM(prediction="v")(model, x_t, cond)
    assert out.shape == x_t.shape and torch.isfinite(out.float()).all()
    reference = model(x_t, t, cond)
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max() + 1e-3
    loss.mean().backward()
    assert loss.shape == (2,) and torch.isfinite(loss).all()


@names
def test_works_under_guidance_and_condition_dropout(name):
    model = perturb_zero_init(build(name)).eval()
    x_t, t, cond = inputs(name)
    dropped = drop_condition(cond, 1.0)  # all-null: zero tokens, all-valid mask, zero pooled
    with torch.no_grad():
        assert torch.allclose(cfg_model(model, 0.0)(x_t, t, cond), model(x_t, t, dropped), atol=1e-5)
        assert torch.allclose(cfg_model(model, 1.0)(x_t, t, cond), model(x_t, t, cond), atol=1e-5)


def test_set_dit_is_permutation_equivariant():
    model = perturb_zero_init(build("set_dit")).eval()
    x_t, t, cond = inputs("set_dit")
    perm = torch.randperm(x_t.shape[1], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(model(x_t[:, perm], t, cond), model(x_t, t, cond)[:, perm], atol=1e-5)


def test_triplane_planes_exchange_information():
    model = perturb_zero_init(build("triplane_unet")).eval()
    x_t, t, cond = inputs("triplane_unet")
    changed = x_t.clone()
    changed[:, 0] += 1  # only the xy plane
    with torch.no_grad():
        delta = (model(changed, t, cond) - model(x_t, t, cond)).abs()
    assert (delta[:, 1:].flatten(2).amax(-1) > 1e-4).all()  # both other planes respond


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("unet3d", (2, 4, 7, 8, 8)),  # 7 does not halve
        ("unet3d", (2, 4, 8, 8)),  # a 2-D input
        ("triplane_unet", (2, 2, 4, 8, 8)),  # two planes
        ("triplane_unet", (2, 3, 4, 8, 7)),
    ],
)
def test_unets_reject_bad_shapes(name, shape):
    with pytest.raises(ValueError):
        build(name)(torch.randn(shape), torch.rand(2), None)
