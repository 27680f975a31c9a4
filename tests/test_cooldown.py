"""Cooldown sweeps: a branch restored from its trunk is a from-scratch WSD run, bitwise; trunks and
branches each train once whatever the processes, kills and failures; bad specs fail first."""

import dataclasses
import json
import random
import threading
import time

import pandas as pd
import pytest

from lmscale import results, runlog
from lmscale.fewshot import evaluate
from lmscale.sweep import cooldown, grid, plan, runner
from tests.conftest import run_cli
from tests.test_sweep import (
    _assert_each_step_logged_once,
    _attempts,
    _results,
    kill_sweep_when,
    run_together,
)

# One size, two budgets: 10 and 20 steps, branching from a 16-step trunk at steps 8 and 16.
SPEC = """
model: {n_layers: 1, d_model: 32, n_heads: 2, seq_len: 32, vocab_size: 320}
train: {batch_size: 8, lr: 0.01, warmup_steps: 4, log_every: 1, eval_every: 5, eval_batches: 2}
checkpoint: {every_steps: 5}
sweep:
  sizes: {shapes: [{n_layers: 1, d_model: 32, n_heads: 2}]}
  tokens: {cooldowns: {budgets: [2560, 5120]}}
  eval: {tasks: [add2], shots: [0], examples: 4}
"""
NAME = "cool"
TRUNK, BRANCHES = "L1-D32-trunk-s0", ["L1-D32-T2.56K-s0", "L1-D32-T5.12K-s0"]


def _rows_logged(sweep_dir):
    runs = [d for d in sweep_dir.glob("*") if d.is_dir()]
    return sum(len(runlog.read_jsonl(d / "metrics.jsonl")) for d in runs)


def _losses(run_dir):
    return [
        (r["step"], r.get("split"), r["loss"], r.get("lr"))
        for r in runlog.read_jsonl(run_dir / "metrics.jsonl")
    ]


