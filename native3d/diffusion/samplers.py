"""Samplers with one contract, chosen by name: `sample(name, denoise, x_T, schedule, steps, ...) -> x_0`.

Every sampler is `sampler(denoise, x_T, schedule, steps, cond=None, generator=None) -> x_0`, with
keyword-only options of its own. `denoise(x_t, t, cond)` is the denoised estimate of x0 (any
objective's model through `objectives.as_denoiser`, optionally guided), with t in [0, 1] as in
`objectives`; `x_T` is the starting noise and fixes shape, dtype and device; everything else is
per-sample broadcasting, so (B, M, C) sets, (B, C, D, H, W) grids and (B, 3, C, H, W) triplanes go
through the same code. `schedule` is the objective's, and says which samplers fit it:

- `FlowSchedule` (rectified flow): "euler" and "heun" integrate dx/dt = (x - D(x, t)) / t from
  t = 1 to 0; Heun is the second-order method of EDM (Karras et al. 2022, Alg. 1) with a final
  Euler step. `shift` warps the time grid as in SD3 (Esser et al. 2024, sec. 5.3.2),
  t' = shift t / (1 + (shift - 1) t), to spend more steps at high noise.
- `DiscreteSchedule` (DDPM): "ddim" (Song et al. 2021, eq. 12) and "dpm++" (multistep
  DPM-Solver++, Lu et al. 2022), diffusers' `DDIMScheduler` and `DPMSolverMultistepScheduler`
  over the objective's own betas, fed the x0 estimate (`prediction_type="sample"`). Defaults differ
  from diffusers' where they would bias a latent model: no clipping or thresholding (latents are
  not bounded images), "trailing" timestep spacing so the first step starts at the last training
  step (Lin et al. 2024, sec. 3.3), and a final step to alpha = 1.

Classifier-free guidance is a property of the denoiser: `sample` wraps it with `cfg_model` once,
and since the x0 estimate is affine in the model's output, guiding it equals guiding the output.
The contract follows crowsonkb/k-diffusion `sampling.py` (a denoiser in, a sample out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from jaxtyping import Bool, Float
from torch import Tensor

from native3d.diffusion.guidance import cfg_model
from native3d.diffusion.objectives import Denoiser, DiscreteSchedule, FlowSchedule, Schedule
from native3d.errors import InputError
from native3d.nn.modulation import Cond

SamplerName = Literal["euler", "heun", "ddim", "dpm++"]
Sampler = Callable[..., Tensor]  # (denoise, x_T, schedule, steps, cond=None, generator=None, **options)


def flow_timesteps(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> Float[Tensor, " S"]:
    """steps + 1 times from 1 to 0, warped by `shift` (1 = uniform)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift * t / (1 + (shift - 1) * t)


def _batch_time(t: Tensor, x: Tensor) -> Float[Tensor, " B"]:
    return t.expand(x.shape[0]).to(device=x.device, dtype=torch.float32)


def _velocity(denoise: Denoiser, x: Tensor, t: Tensor, cond: Cond | None) -> Tensor:
    """dx_t/dt = noise - x0 = (x_t - x0) / t on the straight path (t > 0)."""
    return (x - denoise(x, _batch_time(t, x), cond)) / t


@torch.no_grad()
def sample_euler(
    denoise: Denoiser,
    x_T: Float[Tensor, "B ..."],
    schedule: FlowSchedule,
    steps: int,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    *,
    shift: float = 1.0,
) -> Float[Tensor, "B ..."]:
    """Euler integration from t = 1 to 0 (`steps` denoiser calls)."""
    ts = flow_timesteps(steps, shift, x_T.device)
    x = x_T
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * _velocity(denoise, x, t, cond)
    return x


@torch.no_grad()
def sample_heun(
    denoise: Denoiser,
    x_T: Float[Tensor, "B ..."],
    schedule: FlowSchedule,
    steps: int,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    *,
    shift: float = 1.0,
) -> Float[Tensor, "B ..."]:
    """Heun's method from t = 1 to 0 (2 steps - 1 denoiser calls; the step to t = 0 is Euler)."""
    ts = flow_timesteps(steps, shift, x_T.device)
    x = x_T
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = _velocity(denoise, x, t, cond)
        x_euler = x + (t_next - t) * v
        if t_next == 0:
            # The corrector would evaluate the model at t = 0, which the trapezoid does not need
            # to be second order and which training rarely covers.
            x = x_euler
        else:
            x = x + (t_next - t) * (v + _velocity(denoise, x_euler, t_next, cond)) / 2
    return x


