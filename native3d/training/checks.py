"""Checks that stop a run loudly instead of letting it continue on garbage."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the batch's objects."""


def check_finite(loss: Tensor, ids: Sequence[str], stage: str, step: int) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"{stage} loss is {loss.detach().float().item()} at step {step}; objects in the batch: {', '.join(ids)}"
        )