@pytest.mark.slow  # ~15 s: a trunk, two branches and a from-scratch run
def test_a_branch_gives_bitwise_the_losses_of_a_from_scratch_wsd_run(straight, tmp_path):
    sweep_dir, _ = straight
    branch = sweep_dir / BRANCHES[0]
    scratch = tmp_path / "scratch"
    proc = run_cli("train", branch / "config.yaml", "--out", scratch, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(branch) == _losses(scratch)  # every step's loss and lr, and the validation losses
    _assert_each_step_logged_once(branch)  # the rows up to the branch point come from the trunk
    summary = json.loads((branch / "summary.json").read_text())
    again = json.loads((scratch / "summary.json").read_text())
    assert (
        summary["final_loss"] == again["final_loss"] and summary["final_val_loss"] == again["final_val_loss"]
    )
    assert (summary["trunk"], summary["branch_step"], summary["role"]) == (TRUNK, 8, "branch")
    assert (summary["tokens"], summary["flops"]) == (again["tokens"], again["flops"])  # from step 0
    assert summary["flops_spent"] == pytest.approx(summary["flops"] * 2 / 10)  # its own 2 of 10 steps


@pytest.mark.slow
def test_a_cooldown_sweep_records_one_row_per_branch_and_evaluates_only_branches(straight):
    results = _results(straight[0])
    assert list(results.index) == sorted([TRUNK, *BRANCHES]) and (results["status"] == "completed").all()
    assert results.loc[TRUNK, "role"] == "trunk" and results.loc[TRUNK, "steps"] == 16
    assert results.loc[BRANCHES, "role"].tolist() == ["branch"] * 2
    assert results.loc[BRANCHES, "branch_step"].tolist() == [8, 16]
    assert results.loc[BRANCHES, "tokens"].tolist() == [2560, 5120]
    assert set(pd.read_csv(straight[0] / "fewshot.csv")["run_id"]) == set(BRANCHES)
    kept = sorted(int(p.name) for p in (straight[0] / TRUNK / "checkpoints").iterdir() if p.name.isdigit())
    assert {8, 16} <= set(kept)  # every branch point is kept on the trunk


@pytest.mark.slow  # ~60 s: five sweep processes
def test_three_sigkills_of_a_cooldown_sweep_lose_nothing_and_train_no_trunk_twice(spec, straight, tmp_path):
    sweep_dir, _ = straight
    rng = random.Random(1)
    # Kill once the sweep has logged a random number of rows: during the trunk, a branch, or between.
    total = _rows_logged(sweep_dir)
    for target in sorted(rng.sample(range(2, total - 2), 3)):
        kill_sweep_when(spec, tmp_path, lambda target=target: _rows_logged(tmp_path / "cool") >= target)
    proc = run_cli("sweep", spec, "--out", tmp_path, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed, clean = _results(tmp_path / "cool"), _results(sweep_dir)
    assert list(killed.index) == list(clean.index)  # every branch once
    for column in ("status", "steps", "tokens", "flops", "flops_spent", "final_loss", "final_val_loss"):
        assert killed[column].fillna(0).tolist() == clean[column].fillna(0).tolist(), column
    for run_id in [TRUNK, *BRANCHES]:
        _assert_each_step_logged_once(tmp_path / "cool" / run_id)
        assert _losses(tmp_path / "cool" / run_id) == _losses(sweep_dir / run_id)
    trunk = runlog.read_jsonl(tmp_path / "cool" / TRUNK / "metrics.jsonl")
    assert [r["step"] for r in trunk if "split" not in r] == list(range(1, 17))  # trained once, resumed


@pytest.mark.slow  # ~40 s: two fresh sweep processes; the threaded test below covers the logic
def test_two_concurrent_processes_train_every_trunk_and_branch_exactly_once(spec, tmp_path):
    run_together(spec, tmp_path)
    for run_id in [TRUNK, *BRANCHES]:
        assert len(_attempts(tmp_path / "cool" / run_id)) == 1, run_id
        _assert_each_step_logged_once(tmp_path / "cool" / run_id)


# -- the runner's logic, with a stand-in for training (no compilation) ---------------------------


def _fake_train(calls, diverge=(), pause=0.0):
    """Writes a completed (or diverged) summary, and for a trunk its kept checkpoints."""

    def train(cfg, run_dir, progress=True, lock=True):
        done = results.read_summary(run_dir) or {}
        if done.get("status") == "completed":
            return done
        calls.append(run_dir.name)
        diverged = run_dir.name in diverge
        steps = cfg.steps // 2 if diverged else cfg.steps
        for step in cfg.checkpoint.keep_steps:
            if step <= steps:
                (run_dir / "checkpoints" / str(step)).mkdir(parents=True, exist_ok=True)
                (run_dir / "checkpoints" / str(step) / "state").write_text(str(step))
            time.sleep(pause)
        time.sleep(pause)
        status = "diverged" if diverged else "completed"
        summary = {"status": status, "params": cfg.model.d_model, "steps": steps, "tokens": cfg.train.tokens}
        summary |= {"flops": 1.0, "final_loss": 1.5, "fewshot": {}}
        runlog.write_json(run_dir / "summary.json", summary)
        return summary

    return train


@pytest.fixture
def cool_sweep():
    shapes = [{"n_layers": 1, "d_model": d, "n_heads": 2} for d in (32, 64)]
    spec = {"sizes": {"shapes": shapes}, "tokens": {"cooldowns": {"budgets": [2560, 5120, 10240]}}}
    raw = {"model": {"seq_len": 32}, "train": {"batch_size": 8, "warmup_steps": 4}, "sweep": spec}
    return grid.expand(raw, "cool")


def test_cooldown_cells_are_a_constant_lr_trunk_per_size_then_its_wsd_branches(cool_sweep):
    cells = cool_sweep.cells
    assert [c.role for c in cells] == ["trunk", "branch", "branch", "branch"] * 2  # cheapest size first
    trunk, branches = cells[0], cells[1:4]
    assert trunk.run_id == "L1-D32-trunk-s0" and trunk.cfg.train.schedule == "constant"
    assert [b.branch_step for b in branches] == [8, 16, 32] == trunk.cfg.checkpoint.keep_steps
    assert trunk.cfg.steps == 32 and {b.trunk for b in branches} == {trunk.run_id}
    assert {(b.cfg.train.schedule, b.cfg.train.decay_frac) for b in branches} == {("wsd", 0.2)}
    assert [b.cfg.steps for b in branches] == [10, 20, 40]
    assert [runner.assigned(cells, i, 2) for i in range(2)] == [cells[:4], cells[4:]]  # trunk with branches


def test_eval_runs_largest_evaluates_only_the_longest_branch_of_each_size(cool_sweep):
    assert grid.evaluated(cool_sweep) == {c.run_id for c in cool_sweep.cells if c.role == "branch"}
    largest = dataclasses.replace(cool_sweep, eval=dataclasses.replace(cool_sweep.eval, runs="largest"))
    assert grid.evaluated(largest) == {"L1-D32-T10.2K-s0", "L1-D64-T10.2K-s0"}
    df, _ = plan.table(largest, 1, budget_s=None)
    assert set(df["run_id"]) >= grid.evaluated(largest)  # the run ids name real cells
    hook = evaluate.after_train(largest.eval, grid.evaluated(largest))
    short = next(c for c in largest.cells if c.run_id == "L1-D32-T2.56K-s0")
    assert hook(short, None, {"status": "completed"}) == {"status": "completed"}  # left as it is, no eval


def test_two_concurrent_runners_train_every_trunk_and_branch_once(cool_sweep, tmp_path, monkeypatch):
    import lmscale.train

    calls = []
    monkeypatch.setattr(lmscale.train, "train", _fake_train(calls, pause=0.05))
    monkeypatch.setattr(runner, "POLL_S", 0.02)
    threads = [
        threading.Thread(target=runner.run_sweep, args=(cool_sweep, tmp_path), kwargs={"progress": False})
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(calls) == sorted(c.run_id for c in cool_sweep.cells)  # each exactly once
    sweep_dir = tmp_path / "cool"
    for cell in cool_sweep.cells:
        assert len(_attempts(sweep_dir / cell.run_id)) == 1
    for cell in cool_sweep.cells[1:4]:  # each branch started from its own point on the trunk
        assert (sweep_dir / cell.run_id / "checkpoints" / str(cell.branch_step) / "state").exists()
    results = _results(sweep_dir)
    assert (results["status"] == "completed").all() and results["role"].value_counts().to_dict() == {
        "branch": 6,
        "trunk": 2,
    }


def test_a_trunk_that_diverges_fails_its_pending_branches_with_the_reason(cool_sweep, tmp_path, monkeypatch):
    import lmscale.train

    calls = []
    monkeypatch.setattr(lmscale.train, "train", _fake_train(calls, diverge={"L1-D32-trunk-s0"}))
    status = runner.run_sweep(cool_sweep, tmp_path, progress=False)
    # the trunk diverged at step 16: the branch from step 8 and the one from 16 still train
    assert [status[c.run_id] for c in cool_sweep.cells[:4]] == [
        "diverged",
        "completed",
        "completed",
        "failed",
    ]
    summary = json.loads((tmp_path / "cool" / "L1-D32-T10.2K-s0" / "summary.json").read_text())
    assert summary["error"] == "trunk L1-D32-trunk-s0 diverged at step 16, before the branch point"
    assert summary["trunk"] == "L1-D32-trunk-s0" and summary["branch_step"] == 32
    assert "L1-D32-T10.2K-s0" not in calls


def test_plan_counts_the_compute_from_scratch_and_what_the_cooldown_sweep_spends():
    shapes = [{"n_layers": 1, "d_model": 32, "n_heads": 2}]
    budgets = [25600 * 2**k for k in range(4)]  # 100 to 800 steps, spaced 2x
    spec = {"sizes": {"shapes": shapes}, "tokens": {"cooldowns": {"budgets": budgets}}, "eval": False}
    sweep = grid.expand({"model": {"seq_len": 32}, "train": {"batch_size": 8}, "sweep": spec}, "cost")
    df, totals = plan.table(sweep, n_devices=1, budget_s=None)
    per_step = plan.step_flops(sweep.cells[0].cfg)
    assert totals["flops"] == pytest.approx(per_step * (100 + 200 + 400 + 800))  # branches, from step 0
    assert totals["flops_spent"] == pytest.approx(per_step * (640 + 0.2 * 1500))  # trunk + the decays
    assert totals["flops_spent"] / totals["flops"] == pytest.approx(9.4 / 15)
    text = plan.render(df, totals, "1 x cpu")
    assert "1 trunk, 4 branches" in text and "0.63x" in text


COOL = "sweep.tokens.cooldowns"


@pytest.mark.parametrize(
    "tokens, message",
    [
        ({"cooldowns": {"per_param": [5, 10], "decay_frac": 1.0}}, f"{COOL}.decay_frac=1: must be in (0, 1)"),
        ({"cooldowns": {"per_param": [5, 10], "decay_frac": 0}}, f"{COOL}.decay_frac=0: must be in (0, 1)"),
        ({"cooldowns": {"budgets": [5120, 2560]}}, f"{COOL}.budgets=[5120, 2560]: budgets must increase"),
        ({"cooldowns": {"budgets": [2560, 2560]}}, f"{COOL}.budgets=[2560, 2560]: budgets must increase"),
        ({"cooldowns": {"per_param": [5, -10]}}, f"{COOL}.per_param=-10: must be a positive number"),
        ({"cooldowns": {"budgets": [2560]}, "per_param": [20]}, "not per_param, cooldowns"),
        ({"cooldowns": {"budgets": [2560]}, "isoflop": {"budgets": [1e12]}}, "not isoflop, cooldowns"),
        ({"cooldowns": {"per_param": [1], "budgets": [2560]}}, f"{COOL}: give one of per_param and budgets"),
        ({"cooldowns": {"budgets": [1024, 2560]}}, "train.schedule=wsd: no room for warmup plus decay in 4"),
    ],
)
def test_bad_cooldown_specs_exit_2_with_one_line_naming_the_key(tmp_path, tokens, message):
    path = tmp_path / "bad.yaml"
    body = {"model": {"seq_len": 32}, "train": {"batch_size": 8, "warmup_steps": 4}}
    sizes = {"shapes": [{"n_layers": 1, "d_model": 32, "n_heads": 2}]}
    path.write_text(json.dumps(body | {"sweep": {"sizes": sizes, "tokens": tokens}}))
    proc = run_cli("sweep", path, "--out", tmp_path / "runs", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_overriding_what_the_cooldowns_set_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    sizes = {"shapes": [{"n_layers": 1, "d_model": 32, "n_heads": 2}]}
    path.write_text(json.dumps({"sweep": {"sizes": sizes, "tokens": {"cooldowns": {"budgets": [1e5]}}}}))
    proc = run_cli("plan", path, "train.decay_frac=0.1", cwd=tmp_path)
    assert proc.returncode == 2 and "train.decay_frac is set by sweep.tokens.cooldowns" in proc.stderr


def test_seeding_a_branch_links_the_trunk_checkpoint_and_keeps_the_rows_a_scratch_run_logs(tmp_path):
    cell = next(c for c in grid.expand(
        {"model": {"seq_len": 32}, "train": {"batch_size": 8, "warmup_steps": 4, "log_every": 2,
         "eval_every": 4}, "sweep": {"tokens": {"cooldowns": {"budgets": [2560, 5120]}}}}, "s").cells
        if c.role == "branch")  # fmt: skip
    trunk, branch = tmp_path / "trunk", tmp_path / "branch"
    (trunk / "checkpoints" / "8").mkdir(parents=True)
    (trunk / "checkpoints" / "8" / "state").write_text("weights")
    rows = [{"step": s, "loss": 1.0} for s in range(1, 17)] + [{"step": 4, "split": "val", "loss": 2.0}]
    rows += [{"step": 9, "split": "val", "loss": 2.0}]  # the trunk's end: not a scratch run's row
    runlog.write_atomic(trunk / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    branch.mkdir()
    cooldown.seed(cell, trunk, branch)
    assert [(r["step"], r.get("split")) for r in runlog.read_jsonl(branch / "metrics.jsonl")] == [
        (2, None), (4, None), (6, None), (8, None), (4, "val"),
    ]  # fmt: skip
    assert (branch / "checkpoints" / "8" / "state").stat().st_ino == (
        trunk / "checkpoints" / "8" / "state"
    ).stat().st_ino
    cooldown.seed(cell, trunk, branch)  # seeded once: its own checkpoints are never replaced
    assert cooldown.started(branch)


def _chinchilla(N, D):
    return 1.69 + 406.4 / N**0.34 + 410.7 / D**0.28  # Hoffmann et al. 2022, eq. 10


def _fake_cooldown_results(sweep_dir):
    """Five sizes and five budgets, 2x apart (so IsoFLOP diagonals), losses from Chinchilla's law; each
    size's trunk with a loss far below every branch, as no finished schedule would have."""
    sizes, budgets = (
        [2e6 * 2**i for i in range(5)],
        [4e7 * 2**j for j in range(5)],
    )  # 2x apart: IsoFLOP diagonals
    for i, N in enumerate(sizes):
        trunk = f"N{i}-trunk"
        run = {"status": "completed", "params": N, "steps": 800, "tokens": 0.8 * budgets[-1]}
        run |= {"flops_6nd": 6 * N * 0.8 * budgets[-1], "final_loss": 0.5, "final_val_loss": 0.5}
        (sweep_dir / trunk).mkdir(parents=True)
        runlog.write_json(
            sweep_dir / trunk / "summary.json", run | {"role": "trunk"}
        )  # mid-schedule: far off
        for j, D in enumerate(budgets):
            loss = _chinchilla(N, D)
            branch = {
                "status": "completed",
                "params": N,
                "steps": 100 * 2**j,
                "tokens": D,
                "flops_6nd": 6 * N * D,
            }
            branch |= {"final_loss": loss, "final_val_loss": loss, "role": "branch", "trunk": trunk}
            (sweep_dir / f"N{i}-D{j}").mkdir()
            runlog.write_json(sweep_dir / f"N{i}-D{j}" / "summary.json", branch | {"branch_step": 80 * 2**j})
    runner.write_tables(sweep_dir)


def test_analysis_leaves_trunks_out_and_draws_each_sizes_curve_through_its_branch_end_points(tmp_path):
    from analysis.load import load_curves, load_results

    _fake_cooldown_results(tmp_path / "cool")
    loaded = load_results(tmp_path / "cool")
    assert len(loaded.runs) == 25 and loaded.excluded == 5 and (loaded.runs["role"] == "branch").all()
    curves = load_curves(tmp_path / "cool")
    assert len(curves) == 25 and set(curves["run_id"]) == {f"N{i}-trunk" for i in range(5)}
    assert curves["loss"].min() > 1.69  # end points of finished schedules, no trunk point


@pytest.mark.slow  # ~15 s: every fit compiles
def test_approaches_1_2_and_3_fit_a_cooldown_sweep_and_leave_its_trunks_out(tmp_path):
    from analysis.sweep import analyse

    _fake_cooldown_results(tmp_path / "cool")
    found = analyse(tmp_path / "cool", bootstrap=0)
    assert {"approach1", "approach2", "chinchilla"} <= set(found.fits), found.missing
    assert len(found.results.runs) == 25 and found.results.excluded == 5  # the trunks
    assert found.fits["chinchilla"].params["alpha"] == pytest.approx(0.34, abs=0.01)
    assert all(point["loss"] > 1.69 for point in found.fits["approach1"].extra["frontier"])  # no trunk point
