"""Samplers sharing one signature, `sample_*(model, noise, steps, ..., cond=None) -> x0`, any rank.

`model(x_t, t, cond)` is the trained backbone (optionally wrapped by `guidance.cfg_model`), with
t in [0, 1] as in `objectives`. `noise` is the starting sample at t = 1 and fixes shape, dtype
and device; everything else is per-sample broadcasting, so (B, M, C) sets, (B, C, D, H, W) grids
and (B, 3, C, H, W) triplanes go through the same code.

- Rectified flow (`objectives.RectifiedFlow`, velocity v = noise - x0): `sample_euler` and
  `sample_heun`, plain ODE integrators from t = 1 to t = 0; Heun is the second-order method of
  EDM (Karras et al. 2022, Alg. 1) with a final Euler step. `shift` warps the time grid as in
  SD3 (Esser et al. 2024, sec. 5.3.2), t' = shift t / (1 + (shift - 1) t), to spend more steps
  at high noise.
- DDPM (`objectives.DDPM`, eps or v): `sample_ddim` (Song et al. 2021, eq. 12) and
  `sample_dpm_solver` (DPM-Solver++, Lu et al. 2022), thin adapters over diffusers'
  `DDIMScheduler` and `DPMSolverMultistepScheduler`, built from the objective's own schedule.
  Defaults differ from diffusers' where they would bias a latent model: no clipping or
  thresholding (latents are not bounded images), "trailing" timestep spacing so the first step
  starts at the last training step (Lin et al. 2024, sec. 3.3), and a final step to alpha = 1.

The one-signature, rank-agnostic style follows crowsonkb/k-diffusion `sampling.py`.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from jaxtyping import Float
from torch import Tensor

from native3d.diffusion.objectives import DDPM, Denoiser
from native3d.nn.modulation import Cond


def flow_timesteps(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> Float[Tensor, " S"]:
    """steps + 1 times from 1 to 0, warped by `shift` (1 = uniform)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift * t / (1 + (shift - 1) * t)


def _batch_time(t: Tensor, noise: Tensor) -> Float[Tensor, " B"]:
    return t.expand(noise.shape[0]).to(device=noise.device, dtype=torch.float32)


@torch.no_grad()
def sample_euler(
    model: Denoiser,
    noise: Float[Tensor, "B ..."],
    steps: int,
    cond: Cond | None = None,
    shift: float = 1.0,
) -> Float[Tensor, "B ..."]:
    """Euler integration of dx/dt = v from t = 1 to 0 (`steps` model calls)."""
    ts = flow_timesteps(steps, shift, noise.device)
    x = noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * model(x, _batch_time(t, x), cond)
    return x


@torch.no_grad()
def sample_heun(
    model: Denoiser,
    noise: Float[Tensor, "B ..."],
    steps: int,
    cond: Cond | None = None,
    shift: float = 1.0,
) -> Float[Tensor, "B ..."]:
    """Heun's method from t = 1 to 0 (2 steps - 1 model calls; the step to t = 0 is Euler)."""
    ts = flow_timesteps(steps, shift, noise.device)
    x = noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = model(x, _batch_time(t, x), cond)
        x_euler = x + (t_next - t) * v
        if t_next == 0:
            # The corrector would evaluate the model at t = 0, which the trapezoid does not need
            # to be second order and which training rarely covers.
            x = x_euler
        else:
            v_next = model(x_euler, _batch_time(t_next, x), cond)
            x = x + (t_next - t) * (v + v_next) / 2
    return x


def _run_scheduler(
    scheduler: DDIMScheduler | DPMSolverMultistepScheduler,
    model: Denoiser,
    noise: Tensor,
    steps: int,
    objective: DDPM,
    cond: Cond | None,
    **step_kwargs,
) -> Tensor:
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for step in scheduler.timesteps:
        t = _batch_time(objective.model_time(step), x)
        output = model(scheduler.scale_model_input(x, step), t, cond)
        x = scheduler.step(output, step, x, **step_kwargs).prev_sample
    return x


@torch.no_grad()
def sample_ddim(
    model: Denoiser,
    noise: Float[Tensor, "B ..."],
    steps: int,
    objective: DDPM,
    cond: Cond | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B ..."]:
    """DDIM; eta = 0 is the deterministic ODE sampler, eta = 1 the DDPM ancestral sampler."""
    scheduler = DDIMScheduler(
        **objective.scheduler_config,
        clip_sample=False,
        thresholding=False,
        timestep_spacing="trailing",
        set_alpha_to_one=True,  # the last step lands on clean data, not on step 0's noise level
    )
    return _run_scheduler(scheduler, model, noise, steps, objective, cond, eta=eta, generator=generator)


@torch.no_grad()
def sample_dpm_solver(
    model: Denoiser,
    noise: Float[Tensor, "B ..."],
    steps: int,
    objective: DDPM,
    cond: Cond | None = None,
    order: int = 2,
) -> Float[Tensor, "B ..."]:
    """Multistep DPM-Solver++ of order 1-3 (order 2 is the usual choice with guidance)."""
    scheduler = DPMSolverMultistepScheduler(
        **objective.scheduler_config,
        algorithm_type="dpmsolver++",
        solver_order=order,
        thresholding=False,
        timestep_spacing="trailing",
        lower_order_final=True,  # first-order last steps keep few-step sampling stable
        final_sigmas_type="zero",
    )
    return _run_scheduler(scheduler, model, noise, steps, objective, cond)
