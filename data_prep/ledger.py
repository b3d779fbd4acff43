"""The per-job ledger: `<out>/ledger-<job>.jsonl`, one JSON line per processed object.

Each line has `id`, `path`, `status` ("ok" or "failed"), `reason` (non-empty when failed),
`detail`, `seconds`, `stages` (seconds per stage) and, for ok objects, `shard`.
The file is append-only and the last line for an id wins. Ok lines are written just before
their shard is renamed into place, so an ok line whose shard file does not exist belongs to a
shard that was never committed (the job was killed) and does not count: the object is redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path


def job_name(job_index: int) -> str:
    return f"{job_index:04d}"


def shard_name(job_index: int, shard_index: int) -> str:
    return f"{job_name(job_index)}-{shard_index:06d}.tar"


def ledger_path(out: Path, job_index: int) -> Path:
    return Path(out) / f"ledger-{job_name(job_index)}.jsonl"


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def repair(self) -> None:
        """Cuts a torn last line (a job killed mid-write) so the next append starts clean."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as file:
                file.truncate(data.rfind(b"\n") + 1)

    def append(self, entries: Iterable[dict]) -> None:
        lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries)
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    def read(self) -> list[dict]:
        """All well-formed lines; a torn last line (killed mid-write) is ignored."""
        if not self.path.exists():
            return []
        entries = []
        with open(self.path, encoding="utf-8") as file:
            for line in file:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return entries

    def latest(self) -> dict[str, dict]:
        """The last entry per id, with ok entries of uncommitted shards removed."""
        latest: dict[str, dict] = {}
        for entry in self.read():
            if entry.get("status") == "ok" and not (self.path.parent / entry.get("shard", "")).is_file():
                continue
            latest[entry["id"]] = entry
        return latest

    def shard_indices(self) -> list[int]:
        """Every shard index a line has ever named, committed or not."""
        return [int(e["shard"].rsplit("-", 1)[1].split(".")[0]) for e in self.read() if e.get("shard")]


def read_ledgers(out: Path) -> dict[str, dict]:
    """The latest committed entry per id over every job's ledger in `out`."""
    merged: dict[str, dict] = {}
    for path in sorted(Path(out).glob("ledger-*.jsonl")):
        merged.update(Ledger(path).latest())
    return merged
