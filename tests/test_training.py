"""Autoencoder training through `native3d fit`: the loss falls, a checkpoint reloads and encodes."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_damaged_shards import load_index_without_sizes, overwrite_a_header

from native3d.cli import main as native3d
from native3d.data.datamodule import LatentDataModule
from native3d.data.schema import DamagedShardError
from native3d.data.shards import iter_samples, load_index, shard_keys
from native3d.encode import encode_shard_set
from native3d.errors import InputError
from native3d.training.autoencoder import AutoencoderModule
from native3d.training.checks import NonFiniteLossError, check_finite

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def fit(model_config: str, shards: Path, out: Path, steps: int, extra: list[str] = ()) -> Path:
    assert (
        native3d(
            [
                "fit",
                "--config",
                str(CONFIGS / "autoencoder" / model_config),
                "--config",
                str(CONFIGS / "trainer" / "cpu.yaml"),
                "--data",
                "native3d.data.datamodule.ShardDataModule",
                "--data.train",
                str(shards),
                "--data.val_shards",
                "1",
                "--data.batch_size",
                "4",
                "--data.num_workers",
                "0",
                "--data.query_points",
                "512",
                "--data.shuffle_buffer",
                "8",
                "--data.batches_per_epoch",
                str(steps),
                "--trainer.max_steps",
                str(steps),
                "--trainer.val_check_interval",
                str(steps),
                "--trainer.default_root_dir",
                str(out),
                "--trainer.logger.init_args.save_dir",
                str(out),
                "--model.init_args.stats_batches",
                "2",
                "--model.init_args.mesh_resolution",
                "32",
                "--seed_everything",
                "0",
                *extra,
            ]
        )
        == 0
    )
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
    latents = list(iter_samples(tmp_path / "latents"))
    assert len(latents) == 24 and all(
        s["latent_mean.npy"].shape == module.autoencoder.latent_shape for s in latents
    ), "a latent set reads back through the same reader as a shape set"
    again = encode_shard_set(str(ckpt), str(primitive_shards), str(tmp_path / "latents"), batch_size=8)
    assert again["shards"] == info["shards"], "a rerun reuses the finished shards"


def test_encode_resumes_only_with_the_same_weights_and_re_encodes_a_damaged_shard(primitive_shards, tmp_path):
    ckpt = fit("triplane_tiny.yaml", primitive_shards, tmp_path / "a", steps=4)
    latents = tmp_path / "latents"
    first = encode_shard_set(str(ckpt), str(primitive_shards), str(latents))
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    assert encode_shard_set(str(copy), str(primitive_shards), str(latents))["shards"] == first["shards"], (
        "the same weights under another path are the same autoencoder"
    )

    shard = latents / first["shards"][1]["url"]
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(DamagedShardError, match=shard.name):
        load_index(latents)
    again = encode_shard_set(str(ckpt), str(primitive_shards), str(latents))
    assert again["shards"] == first["shards"] and len(list(iter_latent_keys(latents))) == 24, (
        "the cut shard is encoded again"
    )
    overwrite_a_header(shard)
    with pytest.raises(
        DamagedShardError, match=rf"{shard.name}: its index records 4 samples, the tar holds 2"
    ):
        list(
            LatentDataModule(
                str(load_index_without_sizes(latents).root), val=str(latents), num_workers=0
            ).val_dataloader()
        )

    moved_on = torch.load(
        ckpt, map_location="cpu", weights_only=False
    )  # what a `last.ckpt` that trained on holds
    name = next(
        k
        for k in moved_on["state_dict"]
        if k.startswith("autoencoder.") and moved_on["state_dict"][k].is_floating_point()
    )
    moved_on["state_dict"][name] = moved_on["state_dict"][name] + 1.0
    torch.save(moved_on, ckpt)
    with pytest.raises(
        InputError,
        match=rf"holds latents of autoencoder .*weights .*autoencoder_weights differs.*delete {latents}",
    ):
        encode_shard_set(str(ckpt), str(primitive_shards), str(latents))


def iter_latent_keys(folder: Path):
    index = load_index(folder)
    for url, _ in index.shards:
        yield from shard_keys(url)


def test_a_non_finite_loss_names_the_batch_objects():
    with pytest.raises(NonFiniteLossError, match="obj-a, obj-b"):
        check_finite(torch.tensor(float("nan")), ["obj-a", "obj-b"], "train", 3)


def test_encode_names_a_missing_checkpoint(primitive_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        encode_shard_set(str(tmp_path / "missing.ckpt"), str(primitive_shards), str(tmp_path / "out"))


def test_encode_tokens_writes_latents_of_that_many_tokens_and_is_refused_for_a_grid(
    primitive_shards, tmp_path
):
    tokens = ["--model.init_args.autoencoder.init_args.train_tokens", "[16, 32, 64]"]
    ckpt = fit("vecset_tiny.yaml", primitive_shards, tmp_path / "vecset", steps=4, extra=tokens)
    latents = tmp_path / "latents"
    command = ["encode", "--ckpt", str(ckpt), "--data", str(primitive_shards), "--out", str(latents)]
    assert native3d([*command, "--tokens", "16", "--batch-size", "8"]) == 0
    index = load_index(latents)
    assert index.info["latent_shape"] == [16, 11]
    batch = next(iter(LatentDataModule(str(latents), val=str(latents), num_workers=0).val_dataloader()))
    assert batch["latent_mean"].shape[1:] == (16, 11), "the latent loader reads the recorded shape"
    with pytest.raises(InputError, match="latent_shape differs"):
        encode_shard_set(str(ckpt), str(primitive_shards), str(latents), tokens=32)

    grid = fit("grid_tiny.yaml", primitive_shards, tmp_path / "grid", steps=2)
    with pytest.raises(InputError, match=r"--tokens 16: .*GridVAE.*only a VecSet"):
        encode_shard_set(str(grid), str(primitive_shards), str(tmp_path / "grid-latents"), tokens=16)
    assert not (tmp_path / "grid-latents").exists()


def test_fit_with_muon_lowers_the_loss_checkpoints_both_halves_and_resumes(primitive_shards, tmp_path):
    muon = ["--model.init_args.optimizer", "muon"]
    ckpt = fit("vecset_tiny.yaml", primitive_shards, tmp_path / "run", steps=40, extra=muon)
    losses = train_losses(tmp_path / "run")
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    (saved,) = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer_states"]
    assert saved["muon"]["state"] and saved["adamw"]["state"], "the moments of both halves are saved"

    resumed = fit(
        "vecset_tiny.yaml",
        primitive_shards,
        tmp_path / "resumed",
        steps=44,
        extra=[*muon, "--ckpt_path", str(ckpt)],
    )
    assert torch.load(resumed, map_location="cpu", weights_only=False)["global_step"] == 44
