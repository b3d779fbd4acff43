"""The EMA of the weights that diffusion samples from: it forgets the initialisation in a short run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from native3d.training.ema import WarmupEMA, warmed_decay


class Walk(L.LightningModule):
    """One weight that is 0 after the first step (which the average copies) and 1 after every later one;
    an integer buffer counts the steps."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        with torch.no_grad():
            self.w.fill_(float(batch_idx > 0))
            self.steps += 1
        self.optimizers().step()  # the callback averages after every optimizer step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1000, 1), batch_size=1)


@pytest.mark.parametrize("steps", [100, 400])
def test_the_average_holds_the_trained_weights_after_a_short_run(steps):
    model = Walk()
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=[WarmupEMA(0.999)],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    # what the average keeps of the first step's weights: the product of the later decays
    start = torch.tensor([warmed_decay(0.999, n) for n in range(1, steps)]).prod().item()
    assert start < 1e-4 < 0.999 ** (steps - 1)  # a fixed decay would still hold 0.67-0.90 of it
    torch.testing.assert_close(model.w.detach(), torch.full((3,), 1.0 - start), atol=1e-5, rtol=0)
    assert int(model.steps) == steps  # integer buffers are copied, not averaged


def test_the_decay_reaches_the_configured_one():
    assert warmed_decay(0.999, 0) == pytest.approx(0.1)
    assert warmed_decay(0.999, 100_000) == 0.999
