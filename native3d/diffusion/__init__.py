"""The one diffusion stack for every latent: objectives, samplers and classifier-free guidance.

Math only: no networks, no Lightning. Works on tensors of any rank (B, ...).
"""

from native3d.diffusion.guidance import cfg_model, drop_condition, null_condition
from native3d.diffusion.objectives import (
    DDPM,
    Denoiser,
    DiscreteSchedule,
    FlowSchedule,
    Model,
    RectifiedFlow,
    Schedule,
    as_denoiser,
)
from native3d.diffusion.samplers import (
    SAMPLERS,
    SamplerName,
    flow_timesteps,
    resolve_sampler,
    sample,
    sample_ddim,
    sample_dpm_solver,
    sample_euler,
    sample_heun,
)

__all__ = [
    "DDPM",
    "SAMPLERS",
    "Denoiser",
    "DiscreteSchedule",
    "FlowSchedule",
    "Model",
    "RectifiedFlow",
    "SamplerName",
    "Schedule",
    "as_denoiser",
    "cfg_model",
    "drop_condition",
    "flow_timesteps",
    "null_condition",
    "resolve_sampler",
    "sample",
    "sample_ddim",
    "sample_dpm_solver",
    "sample_euler",
    "sample_heun",
]
