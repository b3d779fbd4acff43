"""Latent diffusion end to end per backbone on CPU: fit a few steps, reload, sample, write meshes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import CONFIGS, fit

from native3d.cli import main as native3d
from native3d.data.shards import iter_samples
from native3d.encode import encode_shard_set
from native3d.errors import InputError
from native3d.sampling import SampleSettings, labelled_sheet, sample_to_folder
from native3d.training.diffusion import load_diffusion

PAIRS = {  # diffusion config -> the autoencoder config whose latents it denoises
    "set_dit_tiny.yaml": "vecset_tiny.yaml",
    "unet3d_tiny.yaml": "grid_tiny.yaml",
    "triplane_unet_tiny.yaml": "triplane_tiny.yaml",
}


@pytest.fixture(scope="module")
def latent_sets(primitive_shards, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Per autoencoder config: (checkpoint, latent shard set), trained briefly on the primitives."""
    sets = {}
    for ae_config in sorted(set(PAIRS.values())):
        root = tmp_path_factory.mktemp(ae_config.split(".")[0])
        ckpt = fit(ae_config, primitive_shards, root / "run", steps=60)
        encode_shard_set(str(ckpt), str(primitive_shards), str(root / "latents"))
        sets[ae_config] = (ckpt, root / "latents")
    return sets


def fit_diffusion(
    config: str, ae: Path, latents: Path, out: Path, steps: int, extra: tuple[str, ...] = ()
) -> Path:
    assert (
        native3d(
            [
                "fit",
                "--config",
                str(CONFIGS / "diffusion" / config),
                *extra,
                "--config",
                str(CONFIGS / "trainer" / "cpu.yaml"),
                "--config",
                str(CONFIGS / "data" / "latents.yaml"),
                "--data.train",
                str(latents),
                "--data.batch_size",
                "4",
                "--data.num_workers",
                "0",
                "--data.batches_per_epoch",
                str(steps),
                "--model.init_args.autoencoder",
                str(ae),
                "--model.init_args.sample_steps",
                "4",
                "--model.init_args.mesh_resolution",
                "32",
                "--trainer.max_steps",
                str(steps),
                "--trainer.val_check_interval",
                str(steps),
                "--trainer.default_root_dir",
                str(out),
                "--trainer.logger.init_args.save_dir",
                str(out),
                "--seed_everything",
                "0",
            ]
        )
        == 0
    )
    return next(out.rglob("last.ckpt"))


@pytest.mark.parametrize("config", sorted(PAIRS))
def test_fit_reload_sample_writes_meshes(config, latent_sets, tmp_path):
    ae, latents = latent_sets[PAIRS[config]]
    ckpt = fit_diffusion(config, ae, latents, tmp_path / "run", steps=8)
    model = load_diffusion(ckpt)
    assert model.latent_shape == tuple(json.loads((latents / "index.json").read_text())["latent_shape"])
    assert not any(
        k.startswith("conditioner.encoder.") for k in torch.load(ckpt, weights_only=False)["state_dict"]
    ), "the frozen text encoder is re-loaded by name, not stored"
    settings = SampleSettings(
        ckpt=str(ckpt), prompts=["a mug with a handle"], num=3, steps=4, resolution=32, format="obj"
    )
    summary = sample_to_folder(settings, tmp_path / "samples")
    assert len(summary["samples"]) == 3
    written = [s for s in summary["samples"] if s["file"]]
    for record in summary["samples"]:
        assert record["file"] or "no surface" in record["error"], "every sample is a mesh or a named failure"
    for record in written:
        assert (tmp_path / "samples" / record["file"]).stat().st_size > 0
        assert (tmp_path / "samples" / record["render"]).exists()
    recorded = json.loads((tmp_path / "samples" / "samples.json").read_text())["settings"]["guidance"]
    assert recorded == model.hparams.guidance, "the checkpoint's own guidance, named in the record"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    (line,) = [row for row in err.splitlines() if ": error: " in row]
    assert "Traceback" not in err
    return line


def test_prompt_to_an_unconditional_model_is_refused(latent_sets, tmp_path, capsys):
    ae, latents = latent_sets["vecset_tiny.yaml"]
    uncond = str(CONFIGS / "conditioning" / "unconditional.yaml")
    ckpt = fit_diffusion(
        "set_dit_tiny.yaml", ae, latents, tmp_path / "run", steps=2, extra=("--config", uncond)
    )
    with pytest.raises(InputError, match="unconditional model"):
        sample_to_folder(SampleSettings(ckpt=str(ckpt), prompts=["a chair"]), tmp_path / "out")
    capsys.readouterr()
    assert (
        native3d(["sample", "--ckpt", str(ckpt), "--prompt", "a chair", "--out", str(tmp_path / "out")]) == 2
    )
    assert "unconditional model; it takes no --prompt" in one_error_line(capsys)
    summary = sample_to_folder(
        SampleSettings(ckpt=str(ckpt), num=2, steps=2, resolution=32), tmp_path / "out"
    )
    assert len(summary["samples"]) == 2
    assert summary["settings"]["sampler"] == "euler", "the default sampler of rectified flow, named"


