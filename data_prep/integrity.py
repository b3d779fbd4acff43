"""Checks a build folder's shards against its ledgers: every committed shard holds exactly the
objects that the ledger records in it.

A shard can be damaged after it was committed (a full disk, an interrupted copy, a bad sync).
`data_prep index` refuses to index a damaged shard, `data_prep report` lists them, and
`data_prep build --repair` sets them aside as `<name>.damaged` so that the build redoes their
objects (the ledger counts an object as done only while its shard exists).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data_prep.ledger import Ledger, job_name, ledger_path, read_ledgers
from native3d.data.schema import DamagedShardError
from native3d.data.shards import shard_keys

log = logging.getLogger(__name__)

DAMAGED_SUFFIX = ".damaged"


@dataclass(frozen=True)
class ShardDamage:
    shard: str  # file name in the build folder
    objects: int  # how many objects the ledger records in it
    reason: str

    def line(self) -> str:
        return f"{self.shard}: {self.reason}"


@dataclass(frozen=True)
class ShardCheck:
    intact: dict[str, int]  # shard name -> sample count
    damaged: list[ShardDamage]


def check_shards(out: Path, job_index: int | None = None) -> ShardCheck:
    """The shards of a build folder (or of one of its jobs), intact and damaged, by name."""
    out = Path(out)
    ledger = Ledger(ledger_path(out, job_index)).latest() if job_index is not None else read_ledgers(out)
    recorded: dict[str, set[str]] = defaultdict(set)
    for entry in ledger.values():
        if entry["status"] == "ok":
            recorded[entry["shard"]].add(entry["id"])
    pattern = f"{job_name(job_index)}-*.tar" if job_index is not None else "*.tar"
    intact, damaged = {}, []
    for path in sorted(out.glob(pattern)):
        ids = recorded.get(path.name, set())
        reason = shard_problem(path, ids)
        if reason:
            damaged.append(ShardDamage(path.name, len(ids), reason))
        else:
            intact[path.name] = len(ids)
    return ShardCheck(intact, damaged)


def shard_problem(path: Path, ids: set[str]) -> str | None:
    """Why a shard does not hold exactly the objects `ids`, or None."""
    try:
        keys = shard_keys(path)
    except DamagedShardError as error:
        return f"{str(error).removeprefix(f'shard {path}: ')} (the ledger records {len(ids)} objects in it)"
    if len(keys) != len(set(keys)):
        return "it holds an object twice"
    if set(keys) != ids:
        return f"the ledger records {len(ids)} objects in it, the tar holds {len(keys)}" + (
            "" if len(keys) != len(ids) else ", not the same ones"
        )
    return None


def set_aside_damaged(out: Path, job_index: int) -> list[ShardDamage]:
    """Renames each damaged shard of a job to `<name>.damaged`, so that a build redoes its objects."""
    damaged = check_shards(out, job_index).damaged
    for damage in damaged:
        path = Path(out) / damage.shard
        os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
        log.warning(
            "set aside damaged shard %s (%s); its %d objects are built again",
            path,
            damage.reason,
            damage.objects,
        )
    return damaged


def repair_hint(out: Path) -> str:
    return f"run `python -m data_prep build --repair --out {out}` with the build's options (each job with its --job-index), then `data_prep index`"
