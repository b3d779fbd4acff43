"""Every model preset YAML builds its model and runs a forward at its shapes, on the meta device.

The GPU presets are hundreds of millions of parameters; on the meta device they cost nothing, so
a preset that cannot be built (a wrong argument, a backbone that does not take its autoencoder's
latent) fails here rather than on a cluster. A diffusion preset's frozen autoencoder comes from a
checkpoint in training; here it is built from its autoencoder preset YAML, which fixes the same
latent shape. The Hugging Face encoders the presets name cannot be downloaded in CI, so their
widths are checked against the known hidden sizes below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from native3d.autoencoders.bottleneck import autoencoder_from_config
from native3d.backbones import set_dit_tiny
from native3d.data.schema import Sizes
from native3d.training.autoencoder import AutoencoderModule
from native3d.training.diffusion import LatentDiffusion

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
AUTOENCODERS = sorted((CONFIGS / "autoencoder").glob("*.yaml"))
DIFFUSION = sorted((CONFIGS / "diffusion").glob("*.yaml"))
GPU_DIFFUSION = [p for p in DIFFUSION if not p.stem.endswith("_tiny")]
IMAGE_OVERRIDE = CONFIGS / "conditioning" / "dinov2.yaml"
# Hidden sizes (tokens and pooled vector) of the encoders a preset may name (their config.json).
HIDDEN_SIZE = {
    "openai/clip-vit-large-patch14": 768,  # CLIP ViT-L/14 text tower
    "facebook/dinov2-base": 768,
    "facebook/dinov2-large": 1024,
}
MINILM = 384  # the packaged default text encoder (name_or_path unset)


def model_args(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["model"]["init_args"]


def instantiate(config: dict) -> nn.Module:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "module", fail_untyped=False)
    return parser.instantiate(parser.parse_object({"module": config})).module


def autoencoder_yaml(diffusion: Path) -> Path:
    """The autoencoder preset whose latent a diffusion preset's checkpoint path names."""
    suffix = "_tiny" if diffusion.stem.endswith("_tiny") else ""
    return CONFIGS / "autoencoder" / f"{Path(model_args(diffusion)['autoencoder']).stem}{suffix}.yaml"


def with_image_override(args: dict) -> dict:
    override = model_args(IMAGE_OVERRIDE)
    backbone = {
        **args["backbone"],
        "init_args": {**args["backbone"]["init_args"], **override["backbone"]["init_args"]},
    }
    return {**args, "conditioner": override["conditioner"], "backbone": backbone}


@pytest.mark.parametrize("path", AUTOENCODERS, ids=lambda p: p.stem)
def test_autoencoder_preset_builds_and_runs_on_meta(path):
    config = model_args(path)["autoencoder"]
    resolution = config["init_args"].get("resolution", Sizes().grid_resolution)
    with torch.device("meta"):
        autoencoder = instantiate(config)
        n, r = Sizes().surface_points, resolution
        batch = {
            "surface": torch.randn(2, n, 6),
            "sharp": torch.randn(2, Sizes().sharp_points, 6),
            "sdf": torch.randn(2, r, r, r),
            "triplane": torch.randn(2, 3, 2, r, r),
            "query": torch.randn(2, 4096, 4),
        }
        points, _ = autoencoder.queries_from_batch(batch)
        pred, posterior = autoencoder(autoencoder.inputs_from_batch(batch), points)
    assert pred.shape == (2, 4096)
    assert tuple(posterior.mode().shape) == (2, *autoencoder.latent_shape)


def run_backbone(args: dict, latent_shape: tuple[int, ...]) -> torch.Tensor:
    init = args["backbone"]["init_args"]
    with torch.device("meta"):
        backbone = instantiate(args["backbone"])
        x = torch.randn(2, *latent_shape)
        cond = {
            "tokens": torch.randn(2, 77, init["context_dim"]),
            "mask": torch.ones(2, 77, dtype=torch.bool),
            "pooled": torch.randn(2, init["pooled_dim"]),
        }
        out = backbone(x, torch.rand(2), cond)
    assert out.shape == x.shape
    return out


@pytest.mark.parametrize("path", DIFFUSION, ids=lambda p: p.stem)
def test_diffusion_preset_backbone_takes_its_autoencoders_latent_on_meta(path):
    args = model_args(path)
    with torch.device("meta"):
        latent_shape = tuple(instantiate(model_args(autoencoder_yaml(path))["autoencoder"]).latent_shape)
    run_backbone(args, latent_shape)


@pytest.mark.parametrize("path", GPU_DIFFUSION, ids=lambda p: p.stem)
def test_gpu_diffusion_preset_runs_with_the_image_override(path):
    with torch.device("meta"):
        latent_shape = tuple(instantiate(model_args(autoencoder_yaml(path))["autoencoder"]).latent_shape)
    run_backbone(with_image_override(model_args(path)), latent_shape)


@pytest.mark.parametrize("path", DIFFUSION, ids=lambda p: p.stem)
def test_condition_widths_match_the_named_encoder(path):
    variants = [model_args(path)]
    if path in GPU_DIFFUSION:
        variants.append(with_image_override(variants[0]))
    for args in variants:
        encoder = args["conditioner"]["init_args"]["encoder"]
        name = encoder.get("init_args", {}).get("name_or_path")
        width = MINILM if name is None else HIDDEN_SIZE[name]
        init = args["backbone"]["init_args"]
        assert (init["context_dim"], init["pooled_dim"]) == (width, width), f"{path.name}: {name}"


@pytest.mark.parametrize("path", GPU_DIFFUSION, ids=lambda p: p.stem)
def test_gpu_diffusion_presets_are_hundreds_of_millions(path):
    with torch.device("meta"):
        backbone = instantiate(model_args(path)["backbone"])
    assert 2e8 <= sum(p.numel() for p in backbone.parameters()) <= 1e9


def test_compile_option_compiles_in_place_and_keeps_checkpoint_keys():
    config = yaml.safe_load((CONFIGS / "autoencoder" / "vecset_tiny.yaml").read_text())["model"]["init_args"]
    module = AutoencoderModule(autoencoder_from_config(config["autoencoder"]), compile=True)
    assert module.autoencoder._compiled_call_impl is not None
    plain_ae = AutoencoderModule(autoencoder_from_config(config["autoencoder"]))
    assert plain_ae.autoencoder._compiled_call_impl is None
    assert list(module.state_dict()) == list(plain_ae.state_dict()), "compiling keeps the checkpoint keys"

    diffusion = LatentDiffusion(
        set_dit_tiny(in_channels=11),
        autoencoder="unused",
        autoencoder_config=config["autoencoder"],
        compile=True,
    )
    assert diffusion.backbone._compiled_call_impl is not None
    plain = LatentDiffusion(
        set_dit_tiny(in_channels=11), autoencoder="unused", autoencoder_config=config["autoencoder"]
    )
    assert plain.backbone._compiled_call_impl is None
    assert list(diffusion.state_dict()) == list(plain.state_dict()), "compiling keeps the checkpoint keys"