def test_the_sampler_is_chosen_by_name_recorded_and_must_fit_the_objective(
    latent_sets, primitive_shards, tmp_path, capsys
):
    ae, latents = latent_sets["vecset_tiny.yaml"]
    uncond = ("--config", str(CONFIGS / "conditioning" / "unconditional.yaml"))
    ckpt = fit_diffusion(  # sample_steps 4
        "set_dit_tiny.yaml",
        ae,
        latents,
        tmp_path / "run",
        steps=2,
        extra=(*uncond, "--model.init_args.sampler", "heun", "--model.init_args.guidance", "1.5"),
    )
    assert load_diffusion(ckpt).sampler == "heun", "a sampler set in the YAML travels in the checkpoint"
    out = tmp_path / "samples"
    argv = ["sample", "--ckpt", str(ckpt), "--num", "1", "--resolution", "32", "--out", str(out)]
    assert native3d(argv) == 0
    settings = json.loads((out / "samples.json").read_text())["settings"]
    assert (settings["sampler"], settings["steps"], settings["guidance"]) == ("heun", 4, 1.5), (
        "what the command does not name, the checkpoint's own YAML decides, and the record names it"
    )
    assert native3d([*argv, "--sampler", "euler", "--steps", "3", "--guidance", "2"]) == 0
    settings = json.loads((out / "samples.json").read_text())["settings"]
    assert (settings["sampler"], settings["steps"], settings["guidance"]) == ("euler", 3, 2.0)
    argv += ["--steps", "2"]
    capsys.readouterr()
    assert native3d([*argv, "--sampler", "ddim"]) == 2
    assert (
        "sampler 'ddim' does not fit a model trained with rectified flow; choose euler or heun"
        in one_error_line(capsys)
    )
    metrics = evaluate_checkpoint_cli(
        ckpt, primitive_shards, tmp_path / "eval", "--num", "2", "--sampler", "euler"
    )
    assert metrics["settings"]["sampler_settings"]["sampler"] == "euler", "the evaluation names its sampler"
    assert (
        json.loads((tmp_path / "eval" / "samples" / "samples.json").read_text())["settings"]["sampler"]
        == "euler"
    )
    capsys.readouterr()
    assert (
        native3d(
            [
                "fit",
                "--config",
                str(CONFIGS / "diffusion" / "set_dit_tiny.yaml"),
                *uncond,
                "--config",
                str(CONFIGS / "data" / "latents.yaml"),
                "--data.train",
                str(latents),
                "--model.init_args.autoencoder",
                str(ae),
                "--model.init_args.objective",
                "native3d.diffusion.DDPM",
                "--model.init_args.sampler",
                "euler",
                "--trainer.max_steps",
                "1",
            ]
        )
        == 2
    )
    assert "sampler 'euler' does not fit a model trained with DDPM; choose ddim or dpm++" in one_error_line(
        capsys
    )


def test_image_conditioned_model_samples_from_a_png_and_names_a_bad_image(latent_sets, tmp_path, capsys):
    ae, latents = latent_sets["triplane_tiny.yaml"]
    image = str(CONFIGS / "conditioning" / "image_tiny.yaml")
    ckpt = fit_diffusion(
        "triplane_unet_tiny.yaml", ae, latents, tmp_path / "run", steps=2, extra=("--config", image)
    )
    from PIL import Image

    Image.new("RGB", (48, 48), (200, 100, 50)).save(tmp_path / "cond.png")
    summary = sample_to_folder(
        SampleSettings(ckpt=str(ckpt), images=[str(tmp_path / "cond.png")], num=1, steps=2, resolution=32),
        tmp_path / "out",
    )
    assert summary["samples"][0]["prompt"] == "cond"
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png"):
        sample_to_folder(
            SampleSettings(ckpt=str(ckpt), images=[str(tmp_path / "bad.png")]), tmp_path / "out2"
        )
    capsys.readouterr()
    assert (
        native3d(
            [
                "sample",
                "--ckpt",
                str(ckpt),
                "--image",
                str(tmp_path / "bad.png"),
                "--out",
                str(tmp_path / "out2"),
            ]
        )
        == 2
    )
    assert "bad.png: not a readable image" in one_error_line(capsys)


def test_wrong_checkpoints_are_named(latent_sets, tmp_path):
    ae, _ = latent_sets["vecset_tiny.yaml"]
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_diffusion(tmp_path / "nope.ckpt")
    with pytest.raises(
        InputError, match="not a latent-diffusion checkpoint .*; it is an autoencoder checkpoint"
    ):
        load_diffusion(ae)


