"""The latent bottleneck shared by every autoencoder: a diagonal Gaussian posterior with KL,
the autoencoder contract, and the latent statistics that travel in the checkpoint.

The posterior is the VAE reparameterisation of Kingma & Welling 2014 (eq. 10, KL against
N(0, I) in closed form, appendix B), used with a small KL weight as in latent diffusion
(Rombach et al. 2022, sec. 3.1) and 3DShape2VecSet (Zhang et al. 2023, sec. 4.2). Diffusion is
trained on latents standardised per channel with `latent_mean` / `latent_std`, which are
buffers of the autoencoder so that they are saved with its weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn


class DiagonalGaussian:
    """N(mean, exp(logvar)) over a latent of any shape (B, ...); the first axis is the batch.

    `fixed` (a bool mask broadcastable to `mean`, optional) marks elements whose spread the encoder
    does not learn, e.g. the anchor points of a VecSet's tokens, given exactly (logvar -inf, std 0: a
    sample keeps them) or up to a set std: the KL leaves them out.
    """

    def __init__(
        self, mean: Float[Tensor, "B ..."], logvar: Float[Tensor, "B ..."], fixed: Tensor | None = None
    ) -> None:
        self.mean = mean
        # Clamping keeps exp() finite early in training, as in the LDM / 3DShape2VecSet code.
        clamped = logvar.clamp(-30.0, 20.0)
        self.logvar = clamped if fixed is None else torch.where(fixed, logvar, clamped)
        self.fixed = fixed

    @classmethod
    def from_moments(cls, moments: Tensor, dim: int) -> DiagonalGaussian:
        """Splits a tensor holding [mean, logvar] stacked along `dim` into a posterior."""
        mean, logvar = moments.chunk(2, dim=dim)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Float[Tensor, "B ..."]:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> Float[Tensor, "B ..."]:
        return self.mean

    def kl(self, reduction: Literal["mean", "sum"] = "mean") -> Float[Tensor, " B"]:
        """KL(q || N(0, I)) per sample, over the elements that are not `fixed`.

        "mean" averages over latent elements (as 3DShape2VecSet does) so that a KL weight carries
        over between latent sizes; "sum" is the exact KL of the whole latent.
        """
        kl = 0.5 * (self.mean.float().square() + self.logvar.float().exp() - 1.0 - self.logvar.float())
        if self.fixed is None:
            kl = kl.flatten(1)
            return kl.mean(dim=1) if reduction == "mean" else kl.sum(dim=1)
        drawn = (~self.fixed).expand_as(kl).flatten(1)
        total = kl.flatten(1).masked_fill(~drawn, 0.0).sum(dim=1)
        return total / drawn.sum(dim=1).clamp_min(1) if reduction == "mean" else total


@torch.no_grad()
def latent_statistics(latents: Iterable[Tensor], channel_dim: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std over an iterable of batched latents (B, ...).

    `channel_dim` indexes the latent without its batch axis (e.g. -1 for (M, C) token sets,
    0 for (C, D, H, W) grids). Sums are accumulated in float64 so millions of values stay exact.
    """
    total, total_sq, count = None, None, 0
    for latent in latents:
        channels_last = latent.movedim(channel_dim % (latent.ndim - 1) + 1, -1).double()
        flat = channels_last.reshape(-1, channels_last.shape[-1])  # (values, C)
        total = flat.sum(0) if total is None else total + flat.sum(0)
        total_sq = flat.square().sum(0) if total_sq is None else total_sq + flat.square().sum(0)
        count += flat.shape[0]
    if count == 0:
        raise ValueError("latent_statistics got no latents")
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


class LatentAutoencoder(nn.Module):
    """The contract every autoencoder here follows (Shap-E style: latent -> implicit SDF).

    Subclasses implement `inputs_from_batch`, `encode`, `decoder_features`, `query` and
    `latent_shape`, and set `latent_channel_dim`, the channel axis of the latent without its batch axis.

    - `inputs_from_batch(batch)`: picks and casts this model's input (a tensor, or a dict of
      tensors) from a shard batch with keys "surface" (B, N, 6), "sdf" (B, R, R, R),
      "triplane" (B, 3, 2, R, R), "query" (B, Q, 4).
    - `encode(inputs) -> DiagonalGaussian` over latents of shape (B, *latent_shape).
    - `decoder_features(latent) -> features`: the decoder's work that depends on the latent alone
      (processed tokens, a feature volume, feature planes), done once per latent.
    - `query(features, points (B, Q, 3)) -> sdf (B, Q)`: the per-point read-out.
    - `decode(latent, points) = query(decoder_features(latent), points)`. Mesh extraction queries
      millions of points in chunks over several refinement levels, so it computes the features
      once and calls `query` per chunk instead of `decode`.
    - `forward(inputs, points) -> (sdf, posterior)`, sampling the posterior when `sample_posterior`.
    """

    latent_channel_dim: int = -1

    def __init__(self, latent_channels: int) -> None:
        super().__init__()
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def inputs_from_batch(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def encode(self, inputs: Tensor) -> DiagonalGaussian:
        raise NotImplementedError

    def decoder_features(self, latent: Tensor) -> Tensor:
        raise NotImplementedError

    def query(self, features: Tensor, points: Float[Tensor, "B Q 3"]) -> Float[Tensor, "B Q"]:
        raise NotImplementedError

    def decode(self, latent: Tensor, points: Float[Tensor, "B Q 3"]) -> Float[Tensor, "B Q"]:
        return self.query(self.decoder_features(latent), points)

    def forward(
        self, inputs: Tensor, points: Float[Tensor, "B Q 3"], sample_posterior: bool = True
    ) -> tuple[Float[Tensor, "B Q"], DiagonalGaussian]:
        posterior = self.encode(inputs)
        latent = posterior.sample() if sample_posterior else posterior.mode()
        return self.decode(latent, points), posterior

    @staticmethod
    def queries_from_batch(batch: dict[str, Tensor]) -> tuple[Float[Tensor, "B Q 3"], Float[Tensor, "B Q"]]:
        """Query points and their target signed distance from the batch's "query" (B, Q, 4)."""
        query = batch["query"].float()
        return query[..., :3], query[..., 3]

    def _channel_view(self, stat: Tensor, latent: Tensor) -> Tensor:
        shape = [1] * latent.ndim
        shape[self.latent_channel_dim % (latent.ndim - 1) + 1] = -1
        return stat.to(latent.dtype).view(shape)

    def normalize_latent(self, latent: Float[Tensor, "B ..."]) -> Float[Tensor, "B ..."]:
        """Standardises a latent per channel; diffusion models see normalized latents."""
        return (latent - self._channel_view(self.latent_mean, latent)) / self._channel_view(
            self.latent_std, latent
        )

    def denormalize_latent(self, latent: Float[Tensor, "B ..."]) -> Float[Tensor, "B ..."]:
        return latent * self._channel_view(self.latent_std, latent) + self._channel_view(
            self.latent_mean, latent
        )

    @torch.no_grad()
    def fit_latent_statistics(self, latents: Iterable[Tensor], eps: float = 1e-6) -> tuple[Tensor, Tensor]:
        """Sets `latent_mean` / `latent_std` from an iterable of latents (B, *latent_shape)."""
        mean, std = latent_statistics(latents, self.latent_channel_dim)
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp_min(eps))
        return mean, std


def autoencoder_from_config(config: dict) -> LatentAutoencoder:
    """The autoencoder that a `{class_path, init_args}` mapping names, as YAML configs and checkpoints hold it."""
    module_name, class_name = config["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)(**config.get("init_args", {}))
