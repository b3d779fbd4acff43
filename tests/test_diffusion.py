"""Objectives, samplers and guidance against Gaussian data, where the exact denoiser is closed-form.

Data x0 ~ N(mu, s^2) independently per element. For any linear path x_t = a x0 + b noise the
posterior is Gaussian: with var = a^2 s^2 + b^2 and r = x_t - a mu,
    E[noise | x_t] = b r / var,        E[x0 | x_t] = mu + a s^2 r / var,
which gives the exact velocity (flow: a = 1 - t, b = t, v = noise - x0) and the exact eps / v
(DDPM: a = sqrt(abar), b = sqrt(1 - abar)). The probability-flow ODE of this data is affine and
maps the starting noise z to mu + s z' with z' the standardized start, so each sampler is checked
both path by path and on the mean and std of the samples it produces.
"""

from __future__ import annotations

import math

import pytest
import torch

from native3d.diffusion import (
    DDPM,
    RectifiedFlow,
    as_denoiser,
    cfg_model,
    drop_condition,
    flow_timesteps,
    null_condition,
    resolve_sampler,
    sample,
    sample_ddim,
)
from native3d.errors import InputError
from native3d.nn.modulation import expand_like

BATCH = 4096
# (B, M, C) sets, (B, C, D, H, W) grids and (B, 3, C, H, W) triplanes.
SHAPES = {"set": (5, 3), "grid": (2, 2, 2, 3), "triplane": (3, 2, 2, 2)}


