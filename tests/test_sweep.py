"""The sweep runner: kills lose nothing, concurrent processes and workers train each cell exactly once,
failures are recorded and skipped over, and the results tables always describe every run directory."""

import json
import random
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from lmscale import runlog
from lmscale.results import FEWSHOT_COLUMNS, TRAINING_COLUMNS
from lmscale.sweep import grid, runner
from tests.conftest import lmscale_env, run_cli

# Three cells of 20 steps each, then a small evaluation. They differ by seed, so they share one shape:
# the first compiles it, and the others find its programs in the session's compilation cache (the
# runner treats every cell alike; test_grid covers how sizes expand).
SPEC = """
model: {n_layers: 1, d_model: 32, n_heads: 2, seq_len: 32, vocab_size: 320}
train: {batch_size: 8, tokens: 5120, lr: 0.01, log_every: 1, eval_every: 10, eval_batches: 2}
checkpoint: {every_steps: 5}
sweep:
  sizes:
    shapes: [{n_layers: 1, d_model: 32, n_heads: 2}]
  seeds: [0, 1, 2]
  eval: {tasks: [add2, reverse], shots: [0, 1], examples: 8}
"""
NAME = "mini"
RUN_IDS = {"L1-D32-T5.12K-s0", "L1-D32-T5.12K-s1", "L1-D32-T5.12K-s2"}