def _run_scheduler(
    scheduler: DDIMScheduler | DPMSolverMultistepScheduler,
    denoise: Denoiser,
    x_T: Tensor,
    schedule: DiscreteSchedule,
    steps: int,
    cond: Cond | None,
    **step_kwargs,
) -> Tensor:
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    for step in scheduler.timesteps:
        t = _batch_time(step.float() / schedule.num_train_timesteps, x)
        x0 = denoise(scheduler.scale_model_input(x, step), t, cond)
        x = scheduler.step(x0, step, x, **step_kwargs).prev_sample
    return x


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x_T: Float[Tensor, "B ..."],
    schedule: DiscreteSchedule,
    steps: int,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    *,
    eta: float = 0.0,
) -> Float[Tensor, "B ..."]:
    """DDIM; eta = 0 is the deterministic ODE sampler, eta = 1 the DDPM ancestral sampler."""
    scheduler = DDIMScheduler(
        **schedule.scheduler_config,
        prediction_type="sample",
        clip_sample=False,
        thresholding=False,
        timestep_spacing="trailing",
        set_alpha_to_one=True,  # the last step lands on clean data, not on step 0's noise level
    )
    return _run_scheduler(scheduler, denoise, x_T, schedule, steps, cond, eta=eta, generator=generator)


@torch.no_grad()
def sample_dpm_solver(
    denoise: Denoiser,
    x_T: Float[Tensor, "B ..."],
    schedule: DiscreteSchedule,
    steps: int,
    cond: Cond | None = None,
    generator: torch.Generator | None = None,
    *,
    order: int = 2,
) -> Float[Tensor, "B ..."]:
    """Multistep DPM-Solver++ of order 1-3 (order 2 is the usual choice with guidance)."""
    scheduler = DPMSolverMultistepScheduler(
        **schedule.scheduler_config,
        prediction_type="sample",
        algorithm_type="dpmsolver++",
        solver_order=order,
        thresholding=False,
        timestep_spacing="trailing",
        lower_order_final=True,  # first-order last steps keep few-step sampling stable
        final_sigmas_type="zero",
    )
    return _run_scheduler(scheduler, denoise, x_T, schedule, steps, cond)


SAMPLERS: dict[SamplerName, tuple[Sampler, type]] = {
    "euler": (sample_euler, FlowSchedule),
    "heun": (sample_heun, FlowSchedule),
    "ddim": (sample_ddim, DiscreteSchedule),
    "dpm++": (sample_dpm_solver, DiscreteSchedule),
}
DEFAULT_SAMPLER: dict[type, SamplerName] = {FlowSchedule: "euler", DiscreteSchedule: "dpm++"}
OBJECTIVE_OF = {FlowSchedule: "rectified flow", DiscreteSchedule: "DDPM"}


def fitting_samplers(schedule: Schedule) -> list[str]:
    return [name for name, (_, kind) in SAMPLERS.items() if isinstance(schedule, kind)]


def resolve_sampler(name: str | None, schedule: Schedule) -> SamplerName:
    """`name`, or the schedule's default sampler when None; a name that does not fit is an `InputError`."""
    if name is None:
        return DEFAULT_SAMPLER[type(schedule)]
    fitting, objective = " or ".join(fitting_samplers(schedule)), OBJECTIVE_OF[type(schedule)]
    if name not in SAMPLERS:
        raise InputError(f"there is no sampler {name!r}; choose {fitting} for {objective}")
    if not isinstance(schedule, SAMPLERS[name][1]):
        raise InputError(f"sampler {name!r} does not fit a model trained with {objective}; choose {fitting}")
    return name


def sample(
    name: str | None,
    denoise: Denoiser,
    x_T: Float[Tensor, "B ..."],
    schedule: Schedule,
    steps: int,
    cond: Cond | None = None,
    guidance: float = 1.0,
    null_cond: Cond | None = None,
    generator: torch.Generator | None = None,
    given: Bool[Tensor, "..."] | None = None,
) -> Float[Tensor, "B ..."]:
    """x_0 from the sampler `name` (None: the schedule's default), guided by `guidance` when cond is given.

    `given` (a mask broadcastable to x_T) marks entries known in advance, whose values x_T holds: the
    model sees them clean and the denoised estimate keeps them, so on the straight flow path they stay
    put (a model trained with `RectifiedFlow(..., given=)`).
    """
    sampler, _ = SAMPLERS[resolve_sampler(name, schedule)]
    if cond is not None and guidance != 1.0:
        denoise = cfg_model(denoise, guidance, null_cond)
    if given is not None:
        if not isinstance(schedule, FlowSchedule):
            raise InputError(
                "given entries need a flow objective (RectifiedFlow), whose path holds them fixed"
            )
        denoise = _holding(denoise, given, x_T)
    return sampler(denoise, x_T, schedule, steps, cond, generator)


def _holding(denoise: Denoiser, given: Tensor, values: Tensor) -> Denoiser:
    """`denoise` told the `given` entries' `values` and keeping them in its estimate."""

    def held(x: Tensor, t: Tensor, cond: Cond | None) -> Tensor:
        return torch.where(given, values, denoise(torch.where(given, values, x), t, cond))

    return held
