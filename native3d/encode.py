"""`native3d encode`: a shape shard set to a latent shard set with a trained autoencoder.

Output shard i holds the latents of input shard i, so a shard is the unit of work: each is written
under a temporary name and renamed when complete, and a rerun skips the shards that exist and hold
as many samples as their input shard (one that does not is encoded again). A manifest records the
autoencoder by the digest of its weights, so a rerun whose checkpoint changed (a `last.ckpt` that
trained on) is refused rather than mixing two latent spaces in one set. `tokens` encodes a VecSet
autoencoder at another token count than its `num_latents` (one trained with `train_tokens`); the
latent shape in the manifest and the index is then (tokens, C).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from native3d.autoencoders.vecset import VecSetVAE
from native3d.checkpoints import autoencoder_of, read_checkpoint_of_kind, weights_digest
from native3d.data.datamodule import collate, sample_to_tensors
from native3d.data.schema import SCHEMA_VERSION, DamagedShardError
from native3d.data.shards import (
    AtomicShardWriter,
    batched,
    iter_samples,
    load_index,
    shard_entry,
    shard_keys,
    write_index,
)
from native3d.errors import InputError
from native3d.files import write_json

log = logging.getLogger(__name__)

IDENTITY = ("autoencoder_weights", "data", "latent_shape")  # what a rerun into the same folder must match


@torch.no_grad()
def encode_shard(
    autoencoder, index, url: str, target: Path, batch_size: int, tokens: int | None = None
) -> int:
    writer = AtomicShardWriter(target)
    device = autoencoder.latent_mean.device
    count = 0
    for samples in batched(iter_samples(index, [url]), batch_size):
        batch = collate([sample_to_tensors(s, None, np.random.default_rng(0)) for s in samples])
        inputs = autoencoder.inputs_from_batch(
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        )
        posterior = (
            autoencoder.encode(inputs) if tokens is None else autoencoder.encode(inputs, num_tokens=tokens)
        )
        mean, std = posterior.mean.float().cpu().numpy(), posterior.std.float().cpu().numpy()
        for i, sample in enumerate(samples):
            writer.write(
                sample["__key__"],
                {
                    "latent_mean.npy": mean[i],
                    "latent_std.npy": std[i],
                    "views.npy": sample["views.npy"],
                    "caption.txt": sample["caption.txt"],
                    "meta.json": sample["meta.json"],
                },
            )
            count += 1
    writer.commit()
    return count


def encode_shard_set(
    ckpt: str, data: str, out: str, batch_size: int = 16, device: str = "cpu", tokens: int | None = None
) -> dict:
    checkpoint = read_checkpoint_of_kind(ckpt, "autoencoder")
    autoencoder = autoencoder_of(checkpoint, device)
    if tokens is not None and not isinstance(autoencoder, VecSetVAE):
        raise InputError(
            f"--tokens {tokens}: {ckpt} holds a {type(autoencoder).__name__}, whose latent has a fixed shape; "
            "only a VecSet autoencoder encodes to a chosen token count"
        )
    index = load_index(data)
    out = Path(out)
    manifest = {
        "autoencoder": str(Path(ckpt).resolve()),
        "autoencoder_weights": weights_digest(autoencoder),
        "autoencoder_step": checkpoint.get("global_step"),
        "data": str(index.root.resolve()),
        "latent_shape": latent_shape(autoencoder, tokens),
    }
    check_manifest(out / "encode.json", manifest)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "encode.json", manifest)
    for leftover in out.glob("*.tar.tmp"):
        leftover.unlink()
    shards = []
    for url, count in tqdm(index.shards, desc="encode", unit="shard"):
        target = out / Path(url).name
        if not encoded_already(target, count):
            encode_shard(autoencoder, index, url, target, batch_size, tokens)
        shards.append(shard_entry(target, count))
    info = {
        "schema_version": SCHEMA_VERSION,
        "kind": "latent",
        **manifest,
        "shards": shards,
        "num_samples": sum(s["count"] for s in shards),
        "latent_normalization": latent_normalization(autoencoder),
    }
    write_index(out, info)
    return info


def latent_shape(autoencoder, tokens: int | None) -> list[int]:
    """The shape of one latent: the autoencoder's, with `tokens` as its token count where given."""
    shape = list(autoencoder.latent_shape)
    return shape if tokens is None else [tokens, *shape[1:]]


def encoded_already(target: Path, count: int) -> bool:
    """Whether an output shard of an earlier run exists and holds its input shard's `count` samples."""
    if not target.exists():
        return False
    try:
        found = len(shard_keys(target))
    except DamagedShardError as error:
        log.warning("encoding %s again: %s", target, error)
        return False
    if found != count:
        log.warning(
            "encoding %s again: it holds %d latents, its input shard %d samples", target, found, count
        )
    return found == count


def latent_normalization(autoencoder) -> dict:
    return {"mean": autoencoder.latent_mean.tolist(), "std": autoencoder.latent_std.tolist()}


def check_manifest(path: Path, manifest: dict) -> None:
    """Refuses a folder that holds latents of another autoencoder (by weights) or another shard set."""
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    for key in IDENTITY:
        if previous.get(key) != manifest[key]:
            raise InputError(
                f"{path.parent} holds latents of {describe(previous)}, not of {describe(manifest)} (its {key} differs); "
                f"use another --out, or delete {path.parent} to encode from scratch"
            )


def describe(manifest: dict) -> str:
    weights = (manifest.get("autoencoder_weights") or "unrecorded")[:12]
    return f"autoencoder {manifest.get('autoencoder')} (weights {weights}, step {manifest.get('autoencoder_step')}) on {manifest.get('data')}"


def write_manifest(path: Path, manifest: dict) -> None:
    if path.exists():
        return
    write_json(path, manifest)
