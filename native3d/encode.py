"""`native3d encode`: a shape shard set to a latent shard set with a trained autoencoder.

Output shard i holds the latents of input shard i, so a shard is the unit of work: each is written
under a temporary name and renamed when complete, and a rerun skips the shards that exist. A
manifest records the checkpoint, so a rerun with another autoencoder is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from native3d.data.datamodule import collate, sample_to_tensors
from native3d.data.schema import SCHEMA_VERSION
from native3d.data.shards import AtomicShardWriter, iter_samples, load_index, shard_keys, write_index

log = logging.getLogger(__name__)


def load_autoencoder(ckpt: str | os.PathLike, device: str = "cpu"):
    """The autoencoder of an `AutoencoderModule` checkpoint, in eval mode."""
    from native3d.training.autoencoder import AutoencoderModule

    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint")
    try:
        module = AutoencoderModule.load_from_checkpoint(ckpt, map_location=device)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{ckpt} is not an autoencoder checkpoint: {type(error).__name__}: {error}") from error
    return module.autoencoder.eval()


def batched(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    while batch := list(islice(samples, size)):
        yield batch


@torch.no_grad()
def encode_shard(autoencoder, index, url: str, target: Path, batch_size: int) -> int:
    writer = AtomicShardWriter(target)
    device = autoencoder.latent_mean.device
    count = 0
    for samples in batched(iter_samples(index, [url]), batch_size):
        batch = collate([sample_to_tensors(s, None, np.random.default_rng(0)) for s in samples])
        inputs = autoencoder.inputs_from_batch({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        posterior = autoencoder.encode(inputs)
        mean, std = posterior.mean.float().cpu().numpy(), posterior.std.float().cpu().numpy()
        for i, sample in enumerate(samples):
            writer.write(sample["__key__"], {
                "latent_mean.npy": mean[i], "latent_std.npy": std[i], "views.npy": sample["views.npy"],
                "caption.txt": sample["caption.txt"], "meta.json": sample["meta.json"],
            })  # fmt: skip
            count += 1
    writer.commit()
    return count


def encode_shard_set(ckpt: str, data: str, out: str, batch_size: int = 16, device: str = "cpu") -> dict:
    autoencoder = load_autoencoder(ckpt, device)
    index = load_index(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"autoencoder": str(Path(ckpt).resolve()), "data": str(index.root.resolve()), "latent_shape": list(autoencoder.latent_shape)}
    check_manifest(out / "encode.json", manifest)
    for leftover in out.glob("*.tar.tmp"):
        leftover.unlink()
    shards = []
    for url, _ in tqdm(index.shards, desc="encode", unit="shard"):
        target = out / Path(url).name
        count = encode_shard(autoencoder, index, url, target, batch_size) if not target.exists() else None
        shards.append({"url": target.name, "count": count if count is not None else len(shard_keys(target))})
    info = {"schema_version": SCHEMA_VERSION, "kind": "latent", **manifest, "shards": shards,
            "num_samples": sum(s["count"] for s in shards), "latent_normalization": latent_normalization(autoencoder)}  # fmt: skip
    write_index(out, info)
    return info


def latent_normalization(autoencoder) -> dict:
    return {"mean": autoencoder.latent_mean.tolist(), "std": autoencoder.latent_std.tolist()}


def check_manifest(path: Path, manifest: dict) -> None:
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != manifest:
            raise ValueError(f"{path}: this folder holds latents of {previous}, not {manifest}; use another --out")
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
