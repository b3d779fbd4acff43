"""Writing and reading WebDataset shards of the schema in `native3d.data.schema`.

Writers commit a shard atomically (a temporary name, then `os.replace`), so a reader never sees a
partial tar. Readers decode every array, validate it against the schema, and raise a
`SchemaError` naming the shard and key of a malformed sample; they never skip or replace one.

A shard can still be damaged after it was written (a full disk, an interrupted copy, a bad sync).
Python's tarfile takes a cut or overwritten header after the first member for the end of the
archive, so a reader alone would see a shorter shard and say nothing. Every reader therefore
checks each shard against the sample count its `index.json` records (`read_shard`), `load_index`
checks that every listed shard exists (and has the recorded size), and `shard_keys` checks a tar's
end-of-archive marker; each raises `DamagedShardError` naming the shard.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import webdataset as wds

from native3d.data.schema import (
    LATENT_SAMPLE_KEYS,
    READABLE_SCHEMA_VERSIONS,
    DamagedShardError,
    SchemaError,
    Sizes,
    encode_json,
    sample_keys,
    validate_latent_sample,
    validate_sample,
)
from native3d.errors import MissingFileError
from native3d.files import temporary, write_json

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
    """Writes one tar shard under its temporary name (`files.temporary`) and renames it to `path` on `commit()`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp_path = temporary(self.path)
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
    """The sample keys in a shard, in order, read from the tar headers only.

    Raises `DamagedShardError` where the tar cannot be read, a member's data runs past the end of
    the file, or the members are not followed by the end-of-archive marker (two zero blocks): a tar
    cut at a header, or with a header overwritten, ends early without one.
    """
    path = Path(path)
    size = path.stat().st_size
    keys: list[str] = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.offset_data + member.size > size:
                    raise DamagedShardError(f"shard {path}: member {member.name} is cut off at byte {size}")
                key = member.name.split("/")[-1].split(".", 1)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
            end = tar.offset
    except tarfile.TarError as error:
        raise DamagedShardError(f"shard {path}: not a readable tar ({tar_reason(error)})") from error
    with open(path, "rb") as file:
        file.seek(end)
        marker = file.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise DamagedShardError(
            f"shard {path}: the tar ends at byte {end} without its end-of-archive marker, after {len(keys)} samples"
        )
    return keys


def tar_reason(error: Exception) -> str:
    # tarfile errors raised through webdataset carry (message, stream, url) as their args.
    return str(error.args[0]) if error.args else type(error).__name__


def read_shard(url: str, expected: int, hint: str = "") -> Iterator[dict]:
    """The raw samples of one shard, in order, checked against the `expected` count of its index.

    A shard that cannot be read to its end, or holds another number of samples, raises
    `DamagedShardError` (after the samples read before the damage); `hint` says how to repair it.
    """
    found = 0
    try:
        for raw in wds.WebDataset(
            url, shardshuffle=False, empty_check=False, nodesplitter=None, workersplitter=None
        ):
            found += 1
            yield raw
    except (tarfile.TarError, OSError) as error:
        raise DamagedShardError(
            f"shard {url}: unreadable after {found} of {expected} samples ({tar_reason(error)}){hint}"
        ) from error
    if found != expected:
        raise DamagedShardError(
            f"shard {url}: its index records {expected} samples, the tar holds {found}{hint}"
        )


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
    """Decodes one raw sample of a shard set and validates it against the schema (the keys its sizes call for)."""
    sample = decode_members(raw, sample_keys(sizes))
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

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.shards)

    @property
    def repair_hint(self) -> str:
        """How to mend a damaged shard of this set, as the tail of an error message."""
        if self.kind == "latent":
            return f"; rerun `native3d encode --out {self.root}` to encode it again"
        return f"; run `python -m data_prep build --repair --out {self.root}` with the build's options, then `data_prep index`"


def shard_entry(path: Path, count: int) -> dict:
    """A shard's line in `index.json`: its name, sample count and size in bytes."""
    return {"url": path.name, "count": count, "bytes": path.stat().st_size}


def load_index(path: str | os.PathLike) -> ShardIndex:
    """Reads `index.json` (or the folder holding it) and checks that every shard it lists is there."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(
            f"{path}: no such shard set (a folder holding index.json, or the index.json itself)"
        )
    if path.is_dir():
        path = path / "index.json"
    if not path.is_file():
        raise MissingFileError(
            f"{path.parent}: holds no index.json; run `python -m data_prep index --out {path.parent}`"
        )
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise SchemaError(f"{path}: not a readable index.json ({error})") from error
    if info.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise SchemaError(
            f"{path}: schema_version {info.get('schema_version')}, this code reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
        )
    shards = tuple((str(path.parent / s["url"]), int(s["count"])) for s in info["shards"])
    index = ShardIndex(root=path.parent, shards=shards, info=info)
    for entry in info["shards"]:
        check_shard_file(path.parent / entry["url"], entry.get("bytes"), f"{path} lists", index.repair_hint)
    return index


def check_shard_file(shard: Path, expected_bytes: int | None, where: str, hint: str) -> None:
    if not shard.is_file():
        raise DamagedShardError(f"{where} shard {shard.name}, which does not exist{hint}")
    size = shard.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise DamagedShardError(f"shard {shard}: {size} bytes, its index records {expected_bytes}{hint}")


def write_index(folder: Path, info: dict) -> None:
    """Writes `<folder>/index.json` atomically."""
    write_json(Path(folder) / "index.json", info, sort_keys=True)


def batched(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive lists of `size` samples (the last may be shorter)."""
    while batch := list(islice(samples, size)):
        yield batch


def iter_samples(index: ShardIndex | str | os.PathLike, urls: list[str] | None = None) -> Iterator[dict]:
    """Every sample of a shard set (or of the given shards of it) once, in order, decoded and validated
    (against the shape schema, or for a latent set against its latent shape)."""
    if not isinstance(index, ShardIndex):
        index = load_index(index)
    counts = index.counts
    for url in urls or index.urls:
        for raw in read_shard(url, counts[url], index.repair_hint):
            if index.kind == "latent":
                sample = decode_members(raw, LATENT_SAMPLE_KEYS)
                validate_latent_sample(sample, tuple(index.info["latent_shape"]), sample_location(raw))
                yield sample
            else:
                yield decode_sample(raw, index.sizes)
