"""Training objectives: small callables `objective(model, x0, cond) -> loss (B,)`, any tensor rank.

Every objective calls `model(x_t, t, cond)` with continuous time t in [0, 1] of shape (B,),
t = 1 being pure noise, so one backbone (whose `TimestepEmbedding` scales t by 1000) serves
both objectives. Each also says what a sampler needs to read the model's output.

- `RectifiedFlow`: the linear interpolation path of rectified flow / flow matching
  (Liu et al. 2023, eq. 1; Lipman et al. 2023), x_t = (1 - t) x0 + t noise, and the model
  predicts the velocity v = dx_t/dt = noise - x0. This is the sign convention of SD3
  (Esser et al. 2024, sec. 2) and of diffusers' FlowMatchEulerDiscreteScheduler: sampling
  integrates from t = 1 (noise) to t = 0 (data), x0 = x_t - t v. Training times are drawn
  logit-normal (Esser et al. 2024, sec. 3.1, eq. 19) or uniform.
- `DDPM`: the variance-preserving discrete chain (Ho et al. 2020), x_t = sqrt(abar) x0 +
  sqrt(1 - abar) eps, with abar from diffusers' `DDPMScheduler`, predicting eps (Ho et al.
  2020, eq. 14) or v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4).
  The model sees t = step / num_train_timesteps.

Samplers read every model through one convention, the denoised estimate x0 = D(x_t, t, cond):
each objective's `denoise(output, x_t, t)` converts its model's output to it (`as_denoiser`), and
each objective's `schedule` (`FlowSchedule`, `DiscreteSchedule`) says which samplers fit it.

The structure (one small callable per objective, per-sample loss) follows NVlabs/edm
`training/loss.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DDPMScheduler
from jaxtyping import Bool, Float, Int
from torch import Tensor

from native3d.nn.modulation import Cond, expand_like

# model(x_t, t, cond) -> its output (velocity, eps or v), shaped like x_t; t is (B,) in [0, 1].
Model = Callable[[Tensor, Tensor, Cond | None], Tensor]
# denoise(x_t, t, cond) -> the estimate of x0, shaped like x_t: what every sampler reads.
Denoiser = Callable[[Tensor, Tensor, Cond | None], Tensor]


def per_sample_mean(x: Float[Tensor, "B ..."]) -> Float[Tensor, " B"]:
    """Mean over every axis but the batch, in float32 (bf16 sums lose the small terms)."""
    return x.float().flatten(1).mean(dim=1)


@dataclass(frozen=True)
class FlowSchedule:
    """The straight path x_t = (1 - t) x0 + t noise, integrated from t = 1 (noise) to t = 0."""


@dataclass(frozen=True)
class DiscreteSchedule:
    """DDPM's variance-preserving chain over `num_train_timesteps` steps; the model sees t = step / T.

    `scheduler_config` holds the keyword arguments that every diffusers scheduler sampling it shares.
    """

    scheduler_config: dict

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler_config["num_train_timesteps"]

    def step(self, t: Float[Tensor, " B"]) -> Int[Tensor, " B"]:
        return torch.round(t * self.num_train_timesteps).long()


Schedule = FlowSchedule | DiscreteSchedule


def as_denoiser(model: Model, objective: RectifiedFlow | DDPM) -> Denoiser:
    """`model` read through `objective`: D(x_t, t, cond), the denoised estimate that samplers take."""

    def denoise(x_t: Tensor, t: Float[Tensor, " B"], cond: Cond | None) -> Tensor:
        return objective.denoise(model(x_t, t, cond), x_t, t)

    return denoise


class RectifiedFlow:
    """Rectified-flow loss || model(x_t, t, cond) - (noise - x0) ||^2, averaged per sample."""

    def __init__(
        self,
        time_sampling: Literal["logit_normal", "uniform"] = "logit_normal",
        loc: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        if time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"time_sampling must be 'logit_normal' or 'uniform', got {time_sampling!r}")
        self.time_sampling = time_sampling
        self.loc = loc
        self.scale = scale
        self.schedule = FlowSchedule()

    def sample_time(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Float[Tensor, " B"]:
        if self.time_sampling == "uniform":
            return torch.rand(batch, device=device, generator=generator)
        # logit-normal puts more training on intermediate t, where the velocity is hardest (SD3).
        u = torch.randn(batch, device=device, generator=generator)
        return torch.sigmoid(self.loc + self.scale * u)

    @staticmethod
    def interpolate(x0: Tensor, noise: Tensor, t: Float[Tensor, " B"]) -> Tensor:
        t = expand_like(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
        return noise - x0

    @staticmethod
    def denoise(output: Tensor, x_t: Tensor, t: Float[Tensor, " B"]) -> Tensor:
        """x0 estimate: x0 = x_t - t v."""
        return x_t - expand_like(t, x_t) * output

    def __call__(
        self,
        model: Model,
        x0: Float[Tensor, "B ..."],
        cond: Cond | None = None,
        generator: torch.Generator | None = None,
        given: Bool[Tensor, "..."] | None = None,
    ) -> Float[Tensor, " B"]:
        """`given` (a mask broadcastable to x0) marks entries the model is told: they stay clean in x_t
        and out of the loss, so the model learns the rest conditioned on them (`sample(..., given=)`)."""
        t = self.sample_time(x0.shape[0], x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.interpolate(x0, noise, t)
        error = (
            model(x_t if given is None else torch.where(given, x0, x_t), t, cond).float()
            - self.velocity_target(x0, noise).float()
        ) ** 2
        if given is None:
            return per_sample_mean(error)
        weight = (~given).expand_as(error).float()
        return (error * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)


class DDPM:
    """DDPM loss || model(x_t, t, cond) - target ||^2 with target eps or v, averaged per sample.

    The defaults (scaled_linear, 0.00085 .. 0.012) are latent diffusion's (Rombach et al. 2022);
    the DDPM paper's linear schedule is beta_start=1e-4, beta_end=0.02. `squaredcos_cap_v2` is
    the cosine schedule (Nichol & Dhariwal 2021) and ignores beta_start/end.
    `rescale_betas_zero_snr` enforces zero terminal SNR (Lin et al. 2024); pair it with "v".
    """

    def __init__(
        self,
        prediction: Literal["eps", "v"] = "eps",
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.prediction = prediction
        self.num_train_timesteps = num_train_timesteps
        self.schedule = DiscreteSchedule(
            {
                "num_train_timesteps": num_train_timesteps,
                "beta_schedule": beta_schedule,
                "beta_start": beta_start,
                "beta_end": beta_end,
                "rescale_betas_zero_snr": rescale_betas_zero_snr,
            }
        )
        chain = DDPMScheduler(**self.schedule.scheduler_config, clip_sample=False)
        self.alphas_cumprod: Float[Tensor, " T"] = chain.alphas_cumprod.float().clone()

    def model_time(self, step: Int[Tensor, " B"]) -> Float[Tensor, " B"]:
        return step.float() / self.num_train_timesteps

    def coefficients(self, step: Int[Tensor, " B"], like: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar), sqrt(1 - abar) at `step`, shaped (B, 1, ..., 1) like `like`, in float32."""
        abar = expand_like(self.alphas_cumprod.to(like.device)[step.long()], like)
        return abar.sqrt(), (1 - abar).sqrt()

    def target(self, x0: Tensor, noise: Tensor, step: Int[Tensor, " B"]) -> Tensor:
        if self.prediction == "eps":
            return noise
        alpha, sigma = self.coefficients(step, x0)
        return alpha * noise - sigma * x0

    def denoise(self, output: Tensor, x_t: Tensor, t: Float[Tensor, " B"]) -> Tensor:
        """x0 estimate from the model output (eps: (x_t - sigma eps) / alpha; v: alpha x_t - sigma v)."""
        alpha, sigma = self.coefficients(self.schedule.step(t), x_t)
        if self.prediction == "eps":
            return (x_t - sigma * output) / alpha
        return alpha * x_t - sigma * output

    def __call__(
        self,
        model: Model,
        x0: Float[Tensor, "B ..."],
        cond: Cond | None = None,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, " B"]:
        step = torch.randint(
            0, self.num_train_timesteps, (x0.shape[0],), device=x0.device, generator=generator
        )
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        alpha, sigma = self.coefficients(step, x0)
        x_t = (alpha * x0 + sigma * noise).to(x0.dtype)
        output = model(x_t, self.model_time(step), cond)
        return per_sample_mean((output.float() - self.target(x0.float(), noise.float(), step)) ** 2)
