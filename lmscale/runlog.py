"""The files of a run directory: `metrics.jsonl`, `summary.json`, `config.yaml`, written safely, and the
lock (`.lock`) that keeps one process at a time training a run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# The one atomic write of both packages; lmscale's callers keep calling it runlog.write_atomic.
from analysis import atomic
from analysis.atomic import write_atomic
from lmscale.config import ConfigError

LOCK = ".lock"  # per run: held by the one process that trains it; it holds that process's pid and host


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
    replayed steps are logged once, never twice. Each row also goes to `mirror` (`tracking.Trackers`)."""

    def __init__(self, path: Path, resume_step: int | None, mirror: Any = None):
        self.path, self.mirror = Path(path), mirror
        kept = [r for r in read_jsonl(self.path) if r["step"] <= resume_step] if resume_step else []
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")

    def write(self, row: dict) -> None:
        row = finite_or_none(row)
        self.file.write(json.dumps(row, default=_jsonable) + "\n")
        self.file.flush()
        if self.mirror is not None:
            self.mirror.write(row)

    def close(self) -> None:
        self.file.close()
        if self.mirror is not None:
            self.mirror.close()


@contextlib.contextmanager
def flocked(path: Path, block: bool) -> Iterator[bool]:
    """Hold an exclusive flock on `path` for the block; yields False if `block` is off and it is taken.

    The holder writes its pid and host into the file (`holder` reads them back). The kernel drops the
    lock when its holder dies, even by SIGKILL."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it: `pid 123 on host`."""
    try:
        return Path(path).read_text().strip() or "another process"
    except OSError:
        return "another process"


def check_writable(path: Path, what: str, directory: bool) -> None:
    """ConfigError (one line) unless `path` can be written: `analysis.atomic.check_writable`."""
    try:
        atomic.check_writable(path, what, directory)
    except atomic.NotWritable as e:
        raise ConfigError(str(e)) from None


def one_line(error: BaseException) -> str:
    """An error as one line: an OSError in its chain as `PATH: cause` (a full disk, a read-only or
    missing directory), anything else as its type and first line."""
    e: BaseException | None = error
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        e = e.__cause__ or e.__context__
    text = str(error).strip()
    # Orbax writes through tensorstore, whose errors carry the file and errno in their text
    failed = re.search(r'Failed writing: "([^"]+)".*os_error_code=.(\d+)', text)
    if failed:
        return f"{failed[1]}: {os.strerror(int(failed[2]))}"
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
