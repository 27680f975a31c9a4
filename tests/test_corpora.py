"""Bad corpora fail before training: one line that names the problem, exit status 2, no run dir."""

from __future__ import annotations

import json

import pytest

from lmscale import config
from lmscale.data import pipeline
from tests.conftest import TINY, run_cli

SMALL = ["model.seq_len=32", "train.batch_size=8", "train.tokens=2560", "train.eval_batches=0"]
CASES = [
    "missing path",
    "empty corpus",
    "jsonl without the text field",
    "non-UTF-8 bytes",
    "seq_len longer than every document",
    "mixture weights summing to zero",
    "a negative mixture weight",
    "an unknown key in a mixture component",
    "only null documents",
    "a mixture component shorter than one sequence",
]
WORDS = " ".join(["lorem", "ipsum", "dolor", "sit", "amet"] * 20)


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def bad_cases(tmp):
    """Case name -> (overrides, parts of the one-line message)."""
    no_field = write(tmp / "nofield.jsonl", json.dumps({"body": WORDS}) + "\n")
    latin1 = write(tmp / "latin1" / "notes.txt", b"caf\xe9 " + WORDS.encode())
    short = write(tmp / "short" / "a.txt", "tiny document")
    empty = write(tmp / "empty" / "a.txt", "")
    nulls = write(tmp / "nulls.jsonl", json.dumps({"text": None}) + "\n" + json.dumps({"text": ""}) + "\n")
    long = write(tmp / "long" / "a.txt", WORDS)
    return {
        "missing path": (
            ["data.corpus=files", f"data.paths=[{tmp / 'nowhere'}]"],
            ["data.paths", "does not exist"],
        ),
        "empty corpus": (["data.corpus=files", f"data.paths=[{empty.parent}]"], ["empty"]),
        "jsonl without the text field": (
            ["data.corpus=files", f"data.paths=[{no_field}]"],
            ["data.text_field='text'", str(no_field)],
        ),
        "non-UTF-8 bytes": (
            ["data.corpus=files", f"data.paths=[{latin1}]"],
            [str(latin1), "byte offset 3", "decode_errors"],
        ),
        "seq_len longer than every document": (
            ["data.corpus=files", f"data.paths=[{short}]"],
            ["model.seq_len=32", "longer than every document"],
        ),
        "mixture weights summing to zero": (
            [
                "data.corpus=mixture",
                "data.mixture=[{corpus: synthetic, weight: 0}, {corpus: stdlib, weight: 0}]",
            ],
            ["data.mixture", "positive"],
        ),
        "a negative mixture weight": (
            ["data.corpus=mixture", "data.mixture=[{corpus: synthetic, weight: -1}]"],
            ["data.mixture[0].weight=-1"],
        ),
        "an unknown key in a mixture component": (
            ["data.corpus=mixture", "data.mixture=[{corpus: synthetic, wieght: 1}]"],
            ["data.mixture[0].wieght"],
        ),
        "only null documents": (
            ["data.corpus=files", f"data.paths=[{nulls}]"],
            ["data.corpus='files'", "empty", "2 null or empty documents dropped"],
        ),
        "a mixture component shorter than one sequence": (
            [
                "data.corpus=mixture",
                f"data.mixture=[{{corpus: files, paths: [{long}]}}, {{corpus: files, paths: [{short}]}}]",
            ],
            ["data.mixture[1].corpus='files'", "14 training tokens", "model.seq_len+1=33"],
        ),
    }


@pytest.mark.parametrize("case", CASES)
def test_bad_corpus_exits_2_with_one_line_before_training(tmp_path, case):
    overrides, expected = bad_cases(tmp_path)[case]
    out = tmp_path / "run"
    proc = run_cli("train", TINY, "--out", out, "--no-progress", *SMALL, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for part in expected:
        assert part in lines[0]
    assert not out.exists()


QUIET = ["missing path", "empty corpus", "jsonl without the text field"]


@pytest.mark.parametrize("case", QUIET)
def test_with_progress_on_a_bad_corpus_still_prints_only_its_error(tmp_path, case):
    overrides, expected = bad_cases(tmp_path)[case]
    proc = run_cli("train", TINY, "--out", tmp_path / "run", *SMALL, *overrides)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow  # a fresh interpreter imports JAX again: ~5 s a case
@pytest.mark.parametrize("case", QUIET)
def test_in_a_fresh_process_a_bad_corpus_prints_only_its_error(tmp_path, case):
    """A fresh interpreter: every handler (datasets' logging, tqdm) writes to the real stderr."""
    overrides, expected = bad_cases(tmp_path)[case]
    proc = run_cli("train", TINY, "--out", tmp_path / "run", *SMALL, *overrides, fresh=True)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("lmscale train: error: ") and all(part in line for part in expected)
    assert not (tmp_path / "run").exists()


def test_decode_errors_replace_reads_the_file_with_replacement_characters(tmp_path):
    latin1 = write(tmp_path / "notes.txt", b"caf\xe9 " + WORDS.encode())
    raw = {
        "model": {"seq_len": 32},
        "train": {"eval_batches": 0},
        "data": {
            "corpus": "files",
            "paths": [str(latin1)],
            "decode_errors": "replace",
            "cache_dir": str(tmp_path),
        },
    }
    pipe = pipeline.prepare(config.validate(config.from_dict(raw), 1))
    text = pipe.tokenizer.decode(pipe.components[0].streams["train"].chunks[0])
    assert text.startswith("caf\ufffd lorem")