def kill_sweep_when(spec, out, ready) -> None:
    """Start a sweep process, SIGKILL it once `ready()` is true, and check it had not finished first."""
    proc = subprocess.Popen(
        _sweep_cmd(spec, out), env=lmscale_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.kill()
    proc.wait()


def run_together(spec, out, n: int = 2) -> list[subprocess.Popen]:
    """`n` sweep processes on one sweep at once, each checked to exit 0."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen(_sweep_cmd(spec, out), env=lmscale_env(), **pipes) for _ in range(n)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return procs


def _sweep_cmd(spec, out, *args):
    return [sys.executable, "-m", "lmscale", "sweep", str(spec), "--out", str(out), "--no-progress", *args]


def _results(sweep_dir):
    return pd.read_csv(sweep_dir / "results.csv").set_index("run_id").sort_index()


def _attempts(run_dir):
    return runlog.read_jsonl(run_dir / runner.ATTEMPTS)


def _assert_each_step_logged_once(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = [r["step"] for r in runlog.read_jsonl(run_dir / "metrics.jsonl") if "split" not in r]
    assert steps == list(range(1, summary["steps"] + 1)), run_dir.name


def test_sweep_writes_every_run_and_both_tables(straight):
    sweep_dir, _ = straight
    results = _results(sweep_dir)
    assert set(results.index) == RUN_IDS
    assert (results["status"] == "completed").all()
    assert (results["tokens"] == 5120).all() and (results["n_layers"] == 1).all()
    assert results.loc["L1-D32-T5.12K-s2", "seed"] == 2
    assert results["final_loss"].nunique() == 3  # each seed its own run
    assert "fewshot" not in results.columns
    assert {"params", "params_nonembedding", "flops", "flops_6nd", "final_loss", "final_val_loss"} <= set(
        results
    )
    fewshot = pd.read_csv(sweep_dir / "fewshot.csv")
    assert list(fewshot.columns) == FEWSHOT_COLUMNS
    exact = fewshot[fewshot["metric"] == "exact_match"]
    assert sorted(zip(exact["run_id"], exact["task"], exact["shots"], strict=True)) == sorted(
        (r, t, k) for r in RUN_IDS for t in ("add2", "reverse") for k in (0, 1)
    )  # every run evaluated once, on the sweep's tasks and shot counts
    assert (exact["n"] == 8).all() and exact["value"].between(0, 1).all()
    for run_id in RUN_IDS:
        _assert_each_step_logged_once(sweep_dir / run_id)
        rows = runlog.read_jsonl(sweep_dir / run_id / "fewshot.jsonl")
        assert len(rows) == 2 * 2 * 8 and {r["step"] for r in rows} == {20}
        assert len(_attempts(sweep_dir / run_id)) == 1


def test_a_rerun_of_a_finished_sweep_trains_nothing(spec, straight):
    sweep_dir, _ = straight
    before = _results(sweep_dir)
    evaluated = {r: (sweep_dir / r / "fewshot.jsonl").stat().st_mtime_ns for r in RUN_IDS}
    proc = run_cli("sweep", spec, "--out", sweep_dir.parent, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 completed" in proc.stdout
    assert all(len(_attempts(sweep_dir / r)) == 1 for r in RUN_IDS)
    pd.testing.assert_frame_equal(_results(sweep_dir), before)
    assert {
        r: (sweep_dir / r / "fewshot.jsonl").stat().st_mtime_ns for r in RUN_IDS
    } == evaluated  # not redone


def test_a_run_dir_holding_another_config_stops_the_sweep_with_exit_2(spec, straight):
    sweep_dir, _ = straight
    before = (sweep_dir / "results.csv").read_text()
    proc = run_cli("sweep", spec, "--out", sweep_dir.parent, "--no-progress", "train.lr=0.02")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "train.lr=0.02 differs from 0.01" in proc.stderr
    assert (sweep_dir / "results.csv").read_text() == before


@pytest.mark.slow  # ~50 s: five sweep processes; the in-process tests below cover the lock logic
def test_three_sigkills_at_random_moments_lose_nothing(spec, straight, tmp_path):
    sweep_dir, duration = straight
    rng = random.Random(0)
    for _ in range(3):
        kill_at = time.time() + rng.uniform(0.1, 0.4) * duration
        kill_sweep_when(spec, tmp_path, lambda kill_at=kill_at: time.time() >= kill_at)
    proc = run_cli("sweep", spec, "--out", tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed, clean = _results(tmp_path / "mini"), _results(sweep_dir)
    assert list(killed.index) == list(clean.index) == sorted(RUN_IDS)  # no run missing or duplicated
    for column in ("status", "steps", "tokens", "flops", "params", "final_loss", "final_val_loss"):
        assert killed[column].tolist() == clean[column].tolist(), column  # losses bitwise equal
    fewshot = [pd.read_csv(d / "fewshot.csv") for d in (tmp_path / "mini", sweep_dir)]
    pd.testing.assert_frame_equal(*fewshot)  # evaluation too: a kill before it leaves it to the rerun
    for run_id in RUN_IDS:
        _assert_each_step_logged_once(tmp_path / "mini" / run_id)
        rows = [runlog.read_jsonl(d / run_id / "metrics.jsonl") for d in (tmp_path / "mini", sweep_dir)]
        assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]


def test_two_concurrent_sweeps_train_every_cell_exactly_once(spec, tmp_path):
    procs = run_together(spec, tmp_path)
    sweep_dir = tmp_path / "mini"
    attempts = {run_id: _attempts(sweep_dir / run_id) for run_id in RUN_IDS}
    assert all(len(a) == 1 for a in attempts.values()), attempts
    assert {a[0]["pid"] for a in attempts.values()} == {p.pid for p in procs}  # both shared the work
    for run_id in RUN_IDS:
        _assert_each_step_logged_once(sweep_dir / run_id)
    assert (_results(sweep_dir)["status"] == "completed").all() and len(_results(sweep_dir)) == 3


@pytest.mark.slow
def test_three_worker_processes_cover_every_cell_exactly_once(spec, tmp_path):
    procs = [
        subprocess.Popen(
            _sweep_cmd(spec, tmp_path, "--worker", str(i), "--num-workers", "3"),
            env=lmscale_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    cells = grid.load(spec).cells
    sweep_dir = tmp_path / "mini"
    for i in range(3):
        for cell in runner.assigned(cells, i, 3):
            attempts = _attempts(sweep_dir / cell.run_id)
            assert [a["worker"] for a in attempts] == [i], cell.run_id
    assert set(_results(sweep_dir).index) == RUN_IDS and (_results(sweep_dir)["status"] == "completed").all()


@pytest.mark.parametrize(
    "spec_text, message",
    [
        ("sweep: {axes: {train.bogus: [1, 2]}}", "sweep.axes.train.bogus: unknown config key 'train.bogus'"),
        ("sweep: {seeds: []}", "sweep.seeds=[]: an empty list makes the grid empty"),
        (
            "sweep: {sizes: {params: [3.0e+4], aspect_ratio: 32, n_heads: 5}}",
            "not divisible by model.n_heads=5",
        ),
        ("sweep: {tokens: {fixed: [-1.0e+6]}}", "sweep.tokens.fixed=-1e+06: must be a positive number"),
        ("sweep: {eval: {tasks: [nope]}}", "sweep.eval.tasks: unknown task 'nope'"),
    ],
)
def test_bad_specs_exit_2_with_one_line_before_any_run_dir(tmp_path, spec_text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(spec_text + "\n")
    proc = run_cli("sweep", path, "--out", tmp_path / "runs", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_plan_rejects_a_bad_spec_the_same_way(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sweep: {axes: {model.depth: [1, 2]}}\n")
    proc = run_cli("plan", path, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "sweep.axes.model.depth: unknown config key 'model.depth'" in proc.stderr


def test_bad_worker_numbers_exit_2(spec, tmp_path):
    proc = run_cli("sweep", spec, "--out", tmp_path / "runs", "--worker", "3", "--num-workers", "3")
    assert proc.returncode == 2 and "--worker=3: must be in [0, 3)" in proc.stderr
    assert not (tmp_path / "runs").exists()


# -- the runner's logic, with a stand-in for training (no compilation) ---------------------------


def _fake_train(fail=(), diverge=(), calls=None):
    def train(cfg, run_dir, progress=True, lock=True):
        done = (
            json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        )
        if done.get("status") == "completed":  # like the trainer: a completed run is returned as it is
            return done
        if calls is not None:
            calls.append(run_dir.name)
        if run_dir.name in fail:
            raise RuntimeError("out of memory\nsecond line")
        status = "diverged" if run_dir.name in diverge else "completed"
        summary = {"status": status, "params": cfg.model.d_model, "tokens": cfg.train.tokens, "flops": 1.0,
                   "final_loss": 1.5, "fewshot": {}}  # fmt: skip
        runlog.write_json(run_dir / "summary.json", summary)
        return summary

    return train


@pytest.fixture
def fake_sweep():
    spec = {"sizes": {"shapes": [{"n_layers": 1, "d_model": d, "n_heads": 2} for d in (32, 64, 128)]}}
    raw = {"model": {"seq_len": 32}, "train": {"batch_size": 8, "tokens": 2560}, "sweep": spec}
    return grid.expand(raw, "fake")


def test_failed_runs_are_marked_the_sweep_carries_on_and_a_rerun_retries_them(
    fake_sweep, tmp_path, monkeypatch
):
    import lmscale.train

    first, second = fake_sweep.cells[0].run_id, fake_sweep.cells[1].run_id
    monkeypatch.setattr(lmscale.train, "train", _fake_train(fail={first}, diverge={second}))
    status = runner.run_sweep(fake_sweep, tmp_path, progress=False)
    assert list(status.values()) == ["failed", "diverged", "completed"]
    results = _results(tmp_path / "fake")
    assert results.loc[first, "status"] == "failed"
    assert results.loc[first, "error"] == "training: RuntimeError: out of memory"
    assert "RuntimeError" in (tmp_path / "fake" / first / "error.log").read_text()
    calls = []
    monkeypatch.setattr(lmscale.train, "train", _fake_train(calls=calls))
    status = runner.run_sweep(fake_sweep, tmp_path, progress=False)
    assert calls == [first]  # failed runs are retried; diverged and completed ones are final
    assert list(status.values()) == ["completed", "diverged", "completed"]


def test_workers_split_the_cells_round_robin_and_cover_each_once(fake_sweep, tmp_path, monkeypatch):
    import lmscale.train

    calls = []
    monkeypatch.setattr(lmscale.train, "train", _fake_train(calls=calls))
    shares = [runner.assigned(fake_sweep.cells, i, 2) for i in range(2)]
    assert [c.run_id for c in shares[0]] == [c.run_id for c in fake_sweep.cells[0::2]]
    for i in range(2):
        runner.run_sweep(fake_sweep, tmp_path, worker=i, num_workers=2, progress=False)
    assert sorted(calls) == sorted(c.run_id for c in fake_sweep.cells)
    for i, share in enumerate(shares):
        assert all([a["worker"] for a in _attempts(tmp_path / "fake" / c.run_id)] == [i] for c in share)
    assert set(_results(tmp_path / "fake").index) == {c.run_id for c in fake_sweep.cells}


def test_a_cell_locked_elsewhere_is_skipped_then_waited_for(fake_sweep, tmp_path, monkeypatch):
    import lmscale.train

    calls = []
    monkeypatch.setattr(lmscale.train, "train", _fake_train(calls=calls))
    locked = tmp_path / "fake" / fake_sweep.cells[0].run_id
    locked.mkdir(parents=True)
    with runner.flocked(locked / runner.LOCK, block=True):
        thread = threading.Thread(
            target=runner.run_sweep, args=(fake_sweep, tmp_path), kwargs={"progress": False}
        )
        thread.start()
        deadline = time.time() + 30
        while len(calls) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert calls == [c.run_id for c in fake_sweep.cells[1:]] and thread.is_alive()  # waiting on the lock
    thread.join(timeout=30)
    assert calls[-1] == locked.name and not thread.is_alive()


def test_after_train_hooks_feed_fewshot_csv_and_rerun_on_every_visit(fake_sweep, tmp_path, monkeypatch):
    import lmscale.train

    monkeypatch.setattr(lmscale.train, "train", _fake_train())
    visits = []

    def evaluate(cell, run_dir, summary):
        visits.append(cell.run_id)
        score = {"value": 0.5, "stderr": 0.1, "n": 40}
        return summary | {"fewshot": {"copy": {"0": {"acc": score}, "4": {"acc": score}}}}

    runner.run_sweep(fake_sweep, tmp_path, progress=False, after_train=[evaluate])
    runner.run_sweep(fake_sweep, tmp_path, progress=False, after_train=[evaluate])
    assert len(visits) == 6
    fewshot = pd.read_csv(tmp_path / "fake" / "fewshot.csv")
    assert len(fewshot) == 6 and set(fewshot["shots"]) == {0, 4} and set(fewshot["task"]) == {"copy"}
    assert fewshot.iloc[0][["metric", "value", "stderr", "n"]].tolist() == ["acc", 0.5, 0.1, 40]
    assert "fewshot" not in pd.read_csv(tmp_path / "fake" / "results.csv").columns


def test_a_failed_evaluation_keeps_the_trained_run_in_the_fits_and_a_rerun_only_evaluates(
    fake_sweep, tmp_path, monkeypatch
):
    import lmscale.train

    trained = []
    monkeypatch.setattr(lmscale.train, "train", _fake_train(calls=trained))
    largest = fake_sweep.cells[-1].run_id

    def evaluate(cell, run_dir, summary):
        if cell.run_id == largest and len(trained) == 3:  # the first visit: out of memory
            raise MemoryError("decoder batch of 64")
        return summary | {"fewshot": {"copy": {"0": {"acc": {"value": 0.5, "stderr": 0.1, "n": 4}}}}}

    status = runner.run_sweep(fake_sweep, tmp_path, progress=False, after_train=[evaluate])
    assert status[largest] == runner.EVAL_FAILED
    row = _results(tmp_path / "fake").loc[largest]
    assert row["status"] == "completed" and row["final_loss"] == 1.5
    assert row["error"] == "after training: MemoryError: decoder batch of 64"
    assert "MemoryError" in (tmp_path / "fake" / largest / "error.log").read_text()
    trained.append("the evaluation is fixed")
    runner.run_sweep(fake_sweep, tmp_path, progress=False, after_train=[evaluate])
    assert trained == [c.run_id for c in fake_sweep.cells] + ["the evaluation is fixed"]  # no retraining
    summary = json.loads((tmp_path / "fake" / largest / "summary.json").read_text())
    assert "error" not in summary and summary["fewshot"]["copy"]["0"]["acc"]["value"] == 0.5


def _mini_spec(eval_spec):
    raw = {"model": {"seq_len": 32}, "train": {"batch_size": 8, "tokens": 2560}}
    return raw | {
        "sweep": {"sizes": {"shapes": [{"n_layers": 1, "d_model": 32, "n_heads": 2}]}, "eval": eval_spec}
    }


def test_eval_spec_defaults_to_every_task_and_can_be_turned_off():
    assert grid.expand(_mini_spec(None), "m").eval == grid.EvalSpec()
    assert grid.expand(_mini_spec(False), "m").eval is None
    spec = grid.expand(_mini_spec({"tasks": ["add2"], "shots": [0, 1], "examples": 5}), "m").eval
    assert spec == grid.EvalSpec(("add2",), (0, 1), 5, 64)


@pytest.mark.parametrize(
    "eval_spec, message",
    [
        ({"tasks": ["add9"]}, "sweep.eval.tasks: unknown task 'add9'"),
        ({"shots": [0, 16]}, "sweep.eval.shots: 16 is more than the 8 demonstrations"),
        ({"shots": [8]}, "sweep.eval.shots: 8-shot prompts of task 'add2' need"),
        ({"examples": 0}, "sweep.eval.examples=0"),
        ({"metric": "x"}, "unknown sweep key 'sweep.eval.metric'"),
        ({"steps": "some"}, "sweep.eval.steps='some': expected latest or all"),
    ],
)
def test_bad_eval_specs_fail_at_expansion(eval_spec, message):
    with pytest.raises(grid.ConfigError, match=message.replace("(", r"\(")):
        grid.expand(_mini_spec(eval_spec), "m")


def test_the_eval_hook_evaluates_only_what_a_run_is_missing(fake_sweep, tmp_path, monkeypatch):
    from lmscale.fewshot import evaluate

    calls = []

    def evaluate_run(run_dir, names, shots, examples, batch_size):
        calls.append((list(names), shots))
        return {name: {str(k): {"exact_match": {}} for k in shots} for name in names}

    monkeypatch.setattr(evaluate, "evaluate_run", evaluate_run)
    hook = evaluate.after_train(grid.EvalSpec(("add2", "recall"), (0, 4), 10))
    summary = hook(
        None, tmp_path, {"status": "completed", "fewshot": {"add2": {"0": {}, "4": {}}, "recall": {"0": {}}}}
    )
    assert calls == [(["recall"], (0, 4))]
    assert set(summary["fewshot"]) == {"add2", "recall"} and set(summary["fewshot"]["recall"]) == {"0", "4"}
    assert hook(None, tmp_path, summary) == summary and len(calls) == 1  # nothing missing: nothing run


def test_the_eval_hook_with_steps_all_evaluates_each_kept_checkpoint_once(tmp_path, monkeypatch):
    from lmscale.fewshot import evaluate

    calls = []

    def evaluate_run(run_dir, names, shots, examples, batch_size, steps="latest", per_step=False):
        calls.append((list(names), steps))
        table = {name: {str(k): {"exact_match": {}} for k in shots} for name in names}
        return {step: table for step in steps} if per_step else table

    monkeypatch.setattr(evaluate, "evaluate_run", evaluate_run)
    monkeypatch.setattr(evaluate, "open_run", lambda run_dir: None)
    monkeypatch.setattr(evaluate, "checkpoint_steps", lambda run: [10, 20, 30, 40])
    hook = evaluate.after_train(grid.EvalSpec(("add2", "recall"), (0,), 10, steps="all"))
    start = {"status": "completed", "fewshot": {}, "fewshot_steps": {"10": {"add2": {"0": {}}}}}
    summary = hook(None, tmp_path, start)
    # StepFns 20, 30 and the final 40 lack the same tasks, so they share one restore loop (one compile).
    assert calls == [(["recall"], [10]), (["add2", "recall"], [20, 30, 40])]
    assert list(summary["fewshot_steps"]) == ["10", "20", "30"]
    assert set(summary["fewshot_steps"]["10"]) == {"add2", "recall"}
    assert set(summary["fewshot"]) == {"add2", "recall"}
    assert hook(None, tmp_path, summary) == summary and len(calls) == 2  # a rerun: nothing left to do
    # A final checkpoint lacking other tasks than the earlier ones gets a restore loop of its own.
    calls.clear()
    partial = {**summary, "fewshot": {"add2": {"0": {}}}}
    partial["fewshot_steps"] = {**summary["fewshot_steps"], "20": {"recall": {"0": {}}}}
    again = hook(None, tmp_path, partial)
    assert calls == [(["add2"], [20]), (["recall"], [40])]
    assert set(again["fewshot"]) == {"add2", "recall"}
    assert set(again["fewshot_steps"]["20"]) == {"add2", "recall"}


def test_runs_evaluated_at_several_checkpoints_fill_fewshot_training_csv(tmp_path):
    sweep_dir = tmp_path / "s"

    def table(value):
        return {"copy": {"4": {"exact_match": {"value": value, "stderr": 0.1, "n": 4}}}}

    for run_id, earlier in (("small", {"50": table(0.25)}), ("once", {})):
        run = sweep_dir / run_id
        run.mkdir(parents=True)
        summary = {"status": "completed", "params": 1000, "steps": 100, "tokens": 6400, "flops": 1e9}
        summary |= {"fewshot": table(0.5), "fewshot_steps": earlier}
        runlog.write_json(run / "summary.json", summary)
    runner.write_tables(sweep_dir)
    training = pd.read_csv(sweep_dir / "fewshot_training.csv")
    assert list(training.columns) == TRAINING_COLUMNS
    em = training[training["metric"] == "exact_match"]
    assert set(em["run_id"]) == {"small"}  # one evaluated step is no curve
    assert em[["step", "tokens", "flops", "value"]].values.tolist() == [
        [50, 3200, 5e8, 0.25],
        [100, 6400, 1e9, 0.5],
    ]
    assert not any(c.startswith("fewshot") for c in pd.read_csv(sweep_dir / "results.csv").columns)
    assert len(pd.read_csv(sweep_dir / "fewshot.csv")) == 2  # the final checkpoints only
