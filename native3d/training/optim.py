"""Optimizers and the learning-rate schedule shared by the LightningModules.

- AdamW (Loshchilov & Hutter 2019) with weight decay on weight matrices only.
- Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; `torch.optim.Muon`): momentum
  orthogonalised by Newton-Schulz iterations, for the hidden weight matrices, with AdamW for
  everything else (input embeddings, scalar read-outs, convolutions, biases and norms), as Muon is
  meant to be used. Its updates are scaled to AdamW's RMS ("match_rms_adamw", Liu et al. 2025,
  "Muon is Scalable for LLM Training"), so one learning rate and schedule serve both halves.
- `warmup_cosine`: linear warm-up, then cosine decay to 10%; `warmup_cosine_scheduler` steps it
  over a Lightning trainer's `max_steps`, read once, when the optimizers are configured, or over
  its `max_time` clock, whichever ends the run first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from itertools import chain
from typing import TYPE_CHECKING, Literal

import torch
from lightning.pytorch.callbacks import Timer
from torch import Tensor, nn

from native3d.nn.embeddings import FourierPointEmbedding, TimestepEmbedding

if TYPE_CHECKING:
    import lightning as L

OptimizerName = Literal["adamw", "muon"]
BETAS = (0.9, 0.99)
# Layers that read raw inputs: Muon is for hidden layers, so these stay on AdamW.
EMBEDDINGS = (FourierPointEmbedding, TimestepEmbedding, nn.Embedding)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Every `nn.Linear` weight except those of input embeddings and of single-output read-outs."""
    in_embeddings = {id(p) for m in model.modules() if isinstance(m, EMBEDDINGS) for p in m.parameters()}
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and m.out_features > 1
        and m.weight.requires_grad
        and id(m.weight) not in in_embeddings
    ]


class JointState(Mapping):
    """A read-only view of several optimizers' `state`, looked up live.

    Live, because `load_state_dict` replaces an optimizer's state dict; read-only and checked with
    `in`, because the states are defaultdicts and a plain lookup of another optimizer's parameter
    would insert an empty entry that breaks that optimizer's `state_dict()`.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def __getitem__(self, param: Tensor) -> dict:
        for optimizer in self.optimizers:
            if param in optimizer.state:
                return optimizer.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[Tensor]:
        return chain.from_iterable(optimizer.state for optimizer in self.optimizers)

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self.optimizers)


class MuonAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` on `muon_params` and `torch.optim.AdamW` on `adamw_groups`, as one optimizer.

    Lightning's automatic optimization steps a single optimizer. This one shares its inner
    optimizers' parameter-group dicts, so an LR scheduler, gradient clipping and `zero_grad` reach
    every parameter; its state dict holds both inner ones.
    """

    def __init__(
        self, muon_params: list[nn.Parameter], adamw_groups: list[dict], lr: float, weight_decay: float
    ) -> None:
        self.muon = torch.optim.Muon(
            muon_params, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw"
        )
        adamw_groups = [g for g in adamw_groups if g["params"]]
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=BETAS) if adamw_groups else None
        self.inner = [self.muon] + ([self.adamw] if self.adamw else [])
        super().__init__([g for inner in self.inner for g in inner.param_groups], defaults={})
        self.state = JointState(self.inner)  # for code that walks `state`, such as Lightning's device moves

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in self.inner:
            inner.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw:
            self.adamw.load_state_dict(state_dict["adamw"])


def build_optimizer(
    model: nn.Module, name: OptimizerName, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW, or Muon + AdamW, over `model`'s trainable parameters; no weight decay on vectors."""
    if name not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {name!r}; expected 'adamw' or 'muon'")
    hidden = hidden_matrices(model) if name == "muon" else []
    if name == "muon" and not hidden:
        raise ValueError(
            f"{type(model).__name__} has no hidden nn.Linear weight matrices for Muon; use 'adamw'"
        )
    in_hidden = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_hidden]
    groups = [
        {"params": [p for p in rest if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0},
    ]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=BETAS)
    return MuonAdamW(hidden, groups, lr=lr, weight_decay=weight_decay)


def warmup_cosine(step: int, warmup: int, total: int | None) -> float:
    """Linear warm-up, then cosine decay to 10% over the run (constant if its length is unknown)."""
    if step < warmup:
        return (step + 1) / warmup
    if total is None or total <= warmup:
        return 1.0
    return cosine_decay((step - warmup) / (total - warmup))


def cosine_decay(progress: float) -> float:
    """The cosine from 1 to 0.1 as `progress`, the fraction of the run after the warm-up, goes 0 -> 1."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup: int, trainer: L.Trainer | None) -> dict:
    """Lightning's `lr_scheduler` entry: `warmup_cosine` per optimizer step over the run.

    The run's length is `trainer.max_steps` (read once, here) and, with `max_time`, its clock:
    progress is the larger of the step and the time fraction, so the decay ends with whichever
    budget ends the run (on a CPU the minutes usually do, at a step count nobody knows in advance).
    Without either limit the rate stays constant after the warm-up.
    """
    total = trainer.max_steps if trainer is not None and trainer.max_steps > 0 else None
    timer = next((c for c in getattr(trainer, "callbacks", None) or [] if isinstance(c, Timer)), None)
    if timer is not None and timer.time_remaining() is None:
        timer = None

    def factor(step: int) -> float:
        if step < warmup or timer is None:
            return warmup_cosine(step, warmup, total)
        elapsed = timer.time_elapsed()
        fractions = [elapsed / max(elapsed + timer.time_remaining(), 1e-9)]
        if total is not None and total > warmup:
            fractions.append((step - warmup) / (total - warmup))
        return cosine_decay(max(fractions))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
