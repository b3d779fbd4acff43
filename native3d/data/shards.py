"""Writing and reading WebDataset shards of the schema in `native3d.data.schema`.

Writers commit a shard atomically (a temporary name, then `os.replace`), so a reader never sees a
partial tar. Readers decode every array, validate it against the schema, and raise a
`SchemaError` naming the shard and key of a malformed sample; they never skip or replace one.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from native3d.data.schema import (
    SAMPLE_KEYS,
    SCHEMA_VERSION,
    SchemaError,
    Sizes,
    encode_json,
    validate_sample,
)

# webdataset splits "<key>.<field>" at the first dot of a member name, so keys carry no dots.
VALID_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")


def encode_sample(key: str, sample: dict) -> dict:
    """Turns a decoded sample (`.npy` arrays, `.txt` str, `.json` dict) into tar members."""
    if not VALID_KEY.match(key):
        raise ValueError(f"sample key {key!r} may hold only letters, digits, '_' and '-'")
    encoded: dict[str, object] = {"__key__": key}
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        if name.endswith(".npy"):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(value), allow_pickle=False)
            encoded[name] = buffer.getvalue()
        elif name.endswith(".txt"):
            encoded[name] = value.encode("utf-8")
        elif name.endswith(".json"):
            encoded[name] = encode_json(value)
        else:
            raise ValueError(f"sample {key}: no encoding for member {name!r} (use .npy, .txt or .json)")
    return encoded


class AtomicShardWriter:
    """Writes one tar shard under `<path>.tmp` and renames it to `path` on `commit()`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp_path, "wb")
        self._writer = wds.TarWriter(self._file)
        self.keys: list[str] = []

    def write(self, key: str, sample: dict) -> None:
        self._writer.write(encode_sample(key, sample))
        self.keys.append(key)

    def commit(self) -> None:
        self._writer.close()  # closes the tar stream, not our file object
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)

    def discard(self) -> None:
        self._writer.close()
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)


def shard_keys(path: str | os.PathLike) -> list[str]:
    """The sample keys in a shard, in order, read from the tar headers only."""
    keys: list[str] = []
    with tarfile.open(path) as tar:
        for member in tar:
            key = member.name.split("/")[-1].split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def decode_members(raw: dict, names: tuple[str, ...]) -> dict:
    """Decodes the named tar members of one raw sample; errors name its shard and key."""
    where = sample_location(raw)
    sample: dict[str, object] = {"__key__": raw.get("__key__"), "__url__": raw.get("__url__")}
    for name in names:
        if name not in raw:
            raise SchemaError(f"{where}: missing key {name!r}")
        try:
            sample[name] = _decode_member(name, raw[name])
        except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
            raise SchemaError(f"{where}: key {name!r} cannot be decoded: {error}") from error
    return sample


def sample_location(raw: dict) -> str:
    return f"shard {raw.get('__url__', '?')}, sample {raw.get('__key__', '?')}"


def decode_sample(raw: dict, sizes: Sizes) -> dict:
    """Decodes one raw sample of a shard set and validates it against the schema."""
    sample = decode_members(raw, SAMPLE_KEYS)
    validate_sample(sample, sizes, sample_location(raw))
    return sample


def _decode_member(name: str, data: bytes) -> object:
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if name.endswith(".txt"):
        return data.decode("utf-8")
    return json.loads(data.decode("utf-8"))


@dataclass(frozen=True)
class ShardIndex:
    """A shard set as described by its `index.json`: a data set, or latents ("kind": "latent")."""

    root: Path
    shards: tuple[tuple[str, int], ...]  # (absolute url, sample count)
    info: dict  # the whole index.json

    @property
    def kind(self) -> str:
        return self.info.get("kind", "shapes")

    @property
    def sizes(self) -> Sizes:
        return Sizes.from_dict(self.info["sizes"])

    @property
    def urls(self) -> list[str]:
        return [url for url, _ in self.shards]

    @property
    def num_samples(self) -> int:
        return sum(count for _, count in self.shards)


def load_index(path: str | os.PathLike) -> ShardIndex:
    """Reads `index.json` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index.json; run `python -m data_prep index --out {path.parent}`")
    info = json.loads(path.read_text())
    if info.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema_version {info.get('schema_version')}, this code reads {SCHEMA_VERSION}")
    shards = tuple((str(path.parent / s["url"]), int(s["count"])) for s in info["shards"])
    return ShardIndex(root=path.parent, shards=shards, info=info)


def write_index(folder: Path, info: dict) -> None:
    """Writes `<folder>/index.json` atomically."""
    tmp = Path(folder) / "index.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    os.replace(tmp, Path(folder) / "index.json")


def iter_samples(index: ShardIndex | str | os.PathLike, urls: list[str] | None = None) -> Iterator[dict]:
    """Every sample of a shard set (or of the given shards of it) once, in order, decoded and validated."""
    if not isinstance(index, ShardIndex):
        index = load_index(index)
    dataset = wds.WebDataset(urls or index.urls, shardshuffle=False, empty_check=False).map(
        lambda raw: decode_sample(raw, index.sizes)
    )
    yield from dataset
