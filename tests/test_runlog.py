"""Atomic writes: readers see the old file or the new one, with the mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from analysis.atomic import write_atomic as analysis_write_atomic
from lmscale import runlog


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("write", [runlog.write_atomic, analysis_write_atomic])
def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask, write):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = tmp_path / "results.csv"
    write(written, "a,b\n1,2\n")
    assert written.read_text() == "a,b\n1,2\n"
    assert mode(written) == mode(plain) == 0o666 & ~umask
    write(written, "a,b\n3,4\n")  # rewriting keeps it so
    assert written.read_text() == "a,b\n3,4\n" and mode(written) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "results.csv"]


def test_run_files_are_readable_by_others(tmp_path, umask):
    runlog.write_json(tmp_path / "summary.json", {"status": "completed"})
    runlog.write_yaml(tmp_path / "config.yaml", {"train": {"seed": 0}})
    runlog.MetricsLog(tmp_path / "metrics.jsonl", resume_step=None).close()
    for name in ("summary.json", "config.yaml", "metrics.jsonl"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    runlog.write_json(path, {"status": "completed"})
    with pytest.raises(TypeError):
        runlog.write_atomic(path, object())
    assert path.read_text() == '{\n  "status": "completed"\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
