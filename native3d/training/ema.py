"""Exponential moving average of the weights, with the warm-up of diffusers' `EMAModel`.

A fixed decay d weighs the initial (random) weights by d^n after n updates: at d = 0.999 that is
still 0.55 after 600 steps, so a short run samples mostly its initialisation. The decay of the
n-th update is min(d, (1 + n) / (10 + n)) instead, so the average forgets the start at any run
length and reaches the configured decay once n is large.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor


def warmed_decay(decay: float, num_averaged: int) -> float:
    """The decay of the update after `num_averaged` updates (the first update copies the weights)."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


class WarmupEMA(WeightAveraging):
    """Lightning weight averaging after every optimizer step, with the warmed-up EMA decay."""

    def __init__(self, decay: float) -> None:
        def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
            # called once per device and dtype; integer buffers (token ids, counters) are copied
            if averaged[0].is_floating_point():
                torch._foreach_lerp_(averaged, current, 1.0 - warmed_decay(decay, int(num_averaged)))
            else:
                torch._foreach_copy_(averaged, current)

        super().__init__(multi_avg_fn=update)
        self.decay = decay
