"""`lmscale emergence` on synthetic lm-eval-shaped tables with known midpoints, groups and noise."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis.emergence import emergence_midpoints
from analysis.evaltable import Options, load_table
from lmscale.cli import main

SIZES = np.logspace(7.85, 10.15, 8)  # 70M to 14B
SHARP_LOG10_MID, SMOOTH_LOG10_MID = 9.2, 9.6
CHANCE = 0.25
N_EXAMPLES = 1000
MAPPING = [
    *("--model-col", "Model", "--params-col", "Params", "--shots-col", "num_fewshot", "--task-col", "Task"),
    *("--metric-col", "Metric", "--value-col", "Value", "--n-col", "n_samples"),
]


def accuracy(task: str, log10_n: np.ndarray) -> np.ndarray:
    """True accuracy: a sharp rise, a smooth one, or flat at chance (four-way multiple choice)."""
    if task == "flat":
        return np.full_like(log10_n, CHANCE)
    slope, mid = (5.0, SHARP_LOG10_MID) if task == "sharp" else (0.9, SMOOTH_LOG10_MID)
    return CHANCE + (1 - CHANCE) / (1 + np.exp(-slope * (log10_n - mid)))


def lm_eval_table(seed: int = 0, tasks=("sharp", "smooth", "flat")) -> pd.DataFrame:
    """Long table as lm-eval results flatten to: acc, acc_norm, acc_stderr and perplexity per model."""
    rng = np.random.default_rng(seed)
    rows = []
    for family, offset in (("pythia", 0.0), ("pythia-deduped", 0.01)):
        for shots in (0, 5):
            for task in tasks:
                p = np.clip(accuracy(task, np.log10(SIZES)) + (offset if task != "flat" else 0), 0, 1)
                se = np.sqrt(p * (1 - p) / N_EXAMPLES)
                acc = p - 0.02 * (task != "flat") + rng.normal(0, se)
                norm = p + rng.normal(0, se)
                ppl = 30.0 * (SIZES / 1e8) ** -0.2
                for i, n in enumerate(SIZES):
                    model = f"{family}-{i}"
                    for metric, value in (
                        ("acc", acc[i]),
                        ("acc_stderr", se[i]),
                        ("acc_norm", norm[i]),
                        ("perplexity", ppl[i]),
                    ):
                        rows.append((model, family, n, shots, task, metric, value, N_EXAMPLES))
    columns = ["Model", "Family", "Params", "num_fewshot", "Task", "Metric", "Value", "n_samples"]
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture(scope="module")
def emerged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmeval")
    lm_eval_table().to_csv(tmp / "evals.csv", index=False)
    chance = [a for t in ("sharp", "smooth", "flat") for a in ("--chance", f"{t}={CHANCE}")]
    argv = ["emergence", tmp / "evals.csv", "--out", tmp / "out", *MAPPING, "--group-col", "Family", *chance]
    assert main([str(a) for a in argv]) == 0
    return pd.read_csv(tmp / "out" / "midpoints.csv", keep_default_na=False, na_values=[""]), tmp / "out"


def test_sharp_task_midpoint_lies_inside_its_interval_for_every_group_and_shot_count(emerged):
    table, _ = emerged
    sharp = table[(table["task"] == "sharp") & (table["metric"] == "acc_norm")]
    assert len(sharp) == 4  # 2 groups x 2 shot counts, each its own curve
    assert set(sharp["group"]) == {"pythia", "pythia-deduped"}
    assert (sharp["reason"].fillna("") == "").all()
    assert ((sharp["ci_low"] <= 10**SHARP_LOG10_MID) & (10**SHARP_LOG10_MID <= sharp["ci_high"])).all()


def test_flat_task_gets_no_midpoint_and_says_no_significant_rise(emerged):
    table, _ = emerged
    flat = table[(table["task"] == "flat") & (table["metric"].isin(["acc", "acc_norm"]))]
    assert flat["midpoint"].isna().all()
    assert flat["reason"].str.contains("no significant rise|flat curve|no sigmoid").all()


def test_acc_norm_is_preferred_stderr_rows_fold_in_and_perplexity_falls(emerged):
    table, out = emerged
    assert "acc" not in set(table["metric"]) and "acc_stderr" not in set(table["metric"])
    assert {"acc_norm", "perplexity"} <= set(table["metric"])
    summary = (out / "summary.md").read_text()
    assert "| sharp | acc_norm |" in summary.replace("pythia-deduped | ", "").replace("pythia | ", "")
    assert json.loads((out / "midpoints.json").read_text())[0]["task"] in {"flat", "sharp", "smooth"}
    assert (out / "emergence.png").is_file()


def test_acc_and_its_stderr_are_read_when_metrics_are_chosen(tmp_path):
    lm_eval_table(tasks=("sharp",)).to_csv(tmp_path / "e.csv", index=False)
    columns = {"model": "Model", "params": "Params", "shots": "num_fewshot", "task": "Task"}
    columns |= {"metric": "Metric", "value": "Value", "group": "Family"}
    table = load_table(tmp_path / "e.csv", Options(columns, metrics=("acc",)))
    assert set(table["metric"]) == {"acc"} and table["stderr"].notna().all()


def _flat_midpoints(seed: int) -> int:
    columns = {"model": "Model", "params": "Params", "shots": "num_fewshot", "task": "Task"}
    columns |= {"metric": "Metric", "value": "Value", "group": "Family", "n": "n_samples"}
    raw = lm_eval_table(seed, tasks=("flat",))
    table = load_table_frame(raw, columns)
    mids = emergence_midpoints(table.assign(chance=CHANCE), bootstrap=0)
    return int(np.isfinite(mids["midpoint"]).sum())


def load_table_frame(raw: pd.DataFrame, columns: dict, tmp=None) -> pd.DataFrame:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        raw.to_csv(Path(d) / "e.csv", index=False)
        return load_table(Path(d) / "e.csv", Options(columns, metrics=("acc_norm",)))


@pytest.mark.slow
def test_flat_task_gets_no_midpoint_in_95_of_100_noise_draws():
    draws = [_flat_midpoints(seed) for seed in range(100)]
    assert sum(d == 0 for d in draws) >= 95, draws


@pytest.mark.parametrize(
    "change, extra, message",
    [
        (None, ["--task-col", "Benchmark"], "no column 'Benchmark' \\(given for --task-col\\)"),
        (
            lambda df: df.assign(Value=df["Value"].astype(object).where(df.index != 7, "abc")),
            [],
            "line 9: column 'Value' has non-numeric value 'abc'",
        ),
        (None, ["--chance", "hellaswag=0.25"], "--chance: unknown task 'hellaswag'"),
        (None, ["--predict", "1e15", "--bootstrap", "0"], "--predict 1e\\+15: outside 3 decades"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, change, extra, message):
    raw = lm_eval_table(tasks=("sharp",))
    (change(raw) if change else raw).to_csv(tmp_path / "e.csv", index=False)
    argv = ["emergence", str(tmp_path / "e.csv"), *MAPPING, "--group-col", "Family", *extra]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("emergence: error: ")
    assert re.search(message, err), err


def test_models_of_one_size_are_an_error_unless_grouped_or_averaged(tmp_path, capsys):
    lm_eval_table(tasks=("sharp",)).to_csv(tmp_path / "e.csv", index=False)
    argv = ["emergence", str(tmp_path / "e.csv"), *MAPPING, "--bootstrap", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "models pythia-0, pythia-deduped-0 share params=" in err and "--group-col" in err
    assert err.count("\n") == 1
    assert main([*argv, "--aggregate", "mean"]) == 0
    table = pd.read_csv(tmp_path / "o" / "midpoints.csv")
    assert len(table[table["metric"] == "acc_norm"]) == 2  # one averaged curve per shot count


def test_lm_eval_result_files_become_a_table_the_command_reads(tmp_path):
    from analysis.lmeval import lmeval_table

    sizes = {"org/m-70m": 7e7, "org/m-160m": 1.6e8, "org/m-410m": 4.1e8}
    for i, name in enumerate(sizes):
        result = {
            "results": {"piqa": {"alias": "piqa", "acc,none": 0.6 + i / 20, "acc_stderr,none": 0.01}},
            "n-shot": {"piqa": 5},
            "n-samples": {"piqa": {"original": 1838, "effective": 1838}},
            "config": {"model_args": f"pretrained={name},dtype=float16"},
        }
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "results_2024.json").write_text(json.dumps(result))
    lmeval_table(tmp_path, sizes).to_csv(tmp_path / "long.csv", index=False)
    table = load_table(tmp_path / "long.csv")
    assert set(table["metric"]) == {"acc"} and (table["shots"] == 5).all()
    assert table["stderr"].tolist() == [0.01] * 3 and sorted(table["params"]) == sorted(sizes.values())


def test_a_sweep_directory_is_read_with_its_chance_column_under_both_command_names(tmp_path, capsys):
    from analysis.cli import main as analysis_main
    from tests.test_emergence import make_fewshot

    fewshot = make_fewshot(np.logspace(6, 9, 7)).assign(chance=0.0)
    fewshot.to_csv(tmp_path / "fewshot.csv", index=False)
    assert analysis_main(["emergence", str(tmp_path), "--bootstrap", "50"]) == 0
    table = pd.read_csv(tmp_path / "emergence" / "midpoints.csv")
    exact = table[table["metric"] == "exact_match"]
    assert (exact["chance"] == 0.0).all() and np.isfinite(exact["midpoint"]).all()
    assert "| addition | exact_match |" in (tmp_path / "emergence" / "summary.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as help_exit:
        main(["emergence", "--help"])
    assert help_exit.value.code == 0 and "--group-col" in capsys.readouterr().out


def test_a_fresh_emergence_process_loads_neither_jax_nor_scipy_stats_and_keeps_blas_to_one_thread(tmp_path):
    import os
    import subprocess
    import sys

    lm_eval_table(tasks=("sharp",)).to_csv(tmp_path / "e.csv", index=False)
    argv = ["emergence", str(tmp_path / "e.csv"), *MAPPING, "--group-col", "Family", "--bootstrap", "0"]
    code = (
        "import os, sys; from lmscale.cli import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'jax' or m.startswith('scipy.stats')); "
        "print(heavy, os.environ['OPENBLAS_NUM_THREADS']); sys.exit(rc)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[] 1"
