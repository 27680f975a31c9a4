"""A folder holding one big text file (nanoGPT's `input.txt`) trains and validates with the defaults, and
`data.val_split: tail` holds out exactly the file's tail."""

from __future__ import annotations

import json
import random

import pytest

from lmscale import config, runlog
from lmscale.data import pipeline
from lmscale.data.tokenizer import Tokenizer
from lmscale.fewshot.tasks import WORDS
from tests.conftest import TINY, run_cli
from tests.test_tracking import STEPS, TINY_RUN

SMALL = TINY_RUN  # the shapes and schedule of tests/test_tracking.py: one compiled step serves both


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    """A folder with one ~1 MB `input.txt` of play-like text: speakers, lines of verse, blank lines."""
    rng = random.Random(0)
    names = [w.upper() for w in WORDS[:40]]
    speeches, size = [], 0
    while size < 1_000_000:
        lines = [
            " ".join(rng.choices(WORDS, k=rng.randint(5, 9))).capitalize() for _ in range(rng.randint(1, 6))
        ]
        speech = f"{rng.choice(names)}:\n" + ",\n".join(lines) + ".\n\n"
        speeches.append(speech)
        size += len(speech)
    folder = tmp_path_factory.mktemp("shakespeare")
    (folder / "input.txt").write_text("".join(speeches))
    return folder


def test_a_folder_with_one_text_file_trains_and_validates_with_the_defaults(shakespeare, tmp_path):
    out = tmp_path / "run"
    overrides = ["data.corpus=files", f"data.paths=[{shakespeare}]"]  # and train.steps, train.warmup_steps
    proc = run_cli("train", TINY, "--out", out, "--no-progress", *SMALL, *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = runlog.read_jsonl(out / "metrics.jsonl")
    val = [r for r in rows if r.get("split") == "val"]
    assert [r["step"] for r in val] == [4, 8, 12] and all(0 < r["loss"] < 10 for r in val)
    meta = config.read_yaml(out / "config.yaml")["meta"]["data"]["components"][0]
    # one document: the hash split would leave validation empty, so the default took each file's tail
    assert meta["val_split"] == "tail" and meta["val"]["documents"] == 1
    assert meta["val"]["tokens"] == pytest.approx(0.01 * meta["train"]["tokens"], rel=0.02)

    # the budget and the warmup were given as steps; the summary holds both forms of each
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps_budget"], summary["tokens_budget"]) == (STEPS, STEPS * 8 * 32)
    assert (summary["warmup_steps"], summary["warmup_frac"]) == (2, pytest.approx(2 / STEPS))
    # update s uses the rate after s-1 updates: a linear ramp from 0 reaches the peak after 2 updates
    assert [r["lr"] for r in rows if "lr" in r][:3] == pytest.approx([0.0, 1.5e-3, 3e-3])


@pytest.mark.parametrize("fraction", [0.1, 0.01])
def test_tail_split_holds_out_exactly_the_files_tail(shakespeare, tmp_path, fraction):
    raw = {
        "model": {"seq_len": 64},
        "data": {
            "corpus": "files",
            "paths": [str(shakespeare)],
            "val_split": "tail",
            "val_fraction": fraction,
        },
    }
    pipe = pipeline.prepare(config.validate(config.from_dict(raw), 1))
    text = (shakespeare / "input.txt").read_text()
    n = len(text)
    cut = int(n * (1 - fraction))  # nanoGPT: train_data = data[:int(n*0.9)], val_data = data[int(n*0.9):]
    tok = Tokenizer.byte()
    streams = pipe.components[0].streams
    for split, expected in (("train", text[:cut]), ("val", text[cut:])):
        ids = [int(i) for c in streams[split].chunks for i in c]
        assert ids == [*tok.encode(expected), tok.eos_id]


def test_hash_split_of_one_document_names_the_documents_and_the_fix(shakespeare, tmp_path):
    out = tmp_path / "run"
    overrides = ["data.corpus=files", f"data.paths=[{shakespeare}]", "data.val_split=hash"]
    proc = run_cli("train", TINY, "--out", out, *SMALL, *overrides)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "no validation sequence of 33 tokens (0 of its 1 documents, 0 tokens" in line
    assert "data.val_split=tail" in line and "train.eval_batches=0" in line
    assert not out.exists()
