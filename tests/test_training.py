"""Autoencoder training through `native3d fit`: the loss falls, a checkpoint reloads and encodes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from native3d.cli import main as native3d
from native3d.data.shards import iter_samples, load_index
from native3d.encode import encode_shard_set
from native3d.training.autoencoder import AutoencoderModule
from native3d.training.checks import NonFiniteLossError, check_finite

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def fit(model_config: str, shards: Path, out: Path, steps: int, extra: list[str] = ()) -> Path:
    native3d([
        "fit", "--config", str(CONFIGS / "autoencoder" / model_config), "--config", str(CONFIGS / "trainer" / "cpu.yaml"),
        "--data", "native3d.data.datamodule.ShardDataModule", "--data.train", str(shards), "--data.val_shards", "1",
        "--data.batch_size", "4", "--data.num_workers", "0", "--data.query_points", "512", "--data.shuffle_buffer", "8",
        "--data.batches_per_epoch", str(steps), "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
        "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
        "--model.init_args.stats_batches", "2", "--model.init_args.mesh_resolution", "32", "--seed_everything", "0", *extra,
    ])  # fmt: skip
    return next(out.rglob("last.ckpt"))


def train_losses(out: Path) -> list[float]:
    rows = csv.DictReader(open(next(out.rglob("metrics.csv"))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.parametrize("config", ["vecset_tiny.yaml", "grid_tiny.yaml", "triplane_tiny.yaml"])
def test_fit_lowers_the_loss_and_the_checkpoint_reloads_and_encodes(config, primitive_shards, tmp_path):
    ckpt = fit(config, primitive_shards, tmp_path / "run", steps=40)
    losses = train_losses(tmp_path / "run")
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert list((tmp_path / "run").rglob("config.yaml")), "the resolved config is saved with the run"

    module = AutoencoderModule.load_from_checkpoint(ckpt, map_location="cpu")
    stats = module.autoencoder.latent_std
    assert not torch.equal(stats, torch.ones_like(stats)), "latent statistics travel in the checkpoint"

    info = encode_shard_set(str(ckpt), str(primitive_shards), str(tmp_path / "latents"), batch_size=8)
    assert info["num_samples"] == 24 and tuple(info["latent_shape"]) == module.autoencoder.latent_shape
    assert load_index(tmp_path / "latents").kind == "latent"
    again = encode_shard_set(str(ckpt), str(primitive_shards), str(tmp_path / "latents"), batch_size=8)
    assert again["shards"] == info["shards"], "a rerun reuses the finished shards"


def test_encode_refuses_a_folder_of_other_latents(primitive_shards, tmp_path):
    ckpt = fit("triplane_tiny.yaml", primitive_shards, tmp_path / "a", steps=4)
    encode_shard_set(str(ckpt), str(primitive_shards), str(tmp_path / "latents"))
    other = tmp_path / "b.ckpt"
    other.write_bytes(ckpt.read_bytes())
    with pytest.raises(ValueError, match="another --out"):
        encode_shard_set(str(other), str(primitive_shards), str(tmp_path / "latents"))


def test_a_non_finite_loss_names_the_batch_objects():
    with pytest.raises(NonFiniteLossError, match="obj-a, obj-b"):
        check_finite(torch.tensor(float("nan")), ["obj-a", "obj-b"], "train", 3)


def test_encode_names_a_missing_checkpoint(primitive_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        encode_shard_set(str(tmp_path / "missing.ckpt"), str(primitive_shards), str(tmp_path / "out"))


def test_fit_with_muon_lowers_the_loss_checkpoints_both_halves_and_resumes(primitive_shards, tmp_path):
    muon = ["--model.init_args.optimizer", "muon"]
    ckpt = fit("vecset_tiny.yaml", primitive_shards, tmp_path / "run", steps=40, extra=muon)
    losses = train_losses(tmp_path / "run")
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    (saved,) = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer_states"]
    assert saved["muon"]["state"] and saved["adamw"]["state"], "the moments of both halves are saved"

    resumed = fit("vecset_tiny.yaml", primitive_shards, tmp_path / "resumed", steps=44, extra=[*muon, "--ckpt_path", str(ckpt)])
    assert torch.load(resumed, map_location="cpu", weights_only=False)["global_step"] == 44
