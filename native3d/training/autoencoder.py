"""The LightningModule that trains any `LatentAutoencoder` on shard batches.

Loss on the shard's SDF queries (clamped L1 or occupancy BCE, KL, optional soft-IoU and eikonal
terms). At validation: loss and volume IoU on the uniform queries (sign agreement), and Chamfer-L1
and F-score@0.02 of marching-cubes meshes of the first `MESH_SHAPES` validation shapes against
their surface points, with a PNG of them. Before every checkpoint the latent statistics
(per-channel mean and std over training batches) are refreshed, so a checkpoint always carries the
numbers its diffusion models normalize with. `optimizer` picks AdamW or
Muon + AdamW (`native3d.training.optim`). `augment` trains on each batch mapped by random symmetries
of the cube (`native3d.geometry.symmetry`: exact for every field, so the labels stay right).
`compile: true` compiles the autoencoder's forward (`torch.compile`, in place, so checkpoint keys
do not change).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from native3d.autoencoders.bottleneck import LatentAutoencoder
from native3d.autoencoders.loss import autoencoder_loss
from native3d.geometry.symmetry import Symmetries, random_cube_symmetries, transform_shape_batch
from native3d.metrics import chamfer_distance, f_score, volume_iou
from native3d.training.checks import check_finite
from native3d.training.optim import OptimizerName, build_optimizer, warmup_cosine_scheduler
from native3d.training.previews import decode_previews

log = logging.getLogger(__name__)
MESH_SHAPES = 4  # validation shapes meshed at every validation


class AutoencoderModule(L.LightningModule):
    def __init__(
        self,
        autoencoder: LatentAutoencoder,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        optimizer: OptimizerName = "adamw",
        warmup_steps: int = 100,
        kl_weight: float = 1e-3,
        loss: str = "l1",
        clamp: float = 0.1,
        eikonal_weight: float = 0.0,
        iou_weight: float = 0.0,
        mesh_resolution: int = 64,
        stats_batches: int = 16,
        augment: Symmetries = "none",
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Through LightningCLI the hyperparameters hold the autoencoder's class_path and init_args,
        # so `load_from_checkpoint` rebuilds it from the checkpoint alone.
        self.save_hyperparameters()
        self.autoencoder = autoencoder
        self._stats_step = -1
        if compile:
            self.autoencoder.compile()  # in place and lazy: it compiles at the first forward

    def step(self, batch: dict, stage: str) -> dict[str, Tensor]:
        hp = self.hparams
        if stage == "train" and hp.augment != "none":
            batch = transform_shape_batch(batch, *random_cube_symmetries(len(batch["id"]), hp.augment))
        inputs = self.autoencoder.inputs_from_batch(batch)
        points, target = self.autoencoder.queries_from_batch(batch)
        points = points.requires_grad_(hp.eikonal_weight > 0)
        pred, posterior = self.autoencoder(inputs, points, sample_posterior=stage == "train")
        terms = autoencoder_loss(
            pred,
            target,
            posterior,
            kl_weight=hp.kl_weight,
            clamp=hp.clamp,
            kind=hp.loss,
            eikonal_weight=hp.eikonal_weight,
            points=points,
            iou_weight=hp.iou_weight,
        )
        check_finite(terms["loss"], batch["id"], stage, self.global_step)
        self.log_dict(
            {f"{stage}/{k}": v.detach() for k, v in terms.items()},
            prog_bar=stage == "train",
            batch_size=len(pred),
            sync_dist=stage != "train",
        )
        terms["pred"] = pred
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.step(batch, "train")["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pred = self.step(batch, "val")["pred"]
        uniform = batch["query"].shape[1] // 2  # the first half of the queries is uniform in the cube
        iou = volume_iou(pred[:, :uniform], batch["query"][:, :uniform, 3], kind="sdf")
        self.log("val/iou", iou.value.mean(), prog_bar=True, batch_size=len(pred), sync_dist=True)
        if batch_idx == 0:
            self.log_mesh_metrics(batch)

    @torch.no_grad()
    def log_mesh_metrics(self, batch: dict) -> None:
        count = min(MESH_SHAPES, len(batch["id"]))
        latent = self.autoencoder.encode(self.autoencoder.inputs_from_batch(batch)).mode()[:count]
        previews = decode_previews(self.autoencoder, latent, self.hparams.mesh_resolution)
        scores = mesh_scores(previews.points, batch["surface"][:count, :, :3].float())
        for name, value in scores.items():
            self.log(f"val/{name}", value, batch_size=count)
        if self.trainer.log_dir and self.trainer.is_global_zero:
            previews.save_png(Path(self.trainer.log_dir) / "previews" / f"step{self.global_step:07d}.png")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._stats_step != self.global_step:
            self.refresh_latent_statistics()
            checkpoint["state_dict"].update(
                {
                    f"autoencoder.{k}": v
                    for k, v in self.autoencoder.state_dict().items()
                    if k.startswith("latent_")
                }
            )

    @torch.no_grad()
    def refresh_latent_statistics(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            log.warning("no datamodule: latent statistics stay as they are")
            return
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        latents = (
            self.autoencoder.encode(self.autoencoder.inputs_from_batch(to_device(b, self.device))).mode()
            for b in datamodule.statistics_batches(self.hparams.stats_batches)
        )
        mean, std = self.autoencoder.fit_latent_statistics(latents)
        if self.trainer.world_size > 1:  # every rank saw its own shards; average the estimates
            self.autoencoder.latent_mean.copy_(
                self.trainer.strategy.reduce(mean.to(self.device), reduce_op="mean")
            )
            self.autoencoder.latent_std.copy_(
                self.trainer.strategy.reduce(std.to(self.device), reduce_op="mean")
            )
        self.autoencoder.train(was_training)
        self._stats_step = self.global_step

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = build_optimizer(self.autoencoder, hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay)
        return {
            "optimizer": optimizer,
            "lr_scheduler": warmup_cosine_scheduler(optimizer, hp.warmup_steps, self.trainer),
        }


def mesh_scores(meshes: list[np.ndarray | None], surface: Tensor, count: int = 2048) -> dict[str, float]:
    """Chamfer-L1 and F-score@0.02 of sampled mesh points against shard surface points."""
    pairs = [(torch.from_numpy(p), s) for p, s in zip(meshes, surface) if p is not None]
    scores = {"surface_found": len(pairs) / max(1, len(meshes))}
    if pairs:
        pred = torch.stack([p for p, _ in pairs]).to(surface.device)
        ref = torch.stack(
            [s[torch.randperm(len(s), generator=torch.Generator().manual_seed(0))[:count]] for _, s in pairs]
        )
        scores["chamfer_l1"] = chamfer_distance(pred, ref, convention="l1").mean()
        scores["fscore_0.02"] = f_score(pred, ref, threshold=0.02).mean()
    return scores


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
