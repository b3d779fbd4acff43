"""The one latent-diffusion LightningModule, for every backbone and latent.

Point-cloud (SetDiT over VecSet latents), SDF-grid (UNet3D over Grid latents) and triplane
(TriplaneUNet over Triplane latents) diffusion differ only in YAML: the backbone, the autoencoder
checkpoint (which fixes the latent shape and its normalization statistics), the objective and the
conditioner. Latents come from `native3d encode` shards as posterior mean and std; training
draws a posterior sample and standardizes it with the autoencoder's statistics (Rombach et al.
2022, sec. 4.3.2). Conditions are dropped with probability `cond_dropout` for classifier-free
guidance (Ho & Salimans 2022). Sampling takes a sampler by name (`sampler: heun`; the default is
euler for rectified flow, dpm++ for DDPM; see `native3d.diffusion.samplers`). The frozen autoencoder's weights travel in the checkpoint, so a
diffusion checkpoint samples meshes on its own; a frozen text encoder is re-loaded by name.
`compile: true` compiles the backbone (`torch.compile`, in place, so checkpoint keys do not change).

`structure` makes sampling two-stage for an anchored VecSet latent (TRELLIS, Xiang et al. 2025,
sec. 3.3; `native3d.geometry.structure`): this second backbone, a 3-D U-Net, learns the occupancy
grid of the anchors (`structure_resolution`^3) with the same objective and condition, and the main
backbone learns the token features with the anchors given. Sampling draws a grid, anchors in its
occupied cells, then the features. A set model that draws anchors and features together has to place
a few points on a chair's legs from noise; given where they are, SetDiT samples the asked class
(docs/results.md, "Where SetDiT loses now").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from native3d.autoencoders.bottleneck import LatentAutoencoder, autoencoder_from_config
from native3d.checkpoints import autoencoder_config, autoencoder_of, build_module, read_checkpoint_of_kind
from native3d.conditioning.condition import ImageConditioner, TextConditioner
from native3d.diffusion import (
    DDPM,
    RectifiedFlow,
    SamplerName,
    as_denoiser,
    drop_condition,
    resolve_sampler,
    sample,
)
from native3d.errors import InputError
from native3d.geometry.structure import anchor_occupancy, anchors_in_cells, fold_cells, unfold_cells
from native3d.nn.modulation import Cond
from native3d.training.checks import check_finite
from native3d.training.ema import WarmupEMA
from native3d.training.optim import warmup_cosine_scheduler
from native3d.training.previews import decode_previews

log = logging.getLogger(__name__)


class LatentDiffusion(L.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        autoencoder: str,
        objective: RectifiedFlow | DDPM | None = None,
        conditioner: TextConditioner | ImageConditioner | None = None,
        cond_dropout: float = 0.1,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 500,
        sampler: SamplerName | None = None,
        sample_steps: int = 50,
        guidance: float = 3.0,
        preview_every_n_val: int = 1,
        preview_count: int = 4,
        mesh_resolution: int = 64,
        ema_decay: float = 0.999,
        autoencoder_config: dict | None = None,
        latent_shape: list[int] | None = None,
        compile: bool = False,
        structure: nn.Module | None = None,
        structure_resolution: int = 16,
        structure_patch: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone
        self.objective = objective if objective is not None else RectifiedFlow()
        self.conditioner = conditioner
        self.autoencoder, config = load_frozen_autoencoder(autoencoder, autoencoder_config)
        self.hparams["autoencoder_config"] = config  # lets the checkpoint rebuild it without the file
        self.sampler = resolve_sampler(sampler, self.objective.schedule)  # euler for flow, dpm++ for DDPM
        check_backbone(self.backbone, self.latent_shape)
        self.structure = structure
        if structure is not None:
            check_structure(self.autoencoder, self.objective, structure_resolution, structure_patch)
            check_backbone(structure, self.structure_shape)
        self._val_count = 0
        if compile:
            for module in (self.backbone, self.structure):
                if module is not None:
                    module.compile()  # in place and lazy: it compiles at the first forward

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The latents' shape: the autoencoder's, or that of the training latents where they differ
        (a VecSet set encoded at another token count, `native3d encode --tokens M`)."""
        return tuple(self.hparams.latent_shape or self.autoencoder.latent_shape)

    def on_fit_start(self) -> None:
        shape = tuple(getattr(self.trainer.datamodule, "latent_shape", None) or self.latent_shape)
        if shape != self.latent_shape:
            own = tuple(self.autoencoder.latent_shape)
            if len(shape) != 2 or shape[1:] != own[1:]:  # only a token set's count may differ
                raise InputError(
                    f"the training latents have shape {shape}; the autoencoder makes {own}: encode them "
                    "with this autoencoder"
                )
            check_backbone(self.backbone, shape)
            self.hparams["latent_shape"] = list(shape)  # sampling draws latents of the trained shape

    @property
    def structure_shape(self) -> tuple[int, ...]:
        """The structure grid as its backbone sees it: (patch^3, R / patch, R / patch, R / patch)."""
        R, patch = self.hparams.structure_resolution, self.hparams.structure_patch
        return (patch**3, *[R // patch] * 3)

    def anchors_given(self, like: Tensor) -> Tensor:
        """The mask of a set latent's anchor channels (the first 3), broadcastable to `like` (B, M, C)."""
        return torch.arange(like.shape[-1], device=like.device) < 3

    @property
    def conditional(self) -> bool:
        return self.conditioner is not None

    def latents(self, batch: dict, sample: bool) -> Tensor:
        """Normalized latents (B, *latent_shape): a posterior sample in training, its mean otherwise."""
        latent = batch["latent_mean"].float()
        if sample:
            latent = latent + batch["latent_std"].float() * torch.randn_like(latent)
        return self.autoencoder.normalize_latent(latent)

    def condition(self, batch: dict, dropout: float = 0.0) -> Cond | None:
        if self.conditioner is None:
            return None
        cond = self.conditioner.encode(batch)
        batch_size = next(iter(cond.values())).shape[0]
        return drop_condition(cond, dropout, null_cond=self.conditioner.null_cond(batch_size))

    def step(self, batch: dict, stage: str) -> Tensor:
        train = stage == "train"
        x0 = self.latents(batch, sample=train)
        cond = self.condition(batch, self.hparams.cond_dropout if train else 0.0)
        if self.structure is None:
            loss = self.objective(self.backbone, x0, cond).mean()
        else:
            anchors = self.autoencoder.denormalize_latent(x0)[..., :3]  # (B, M, 3)
            grid = anchor_occupancy(anchors, self.hparams.structure_resolution)  # (B, 1, R, R, R)
            grid = fold_cells(grid, self.hparams.structure_patch)  # (B, patch^3, R / patch, ...)
            structure_loss = self.objective(self.structure, grid, cond).mean()
            self.log(f"{stage}/structure_loss", structure_loss, batch_size=len(x0), sync_dist=not train)
            loss = (
                self.objective(self.backbone, x0, cond, given=self.anchors_given(x0)).mean() + structure_loss
            )
        check_finite(loss, batch["id"], stage, self.global_step)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(x0), sync_dist=not train)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.step(batch, "val")
        if (
            batch_idx == 0
            and self._val_count % self.hparams.preview_every_n_val == 0
            and self.trainer.is_global_zero
        ):
            self.save_previews(batch)

    def on_validation_epoch_end(self) -> None:
        self._val_count += 1

    @torch.no_grad()
    def save_previews(self, batch: dict) -> None:
        count = min(self.hparams.preview_count, len(batch["id"]))
        cond = self.condition({k: v[:count] for k, v in batch.items()})
        latents = self.generate(count, cond, generator=torch.Generator(self.device).manual_seed(0))
        previews = decode_previews(self.autoencoder, latents, self.hparams.mesh_resolution)
        self.log(
            "val/surface_found",
            sum(m is not None for m in previews.meshes) / count,
            batch_size=count,
            rank_zero_only=True,
        )
        if self.trainer.log_dir:
            previews.save_png(Path(self.trainer.log_dir) / "previews" / f"step{self.global_step:07d}.png")

    @torch.no_grad()
    def generate(
        self,
        num: int,
        cond: Cond | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        sampler: SamplerName | None = None,
    ) -> Tensor:
        """`num` latents (denormalized, ready to decode); cond has batch `num` or is None.

        `steps`, `guidance` and `sampler` default to the model's own (`sample_steps`, `guidance`,
        `sampler`); a sampler that does not fit the objective is an `InputError`.
        """

        def run(backbone: nn.Module, noise: Tensor, given: Tensor | None = None) -> Tensor:
            return sample(
                sampler or self.sampler,
                as_denoiser(backbone, self.objective),
                noise,
                self.objective.schedule,
                steps or self.hparams.sample_steps,
                cond,
                self.hparams.guidance if guidance is None else guidance,
                self.conditioner.null_cond(num) if cond is not None else None,
                generator,
                given,
            )

        noise = torch.randn((num, *self.latent_shape), generator=generator, device=self.device)
        if self.structure is None:
            return self.autoencoder.denormalize_latent(run(self.backbone, noise))
        grid = run(
            self.structure, torch.randn((num, *self.structure_shape), generator=generator, device=self.device)
        )
        grid = unfold_cells(grid, self.hparams.structure_patch)  # (num, 1, R, R, R)
        anchors = anchors_in_cells(grid, self.latent_shape[0], generator)  # (num, M, 3)
        placed = torch.cat([anchors, torch.zeros_like(noise[..., 3:])], -1)
        noise[..., :3] = self.autoencoder.normalize_latent(placed)[..., :3]
        return self.autoencoder.denormalize_latent(run(self.backbone, noise, self.anchors_given(noise)))

    def configure_callbacks(self) -> list[L.Callback]:
        """EMA of the weights with warm-up (validated on, saved in `state_dict`, so sampling uses it)."""
        if self.hparams.ema_decay <= 0:
            return []
        return [WarmupEMA(self.hparams.ema_decay)]

    def configure_optimizers(self):
        hp = self.hparams
        params = [
            p
            for name, p in self.named_parameters()
            if p.requires_grad and not name.startswith("autoencoder.")
        ]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.99))
        return {
            "optimizer": optimizer,
            "lr_scheduler": warmup_cosine_scheduler(optimizer, hp.warmup_steps, self.trainer),
        }

    def frozen_encoder_prefixes(self) -> list[str]:
        if self.conditioner is not None and self.conditioner.is_frozen:
            return ["conditioner.encoder."]
        return []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # A frozen pretrained encoder is re-loaded by name; its weights need not fill every checkpoint.
        prefixes = tuple(self.frozen_encoder_prefixes())
        for key in ("state_dict", "current_model_state"):
            if prefixes and key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        prefixes = tuple(self.frozen_encoder_prefixes())
        frozen = {k: v for k, v in self.state_dict().items() if prefixes and k.startswith(prefixes)}
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                checkpoint[key].update(frozen)


