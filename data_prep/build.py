"""The build job: job i of N turns its share of a source's objects into WebDataset shards.

Objects are partitioned by a hash of their id, so N jobs (e.g. a SLURM array) cover every object
exactly once whatever order the source yields them in. K worker processes run
`data_prep.stages.process_item`; the main process writes shards and the ledger. A rerun of a killed
job skips the objects its ledger holds (see `data_prep.ledger`), removes leftover temporary shards,
and continues numbering after every shard it ever named, so nothing is lost or written twice.
With `repair`, the job first sets aside its shards that no longer hold what the ledger recorded
(`data_prep.integrity`), so their objects are built again. The job writes nothing (no manifest, no
folder) until its source has listed its objects, so a source that fails to start leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tqdm import tqdm

from data_prep.integrity import set_aside_damaged
from data_prep.ledger import Ledger, job_name, ledger_path, shard_name
from data_prep.sources import MeshItem
from data_prep.stages import ObjectResult, process_item
from native3d.data.schema import SCHEMA_VERSION, Sizes
from native3d.data.shards import VALID_KEY, AtomicShardWriter
from native3d.errors import InputError
from native3d.files import write_json
from native3d.geometry.mesh import DEFAULT_MAX_FACES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    out: Path
    sizes: Sizes = field(default_factory=Sizes)
    job_index: int = 0
    num_jobs: int = 1
    workers: int = 1
    shard_size: int = 64
    max_faces: int = DEFAULT_MAX_FACES
    seed: int = 0  # mixed with each object id to seed its sampling
    retry_failed: bool = False
    repair: bool = False  # set aside damaged shards first, so their objects are built again
    source: dict = field(default_factory=dict)  # how the items were selected, for the manifest

    def __post_init__(self) -> None:
        if not 0 <= self.job_index < self.num_jobs:
            raise InputError(f"--job-index must be in [0, {self.num_jobs}), got {self.job_index}")
        if self.workers < 1 or self.shard_size < 1:
            raise InputError("--workers and --shard-size must be at least 1")


@dataclass
class BuildSummary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # already in the ledger from an earlier run
    shards: int = 0
    seconds: float = 0.0
    set_aside: int = 0  # damaged shards renamed to <name>.damaged by a repair

    def line(self, job: str) -> str:
        repaired = f", {self.set_aside} damaged shards set aside" if self.set_aside else ""
        return (
            f"job {job}: {self.ok} ok, {self.failed} failed, {self.skipped} already done, "
            f"{self.shards} shards written in {self.seconds:.1f}s{repaired}"
        )


def job_of(object_id: str, num_jobs: int) -> int:
    """The job that owns an object: a stable hash of its id, independent of source order."""
    return int(hashlib.sha1(object_id.encode("utf-8")).hexdigest()[:12], 16) % num_jobs


def run_build(items: Iterable[MeshItem], config: BuildConfig) -> BuildSummary:
    out = Path(config.out)
    manifest = job_manifest(config)
    check_manifest(out, manifest)
    ledger = Ledger(ledger_path(out, config.job_index))
    ledger.repair()
    summary = BuildSummary()
    if config.repair:
        summary.set_aside = len(set_aside_damaged(out, config.job_index))
    done = ledger.latest()
    if config.retry_failed:
        done = {k: v for k, v in done.items() if v["status"] == "ok"}
    start = time.perf_counter()
    todo = list(select_items(items, config, done, summary))
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, manifest)
    for leftover in out.glob(f"{job_name(config.job_index)}-*.tar.tmp"):
        leftover.unlink()
    writer = ShardSequence(out, config, ledger, summary)
    for result in tqdm(
        process_all(todo, config), total=len(todo), desc=f"job {job_name(config.job_index)}", unit="obj"
    ):
        if result.ok:
            writer.add(result)
            summary.ok += 1
        else:
            ledger.append([ledger_entry(result)])
            summary.failed += 1
            log.warning("failed %s (%s): %s %s", result.id, result.path, result.reason, result.detail)
    writer.close()
    summary.seconds = time.perf_counter() - start
    return summary


def select_items(
    items: Iterable[MeshItem], config: BuildConfig, done: dict, summary: BuildSummary
) -> Iterator[MeshItem]:
    seen: set[str] = set()
    for item in items:
        if job_of(item.id, config.num_jobs) != config.job_index:
            continue
        if not VALID_KEY.match(item.id):
            raise InputError(
                f"object id {item.id!r} ({item.path}) may hold only letters, digits, '_' and '-'"
            )
        if item.id in seen:
            raise InputError(f"the source yields object id {item.id!r} twice ({item.path})")
        seen.add(item.id)
        if item.id in done:
            summary.skipped += 1
            continue
        yield item


def process_all(items: list[MeshItem], config: BuildConfig) -> Iterator[ObjectResult]:
    work = partial(process_item, sizes=config.sizes, max_faces=config.max_faces, seed=config.seed)
    if config.workers == 1:
        yield from map(work, items)
        return
    # spawn, not fork: VTK/EGL and BLAS thread pools are not safe to inherit through fork.
    with multiprocessing.get_context("spawn").Pool(config.workers, initializer=_limit_threads) as pool:
        yield from pool.imap(work, items, chunksize=1)


def _limit_threads() -> None:
    # One object per process; extra BLAS/OpenMP threads per worker only oversubscribe the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


class ShardSequence:
    """Fills shards of `shard_size` samples; commits each with its ledger lines."""

    def __init__(self, out: Path, config: BuildConfig, ledger: Ledger, summary: BuildSummary) -> None:
        self.out, self.config, self.ledger, self.summary = out, config, ledger, summary
        existing = [int(p.stem.split("-")[1]) for p in out.glob(f"{job_name(config.job_index)}-*.tar")]
        self.next_index = max(existing + ledger.shard_indices(), default=-1) + 1
        self.writer: AtomicShardWriter | None = None
        self.entries: list[dict] = []

    def add(self, result: ObjectResult) -> None:
        if self.writer is None:
            name = shard_name(self.config.job_index, self.next_index)
            self.writer = AtomicShardWriter(self.out / name)
            self.next_index += 1
        self.writer.write(result.id, result.sample)
        self.entries.append(ledger_entry(result, shard=self.writer.path.name))
        if len(self.entries) >= self.config.shard_size:
            self.commit()

    def commit(self) -> None:
        # Ledger lines first, then the rename: a kill between the two leaves ok lines that
        # name a missing shard, which `Ledger.latest` ignores, so the objects are redone.
        self.ledger.append(self.entries)
        self.writer.commit()
        self.summary.shards += 1
        self.writer, self.entries = None, []

    def close(self) -> None:
        if self.writer is not None:
            self.commit()


def ledger_entry(result: ObjectResult, shard: str | None = None) -> dict:
    entry = {
        "id": result.id,
        "path": result.path,
        "status": "ok" if result.ok else "failed",
        "reason": result.reason,
        "detail": result.detail,
        "seconds": round(result.seconds, 4),
        "stages": {k: round(v, 4) for k, v in result.stages.items()},
    }
    if shard is not None:
        entry["shard"] = shard
    return entry


def manifest_path(out: Path, job_index: int) -> Path:
    return out / f"build-{job_name(job_index)}.json"


def job_manifest(config: BuildConfig) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "sizes": config.sizes.to_dict(),
        "job_index": config.job_index,
        "num_jobs": config.num_jobs,
        "seed": config.seed,
        "source": config.source,
    }


def check_manifest(out: Path, manifest: dict) -> None:
    """A rerun with other sizes (or seed, or job count) is refused rather than mixed in."""
    path = manifest_path(out, manifest["job_index"])
    if not path.exists():
        return
    previous = json.loads(path.read_text())
    for key in ("schema_version", "sizes", "num_jobs", "seed"):
        if json.loads(json.dumps(manifest[key])) != previous.get(key):
            raise InputError(
                f"{path}: {key} was {previous.get(key)}, this run asks for {manifest[key]}; use another --out"
            )


def write_manifest(out: Path, manifest: dict) -> None:
    """Records the job's sizes, once."""
    path = manifest_path(out, manifest["job_index"])
    if path.exists():
        return
    write_json(path, manifest, sort_keys=True)
