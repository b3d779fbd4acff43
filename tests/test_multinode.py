"""Two processes on loopback acting as two nodes (NODE_RANK 0 and 1, gloo): disjoint shards per
rank, the same number of steps, one checkpoint, and a resume that continues the step count."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_nodes(shards: Path, out: Path, steps: int, ckpt: Path | None = None) -> None:
    extra = out / "probe.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args: {save_last: true}\n"
        f"    - class_path: multinode_probe.BatchRecorder\n      init_args: {{folder: '{out}'}}\n"
    )
    command = [
        sys.executable,
        "-m",
        "native3d.cli",
        "fit",
        "--config",
        str(CONFIGS / "autoencoder" / "triplane_tiny.yaml"),
        "--config",
        str(CONFIGS / "trainer" / "cpu.yaml"),
        "--config",
        str(extra),
        "--trainer.num_nodes",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--model.init_args.stats_batches",
        "1",
        "--data",
        "native3d.data.datamodule.ShardDataModule",
        "--data.train",
        str(shards),
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "0",
        "--data.query_points",
        "256",
        "--data.shuffle_buffer",
        "4",
        "--data.batches_per_epoch",
        "3",
        "--seed_everything",
        "0",
    ]
    if ckpt is not None:
        command += ["--ckpt_path", str(ckpt)]
    port = str(free_port())
    procs = []
    for node in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "NODE_RANK": str(node),
            "LOCAL_RANK": "0",
            "GLOO_SOCKET_IFNAME": "lo",
            "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        log = open(out / f"node{node}.log", "w")
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    for node, proc in enumerate(procs):
        code = proc.wait(timeout=300)
        assert code == 0, f"node {node} failed:\n{(out / f'node{node}.log').read_text()[-3000:]}"


def test_two_nodes_on_loopback_split_data_and_resume(primitive_shards, tmp_path):
    launch_two_nodes(primitive_shards, tmp_path, steps=6)
    ranks = [json.loads((tmp_path / f"rank{r}-from0.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == list(range(6)), "both ranks run the same steps"
    assert set(ranks[0]["ids"]).isdisjoint(ranks[1]["ids"]), "ranks read disjoint shards"
    last = list(tmp_path.rglob("last.ckpt"))
    assert len(last) == 1, "one checkpoint, written once"
    assert torch.load(last[0], map_location="cpu", weights_only=False)["global_step"] == 6

    launch_two_nodes(primitive_shards, tmp_path, steps=9, ckpt=last[0])
    resumed = [json.loads((tmp_path / f"rank{r}-from6.json").read_text()) for r in (0, 1)]
    assert resumed[0]["steps"] == resumed[1]["steps"] == [6, 7, 8], "the step count continues"
    (new,) = set(tmp_path.rglob("last.ckpt")) - set(last)
    assert torch.load(new, map_location="cpu", weights_only=False)["global_step"] == 9
