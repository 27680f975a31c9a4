"""File output for lmscale and analysis alike: atomic writes (readers see the old file or the new one,
never half) and the check that an output can be written before any work is done for it."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Write beside `path` under a name no other writer uses, fsync, then rename over it.

    The file gets the mode a plain `open()` gives (0o666 less the umask), so results on a shared
    filesystem stay readable by the people they are shared with.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class NotWritable(ValueError):
    """An output location that cannot be written; the message names it and is one line."""


def check_writable(path: Path, what: str, directory: bool) -> None:
    """NotWritable unless `path` can be written, as a directory (made if missing) or a file: checked
    before any work, so a bad output fails at once rather than after a run or a fit."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise NotWritable(
            f"{what} '{path}' " + ("exists and is not a directory" if directory else "is a directory")
        )
    base = path if path.exists() and directory else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise NotWritable(f"{what} '{path}': '{base}' is not a directory")
    try:  # a real file, not os.access: root passes access checks on read-only mounts too
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise NotWritable(f"{what} '{path}': '{base}' is not writable ({e.strerror})") from None