def evaluate_checkpoint_cli(ckpt: Path, reference: Path, out: Path, *extra: str) -> dict:
    argv = ["evaluate", "--ckpt", str(ckpt), "--reference", str(reference), "--out", str(out)]
    argv += ["--steps", "2", "--resolution", "32", "--points", "256", "--format", "ply", *extra]
    assert native3d(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_samples_a_text_checkpoint_per_reference_class_and_reuses_the_samples(
    latent_sets, primitive_shards, tmp_path
):
    ae, latents = latent_sets["triplane_tiny.yaml"]
    ckpt = fit_diffusion("triplane_unet_tiny.yaml", ae, latents, tmp_path / "run", steps=2)
    classes = {s["meta.json"]["class"] for s in iter_samples(primitive_shards)}
    metrics = evaluate_checkpoint_cli(ckpt, primitive_shards, tmp_path / "eval", "--num", "2")
    listed = json.loads((tmp_path / "eval" / "samples" / "samples.json").read_text())["samples"]
    assert sorted(e["prompt"] for e in listed) == sorted(f"a {c}" for c in classes for _ in range(2))
    assert all(e["class"] == e["prompt"][2:] for e in listed), (
        "every sample is tagged with the class it was asked for"
    )
    summary = metrics["summary"]
    assert summary["num_requested"] == 2 * len(classes)
    assert summary["num_samples"] + summary["num_failed"] == summary["num_requested"]
    assert metrics["inputs"]["ckpt"] == str(ckpt)
    if summary["num_samples"]:
        assert summary["num_prompted"] == summary["num_samples"]
        assert summary["prompt_accuracy_of_requested"] == pytest.approx(
            summary["prompt_accuracy"] * summary["num_samples"] / summary["num_requested"]
        )
    stamp = (tmp_path / "eval" / "samples" / "samples.json").stat().st_mtime_ns
    evaluate_checkpoint_cli(ckpt, primitive_shards, tmp_path / "eval", "--num", "2")
    assert (tmp_path / "eval" / "samples" / "samples.json").stat().st_mtime_ns == stamp, (
        "same settings: samples reused"
    )
    evaluate_checkpoint_cli(ckpt, primitive_shards, tmp_path / "eval", "--num", "1")
    assert len(json.loads((tmp_path / "eval" / "samples" / "samples.json").read_text())["samples"]) == len(
        classes
    )


def test_evaluate_conditions_an_image_checkpoint_on_reference_views(latent_sets, primitive_shards, tmp_path):
    ae, latents = latent_sets["triplane_tiny.yaml"]
    image = str(CONFIGS / "conditioning" / "image_tiny.yaml")
    ckpt = fit_diffusion(
        "triplane_unet_tiny.yaml", ae, latents, tmp_path / "run", steps=2, extra=("--config", image)
    )
    metrics = evaluate_checkpoint_cli(ckpt, primitive_shards, tmp_path / "eval", "--num", "1")
    views = sorted((tmp_path / "eval" / "conditions").glob("*.png"))
    per_class = {}
    for sample in iter_samples(primitive_shards):
        per_class.setdefault(sample["meta.json"]["class"], sample["__key__"])
    assert [v.name for v in views] == sorted(f"{c}-{key}.png" for c, key in per_class.items()), (
        "view 0 of the first object of each class"
    )
    listed = json.loads((tmp_path / "eval" / "samples" / "samples.json").read_text())["samples"]
    assert sorted(e["class"] for e in listed) == sorted(per_class)
    assert metrics["summary"]["num_requested"] == len(per_class)


def test_a_model_trained_on_latents_of_another_token_count_samples_that_count(
    latent_sets, primitive_shards, tmp_path
):
    ae, _ = latent_sets["vecset_tiny.yaml"]  # a VecSet encodes at any token count
    latents = tmp_path / "latents"
    encode_shard_set(str(ae), str(primitive_shards), str(latents), tokens=16)
    ckpt = fit_diffusion("set_dit_tiny.yaml", ae, latents, tmp_path / "run", steps=2)
    model = load_diffusion(ckpt)
    assert model.latent_shape == (16, 11), "the checkpoint records the shape it was trained on"
    assert model.generate(2, model.conditioner.encode_texts(["a", "b"]), steps=2).shape == (2, 16, 11)


def test_a_labelled_sheet_has_a_row_per_label_and_marks_a_sample_without_surface(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "dark.png")
    rows = [
        ("a cone", [{"prompt": "a cone", "render": "dark.png"}] * 3, tmp_path),
        ("a mug", [{"prompt": "a mug", "render": None}], tmp_path),
    ]
    labelled_sheet(rows, tmp_path / "sheet.png", cell=40, label_width=50)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("L"))
    assert sheet.shape == (2 * (40 + 14), 50 + 3 * 40), "a row per label, a column per sample of the longest"
    assert (sheet[:40, 50:170] < 10).mean() > 0.9, "the first row pastes its three renders"
    no_surface = sheet[54:94, 50:90]
    assert no_surface.min() < 255 and (no_surface < 10).mean() < 0.1, "a sample without render is a caption"