def gaussian_data(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(shape, generator=g) * 2 - 1  # in [-1, 1]
    s = torch.rand(shape, generator=g) * 0.8 + 0.2  # in [0.2, 1]
    return mu, s


def posterior(mu, s, x_t, a, b):
    var = a**2 * s**2 + b**2
    r = x_t - a * mu
    return mu + a * s**2 * r / var, b * r / var  # E[x0 | x_t], E[noise | x_t]


def exact_flow_model(mu, s):
    def model(x_t, t, cond):
        t = expand_like(t, x_t)
        x0, noise = posterior(mu, s, x_t, 1 - t, t)
        return noise - x0

    return model


def exact_ddpm_model(mu, s, objective: DDPM):
    def model(x_t, t, cond):
        step = torch.round(t * objective.num_train_timesteps).long()
        a, b = objective.coefficients(step, x_t)
        x0, noise = posterior(mu, s, x_t, a, b)
        return noise if objective.prediction == "eps" else a * noise - b * x0

    return model


def run_sampler(name: str, model, objective, noise, steps: int):
    """The one interface: the model read as a denoiser through its objective, the sampler by name."""
    return sample(name, as_denoiser(model, objective), noise, objective.schedule, steps)


def check_samples(x, noise, mu, s, start_a: float, path_tol: float) -> None:
    """Path-wise against the exact ODE map, then the samples' mean and std per element."""
    start_std = math.sqrt(1 - start_a**2) if start_a < 1 else 1.0
    z = (noise - start_a * mu) / torch.sqrt(start_a**2 * s**2 + start_std**2)
    expected = mu + s * z
    assert torch.isfinite(x).all()
    assert (x - expected).abs().max() < path_tol
    assert (x - expected).abs().mean() < path_tol / 4
    # 5 standard errors of the sample mean / std of BATCH draws, plus the sampler's own error.
    mean_tol = 5 * s / math.sqrt(BATCH) + path_tol
    std_tol = 5 * s / math.sqrt(2 * BATCH) + path_tol
    assert ((x.mean(0) - mu).abs() < mean_tol).all()
    assert ((x.std(0) - s).abs() < std_tol).all()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize(("sampler", "steps", "tol"), [("euler", 100, 0.06), ("heun", 20, 0.02)])
def test_flow_samplers_recover_gaussian(shape, sampler, steps, tol):
    mu, s = gaussian_data(shape)
    noise = torch.randn((BATCH, *shape), generator=torch.Generator().manual_seed(1))
    x = run_sampler(sampler, exact_flow_model(mu, s), RectifiedFlow(), noise, steps)
    check_samples(x, noise, mu, s, start_a=0.0, path_tol=tol)


def test_heun_beats_euler_at_equal_steps():
    mu, s = gaussian_data(SHAPES["set"])
    noise = torch.randn((256, *SHAPES["set"]), generator=torch.Generator().manual_seed(1))
    model = exact_flow_model(mu, s)
    error = {
        f: (run_sampler(f, model, RectifiedFlow(), noise, 10) - (mu + s * noise)).abs().max()
        for f in ("euler", "heun")
    }
    assert error["heun"] < error["euler"] / 5


def test_flow_timesteps_shift():
    assert torch.allclose(flow_timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = flow_timesteps(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > flow_timesteps(4)[1:-1]).all()


# With "trailing" spacing the last step jumps from step T / steps - 1 straight to clean data, and
# that step's error dominates (first order in 1 / steps), hence the step counts.
DDPM_SAMPLERS = [("ddim", 100, 0.1), ("dpm++", 100, 0.08)]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize(("sampler", "steps", "tol"), DDPM_SAMPLERS)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_samplers_recover_gaussian(shape, sampler, steps, tol, prediction):
    objective = DDPM(prediction=prediction)
    mu, s = gaussian_data(shape)
    noise = torch.randn((BATCH, *shape), generator=torch.Generator().manual_seed(1))
    x = run_sampler(sampler, exact_ddpm_model(mu, s, objective), objective, noise, steps)
    # "trailing" spacing starts at the last training step, whose abar is small but not 0.
    start_a = objective.alphas_cumprod[-1].sqrt().item()
    check_samples(x, noise, mu, s, start_a=start_a, path_tol=tol)


@pytest.mark.parametrize(("sampler", "steps", "tol"), DDPM_SAMPLERS)
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_samplers_other_schedules(sampler, steps, tol, schedule):
    objective = DDPM(prediction="v", beta_schedule=schedule, beta_start=1e-4, beta_end=0.02)
    mu, s = gaussian_data(SHAPES["set"])
    noise = torch.randn((BATCH, *SHAPES["set"]), generator=torch.Generator().manual_seed(1))
    x = run_sampler(sampler, exact_ddpm_model(mu, s, objective), objective, noise, steps)
    check_samples(x, noise, mu, s, start_a=objective.alphas_cumprod[-1].sqrt().item(), path_tol=tol)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
def test_ddpm_samplers_start_at_the_last_training_step(sampler):
    """'trailing' spacing: the first call sees t = 999 / 1000, then `steps` evenly spaced calls."""
    seen = []

    def recording_model(x_t, t, cond):
        seen.append(t)
        return torch.zeros_like(x_t)

    run_sampler(sampler, recording_model, DDPM(), torch.randn(3, 2, 2), 10)
    assert len(seen) == 10 and all(t.shape == (3,) for t in seen)
    assert seen[0][0].item() == pytest.approx(0.999) and seen[-1][0].item() == pytest.approx(0.099)


def test_dpm_solver_beats_ddim_at_equal_steps():
    objective = DDPM(prediction="eps", beta_schedule="squaredcos_cap_v2")
    mu, s = gaussian_data(SHAPES["set"])
    noise = torch.randn((256, *SHAPES["set"]), generator=torch.Generator().manual_seed(1))
    model = exact_ddpm_model(mu, s, objective)
    error = {
        f: (run_sampler(f, model, objective, noise, 20) - (mu + s * noise)).abs().max()
        for f in ("ddim", "dpm++")
    }
    assert error["dpm++"] < error["ddim"] / 3


def test_ddim_with_eta_one_is_stochastic_but_right_in_distribution():
    objective = DDPM(prediction="eps")
    mu, s = gaussian_data(SHAPES["set"])
    noise = torch.randn((BATCH, *SHAPES["set"]), generator=torch.Generator().manual_seed(1))
    denoise = as_denoiser(exact_ddpm_model(mu, s, objective), objective)
    generator = torch.Generator().manual_seed(2)
    x = sample_ddim(denoise, noise, objective.schedule, 200, generator=generator, eta=1.0)
    assert (x - sample_ddim(denoise, noise, objective.schedule, 200)).abs().max() > 0.1  # it did add noise
    assert ((x.mean(0) - mu).abs() < 6 * s / math.sqrt(BATCH) + 0.02).all()
    assert ((x.std(0) - s).abs() < 6 * s / math.sqrt(2 * BATCH) + 0.02).all()


def test_a_sampler_is_chosen_by_name_and_must_fit_the_objective():
    assert resolve_sampler(None, RectifiedFlow().schedule) == "euler"
    assert resolve_sampler(None, DDPM().schedule) == "dpm++"
    assert resolve_sampler("heun", RectifiedFlow().schedule) == "heun"
    with pytest.raises(
        InputError,
        match=r"sampler 'ddim' does not fit a model trained with rectified flow; choose euler or heun",
    ):
        resolve_sampler("ddim", RectifiedFlow().schedule)
    with pytest.raises(
        InputError, match=r"'heun' does not fit a model trained with DDPM; choose ddim or dpm\+\+"
    ):
        sample("heun", lambda x, t, c: x, torch.zeros(2, 3), DDPM().schedule, 4)
    with pytest.raises(InputError, match=r"there is no sampler 'rk4'"):
        resolve_sampler("rk4", RectifiedFlow().schedule)


@pytest.mark.parametrize("name", ["euler", "heun", "ddim", "dpm++"])
def test_guidance_is_applied_once_to_the_denoiser(name):
    """sample(..., guidance=w) is the sampler over cfg_model(denoise, w): one batched call per step."""
    objective = RectifiedFlow() if name in ("euler", "heun") else DDPM()
    calls = []

    def model(x_t, t, cond):
        calls.append(x_t.shape[0])
        return toy_conditional_model(x_t, t, cond) * 0.01

    x_T, cond = torch.randn(8, 4, 3), make_cond()
    denoise = as_denoiser(model, objective)
    guided = sample(name, denoise, x_T, objective.schedule, 4, cond, guidance=2.0)
    assert set(calls) == {16}
    by_hand = sample(name, cfg_model(denoise, 2.0), x_T, objective.schedule, 4, cond)
    assert torch.allclose(guided, by_hand, atol=1e-5)
    plain = sample(name, denoise, x_T, objective.schedule, 4, cond, guidance=1.0)
    assert not torch.allclose(guided, plain, atol=1e-3)


# --- objectives -------------------------------------------------------------------------------


def wrong_flow_model(x_t, t, cond):
    return torch.zeros_like(x_t)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("time_sampling", ["logit_normal", "uniform"])
def test_rectified_flow_loss(shape, time_sampling):
    mu, s = gaussian_data(shape)
    x0 = mu + s * torch.randn((512, *shape), generator=torch.Generator().manual_seed(3))
    objective = RectifiedFlow(time_sampling=time_sampling)
    exact = objective(exact_flow_model(mu, s), x0, generator=torch.Generator().manual_seed(4))
    wrong = objective(wrong_flow_model, x0, generator=torch.Generator().manual_seed(4))
    assert exact.shape == (512,) and torch.isfinite(exact).all()
    assert exact.mean() < 0.8 * wrong.mean()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_loss(shape, prediction):
    objective = DDPM(prediction=prediction)
    mu, s = gaussian_data(shape)
    x0 = mu + s * torch.randn((512, *shape), generator=torch.Generator().manual_seed(3))
    exact_model = exact_ddpm_model(mu, s, objective)
    # The wrong model predicts the right quantity for data with the wrong mean.
    wrong_model = exact_ddpm_model(mu + 1, s, objective)
    exact = objective(exact_model, x0, generator=torch.Generator().manual_seed(4))
    wrong = objective(wrong_model, x0, generator=torch.Generator().manual_seed(4))
    assert exact.shape == (512,) and torch.isfinite(exact).all()
    assert exact.mean() < 0.8 * wrong.mean()


def test_rectified_flow_conventions():
    x0, noise = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0])
    x_t = RectifiedFlow.interpolate(x0, noise, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[-1], noise[-1])
    v = RectifiedFlow.velocity_target(x0, noise)
    # The velocity is d x_t / d t, and x0 is recovered from (x_t, v).
    dt = 1e-3
    assert torch.allclose((RectifiedFlow.interpolate(x0, noise, t + dt) - x_t) / dt, v, atol=1e-3)
    assert torch.allclose(RectifiedFlow.denoise(v, x_t, t), x0, atol=1e-6)


