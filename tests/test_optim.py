"""The shared optimizers: which parameters Muon takes, one state for both halves, exact resume."""

from __future__ import annotations

import copy
import io
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Timer
from torch import nn

from native3d.autoencoders.vecset import vecset_tiny
from native3d.training.optim import (
    MuonAdamW,
    build_optimizer,
    hidden_matrices,
    warmup_cosine,
    warmup_cosine_scheduler,
)


def names_of(model: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the posterior sample and the farthest-point start draw from it
    for _ in range(steps):
        surface = torch.randn(2, 64, 6, generator=generator)
        points = torch.rand(2, 32, 3, generator=generator) * 2 - 1
        sdf, _ = model(surface, points)
        optimizer.zero_grad()
        (sdf - points.norm(dim=-1) + 0.5).square().mean().backward()
        optimizer.step()


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = vecset_tiny()
    hidden = names_of(model, hidden_matrices(model))
    assert {"point_embed.proj.weight", "head.point_embed.proj.weight", "head.out.weight"}.isdisjoint(hidden)
    assert {
        "encoder.cross_attn.to_q.weight",
        "blocks.0.mlp.fc1.weight",
        "to_moments.weight",
        "head.cross.mlp.fc2.weight",
    } <= hidden
    assert all(p.ndim == 2 for p in hidden_matrices(model))

    optimizer = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.05)
    assert isinstance(optimizer, MuonAdamW)
    assert names_of(model, optimizer.muon.param_groups[0]["params"]) == hidden
    grouped = [name for group in optimizer.param_groups for name in names_of(model, group["params"])]
    assert sorted(grouped) == sorted(name for name, _ in model.named_parameters()), "every parameter once"
    for group in optimizer.adamw.param_groups:
        assert group["weight_decay"] == (0.05 if all(p.ndim >= 2 for p in group["params"]) else 0.0)


def test_a_scheduler_sets_the_learning_rate_of_both_halves():
    model = vecset_tiny()
    optimizer = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, 4, 20))
    train_steps(model, optimizer, 2, seed=0)
    schedule.step()
    schedule.step()
    for inner in (optimizer.muon, optimizer.adamw):
        assert [group["lr"] for group in inner.param_groups] == pytest.approx(
            [1e-3 * 3 / 4] * len(inner.param_groups)
        )


def test_the_schedule_decays_over_the_trainers_max_steps_and_is_constant_without_one():
    parameter = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    trainer = SimpleNamespace(max_steps=20)
    schedule = warmup_cosine_scheduler(optimizer, warmup=4, trainer=trainer)["scheduler"]
    trainer.max_steps = 40  # the length is read when the schedule is built, not at every step
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(30):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([warmup_cosine(step, 4, 20) for step in range(31)])
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]), "linear warm-up"
    assert rates[20] == pytest.approx(0.1) and rates[-1] == pytest.approx(0.1), "the decay ends at step 20"
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))
    for unlimited in (SimpleNamespace(max_steps=-1), None):  # no step limit: constant after the warm-up
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        schedule = warmup_cosine_scheduler(optimizer, warmup=4, trainer=unlimited)["scheduler"]
        for _ in range(30):
            optimizer.step()
            schedule.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)


class ClockAt(Timer):
    """A `max_time` timer whose clock the test sets."""

    def __init__(self, seconds: float) -> None:
        super().__init__(duration={"seconds": seconds})
        self.elapsed = 0.0

    def time_elapsed(self, stage: str = "train") -> float:
        return self.elapsed


def test_a_run_that_ends_on_the_clock_decays_with_the_clock():
    parameter = nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    clock = ClockAt(100.0)
    trainer = SimpleNamespace(max_steps=-1, callbacks=[clock])
    schedule = warmup_cosine_scheduler(optimizer, warmup=4, trainer=trainer)["scheduler"]
    factor = schedule.lr_lambdas[0]
    assert [factor(step) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0]), "warm-up by steps"
    for elapsed, expected in ((0.0, 1.0), (50.0, 0.55), (100.0, 0.1), (130.0, 0.1)):
        clock.elapsed = elapsed
        assert factor(10) == pytest.approx(expected), f"{elapsed} of 100 seconds"
    # With both limits, whichever is nearer its end sets the rate.
    both = warmup_cosine_scheduler(
        optimizer, warmup=4, trainer=SimpleNamespace(max_steps=24, callbacks=[clock])
    )
    clock.elapsed = 10.0
    assert both["scheduler"].lr_lambdas[0](24) == pytest.approx(0.1), "the steps end first"
    clock.elapsed = 100.0
    assert both["scheduler"].lr_lambdas[0](5) == pytest.approx(0.1), "the clock ends first"


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_resuming_from_the_state_dict_continues_exactly(name):
    torch.manual_seed(0)
    model = vecset_tiny()
    optimizer = build_optimizer(model, name, lr=1e-3, weight_decay=0.01)
    train_steps(model, optimizer, 3, seed=0)
    saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train_steps(model, optimizer, 2, seed=1)

    resumed = vecset_tiny()
    resumed.load_state_dict(saved_model)
    resumed_optimizer = build_optimizer(resumed, name, lr=1e-3, weight_decay=0.01)
    resumed_optimizer.load_state_dict(saved_optimizer)
    train_steps(resumed, resumed_optimizer, 2, seed=1)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=key)


