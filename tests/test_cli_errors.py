"""User errors end in one line on stderr that names the culprit, with exit code 2 and no traceback.

Each case is a command a user could mistype or point at a bad file; `--verbose` brings the
traceback back.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_damaged_shards import overwrite_a_header

from data_prep.cli import main as prep
from native3d.cli import main as native3d
from native3d.errors import MissingFileError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def files(primitive_shards, tmp_path_factory) -> Path:
    """Bad checkpoints, a shard set with an overwritten header, an empty mesh folder and a YAML with a wrong key."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "garbage.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"autoencoder": {"class_path": "a.B", "init_args": {}}}},
        root / "ae.ckpt",
    )
    torch.save(
        {"state_dict": {}, "hyper_parameters": {"backbone": {}, "autoencoder_config": {}}}, root / "ldm.ckpt"
    )
    damaged = Path(shutil.copytree(primitive_shards, root / "damaged"))
    overwrite_a_header(damaged / "0000-000002.tar")  # same size: only reading the shard finds it
    (root / "no_meshes").mkdir()
    (root / "wrong_key.yaml").write_text(
        "model:\n  class_path: native3d.training.autoencoder.AutoencoderModule\n  init_args:\n    lrate: 0.1\n"
    )
    return root


def fit_args(files: Path, data: str, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        str(CONFIGS / "autoencoder" / "vecset_tiny.yaml"),
        "--config",
        str(CONFIGS / "trainer" / "cpu.yaml"),
        "--data",
        "native3d.data.datamodule.ShardDataModule",
        "--data.train",
        data,
        "--data.batch_size",
        "2",
        "--data.num_workers",
        "2",
        "--data.shuffle_buffer",
        "4",
        "--data.batches_per_epoch",
        "40",
        "--trainer.max_steps",
        "40",
        "--trainer.default_root_dir",
        str(files / "run"),
        "--trainer.logger.init_args.save_dir",
        str(files / "run"),
        "--model.init_args.stats_batches",
        "1",
        *extra,
    ]


# name -> (command, arguments given the files folder, what the error line must say)
CASES = {
    "missing checkpoint": (
        native3d,
        lambda f: ["encode", "--ckpt", f"{f}/nope.ckpt", "--data", f"{f}/damaged", "--out", f"{f}/o"],
        "nope.ckpt: no such checkpoint",
    ),
    "empty checkpoint": (
        native3d,
        lambda f: ["encode", "--ckpt", f"{f}/empty.ckpt", "--data", f"{f}/damaged", "--out", f"{f}/o"],
        "empty.ckpt: an empty file",
    ),
    "unreadable checkpoint": (
        native3d,
        lambda f: ["sample", "--ckpt", f"{f}/garbage.ckpt", "--out", f"{f}/o"],
        "garbage.ckpt: not a readable checkpoint",
    ),
    "diffusion checkpoint to encode": (
        native3d,
        lambda f: ["encode", "--ckpt", f"{f}/ldm.ckpt", "--data", f"{f}/damaged", "--out", f"{f}/o"],
        "ldm.ckpt: not an autoencoder checkpoint",
    ),
    "autoencoder checkpoint to sample": (
        native3d,
        lambda f: ["sample", "--ckpt", f"{f}/ae.ckpt", "--out", f"{f}/o"],
        "ae.ckpt: not a latent-diffusion checkpoint",
    ),
    "option out of range": (
        native3d,
        lambda f: ["sample", "--ckpt", f"{f}/ldm.ckpt", "--num", "0", "--out", f"{f}/o"],
        "--num: must be at least 1, got 0",
    ),
    "evaluate modes mixed": (
        native3d,
        lambda f: ["evaluate", "--meshes", str(f), "--data", str(f), "--out", f"{f}/o"],
        "give --ckpt AE.ckpt --data SHARDS",
    ),
    "missing shard set": (native3d, lambda f: fit_args(f, f"{f}/nowhere"), "nowhere: no such shard set"),
    "key that does not exist": (
        native3d,
        lambda f: fit_args(f, f"{f}/damaged", "--model.init_args.nope", "1"),
        "Option 'nope' is not accepted",
    ),
    "YAML key that does not exist": (
        native3d,
        lambda f: fit_args(f, f"{f}/damaged", "--config", f"{f}/wrong_key.yaml"),
        "Option 'lrate' is not accepted",
    ),
    "damaged shard in a loader worker": (
        native3d,
        lambda f: fit_args(f, f"{f}/damaged"),
        "0000-000002.tar: its index records 4 samples, the tar holds 2",
    ),
    "damaged shard set to index": (
        prep,
        lambda f: ["index", "--out", f"{f}/damaged"],
        "1 damaged shard, not indexed: 0000-000002.tar",
    ),
    "folder without meshes": (
        prep,
        lambda f: ["build", "--source", "local", "--root", f"{f}/no_meshes", "--out", f"{f}/built"],
        "no_meshes: no mesh files below it",
    ),
    "source option missing": (
        prep,
        lambda f: ["build", "--source", "local", "--out", f"{f}/built"],
        "--source local needs --root",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_user_error_is_one_line_naming_the_culprit(case, files, capsys):
    command, args, expected = CASES[case]
    capsys.readouterr()
    assert command(args(files)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err


def test_a_failed_start_leaves_no_build_manifest(files, capsys):
    assert (
        prep(
            ["build", "--source", "local", "--root", str(files / "no_meshes"), "--out", str(files / "built")]
        )
        == 2
    )
    assert not (files / "built").exists()


def test_verbose_keeps_the_traceback(files, monkeypatch):
    with pytest.raises(MissingFileError, match="nope.ckpt"):
        native3d(
            [
                "--verbose",
                "encode",
                "--ckpt",
                str(files / "nope.ckpt"),
                "--data",
                str(files),
                "--out",
                str(files / "o"),
            ]
        )
    monkeypatch.setenv("NATIVE3D_VERBOSE", "1")
    with pytest.raises(MissingFileError, match="nope.ckpt"):
        prep(["index", "--out", str(files / "nope.ckpt")])


def test_skip_records_the_damaged_shard_in_the_run_folder(files, tmp_path):
    run = tmp_path / "run"
    args = fit_args(
        files,
        f"{files}/damaged",
        "--data.val",
        f"{files}/damaged",
        "--data.on_corrupt_shard",
        "skip",
        "--trainer.val_check_interval",
        "40",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger.init_args.save_dir",
        str(run),
    )
    assert native3d(args) == 0
    (record,) = run.rglob("skipped_shards.jsonl")
    shards = {json.loads(line)["shard"] for line in record.read_text().splitlines()}
    assert shards == {str(files / "damaged" / "0000-000002.tar")}, (
        "validation reads every shard, so it meets the damaged one"
    )


def test_fit_gives_lightning_no_reason_to_warn_about_its_arguments(files, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["native3d", "demo"])  # as under `native3d demo`
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert native3d(fit_args(files, f"{files}/nowhere")) == 2
    assert not [w for w in caught if "args parameter" in str(w.message)]