@torch.no_grad()
def check_backbone(backbone: nn.Module, latent_shape: tuple[int, ...]) -> None:
    """Fails early, naming the latent shape, when a YAML pairs a backbone with the wrong autoencoder."""
    x = torch.zeros(1, *latent_shape)
    try:
        out = backbone(x, torch.zeros(1), None)
    except (RuntimeError, ValueError) as error:
        raise ValueError(
            f"{type(backbone).__name__} does not take the autoencoder's latents of shape {latent_shape}: {error}"
        ) from error
    if out.shape != x.shape:
        raise ValueError(f"{type(backbone).__name__} maps latents {tuple(x.shape)} to {tuple(out.shape)}")


def check_structure(
    autoencoder: LatentAutoencoder, objective: RectifiedFlow | DDPM, resolution: int, patch: int
) -> None:
    """A structure stage needs anchored tokens to place, a flow path that holds them, and a grid
    that folds into whole blocks."""
    if resolution % patch:
        raise ValueError(f"structure_resolution {resolution} is not a multiple of structure_patch {patch}")
    if not getattr(autoencoder, "token_positions", False):
        raise ValueError(
            f"a structure stage places anchored tokens; {type(autoencoder).__name__} has none "
            "(VecSetVAE(token_positions=True) has)"
        )
    if not isinstance(objective, RectifiedFlow):
        raise ValueError(
            f"a structure stage samples the features with the anchors held, which needs RectifiedFlow, "
            f"not {type(objective).__name__}"
        )


def load_frozen_autoencoder(ckpt: str, config: dict | None) -> tuple[LatentAutoencoder, dict]:
    """The frozen autoencoder, from its checkpoint file or (reloading a diffusion checkpoint) its config."""
    if config is not None:
        autoencoder = autoencoder_from_config(config)
    else:
        checkpoint = read_checkpoint_of_kind(ckpt, "autoencoder")
        autoencoder, config = autoencoder_of(checkpoint), autoencoder_config(checkpoint)
    return autoencoder.eval().requires_grad_(False), config


def load_diffusion(path: str | os.PathLike, device: str = "cpu") -> LatentDiffusion:
    """A `LatentDiffusion` checkpoint, in eval mode (read once; a wrong or missing file is a `UserError`)."""
    return build_module(LatentDiffusion, read_checkpoint_of_kind(path, "diffusion"), device)
