"""Every YAML under configs/ parses against the classes it names (types and argument names),
and composes the way the README shows; the tiny model presets also instantiate and run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL = sorted(CONFIGS.rglob("*.yaml"))


def section_parser(section: str) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    if section == "trainer":
        parser.add_class_arguments(L.Trainer, "trainer", fail_untyped=False)
    elif section == "model":
        parser.add_subclass_arguments(L.LightningModule, "model", fail_untyped=False)
    else:
        parser.add_subclass_arguments(L.LightningDataModule, "data", fail_untyped=False)
    return parser


def test_configs_exist():
    assert {p.parent.name for p in ALL} >= {"autoencoder", "data", "diffusion", "trainer", "conditioning"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(path):
    config = yaml.safe_load(path.read_text())
    assert set(config) <= {"model", "data", "trainer", "seed_everything"}, f"{path}: unknown top-level keys"
    if path.parent.name == "conditioning":  # partial overrides: parse composed onto a full model config
        config = compose(yaml.safe_load((CONFIGS / "diffusion" / "set_dit_tiny.yaml").read_text()), config)
    for section, value in config.items():
        if section == "seed_everything":
            continue
        parsed = section_parser(section).parse_object({section: value})
        assert parsed[section] is not None


def compose(base: dict, override: dict) -> dict:
    """Nested override as jsonargparse applies later --config files: a new class_path replaces."""
    if override.get("class_path", base.get("class_path")) != base.get("class_path"):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            compose(base[key], value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return merged


def instantiate(config: dict):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(torch.nn.Module, "module", fail_untyped=False)
    return parser.instantiate_classes(parser.parse_object({"module": config})).module


@pytest.mark.parametrize("path", sorted((CONFIGS / "autoencoder").glob("*.yaml")), ids=lambda p: p.name)
def test_autoencoder_configs_build_their_model(path):
    autoencoder = instantiate(yaml.safe_load(path.read_text())["model"]["init_args"]["autoencoder"])
    assert len(autoencoder.latent_shape) >= 2


@pytest.mark.parametrize("path", sorted((CONFIGS / "diffusion").glob("*_tiny.yaml")), ids=lambda p: p.name)
def test_tiny_diffusion_backbones_fit_their_autoencoders_latents(path):
    model = yaml.safe_load(path.read_text())["model"]["init_args"]
    ae_config = yaml.safe_load(
        (CONFIGS / "autoencoder" / f"{Path(model['autoencoder']).stem}_tiny.yaml").read_text()
    )
    autoencoder = instantiate(ae_config["model"]["init_args"]["autoencoder"])
    backbone = instantiate(model["backbone"])
    x = torch.randn(2, *autoencoder.latent_shape)
    assert backbone(x, torch.rand(2), None).shape == x.shape