def test_logit_normal_times_concentrate_in_the_middle():
    t = RectifiedFlow().sample_time(20_000, generator=torch.Generator().manual_seed(0))
    assert ((t > 0) & (t < 1)).all()
    assert abs(t.median().item() - 0.5) < 0.02
    assert ((t > 0.25) & (t < 0.75)).float().mean() > 0.6  # uniform would give 0.5


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddpm_denoise_inverts_the_target(prediction):
    objective = DDPM(prediction=prediction, beta_schedule="squaredcos_cap_v2")
    x0, noise = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    step = torch.tensor([0, 500, 990])
    a, b = objective.coefficients(step, x0)
    x_t = a * x0 + b * noise
    t = objective.model_time(step)
    assert torch.allclose(objective.denoise(objective.target(x0, noise, step), x_t, t), x0, atol=1e-3)


def test_ddpm_schedule_matches_diffusers_defaults():
    # scaled_linear's last abar is the known ~0.0047 of latent diffusion.
    assert DDPM().alphas_cumprod[-1].item() == pytest.approx(0.0047, abs=2e-4)
    assert DDPM(rescale_betas_zero_snr=True, prediction="v").alphas_cumprod[-1].item() < 1e-6


# --- guidance ---------------------------------------------------------------------------------


def make_cond(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[:, 4:] = False
    tokens, pooled = torch.randn(batch, 6, 5, generator=g) + 3, torch.randn(batch, 7, generator=g) + 3
    return {"tokens": tokens, "mask": mask, "pooled": pooled}


def toy_conditional_model(x_t, t, cond):
    """Output depends on x_t, t and every cond key, so guidance has something to mix."""
    out = x_t * (1 + expand_like(t, x_t))
    if cond is None:
        return out
    summary = cond["pooled"].mean(-1) + (cond["tokens"].mean(-1) * cond["mask"]).sum(-1)  # (B,)
    return out + expand_like(summary, x_t)


def test_cfg_scales_interpolate_between_conditional_and_unconditional():
    x_t, t, cond = torch.randn(8, 3, 2, 2, 2), torch.rand(8), make_cond()
    uncond = toy_conditional_model(x_t, t, null_condition(cond))
    conditional = toy_conditional_model(x_t, t, cond)
    assert not torch.allclose(uncond, conditional)
    assert torch.allclose(cfg_model(toy_conditional_model, 1.0)(x_t, t, cond), conditional, atol=1e-5)
    assert torch.allclose(cfg_model(toy_conditional_model, 0.0)(x_t, t, cond), uncond, atol=1e-5)
    guided = cfg_model(toy_conditional_model, 3.0)(x_t, t, cond)
    assert torch.allclose(guided, uncond + 3.0 * (conditional - uncond), atol=1e-4)


def test_cfg_uses_one_batched_call_and_a_given_null_cond():
    calls = []

    def counting_model(x_t, t, cond):
        calls.append(x_t.shape[0])
        return toy_conditional_model(x_t, t, cond)

    x_t, t, cond = torch.randn(8, 4, 3), torch.rand(8), make_cond()
    null = {k: v[:1] * 0 + 1 for k, v in make_cond(1, seed=5).items()}  # batch 1, broadcast
    guided = cfg_model(counting_model, 0.0, null_cond=null)(x_t, t, cond)
    assert calls == [16]
    expected = toy_conditional_model(x_t, t, {k: v.expand(8, *v.shape[1:]) for k, v in null.items()})
    assert torch.allclose(guided, expected, atol=1e-5)
    assert torch.equal(
        cfg_model(toy_conditional_model, 5.0)(x_t, t, None), toy_conditional_model(x_t, t, None)
    )


def test_drop_condition_rate_and_determinism():
    cond = make_cond(batch=4000)
    dropped = drop_condition(cond, 0.1, generator=torch.Generator().manual_seed(0))
    is_null = (dropped["pooled"] == 0).all(-1)
    # Dropped samples lose every key together and get an all-valid mask; kept ones are untouched.
    assert torch.equal(is_null, (dropped["tokens"] == 0).all(-1).all(-1))
    assert dropped["mask"][is_null].all()
    assert torch.equal(dropped["tokens"][~is_null], cond["tokens"][~is_null])
    assert torch.equal(dropped["mask"][~is_null], cond["mask"][~is_null])
    assert abs(is_null.float().mean().item() - 0.1) < 0.02  # 4 standard errors at n = 4000
    again = drop_condition(cond, 0.1, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(dropped[k], again[k]) for k in cond)
    other = drop_condition(cond, 0.1, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(dropped["pooled"], other["pooled"])


def test_drop_condition_edge_cases():
    cond = make_cond()
    assert drop_condition(None, 0.5) is None
    assert drop_condition(cond, 0.0) is cond
    everything = drop_condition(cond, 1.0, null_cond={k: v[:1] for k, v in make_cond(1, seed=9).items()})
    assert torch.equal(everything["pooled"], make_cond(1, seed=9)["pooled"].expand(8, -1))
    with pytest.raises(ValueError):
        drop_condition(cond, 0.5, null_cond={"pooled": torch.zeros(1, 7)})


def test_given_entries_stay_clean_in_the_input_and_out_of_the_flow_loss():
    x0 = torch.randn(64, 5, 3, generator=torch.Generator().manual_seed(0))
    given = torch.arange(3) < 1  # the first channel of every token
    seen = []

    def model(x_t, t, cond, bias=0.0):
        seen.append(x_t)
        return torch.where(given, bias, x_t)

    objective = RectifiedFlow()
    loss = objective(model, x0, generator=torch.Generator().manual_seed(1), given=given)
    assert torch.equal(seen[-1][..., :1], x0[..., :1]), "the model is told the given entries"
    assert not torch.allclose(seen[-1][..., 1:], x0[..., 1:]), "and not the others"
    other = objective(
        lambda x_t, t, c: model(x_t, t, c, bias=100.0),
        x0,
        generator=torch.Generator().manual_seed(1),
        given=given,
    )
    assert torch.equal(loss, other), "what the model says about given entries is not scored"
    full = objective(model, x0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(loss, full)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_a_flow_sampler_holds_given_entries(name):
    mu, s = gaussian_data(SHAPES["set"])
    x_T = torch.randn((BATCH, *SHAPES["set"]), generator=torch.Generator().manual_seed(0))
    given = torch.arange(3) < 1
    x_T[..., :1] = 7.0  # values far from the data, so a sampler that moved them would show it
    out = sample(
        name,
        as_denoiser(exact_flow_model(mu, s), RectifiedFlow()),
        x_T,
        RectifiedFlow().schedule,
        8,
        given=given,
    )
    assert torch.equal(out[..., :1], x_T[..., :1])
    assert torch.allclose(out[..., 1:].mean(0), mu[..., 1:], atol=0.1), "the rest is sampled as before"
    with pytest.raises(InputError, match="given entries need a flow objective"):
        sample("ddim", lambda x, t, c: x, x_T[:2], DDPM().schedule, 4, given=given)
