"""Conditioners: a training batch (or the user's prompt) -> the `Cond` dict a backbone reads.

A conditioner picks the batch's field (captions or rendered views) and runs an encoder:

    TextConditioner(HFTextEncoder())          batch["caption"] (list of B str)
    ImageConditioner(view_encoder_tiny())     batch["views"] (B, V, H, W, 3) uint8: one view each

Unconditional models have no conditioner and pass `cond=None` to the backbone.

Condition dropout and classifier-free guidance live in `native3d.diffusion.guidance`; they take
`null_cond(batch_size)` from here so that training and sampling contrast with the same null:
the embedding of the empty caption for text (as Stable Diffusion does, and what empty captions
in the data already give), zeros with an all-valid mask for images (guidance's default).

Caching: a frozen encoder (`is_frozen`) computes the same embedding for the same input every
step, so a latent-encoding step may store text embeddings in latent shards, keyed by
`cache_key()`. The jointly trained `ViewEncoder` changes every step, so its `cache_key()` is
None and it must run in the training step.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from jaxtyping import UInt8
from torch import Tensor, nn

from native3d.conditioning.image import HFImageEncoder, ViewEncoder
from native3d.conditioning.text import HFTextEncoder
from native3d.diffusion.guidance import null_condition
from native3d.nn.modulation import Cond, broadcast_batch


@runtime_checkable
class Conditioner(Protocol):
    is_frozen: bool

    def encode(self, batch: dict, generator: torch.Generator | None = None) -> Cond: ...

    def null_cond(self, batch_size: int) -> Cond: ...

    def cache_key(self) -> str | None: ...


class TextConditioner(nn.Module):
    """Captions -> cond through a frozen text encoder."""

    def __init__(self, encoder: HFTextEncoder, key: str = "caption") -> None:
        super().__init__()
        self.encoder = encoder
        self.key = key

    @property
    def is_frozen(self) -> bool:
        return self.encoder.is_frozen

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, batch: dict, generator: torch.Generator | None = None) -> Cond:
        """`generator` is unused: a caption has nothing to draw."""
        return self.encode_texts(batch[self.key])

    def encode_texts(self, texts: list[str]) -> Cond:
        return self.encoder.encode(texts)

    def null_cond(self, batch_size: int) -> Cond:
        return broadcast_batch(self.encoder.encode([""]), batch_size)

    def cache_key(self) -> str | None:
        return self.encoder.cache_key()


class ImageConditioner(nn.Module):
    """Rendered views -> cond: a random view per object in training, view 0 in eval.

    Random views in training teach the model every camera of the turntable; eval uses the first,
    the view `render_image_of_mesh` renders, so validation is deterministic. At sampling time
    `encode_images` takes the user's image(s) directly.
    """

    def __init__(self, encoder: ViewEncoder | HFImageEncoder, key: str = "views") -> None:
        super().__init__()
        self.encoder = encoder
        self.key = key

    @property
    def is_frozen(self) -> bool:
        return self.encoder.is_frozen

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, batch: dict, generator: torch.Generator | None = None) -> Cond:
        """`generator` makes the training-time choice of views reproducible."""
        return self.encode_images(self.pick_views(batch[self.key], generator))

    def pick_views(
        self, views: UInt8[Tensor, "B V H W 3"], generator: torch.Generator | None = None
    ) -> UInt8[Tensor, "B H W 3"]:
        batch, count = views.shape[:2]
        if count == 0:
            raise ValueError("the batch has no rendered views (V = 0); build shards with --views > 0")
        if not self.training:
            return views[:, 0]
        device = generator.device if generator is not None else torch.device("cpu")
        index = torch.randint(count, (batch,), generator=generator, device=device)  # (B,)
        return views[torch.arange(batch), index.to(views.device)]

    def encode_images(self, images: UInt8[Tensor, "B H W 3"]) -> Cond:
        return self.encoder.encode(images)

    def null_cond(self, batch_size: int) -> Cond:
        with torch.no_grad():
            blank = torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)  # shapes only; the values are zeroed
            shaped = self.encoder.encode(blank)
        return broadcast_batch(null_condition(shaped), batch_size)

    def cache_key(self) -> str | None:
        return self.encoder.cache_key() if self.encoder.is_frozen else None


__all__ = ["Conditioner", "ImageConditioner", "TextConditioner"]
