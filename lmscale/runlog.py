"""The files of a run directory: `metrics.jsonl`, `summary.json`, `config.yaml`, written safely."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

# The one atomic write of both packages; lmscale's callers keep calling it runlog.write_atomic.
from analysis.atomic import write_atomic


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_yaml(path: Path, obj: Any) -> None:
    write_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def finite_or_none(row: dict) -> dict:
    """JSON has no NaN or Inf: a diverged loss is written as null rather than as invalid JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a kill mid-write) is dropped."""
    rows = []
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class MetricsLog:
    """Append-only `metrics.jsonl`. On resume from step k, rows after k are dropped first, so the
    replayed steps are logged once, never twice."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = Path(path)
        kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step] if resume_step else []
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(finite_or_none(row), default=_jsonable) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
