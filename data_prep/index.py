"""`index`: merges every job's shards in a folder into `<out>/index.json`.

Counts come from the tar headers themselves and are checked against the ledgers
(`data_prep.integrity`), so an index never describes a sample that is not there: a folder with a
damaged shard is not indexed, and the error names every damaged shard. Each shard's size in bytes
is recorded too, so a reader finds a shard cut short before it reads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from data_prep.integrity import check_shards, repair_hint
from data_prep.ledger import read_ledgers
from native3d.data.schema import DamagedShardError
from native3d.data.shards import shard_entry, write_index
from native3d.errors import InputError, MissingFileError


def build_index(out: str | os.PathLike) -> dict:
    out = Path(out)
    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("build-*.json"))]
    if not manifests:
        raise MissingFileError(
            f"{out}: no build-*.json manifests; run `python -m data_prep build --out {out}` first"
        )
    sizes = manifests[0]["sizes"]
    for manifest in manifests[1:]:
        for key in ("sizes", "schema_version"):
            if manifest[key] != manifests[0][key]:
                raise InputError(
                    f"{out}: job {manifest['job_index']} was built with other {key} than job {manifests[0]['job_index']}"
                )
    check = check_shards(out)
    if damaged := check.damaged:
        lines = "; ".join(d.line() for d in damaged)
        raise DamagedShardError(
            f"{out}: {len(damaged)} damaged shard{'s' * (len(damaged) > 1)}, not indexed: {lines}; {repair_hint(out)}"
        )
    ledger = read_ledgers(out)
    shards = [shard_entry(out / name, count) for name, count in check.intact.items()]
    failed = sum(1 for entry in ledger.values() if entry["status"] == "failed")
    index = {
        "schema_version": manifests[0]["schema_version"],  # a folder built by older code stays its version
        "sizes": sizes,
        "shards": shards,
        "num_samples": sum(s["count"] for s in shards),
        "num_failed": failed,
        "jobs": sorted({m["job_index"] for m in manifests}),
        "num_jobs": manifests[0]["num_jobs"],
        "sources": [m["source"] for m in manifests],
    }
    write_index(out, index)
    return index
