"""The record of one evaluation: `metrics.json` (values, settings, per-object rows, failures)
and `metrics.md` (the same as markdown tables), both written atomically (temporary name, then
`os.replace`, `native3d.files`), so a reader never sees half a report.

`metrics.json` holds:

    kind        "reconstruction" or "generation"
    inputs      what was evaluated (checkpoint, shard sets, mesh folder), as given
    settings    everything the numbers depend on (point counts, thresholds, conventions,
                normalization, seeds) plus each metric's own `MetricResult.settings`
    summary     the headline numbers (means over objects, set-level statistics, counts)
    rows        one dict per evaluated object
    failures    one dict per object that was named and skipped: {"id", "reason", "detail"}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from native3d.files import write_atomic, write_json


@dataclass
class EvaluationReport:
    kind: str
    inputs: dict[str, Any]
    settings: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value: Any) -> Any:
    """Tensors, numpy values and tuples as plain JSON types; NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(report: EvaluationReport, out: str | os.PathLike) -> tuple[Path, Path]:
    """Writes `<out>/metrics.json` and `<out>/metrics.md`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    write_json(json_path, data)
    write_atomic(md_path, markdown(data))
    return json_path, md_path


def markdown(data: dict[str, Any]) -> str:
    """The report as markdown: summary, settings, per-object rows, failures."""
    lines = [f"# {data['kind']} metrics", ""]
    lines += [f"- {k}: `{v}`" for k, v in data["inputs"].items()] + [""]
    lines += ["## Summary", "", *table([{"metric": k, "value": v} for k, v in data["summary"].items()])]
    lines += ["## Settings", "", *table([{"setting": k, "value": v} for k, v in data["settings"].items()])]
    if data["rows"]:
        lines += [f"## Objects ({len(data['rows'])})", "", *table(data["rows"])]
    lines += [f"## Failures ({len(data['failures'])})", ""]
    lines += table(data["failures"]) if data["failures"] else ["none", ""]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines + [""]


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")
