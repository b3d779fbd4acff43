"""Damaged shards are found, named and repaired: nothing is silently shorter.

A shard is damaged the way a full disk, an interrupted copy or a bad sync leaves it: cut at a
sample's first header, cut inside a member, a header overwritten, the file deleted, or an empty
tar. Every reader (iter_samples, the training and validation streams, encode) fails naming the
shard, or with `on_corrupt_shard="skip"` records it; `data_prep index` and `report` name it and
`build --repair` rebuilds its objects.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_prep.cli import main as prep
from native3d.data.datamodule import ShapeSample, ShardStream
from native3d.data.schema import ARRAY_KEYS, DamagedShardError, SchemaError
from native3d.data.shards import iter_samples, load_index, shard_keys
from native3d.errors import InputError

DAMAGED = "0000-000002.tar"  # the third of the six shards of 4 samples


def member_offsets(path: Path) -> dict[str, list[tarfile.TarInfo]]:
    """The tar members of each sample key, in order."""
    members: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            members.setdefault(member.name.split(".", 1)[0], []).append(member)
    return members


def cut_at_sample(path: Path) -> None:
    """Truncate at the first header of the shard's third sample."""
    first = list(member_offsets(path).values())[2][0]
    os.truncate(path, first.offset)


def cut_inside_a_member(path: Path) -> None:
    member = list(member_offsets(path).values())[1][0]
    os.truncate(path, member.offset_data + member.size // 2)


def overwrite_a_header(path: Path) -> None:
    first = list(member_offsets(path).values())[2][0]
    data = bytearray(path.read_bytes())
    data[first.offset : first.offset + 512] = np.random.default_rng(0).bytes(512)
    path.write_bytes(bytes(data))


def empty_tar(path: Path) -> None:
    with tarfile.open(path, "w"):
        pass


DAMAGES = {
    "cut_at_sample": cut_at_sample,
    "cut_inside_a_member": cut_inside_a_member,
    "overwrite_a_header": overwrite_a_header,
    "empty_tar": empty_tar,
    "delete": Path.unlink,
}


@pytest.fixture
def shards(primitive_shards, tmp_path) -> Path:
    """A writable copy of the 24 primitives in 6 shards."""
    return Path(shutil.copytree(primitive_shards, tmp_path / "shards"))


def stream(index, train: bool, **options) -> ShardStream:
    """Training draws 400 samples (about 100 shards), so it meets a damaged one of six all but surely."""
    return ShardStream(
        index,
        batch_size=2,
        train=train,
        convert=ShapeSample(index.sizes, 64),
        shuffle_buffer=2,
        batches_per_epoch=200,
        **options,
    )


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_reader_names_a_damaged_shard(shards, damage):
    DAMAGES[damage](shards / DAMAGED)
    with pytest.raises(SchemaError, match=DAMAGED):
        list(iter_samples(shards))
    if damage == "delete":
        return  # found by load_index when any reader starts: the streams never see it
    index = load_index_without_sizes(shards)
    with pytest.raises(SchemaError, match=DAMAGED):
        list(stream(index, train=False))
    with pytest.raises(SchemaError, match=DAMAGED):
        list(stream(index, train=True))


def load_index_without_sizes(folder: Path):
    """The index, with the recorded shard sizes dropped so that the readers meet the damage themselves."""
    info = json.loads((folder / "index.json").read_text())
    for entry in info["shards"]:
        entry.pop("bytes")
    (folder / "index.json").write_text(json.dumps(info))
    return load_index(folder)


def test_a_shard_cut_at_a_sample_boundary_says_what_the_index_expected(shards):
    cut_at_sample(shards / DAMAGED)
    with pytest.raises(DamagedShardError, match=r"bytes, its index records"):
        load_index(shards)  # the recorded size finds it before any sample is read
    index = load_index_without_sizes(shards)
    with pytest.raises(
        DamagedShardError,
        match=rf"{DAMAGED}: its index records 4 samples, the tar holds 2; run `python -m data_prep build --repair",
    ):
        list(iter_samples(index))


def test_a_deleted_shard_is_found_when_the_set_is_opened(shards):
    (shards / DAMAGED).unlink()
    with pytest.raises(DamagedShardError, match=rf"index.json lists shard {DAMAGED}, which does not exist"):
        load_index(shards)


def test_skip_records_each_damaged_shard_and_reads_all_the_others(shards, tmp_path):
    overwrite_a_header(shards / DAMAGED)
    index = load_index_without_sizes(shards)
    log = tmp_path / "skipped_shards.jsonl"
    ids = [
        i for batch in stream(index, train=False, on_corrupt_shard="skip", skip_log=log) for i in batch["id"]
    ]
    assert len(ids) == 22 == len(set(ids)), "5 intact shards and the 2 samples before the damage"
    (line,) = [json.loads(row) for row in log.read_text().splitlines()]
    assert line["shard"].endswith(DAMAGED) and "holds 2" in line["reason"]
    train = stream(index, train=True, on_corrupt_shard="skip", skip_log=log)
    assert len(list(train)) == 200, "training goes on with the intact shards"


@pytest.mark.timeout(120)  # the failure this guards against is an endless loop
def test_skip_over_nothing_but_damaged_shards_stops_and_names_them(shards):
    index = load_index_without_sizes(shards)
    for path in sorted(shards.glob("*.tar")):
        empty_tar(path)
    with pytest.raises(
        DamagedShardError, match=r"every shard this loader reads is damaged: .*0000-000000.tar"
    ):
        list(stream(index, train=True, on_corrupt_shard="skip"))


def test_a_set_without_samples_is_an_error_at_once(shards):
    info = json.loads((shards / "index.json").read_text())
    info["shards"] = [dict(entry, count=0) for entry in info["shards"]]
    (shards / "index.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="hold no samples"):
        stream(load_index(shards), train=True)


def test_shard_keys_finds_the_missing_end_of_archive(shards):
    assert len(shard_keys(shards / DAMAGED)) == 4
    for damage in (cut_at_sample, overwrite_a_header, cut_inside_a_member):
        broken = shards / f"{damage.__name__}.tar"
        shutil.copy(shards / DAMAGED, broken)
        damage(broken)
        with pytest.raises(DamagedShardError, match=broken.name):
            shard_keys(broken)


def build_args(folder: Path, *extra: str) -> list[str]:
    sizes = [
        "--surface-points",
        "512",
        "--grid-resolution",
        "32",
        "--query-points",
        "1024",
        "--views",
        "1",
        "--view-size",
        "32",
        "--sharp-points",
        "128",
    ]
    return [
        "build",
        "--source",
        "primitives",
        "--count",
        "24",
        "--out",
        str(folder),
        "--shard-size",
        "4",
        *sizes,
        *extra,
    ]


def arrays(folder: Path) -> dict[str, bytes]:
    return {s["__key__"]: b"".join(s[k].tobytes() for k in ARRAY_KEYS) for s in iter_samples(folder)}


def test_index_and_report_name_damaged_shards_and_repair_rebuilds_their_objects(shards, capsys):
    before = arrays(shards)
    cut_at_sample(shards / DAMAGED)
    overwrite_a_header(shards / "0000-000004.tar")
    capsys.readouterr()
    assert prep(["index", "--out", str(shards)]) == 2
    error = capsys.readouterr().err
    assert (
        error.count("\n") == 1
        and "2 damaged shards" in error
        and DAMAGED in error
        and "0000-000004.tar" in error
    )
    assert prep(["report", "--out", str(shards)]) == 1
    report = capsys.readouterr().out
    assert "ok: 16" in report and "damaged: 8" in report and DAMAGED in report

    assert prep(build_args(shards, "--repair")) == 0
    assert "8 ok" in capsys.readouterr().out, "only the objects of the two damaged shards are built again"
    assert sorted(p.name for p in shards.glob("*.damaged")) == [
        f"{DAMAGED}.damaged",
        "0000-000004.tar.damaged",
    ]
    assert prep(["index", "--out", str(shards)]) == 0
    assert arrays(shards) == before, "the repaired set holds every object once, as built the first time"
    assert prep(["report", "--out", str(shards)]) == 0
