"""A mixture's validation loss per component: summary columns a law can be fitted to, with each
component's own floor beside it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.load import load_curves, load_results
from lmscale import config
from lmscale.data import pipeline
from tests.conftest import run_cli

SYNTHETIC = {"documents": 300, "doc_words": 48, "words": 512, "classes": 16, "branching": 4}
MIXTURE = [
    {"corpus": "synthetic", "weight": 0.5, "label": "language", "synthetic": SYNTHETIC},
    {"corpus": "tasks", "weight": 0.3, "tasks": {"names": ["reverse"], "documents": 400}},
    {"corpus": "tasks", "weight": 0.2, "tasks": {"names": ["recall"], "documents": 400}},
]


def write_config(tmp_path, mixture: list[dict]) -> str:
    raw = {
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": 32},
        "train": {"batch_size": 8, "steps": 12, "eval_every": 6, "eval_batches": 5, "log_every": 6},
        "checkpoint": {"every_steps": 6, "final": False},
        "data": {"corpus": "mixture", "mixture": mixture, "val_fraction": 0.2},
    }
    path = tmp_path / "mixture.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_mixture_reports_each_components_validation_loss_and_floor(tmp_path):
    cfg_path = write_config(tmp_path, MIXTURE)
    proc = run_cli("train", cfg_path, "--out", tmp_path / "run", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    labels = ["language", "tasks_1", "tasks_2"]  # an unlabelled corpus that repeats gets its index
    losses = np.array([summary[f"final_val_loss_{label}"] for label in labels])
    assert np.all(np.isfinite(losses)) and len(set(losses)) == 3
    # 40 validation rows, stratified 20/12/8 by the weights: the overall loss is their weighted mean
    counts = np.bincount(pipeline.stratified_rows(np.array([0.5, 0.3, 0.2]), 40), minlength=3)
    assert counts.tolist() == [20, 12, 8]
    assert summary["final_val_loss"] == pytest.approx(counts @ losses / 40, rel=1e-9)
    # the synthetic language's floor is known, the task text's is not, and the mixture's then is not
    assert config.load(cfg_path).data.components()[0].label == "language"
    assert summary["data_entropy_rate_language"] > 0
    assert summary["data_entropy_rate_tasks_1"] is None and summary["data_entropy_rate"] is None
    # every validation row of metrics.jsonl carries the same per-component losses
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("split") == "val"][-1]
    assert [last[f"loss_{label}"] for label in labels] == losses.tolist()
    # approach 1's curves of one component are its validation losses, not the mixture's training loss
    curves = load_curves(tmp_path, "final_val_loss_tasks_2")
    assert curves["step"].tolist() == [6, 12] and curves["loss"].iloc[-1] == losses[2]
    assert load_curves(tmp_path)["loss"].iloc[-1] == last_train_loss(rows)


def last_train_loss(rows: list[dict]) -> float:
    return [r["loss"] for r in rows if "split" not in r][-1]


def test_a_component_loss_column_is_fitted_against_that_components_floor(tmp_path):
    table = pd.DataFrame(
        {
            "params": [1e4, 2e4, 4e4],
            "tokens": [1e6, 1e6, 1e6],
            "final_val_loss": [2.0, 1.9, 1.8],
            "final_val_loss_language": [1.0, 0.9, 0.8],
            "data_entropy_rate": [np.nan] * 3,
            "data_entropy_rate_language": [0.7] * 3,
        }
    )
    table.to_csv(tmp_path / "results.csv", index=False)
    whole = load_results(tmp_path / "results.csv").runs
    assert whole["loss"].tolist() == [2.0, 1.9, 1.8] and whole["data_entropy_rate"].isna().all()
    part = load_results(tmp_path / "results.csv", loss_col="final_val_loss_language")
    assert part.runs["loss"].tolist() == [1.0, 0.9, 0.8] and part.loss_source == "final_val_loss_language"
    assert part.runs["data_entropy_rate"].tolist() == [0.7] * 3


@pytest.mark.parametrize(
    "labels, message",
    [
        (["same", "same", ""], "data.mixture[1].label='same': another component has this label"),
        (["a-b", "", ""], "data.mixture[0].label"),
    ],
)
def test_a_bad_component_label_is_refused_with_its_key(tmp_path, labels, message):
    mixture = [{**c, "label": label} for c, label in zip(MIXTURE, labels, strict=True)]
    proc = run_cli("train", write_config(tmp_path, mixture), "--out", tmp_path / "run", "--no-progress")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
