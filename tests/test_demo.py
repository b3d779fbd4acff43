"""The demo end to end at test sizes: every stage runs through the CLI in child processes, two lanes at
once, writes its report, and a rerun reuses it; the lanes' scheduler on its own."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from native3d import demo
from native3d.data.schema import Sizes
from native3d.errors import BadModelError


@pytest.fixture
def tiny_demo(monkeypatch):
    monkeypatch.setattr(
        demo,
        "DEMO_SIZES",
        Sizes(
            surface_points=512, grid_resolution=32, query_points=1024, views=1, view_size=32, sharp_points=128
        ),
    )
    monkeypatch.setattr(
        demo,
        "SHARD_SETS",
        {
            "primitives": [*demo.PRIMITIVES, "--count", "24", "--seed", "0", "--shard-size", "8"],
            "primitives_heldout": [*demo.PRIMITIVES, "--count", "12", "--seed", "1", "--shard-size", "12"],
            "pybullet": ["--source", "pybullet", "--limit", "2", "--shard-size", "2"],
        },
    )
    monkeypatch.setattr(demo, "AUTOENCODERS", {n: replace(t, steps=2) for n, t in demo.AUTOENCODERS.items()})
    monkeypatch.setattr(
        demo, "DIFFUSION", {n: (replace(t, steps=2), ae) for n, (t, ae) in demo.DIFFUSION.items()}
    )
    monkeypatch.setattr(demo, "SAMPLES_PER_CLASS", 1)
    monkeypatch.setattr(demo, "SAMPLE_STEPS", 2)
    monkeypatch.setattr(demo, "MESH_RESOLUTION", 32)
    monkeypatch.setattr(demo, "EVAL_POINTS", 128)
    monkeypatch.setattr(demo, "RECONSTRUCTED", 12)
    monkeypatch.setattr(demo, "MIN_HELD_OUT_IOU", 0.0)  # two training steps collapse every autoencoder


@pytest.mark.timeout(900)
def test_the_demo_writes_its_report_and_a_rerun_reuses_every_stage(tiny_demo, tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert demo.run_demo(str(out), workers=1) == 0
    stages = json.loads((out / "stages.json").read_text())
    assert len(stages) == len(demo.SHARD_SETS) + 3 * len(demo.AUTOENCODERS) + 2 * len(demo.DIFFUSION)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {f"reconstruction_{n}" for n in demo.AUTOENCODERS} | {
        f"generation_{n}" for n in demo.DIFFUSION
    } | {"rule_ceiling"}
    assert 0 <= metrics["rule_ceiling"]["prompt_accuracy_of_real_shapes"] <= 1
    for name in demo.DIFFUSION:
        summary = metrics[f"generation_{name}"]
        assert summary["num_requested"] == 12, "one sample per held-out class"
        assert summary["num_samples"] + summary["num_failed"] == 12
    for name in demo.AUTOENCODERS:
        assert metrics[f"reconstruction_{name}"]["num_objects"] == 12
    report = (out / "report.md").read_text()
    for heading in (
        "## What was trained",
        "## Reconstruction",
        "## Generation",
        "## Stages",
        "contact_sheet.png",
    ):
        assert heading in report
    assert all(f"| diffusion: {n} |" in report for n in demo.DIFFUSION)
    assert "Device: cpu" in report and "2 lanes" in report, (
        "this machine has no GPU, and the report says what trained"
    )
    assert (out / "contact_sheet.png").stat().st_size > 0, (
        "a row per model, 'no surface' where a sample has none"
    )
    logs = {p.name for p in (out / "logs").glob("*.log")}
    assert {"autoencoder-vecset.log", "diffusion-set_dit.log"} <= logs, "every command's output is kept"
    capsys.readouterr()
    assert demo.run_demo(str(out), workers=1) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing") == len(stages), "a rerun redoes nothing"
    assert json.loads((out / "stages.json").read_text()) == stages
    assert "## Diffusion training loss" in report and "too few logged steps" in report

    monkeypatch.setattr(demo, "MIN_HELD_OUT_IOU", 1.01)  # no autoencoder reaches it
    with pytest.raises(BadModelError, match=r"autoencoder \w+: held-out IoU .* it has collapsed"):
        demo.run_demo(str(out), workers=1)


def test_lanes_run_tasks_after_what_they_need_and_never_more_at_once_than_lanes():
    started, running, peak, lock = [], [0], [0], threading.Lock()

    def work(name):
        def run():
            with lock:
                started.append(name)
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1

        return run

    tasks = [
        demo.Task("a", work("a")),
        demo.Task("b", work("b")),
        demo.Task("c", work("c")),
        demo.Task("d", work("d"), after=("a",)),
        demo.Task("e", work("e"), after=("d", "c")),
    ]
    demo.run_in_lanes(tasks, 2, stop=lambda: None)
    assert sorted(started) == ["a", "b", "c", "d", "e"] and peak[0] == 2
    assert started.index("d") > started.index("a") and started.index("e") > started.index("d")


def test_a_failing_task_stops_the_running_ones_and_is_raised():
    stopped = []

    def fail():
        raise BadModelError("autoencoder x: held-out IoU 0.1")

    tasks = [
        demo.Task("slow", lambda: time.sleep(0.2)),
        demo.Task("bad", fail),
        demo.Task("later", lambda: None),
    ]
    with pytest.raises(BadModelError, match="held-out IoU 0.1"):
        demo.run_in_lanes(tasks, 2, stop=lambda: stopped.append(True))
    assert stopped == [True]


def test_a_failed_command_names_its_stage_its_error_and_its_log(tmp_path):
    command = demo.Commands(tmp_path / "logs", threads=1)
    with pytest.raises(
        SystemExit, match=r"demo stage 'encode: x': native3d encode failed with exit code 2: .*"
    ) as error:
        command(
            "encode: x",
            ["encode", "--ckpt", tmp_path / "missing.ckpt", "--data", tmp_path, "--out", tmp_path / "o"],
        )
    assert "missing.ckpt" in str(error.value) and str(tmp_path / "logs" / "encode-x.log") in str(error.value)


def test_a_loss_that_does_not_fall_is_named(tmp_path):
    log = tmp_path / "diffusion" / "m" / "lightning_logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text("step,train/loss\n" + "".join(f"{s},{1.0 + 0.01 * s}\n" for s in range(0, 200, 10)))
    assert demo.loss_trend(tmp_path / "diffusion" / "m", warmup_steps=50)[1] > 1.5
    assert "did not fall" in demo.loss_row("m", tmp_path)
    log.write_text("step,train/loss\n" + "".join(f"{s},{2.0 - 0.005 * s}\n" for s in range(0, 200, 10)))
    assert "| falls |" in demo.loss_row("m", tmp_path)
