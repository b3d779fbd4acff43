"""The one diffusion stack for every latent: objectives, samplers and classifier-free guidance.

Math only: no networks, no Lightning. Works on tensors of any rank (B, ...).
"""

from native3d.diffusion.guidance import cfg_model, drop_condition, null_condition
from native3d.diffusion.objectives import DDPM, Denoiser, RectifiedFlow
from native3d.diffusion.samplers import (
    flow_timesteps,
    sample_ddim,
    sample_dpm_solver,
    sample_euler,
    sample_heun,
)

__all__ = [
    "DDPM",
    "Denoiser",
    "RectifiedFlow",
    "cfg_model",
    "drop_condition",
    "flow_timesteps",
    "null_condition",
    "sample_ddim",
    "sample_dpm_solver",
    "sample_euler",
    "sample_heun",
]
