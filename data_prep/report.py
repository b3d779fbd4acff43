"""`report`: what a build produced: counts, failure reasons grouped, per-stage timing percentiles,
and the shards that no longer hold what the ledger recorded (`data_prep.integrity`): their objects
count as damaged, not ok, until `data_prep build --repair` builds them again."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from data_prep.integrity import check_shards, repair_hint
from data_prep.ledger import read_ledgers

PERCENTILES = (50, 90, 99)


def build_report(out: str | os.PathLike) -> dict:
    entries = list(read_ledgers(Path(out)).values())
    damaged = check_shards(Path(out)).damaged
    in_damaged = sum(d.objects for d in damaged)
    failed = [e for e in entries if e["status"] == "failed"]
    reasons = Counter(e["reason"] for e in failed)
    examples: dict[str, list[str]] = defaultdict(list)
    for entry in failed:
        if len(examples[entry["reason"]]) < 3:
            examples[entry["reason"]].append(
                f"{entry['id']} ({entry.get('path')}): {entry.get('detail', '')}"
            )
    stage_seconds: dict[str, list[float]] = defaultdict(list)
    for entry in entries:
        if entry["status"] == "ok":
            for stage, seconds in entry.get("stages", {}).items():
                stage_seconds[stage].append(seconds)
            stage_seconds["total"].append(entry["seconds"])
    timings = {
        stage: {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
        | {"max": max(values), "sum": sum(values)}
        for stage, values in stage_seconds.items()
    }
    return {
        "objects": len(entries),
        "ok": len(entries) - len(failed) - in_damaged,
        "failed": len(failed),
        "damaged": in_damaged,
        "damaged_shards": {d.shard: d.reason for d in damaged},
        "repair": repair_hint(Path(out)) if damaged else None,
        "failure_reasons": dict(reasons.most_common()),
        "failure_examples": dict(examples),
        "timings": timings,
    }


def format_report(report: dict) -> str:
    lines = [
        f"objects: {report['objects']}  ok: {report['ok']}  failed: {report['failed']}  damaged: {report['damaged']}"
    ]
    if report["damaged_shards"]:
        lines.append(f"damaged shards ({report['damaged']} objects in them); {report['repair']}:")
        lines.extend(f"  {shard}: {reason}" for shard, reason in report["damaged_shards"].items())
    if report["failure_reasons"]:
        lines.append("failures by reason:")
        for reason, count in report["failure_reasons"].items():
            lines.append(f"  {reason:<24} {count:>6}")
            lines.extend(f"      e.g. {example}" for example in report["failure_examples"][reason])
    if report["timings"]:
        header = "  ".join(f"{c:>8}" for c in (*(f"p{p}" for p in PERCENTILES), "max", "share"))
        lines.append(f"seconds per object by stage:\n  {'stage':<12}{header}")
        total = report["timings"].get("total", {}).get("sum") or 1.0
        for stage, t in report["timings"].items():
            share = "" if stage == "total" else f"{100 * t['sum'] / total:7.1f}%"
            cells = "  ".join(f"{t[f'p{p}']:8.3f}" for p in PERCENTILES)
            lines.append(f"  {stage:<12}{cells}  {t['max']:8.3f}  {share:>8}")
    return "\n".join(lines)
