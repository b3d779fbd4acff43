"""`index`: merges every job's shards in a folder into `<out>/index.json`.

Counts come from the tar headers themselves and are checked against the ledgers, so an index
never describes a sample that is not there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from data_prep.ledger import read_ledgers
from native3d.data.schema import SCHEMA_VERSION
from native3d.data.shards import shard_keys, write_index


def build_index(out: str | os.PathLike) -> dict:
    out = Path(out)
    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("build-*.json"))]
    if not manifests:
        raise FileNotFoundError(f"{out}: no build-*.json manifests; run `python -m data_prep build --out {out}` first")
    sizes = manifests[0]["sizes"]
    for manifest in manifests[1:]:
        if manifest["sizes"] != sizes:
            raise ValueError(f"{out}: job {manifest['job_index']} was built with other sizes than job {manifests[0]['job_index']}")
    ledger = read_ledgers(out)
    in_ledger = Counter(entry["shard"] for entry in ledger.values() if entry["status"] == "ok")
    shards = []
    for path in sorted(out.glob("*.tar")):
        keys = shard_keys(path)
        if len(keys) != len(set(keys)) or in_ledger.get(path.name, 0) != len(keys):
            raise ValueError(f"{path}: holds {len(keys)} samples, the ledger names {in_ledger.get(path.name, 0)}")
        shards.append({"url": path.name, "count": len(keys)})
    failed = sum(1 for entry in ledger.values() if entry["status"] == "failed")
    index = {
        "schema_version": SCHEMA_VERSION,
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