def test_the_joint_state_is_live_and_reading_it_leaves_both_halves_intact():
    model = vecset_tiny()
    optimizer = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.01)
    train_steps(model, optimizer, 1, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(optimizer.state) == len(params)
    assert all({"momentum_buffer", "exp_avg"} & set(optimizer.state[p]) for p in params)
    # Lightning's device move on resume walks `state.items()`; the lookups must not add entries to
    # either half (a Muon state holding an AdamW parameter cannot be saved).
    dict(optimizer.state.items())
    for inner in (optimizer.muon, optimizer.adamw):
        assert set(inner.state) <= {p for group in inner.param_groups for p in group["params"]}
    saved = copy.deepcopy(optimizer.state_dict())

    resumed = build_optimizer(model, "muon", lr=1e-3, weight_decay=0.01)
    resumed.load_state_dict(saved)  # replaces the inner state dicts: the view follows them
    assert len(resumed.state) == len(params)
    with pytest.raises(KeyError):
        resumed.state[torch.zeros(1)]


def test_muon_steps_are_orthogonalised_and_scaled_to_adamw():
    x, y = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), torch.randn(64, 16)
    steps = {}
    for name in ("adamw", "muon"):
        layer = nn.Linear(16, 16, bias=False)
        before = layer.weight.detach().clone()
        optimizer = build_optimizer(layer, name, lr=1e-3, weight_decay=0.0)
        (layer(x) - y).square().mean().backward()
        optimizer.step()
        steps[name] = torch.linalg.svdvals(layer.weight.detach() - before)
    # Newton-Schulz leaves every singular value of a full-rank update within about [0.7, 1.2] of
    # one another; Adam's first, sign-like step is far from orthogonal.
    assert steps["muon"].max() / steps["muon"].min() < 2.0
    assert steps["adamw"].max() / steps["adamw"].min() > 4.0
    rms = steps["muon"].square().sum().sqrt().item() / 16  # Frobenius norm / sqrt(16 * 16)
    assert math.isclose(rms, 0.2 * 1e-3, rel_tol=0.3), "the update's RMS matches AdamW's (0.2 lr)"


def test_bad_optimizer_requests_fail_clearly():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(vecset_tiny(), "sgd", lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="Conv3d has no hidden"):
        build_optimizer(nn.Conv3d(2, 2, 3), "muon", lr=1e-3, weight_decay=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_muon_trains_under_bf16_autocast_on_cuda_and_resumes_there():
    torch.manual_seed(0)
    model = vecset_tiny().cuda()
    optimizer = build_optimizer(model, "muon", lr=3e-3, weight_decay=0.01)
    generator = torch.Generator(device="cuda").manual_seed(0)
    surface = torch.randn(4, 64, 6, device="cuda", generator=generator)
    points = torch.rand(4, 256, 3, device="cuda", generator=generator) * 2 - 1
    target = points.norm(dim=-1) - 0.5
    losses = []
    for _ in range(40):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sdf, _ = model(surface, points)
        loss = (sdf.float() - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    moments = [
        v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim
    ]
    assert moments and all(v.is_cuda and v.dtype == torch.float32 for v in moments)

    # A checkpoint is read on the CPU and its optimizer state loaded into one on the GPU.
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = build_optimizer(model, "muon", lr=3e-3, weight_decay=0.01)
    resumed.load_state_dict(torch.load(buffer, map_location="cpu"))
    assert all(
        v.is_cuda for state in resumed.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim
    )
    resumed.step()  # the loaded moments and the CUDA gradients meet without a device error
