"""The shard DataModule: rank and worker splitting, equal epoch lengths, validation read once,
sharp-edge points where a set has them, and sets of schema 1."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from native3d.data.datamodule import ShapeSample, ShardDataModule, ShardStream, require_sharp_points
from native3d.data.schema import SchemaError
from native3d.data.shards import iter_samples, load_index
from native3d.errors import InputError


def test_ranks_read_disjoint_shards_and_yield_equal_batch_counts(primitive_shards):
    index = load_index(primitive_shards)
    seen, counts = [], []
    for rank in range(2):
        stream = ShardStream(
            index,
            batch_size=3,
            train=True,
            convert=ShapeSample(index.sizes, 100),
            shuffle_buffer=4,
            batches_per_epoch=5,
        )
        stream.set_rank(rank, 2)
        batches = list(stream)
        counts.append(len(batches))
        seen.append({i for b in batches for i in b["id"]})
        assert all(b["query"].shape == (3, 100, 4) for b in batches)
    assert counts == [5, 5]
    assert seen[0].isdisjoint(seen[1])


def test_worker_loader_yields_the_epoch_length_and_streams_differ_by_rank(primitive_shards):
    data = ShardDataModule(
        str(primitive_shards),
        val_shards=2,
        batch_size=2,
        num_workers=2,
        batches_per_epoch=7,
        shuffle_buffer=4,
    )
    torch.manual_seed(0)
    batches = list(data.train_dataloader())
    assert len(batches) == 7
    assert batches[0]["surface"].shape == (2, 512, 6) and batches[0]["sdf"].shape == (2, 32, 32, 32)
    held_out = {url for url, _ in data.val_index.shards}
    assert not held_out & {url for url, _ in data.train_index.shards}


def test_validation_reads_every_sample_exactly_once(primitive_shards):
    data = ShardDataModule(str(primitive_shards), val=str(primitive_shards), batch_size=5, num_workers=2)
    first = [i for b in data.val_dataloader() for i in b["id"]]
    second = [i for b in data.val_dataloader() for i in b["id"]]
    assert Counter(first) == Counter(second) and len(first) == 24 == len(set(first))
    assert all(b["query"].shape[1] == 1024 for b in data.val_dataloader()), "validation keeps all queries"


def test_training_reads_a_fresh_subset_of_the_surface_and_validation_all_of_it(primitive_shards):
    data = ShardDataModule(
        str(primitive_shards),
        val=str(primitive_shards),
        batch_size=4,
        num_workers=0,
        surface_points=128,
        shuffle_buffer=4,
        batches_per_epoch=12,
    )
    stored = {i: s for b in data.val_dataloader() for i, s in zip(b["id"], b["surface"])}
    assert all(s.shape == (512, 6) for s in stored.values()), "validation keeps every surface point"
    drawn: dict[str, list[set]] = {}
    for batch in data.train_dataloader():
        assert batch["surface"].shape == (4, 128, 6)
        for i, surface in zip(batch["id"], batch["surface"]):
            rows = {tuple(r) for r in stored[i].tolist()}
            subset = {tuple(r) for r in surface.tolist()}
            assert len(subset) == 128 and subset <= rows, f"{i}: not 128 distinct stored surface points"
            drawn.setdefault(i, []).append(frozenset(subset))
    repeated = [subsets for subsets in drawn.values() if len(subsets) > 1]
    assert repeated and all(len(set(subsets)) == len(subsets) for subsets in repeated), "each read draws anew"


def test_more_surface_points_than_stored_is_an_error_naming_the_set(primitive_shards):
    with pytest.raises(ValueError, match=rf"{primitive_shards.name}.*surface_points=513.*512"):
        ShardDataModule(str(primitive_shards), surface_points=513)


def test_batches_carry_the_sharp_points_and_training_draws_a_subset_of_them(primitive_shards):
    data = ShardDataModule(
        str(primitive_shards),
        val=str(primitive_shards),
        batch_size=4,
        num_workers=0,
        sharp_points=32,
        shuffle_buffer=4,
        batches_per_epoch=3,
    )
    stored = {i: s for b in data.val_dataloader() for i, s in zip(b["id"], b["sharp"])}
    assert len(stored) == 24 and all(s.shape == (128, 6) for s in stored.values()), "validation keeps all"
    for batch in data.train_dataloader():
        assert batch["sharp"].shape == (4, 32, 6) and batch["surface"].shape == (4, 512, 6)
        for i, sharp in zip(batch["id"], batch["sharp"]):
            rows = {tuple(r) for r in stored[i].tolist()}
            assert {tuple(r) for r in sharp.tolist()} <= rows
    whole = ShardDataModule(str(primitive_shards), batch_size=2, num_workers=0, batches_per_epoch=1)
    assert next(iter(whole.train_dataloader()))["sharp"].shape == (2, 128, 6), "without sharp_points: all"
    with pytest.raises(InputError, match=rf"{primitive_shards.name}.*sharp_points=129.*128"):
        ShardDataModule(str(primitive_shards), sharp_points=129)


@pytest.fixture(scope="module")
def schema1_shards(tmp_path_factory) -> Path:
    """A shard set as schema 1 wrote it: no sharp.npy, and no sharp sizes in its index.json."""
    from data_prep.cli import main as prep

    out = tmp_path_factory.mktemp("schema1_shards")
    sizes = ["--surface-points", "64", "--grid-resolution", "8", "--query-points", "64", "--views", "0"]
    build = ["build", "--source", "primitives", "--count", "4", "--out", str(out), "--shard-size", "2"]
    assert prep([*build, *sizes, "--sharp-points", "0"]) == 0
    assert prep(["index", "--out", str(out)]) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["sizes"].pop("sharp_points") == 0 and info["sizes"].pop("sharp_angle") == 15.0
    (out / "index.json").write_text(json.dumps({**info, "schema_version": 1}))
    return out


def test_a_schema_1_set_reads_and_asking_it_for_sharp_points_is_a_one_line_error(schema1_shards):
    index = load_index(schema1_shards)
    assert index.info["schema_version"] == 1 and index.sizes.sharp_points == 0
    samples = list(iter_samples(index))
    assert len(samples) == 4 and not any("sharp.npy" in s for s in samples)
    data = ShardDataModule(str(schema1_shards), batch_size=2, num_workers=0, batches_per_epoch=2)
    batches = list(data.train_dataloader())
    assert len(batches) == 2 and all("sharp" not in b and b["surface"].shape == (2, 64, 6) for b in batches)
    for ask in (
        lambda: ShardDataModule(str(schema1_shards), sharp_points=16),
        lambda: require_sharp_points(index),
    ):
        with pytest.raises(InputError, match=rf"{schema1_shards}.*schema_version 1.*--sharp-points") as error:
            ask()
        assert "\n" not in str(error.value)


def test_a_set_built_without_sharp_points_names_the_rebuild_and_unknown_versions_are_refused(
    schema1_shards, tmp_path
):
    info = json.loads((schema1_shards / "index.json").read_text())
    for version, sizes in ((2, {**info["sizes"], "sharp_points": 0}), (3, info["sizes"])):
        folder = tmp_path / f"v{version}"
        folder.mkdir()
        for shard in schema1_shards.glob("*.tar"):
            (folder / shard.name).write_bytes(shard.read_bytes())
        (folder / "index.json").write_text(json.dumps({**info, "schema_version": version, "sizes": sizes}))
        if version == 3:
            with pytest.raises(SchemaError, match="schema_version 3, this code reads versions 1, 2"):
                load_index(folder)
            continue
        with pytest.raises(InputError, match=rf"{folder}.*no sharp-edge points.*--sharp-points"):
            ShardDataModule(str(folder), val=str(schema1_shards), sharp_points=8)
