"""Checkpoint files: the one place that opens them, tells their kind apart and names what is wrong.

An autoencoder checkpoint (`AutoencoderModule`) carries the autoencoder's `class_path` in its
hyperparameters; a latent-diffusion checkpoint (`LatentDiffusion`) carries a backbone and the
frozen autoencoder's config. A missing, empty, unreadable or wrong-kind file is a `UserError` that
names the file. A file is read once: mapped into memory (`mmap`), its kind told from its
hyperparameters, and the module built from that same dict.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.core.saving import _load_state  # load_from_checkpoint's own, minus the file read
from torch import nn

from native3d.autoencoders.bottleneck import LatentAutoencoder, autoencoder_from_config
from native3d.errors import InputError, MissingFileError

Kind = Literal["autoencoder", "diffusion"]
WHAT = {
    "autoencoder": "an autoencoder checkpoint (`native3d fit` with a configs/autoencoder YAML)",
    "diffusion": "a latent-diffusion checkpoint (`native3d fit` with a configs/diffusion YAML)",
}


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's dict, its tensors memory-mapped; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: an empty file, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # torch.load raises anything from UnpicklingError to RuntimeError
        raise InputError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"{path}: not a Lightning checkpoint (it holds no state_dict)")
    return checkpoint


def checkpoint_kind(checkpoint: dict) -> Kind | None:
    hparams = checkpoint.get("hyper_parameters", {})
    if "backbone" in hparams and "autoencoder_config" in hparams:
        return "diffusion"
    if isinstance(hparams.get("autoencoder"), dict) and "class_path" in hparams["autoencoder"]:
        return "autoencoder"
    return None


def read_checkpoint_of_kind(path: str | os.PathLike, kind: Kind) -> dict:
    checkpoint = read_checkpoint(path)
    found = checkpoint_kind(checkpoint)
    if found != kind:
        instead = (
            f"it is {WHAT[found].split(' (')[0]}" if found else "its hyperparameters describe neither kind"
        )
        raise InputError(f"{path}: not {WHAT[kind]}; {instead}")
    return checkpoint


def load_autoencoder(path: str | os.PathLike, device: str = "cpu") -> LatentAutoencoder:
    """The autoencoder of an `AutoencoderModule` checkpoint file, in eval mode."""
    return autoencoder_of(read_checkpoint_of_kind(path, "autoencoder"), device)


def autoencoder_of(checkpoint: dict, device: str = "cpu") -> LatentAutoencoder:
    """The autoencoder of a read autoencoder checkpoint, in eval mode, its latent statistics included."""
    autoencoder = autoencoder_from_config(autoencoder_config(checkpoint))
    prefix = "autoencoder."
    weights = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    autoencoder.load_state_dict(weights)
    return autoencoder.to(device).eval()


def autoencoder_config(checkpoint: dict) -> dict:
    """The `class_path` / `init_args` of a read autoencoder checkpoint's autoencoder."""
    return checkpoint["hyper_parameters"]["autoencoder"]


def build_module(cls: type[L.LightningModule], checkpoint: dict, device: str) -> L.LightningModule:
    """`cls.load_from_checkpoint` over a checkpoint already read: the module its hyperparameters
    describe (LightningCLI's `class_path`s included), its `on_load_checkpoint`, its weights."""
    return _load_state(cls, checkpoint, strict=True).to(device).eval()


def weights_digest(module: nn.Module) -> str:
    """A SHA-256 of a module's parameters and buffers (names, dtypes, shapes, values): its identity,
    whatever file or path it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
