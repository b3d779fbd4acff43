"""The WebDataset DataModule that every training run reads shard sets through.

Training streams resampled shards: the rank's share of the shards (rank and world size taken
from the trainer or torch.distributed, never from environment variables alone, which Lightning
does not set for spawned processes), split again over loader workers, shuffled in a buffer, with a
seed that differs per rank, worker and epoch. Each rank yields exactly `batches_per_epoch` batches,
so DDP ranks never wait on each other at the end of an epoch. Validation reads every sample once,
in order, split over ranks and workers.

A damaged shard (see `native3d.data.shards`) stops the run, naming the shard. With
`on_corrupt_shard="skip"` the rest of that shard is skipped instead: each skip is logged and
recorded as a line of `skipped_shards.jsonl` in the run folder, and a skipped shard is not drawn
again. A stream whose shards hold no sample is an error when it starts, never an endless wait.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from native3d.data.schema import (
    LATENT_SAMPLE_KEYS,
    DamagedShardError,
    SchemaError,
    Sizes,
    validate_latent_sample,
)
from native3d.data.shards import (
    ShardIndex,
    decode_members,
    decode_sample,
    load_index,
    read_shard,
    sample_location,
)
from native3d.errors import InputError

log = logging.getLogger(__name__)

ARRAY_FIELDS = {
    "surface.npy": "surface",
    "sharp.npy": "sharp",  # only in sets built with sharp points (schema 2, --sharp-points > 0)
    "sdf.npy": "sdf",
    "query.npy": "query",
    "triplane.npy": "triplane",
    "views.npy": "views",
}


def sample_to_tensors(
    sample: dict,
    query_points: int | None,
    rng: np.random.Generator,
    surface_points: int | None = None,
    sharp_points: int | None = None,
) -> dict:
    """A decoded sample as float32 tensors; `query_points` / `surface_points` / `sharp_points` draw a
    random subset of the queries / surface points / sharp-edge points. `sharp` is there only where the
    sample holds `sharp.npy`."""
    out: dict[str, object] = {"id": sample["__key__"], "caption": sample["caption.txt"]}
    subset = {"query": query_points, "surface": surface_points, "sharp": sharp_points}
    for key, name in ARRAY_FIELDS.items():
        if key not in sample:  # an optional key (the schema's OPTIONAL_KEYS) the set was built without
            continue
        array = sample[key]
        count = subset.get(name)
        if count is not None and count < len(array):
            array = array[rng.choice(len(array), count, replace=False)]
        out[name] = (
            torch.from_numpy(np.ascontiguousarray(array)).float()
            if array.dtype != np.uint8
            else torch.from_numpy(array)
        )
    return out


@dataclass(frozen=True)
class ShapeSample:
    """Decodes a raw shape-shard sample into tensors (see `sample_to_tensors`)."""

    sizes: Sizes
    query_points: int | None = None
    surface_points: int | None = None
    sharp_points: int | None = None

    def __call__(self, raw: dict, rng: np.random.Generator) -> dict:
        sample = decode_sample(raw, self.sizes)
        return sample_to_tensors(sample, self.query_points, rng, self.surface_points, self.sharp_points)


@dataclass(frozen=True)
class LatentSample:
    """Decodes a raw latent-shard sample: posterior mean and std, views, caption, class label."""

    latent_shape: tuple[int, ...]

    def __call__(self, raw: dict, rng: np.random.Generator) -> dict:
        sample = decode_members(raw, LATENT_SAMPLE_KEYS)
        validate_latent_sample(sample, self.latent_shape, sample_location(raw))
        return {
            "id": sample["__key__"],
            "caption": sample["caption.txt"],
            "label": str(sample["meta.json"].get("class", "")),
            "latent_mean": torch.from_numpy(sample["latent_mean.npy"]),
            "latent_std": torch.from_numpy(sample["latent_std.npy"]),
            "views": torch.from_numpy(sample["views.npy"]),
        }


def collate(samples: list[dict]) -> dict:
    """Stacks tensors; other fields (ids, captions, labels) become lists."""
    return {
        key: torch.stack([s[key] for s in samples])
        if isinstance(value, torch.Tensor)
        else [s[key] for s in samples]
        for key, value in samples[0].items()
    }


def split(items: Sequence, part: int, parts: int) -> list:
    return list(items[part::parts])


class ShardStream(IterableDataset):
    """Batches from a set of shards for one rank; see the module docstring for the contract."""

    def __init__(
        self,
        index: ShardIndex,
        batch_size: int,
        train: bool,
        convert: Callable[[dict, np.random.Generator], dict],
        shuffle_buffer: int = 256,
        batches_per_epoch: int = 100,
        seed: int = 0,
        on_corrupt_shard: Literal["stop", "skip"] = "stop",
        skip_log: Path | None = None,
    ) -> None:
        if index.num_samples == 0:
            raise InputError(f"{index.root}: its shards hold no samples; nothing to read")
        self.index, self.batch_size, self.train = index, batch_size, train
        self.convert, self.shuffle_buffer = convert, shuffle_buffer
        self.batches_per_epoch, self.seed = batches_per_epoch, seed
        self.on_corrupt_shard, self.skip_log = on_corrupt_shard, skip_log
        self.rank, self.world_size = 0, 1
        self.skipped: set[str] = set()  # per loader worker: each holds its own copy of the stream

    def set_rank(self, rank: int, world_size: int) -> None:
        if self.train and len(self.index.urls) < world_size:
            raise InputError(
                f"{self.index.root}: {len(self.index.urls)} shards cannot be split over {world_size} ranks; build smaller shards"
            )
        self.rank, self.world_size = rank, world_size

    def rank_urls(self) -> list[str]:
        if not self.train and len(self.index.urls) < self.world_size:
            # Fewer validation shards than ranks: every rank reads them all, so no rank has an
            # empty loader (ranks with nothing to log would stall the others' metric sync).
            return list(self.index.urls)
        return split(self.index.urls, self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        urls = self.rank_urls()
        if len(urls) >= workers:
            urls = split(urls, worker, workers)
        elif not self.train:
            urls = urls if worker == 0 else []
        # The loader draws a fresh base seed from the main process RNG for every epoch's
        # iterator; mixing in the rank makes the streams differ across ranks too.
        base = info.seed if info else int(torch.randint(2**62, ()).item())
        seed = np.random.SeedSequence([self.seed, self.rank, worker, base]).generate_state(1)[0]
        yield from (
            self.train_batches(urls, worker, workers, int(seed)) if self.train else self.val_batches(urls, 0)
        )

    def samples(self, urls: Sequence[str], rng: np.random.Generator) -> Iterator[dict]:
        counts = self.index.counts
        for url in urls:
            try:
                for raw in read_shard(url, counts[url], self.index.repair_hint):
                    yield self.convert(raw, rng)
            except SchemaError as error:  # a damaged shard, or one sample of it cut short
                if self.on_corrupt_shard != "skip":
                    raise
                self.skip(url, error)

    def skip(self, url: str, error: SchemaError) -> None:
        self.skipped.add(url)
        log.warning("skipping the rest of a damaged shard: %s", error)
        if self.skip_log is not None:
            line = json.dumps({"shard": url, "reason": str(error), "rank": self.rank, "pid": os.getpid()})
            with open(self.skip_log, "a", encoding="utf-8") as file:  # one short line: an atomic append
                file.write(line + "\n")

    def train_batches(self, urls: list[str], worker: int, workers: int, seed: int) -> Iterator[dict]:
        count = self.batches_per_epoch // workers + (worker < self.batches_per_epoch % workers)
        rng, pick = np.random.default_rng(seed), random.Random(seed)
        resampled = self.resampled(urls, rng, pick)
        buffer: list[dict] = []
        batch: list[dict] = []
        while count > 0:
            while len(buffer) < self.shuffle_buffer:
                buffer.append(next(resampled))
            batch.append(buffer.pop(pick.randrange(len(buffer))))
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch, count = [], count - 1

    def resampled(self, urls: list[str], rng: np.random.Generator, pick: random.Random) -> Iterator[dict]:
        """Samples of shards drawn with replacement, forever; only shards that hold samples are drawn,
        so every draw yields a sample, raises, or (skipped) leaves the draw."""
        counts = self.index.counts
        live = [url for url in urls if counts[url] > 0]
        if not live:
            raise InputError(
                f"{self.index.root}: rank {self.rank} reads {len(urls)} shards and none holds a sample: {', '.join(urls)}"
            )
        while live:
            url = pick.choice(live)
            yield from self.samples([url], rng)
            if url in self.skipped:
                live.remove(url)
        raise DamagedShardError(
            f"{self.index.root}: every shard this loader reads is damaged: {', '.join(sorted(self.skipped))}"
        )

    def val_batches(self, urls: list[str], seed: int) -> Iterator[dict]:
        batch: list[dict] = []
        for sample in self.samples(urls, np.random.default_rng(seed)):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)


def require_sharp_points(index: ShardIndex, count: int | None = None) -> None:
    """A one-line `InputError` unless the set's shapes hold sharp-edge points (at least `count`).

    For anything that reads `sharp` from a batch: sets of schema 1, or built with `--sharp-points 0`,
    have none.
    """
    stored = index.sizes.sharp_points
    if stored == 0:
        raise InputError(
            f"{index.root}: its shapes hold no sharp-edge points (sharp.npy; schema_version "
            f"{index.info.get('schema_version')}); rebuild it with `python -m data_prep build --sharp-points S`"
        )
    if count is not None and not 0 < count <= stored:
        raise InputError(
            f"{index.root}: sharp_points={count}, but its shapes hold {stored} sharp-edge points"
        )


def hold_out(index: ShardIndex, count: int) -> tuple[ShardIndex, ShardIndex]:
    """Splits off the last `count` shards of a set as its held-out part."""
    if count >= len(index.shards):
        raise InputError(f"{index.root}: cannot hold out {count} of {len(index.shards)} shards")
    return replace(index, shards=index.shards[:-count]), replace(index, shards=index.shards[-count:])


class ShardDataModule(L.LightningDataModule):
    """Train and validation shard sets, each given by its `index.json` (or folder).

    Without `val`, `val_shards` > 0 holds out the last shards of `train` for validation.
    Training reads a fresh random subset of `query_points` queries and, if set, of `surface_points`
    surface points of every shape each time it reads the shape: a point encoder then never sees the
    same input cloud twice, as 3DShape2VecSet draws its input from a larger surface sample.
    `sharp_points` does the same for the sharp-edge points (`sharp`, Dora's salient points); setting
    it requires a set built with them (`require_sharp_points`). Without it, `sharp` is in the batch,
    whole, wherever the set holds it. Validation reads every query, surface and sharp point.
    `on_corrupt_shard` says what a damaged shard does: "stop" the run (the default) or "skip" the rest
    of it, recorded in `skipped_shards.jsonl`.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
        val_shards: int = 0,
        batch_size: int = 8,
        num_workers: int = 2,
        query_points: int | None = 2048,
        surface_points: int | None = None,
        shuffle_buffer: int = 256,
        batches_per_epoch: int = 1000,
        seed: int = 0,
        on_corrupt_shard: Literal["stop", "skip"] = "stop",
        sharp_points: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_index = load_index(train)
        self.val_index = load_index(val) if val else None
        if self.val_index is None and val_shards > 0:
            self.train_index, self.val_index = hold_out(self.train_index, val_shards)
        if surface_points is not None and not 0 < surface_points <= self.sizes.surface_points:
            raise InputError(
                f"{train}: surface_points={surface_points}, but its shapes hold {self.sizes.surface_points} surface points"
            )
        if sharp_points is not None:
            for index in (self.train_index, self.val_index):
                if index is not None:
                    require_sharp_points(index, sharp_points)

    @property
    def sizes(self):
        return self.train_index.sizes

    def rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def converter(self, index: ShardIndex, train: bool) -> Callable[[dict, np.random.Generator], dict]:
        # Validation keeps every query (its first half is the uniform set that volume IoU reads), surface
        # and sharp point.
        hp = self.hparams
        if not train:
            return ShapeSample(index.sizes)
        return ShapeSample(index.sizes, hp.query_points, hp.surface_points, hp.sharp_points)

    def stream(self, index: ShardIndex, train: bool) -> ShardStream:
        hp = self.hparams
        convert = self.converter(index, train)
        stream = ShardStream(
            index,
            hp.batch_size,
            train,
            convert,
            hp.shuffle_buffer,
            hp.batches_per_epoch,
            hp.seed,
            on_corrupt_shard=hp.on_corrupt_shard,
            skip_log=self.skip_log(),
        )
        stream.set_rank(*self.rank_and_world_size())
        return stream

    def skip_log(self) -> Path | None:
        """`skipped_shards.jsonl` in the run folder, where shards skipped as damaged are recorded."""
        folder = self.trainer.log_dir if self.trainer is not None else None
        if self.hparams.on_corrupt_shard != "skip" or folder is None:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder) / "skipped_shards.jsonl"

    def statistics_batches(self, count: int) -> Iterator[dict]:
        """`count` training batches read in this process (no loader workers), e.g. for latent statistics."""
        stream = self.stream(self.train_index, train=True)
        stream.batches_per_epoch = count
        return iter(stream)

    def loader(self, stream: ShardStream) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.stream(self.train_index, train=True))

    def val_dataloader(self) -> DataLoader | list:
        if self.val_index is None:
            return []
        return self.loader(self.stream(self.val_index, train=False))


class LatentDataModule(ShardDataModule):
    """Latent shard sets written by `native3d encode`, for latent diffusion training."""

    def __init__(
        self,
        train: str,
        val: str | None = None,
        val_shards: int = 0,
        batch_size: int = 32,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        batches_per_epoch: int = 1000,
        seed: int = 0,
        on_corrupt_shard: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__(
            train,
            val,
            val_shards,
            batch_size,
            num_workers,
            query_points=None,
            shuffle_buffer=shuffle_buffer,
            batches_per_epoch=batches_per_epoch,
            seed=seed,
            on_corrupt_shard=on_corrupt_shard,
        )
        if self.train_index.kind != "latent":
            raise InputError(
                f"{self.train_index.root} is not a latent shard set; run `native3d encode` first"
            )

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.train_index.info["latent_shape"])

    def converter(self, index: ShardIndex, train: bool) -> Callable[[dict, np.random.Generator], dict]:
        return LatentSample(tuple(index.info["latent_shape"]))
