"""Checkpoint files: the one place that opens them, tells their kind apart and names what is wrong.

An autoencoder checkpoint (`AutoencoderModule`) carries the autoencoder's `class_path` in its
hyperparameters; a latent-diffusion checkpoint (`LatentDiffusion`) carries a backbone and the
frozen autoencoder's config. A missing, empty, unreadable or wrong-kind file is a `UserError` that
names the file. The first read maps the file into memory (`mmap`), so telling the kind costs no
copy of the weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

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


def load_autoencoder(path: str | os.PathLike, device: str = "cpu"):
    """The autoencoder of an `AutoencoderModule` checkpoint, in eval mode."""
    from native3d.training.autoencoder import AutoencoderModule

    read_checkpoint_of_kind(path, "autoencoder")
    return AutoencoderModule.load_from_checkpoint(path, map_location=device).autoencoder.eval()


def autoencoder_config(path: str | os.PathLike) -> dict:
    """The `class_path` / `init_args` of an autoencoder checkpoint's autoencoder."""
    return read_checkpoint_of_kind(path, "autoencoder")["hyper_parameters"]["autoencoder"]


def load_diffusion(path: str | os.PathLike, device: str = "cpu"):
    """A `LatentDiffusion` checkpoint, in eval mode."""
    from native3d.training.diffusion import LatentDiffusion

    read_checkpoint_of_kind(path, "diffusion")
    return LatentDiffusion.load_from_checkpoint(path, map_location=device).eval()


def weights_digest(module: nn.Module) -> str:
    """A SHA-256 of a module's parameters and buffers (names, dtypes, shapes, values): its identity,
    whatever file or path it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
