"""The shard DataModule: rank and worker splitting, equal epoch lengths, validation read once."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from native3d.data.datamodule import ShapeSample, ShardDataModule, ShardStream
from native3d.data.shards import load_index


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
