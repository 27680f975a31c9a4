"""A run's files, its resume after SIGKILL or SIGTERM, and how it stops."""

import contextlib
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

from lmscale import checkpoint
from lmscale.data.synthetic import SyntheticSource
from lmscale.data.tokenizer import Tokenizer
from lmscale.train import LoopState
from tests.conftest import TINY, lmscale_env, run_cli

SUMMARY_KEYS = {
    "status", "params", "params_nonembedding", "n_layers", "d_model", "n_heads", "d_ff",
    "vocab_size", "seq_len", "tokens", "flops", "flops_6nd", "final_loss", "final_val_loss",
    "wall_time_s", "mfu", "fewshot", "flops_causal_half",
}  # fmt: skip
METRIC_KEYS = {
    "step", "tokens", "flops", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "mfu",
}  # fmt: skip
STEPS = 40


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _final_params(run_dir):
    with ocp.CheckpointManager((run_dir / "checkpoints").absolute()) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]["params"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "straight"
    proc = run_cli("train", TINY, "--out", out, *_overrides())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _overrides():
    return [
        "model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.seq_len=32",
        "train.batch_size=8", f"train.tokens={8 * 32 * STEPS}", "train.lr=0.02", "train.log_every=1",
        "train.eval_every=10", "train.eval_batches=2", "checkpoint.every_steps=5",
        "checkpoint.keep_period=10",
    ]  # fmt: skip


def test_run_writes_the_contract_files(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["tokens"] == 8 * 32 * STEPS
    assert summary["flops_6nd"] == 6 * summary["params"] * summary["tokens"]
    assert summary["final_val_loss"] < math.log(256) - 0.3  # a uniform guess scores ln(256)
    rows = _rows(uninterrupted)
    train = [r for r in rows if "split" not in r]
    assert all(METRIC_KEYS <= set(r) for r in train)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in train] == [8 * 32 * s for s in range(1, STEPS + 1)]
    assert train[-1]["flops"] == summary["flops"]
    assert [r["step"] for r in rows if r.get("split") == "val"] == [10, 20, 30, 40]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    kept = sorted(int(p.name) for p in (uninterrupted / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [10, 20, 30, STEPS - 5, STEPS]  # keep-last-2, and every 10th step
    assert checkpoint.retained_steps(STEPS, every=5, keep=2, keep_period=10) == kept  # what plan counts
    config = yaml.safe_load((uninterrupted / "config.yaml").read_text())
    assert config["model"]["d_model"] == 32
    assert config["meta"]["versions"]["jax"] == jax.__version__
    assert config["meta"]["devices"]["count"] >= 1
    # The corpus's exact entropy rate is recorded, and the tokenizer travels with the run.
    rate = SyntheticSource().entropy_rate(Tokenizer.byte().encode)
    assert summary["data_entropy_rate"] == pytest.approx(rate, rel=1e-9)
    assert config["meta"]["data"]["entropy_rate"] == pytest.approx(rate, rel=1e-9)
    assert Tokenizer.load(uninterrupted / "tokenizer.json").fingerprint == Tokenizer.byte().fingerprint
    assert 0 < summary["data_epochs"] < 0.01


def test_learning_rate_warms_up_then_decays_to_a_tenth_at_the_end(uninterrupted):
    lrs = [r["lr"] for r in _rows(uninterrupted) if "split" not in r]
    peak = max(lrs)
    assert lrs[0] < peak and lrs.index(peak) < STEPS // 5
    # The row for step s carries the rate used by update s; the schedule ends at 10% of peak.
    assert lrs[-1] == pytest.approx(0.1 * peak, rel=0.05)


def test_resume_after_sigkill_is_bitwise_identical(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lmscale", "train", str(TINY), "--out", str(out), *_overrides()]
    kill_after = random.Random(0).randrange(5, STEPS - 10, 5)  # any checkpoint but the last
    proc = subprocess.Popen(cmd, env=lmscale_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name) for p in (out / "checkpoints").glob("[0-9]*") if p.name.isdigit()]
        if done and max(done) >= kill_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "summary.json").read_text())["status"] == "running"

    rerun = subprocess.run(cmd, env=lmscale_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    step_a, params_a = _final_params(uninterrupted)
    step_b, params_b = _final_params(out)
    assert step_a == step_b == STEPS
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = _rows(out)
    train = [r["step"] for r in rows if "split" not in r]
    assert train == list(range(1, STEPS + 1)), "every step exactly once"
    assert [r["loss"] for r in rows if "split" not in r] == [
        r["loss"] for r in _rows(uninterrupted) if "split" not in r
    ]
    assert [r["step"] for r in rows if r.get("split") == "val"] == [10, 20, 30, 40]


def test_sigterm_checkpoints_and_the_same_command_resumes(uninterrupted, tmp_path):
    out = tmp_path / "preempted"
    cmd = [sys.executable, "-m", "lmscale", "train", str(TINY), "--out", str(out), *_overrides()]
    cmd += ["checkpoint.every_steps=1000", "checkpoint.keep_period=0"]  # only SIGTERM and the end save
    proc = subprocess.Popen(cmd, env=lmscale_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").exists() and len(_rows(out)) >= 8:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "resume" in stdout.decode()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "running" and 8 <= summary["steps"] < STEPS
    step, _ = _final_params(out)
    assert step == summary["steps"]

    rerun = subprocess.run(cmd, env=lmscale_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    losses = [r["loss"] for r in _rows(out) if "split" not in r]
    assert losses == [r["loss"] for r in _rows(uninterrupted) if "split" not in r]


def test_with_several_processes_sigterm_stops_every_one_at_the_same_synchronised_step(monkeypatch):
    """Process 0 got the signal; its peer did not: both must stop after the same step, found by
    combining the flags at every `sync_every`-th step."""
    from jax.experimental import multihost_utils

    from lmscale.train import StopRequested

    gathered = []

    def allgather(flag):
        gathered.append(int(flag))
        return np.array([int(flag), 0])  # the peer's flag: not asked

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    here, peer = StopRequested(sync_every=10), StopRequested(sync_every=10)
    here.requested = True
    assert [s for s in range(1, 25) if here.now(s)] == [10, 20]  # never between synchronised steps
    assert gathered == [1, 1]
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda flag: np.array([1, int(flag)]))
    assert [s for s in range(1, 25) if peer.now(s)] == [10, 20]  # the peer stops at the same step
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    assert here.now(3) and not peer.now(10)  # one process: the signal alone decides, at once


def test_completed_run_is_left_as_it_is(uninterrupted):
    before = (uninterrupted / "metrics.jsonl").read_text()
    proc = run_cli("train", TINY, "--out", uninterrupted, *_overrides())
    assert proc.returncode == 0 and proc.stdout.startswith("completed")
    assert (uninterrupted / "metrics.jsonl").read_text() == before


def test_rerunning_a_completed_run_says_in_one_line_that_nothing_was_trained(uninterrupted):
    proc = run_cli("train", TINY, "--out", uninterrupted, "--no-progress", *_overrides())
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert f"{uninterrupted} was already complete at step {STEPS}" in proc.stdout
    assert "nothing was trained" in proc.stdout


def test_resuming_with_a_different_config_is_refused(uninterrupted):
    proc = run_cli("train", TINY, "--out", uninterrupted, *_overrides(), "train.lr=0.1")
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_nan_loss_stops_the_run_as_diverged(tmp_path):
    out = tmp_path / "diverged"
    proc = run_cli(
        "train", TINY, "--out", out, *_overrides(), "train.lr=1e30", "train.grad_clip=0",
        "train.warmup_frac=0",
    )  # fmt: skip
    assert proc.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["steps"] < STEPS
    assert _rows(out)[-1]["loss"] is None  # NaN is written as null, keeping the file valid JSON
    assert [r["loss"] for r in _rows(out)].count(None) == 1  # the first non-finite step, once
    assert f"at step {summary['steps']}" in summary["error"] and (out / "error.log").exists()


def test_the_loop_state_round_trips_through_a_checkpoints_extra_record():
    # The keys every checkpoint's extra record has held, so older checkpoints still resume.
    extra = {"data": {"position": 7}, "wall_time_s": 5.0, "train_time_s": 3.0, "last_loss": 2.5}
    extra |= {"last_val_loss": 2.75}
    t_start = time.perf_counter()
    assert LoopState.from_extra(extra, t_start).last_val_losses == {}  # older records: none
    extra |= {"last_val_losses": {"language": 2.5, "tasks": 3.0}}
    again = LoopState.from_extra(extra, t_start).to_extra()
    assert list(again) == list(extra)
    assert all(again[k] == extra[k] for k in extra if k != "wall_time_s")
    assert 5.0 <= again["wall_time_s"] <= 5.0 + time.perf_counter() - t_start
    fresh = LoopState(t_start)
    assert fresh.wall_before_s == fresh.train_time_s == 0.0 and math.isnan(fresh.last_loss)


def _holder_pid(out, procs, timeout=120):
    """The pid among `procs` that holds `out`'s lock, once one has taken it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = (out / ".lock").read_text() if (out / ".lock").exists() else ""
        for p in procs:
            if text.startswith(f"pid {p.pid} "):
                return p
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    raise AssertionError("no process took the lock")


@pytest.mark.slow
@pytest.mark.parametrize("staggered", [True, False], ids=["staggered", "together"])
def test_two_trains_into_one_directory_one_trains_and_the_other_exits_2_at_once(
    uninterrupted, tmp_path, staggered
):
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "lmscale", "train", str(TINY), "--out", str(out), "--no-progress"]
    cmd += _overrides()

    def start():
        return subprocess.Popen(cmd, env=lmscale_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    procs = [start()] if staggered else [start(), start()]
    winner = _holder_pid(out, procs)
    winner.send_signal(signal.SIGSTOP)  # hold it mid-run while the other tries
    t0 = time.time()
    if staggered:
        procs.append(start())
    (loser,) = [p for p in procs if p is not winner]
    _, err = loser.communicate(timeout=120)
    elapsed = time.time() - t0
    winner.send_signal(signal.SIGCONT)
    _, winner_err = winner.communicate(timeout=300)
    assert winner.returncode == 0, winner_err.decode()[-2000:]
    err = err.decode()
    assert loser.returncode == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert str(out) in err and f"pid {winner.pid} on " in err
    assert elapsed < 10
    rows = _rows(out)
    assert [r["step"] for r in rows if "split" not in r] == list(range(1, STEPS + 1)), "every step once"
    assert [r["loss"] for r in rows if "split" not in r] == [
        r["loss"] for r in _rows(uninterrupted) if "split" not in r
    ]


def _flip(step_dir):
    blob = max((step_dir / "state").rglob("d/*"), key=lambda f: f.stat().st_size)  # the arrays' bytes
    data = bytearray(blob.read_bytes())
    data[1000:1400] = bytes(b ^ 0xFF for b in data[1000:1400])
    blob.write_bytes(bytes(data))


def _truncate(step_dir):
    blob = max((step_dir / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])


def _empty_extra(step_dir):
    (step_dir / "extra" / "metadata").write_text("")


def _interrupted_copy(uninterrupted, out):
    """The finished run as a kill right after its last save leaves it: `running`, every checkpoint kept."""
    shutil.copytree(uninterrupted, out)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary | {"status": "running"}))


@pytest.mark.parametrize("damage", [_flip, _truncate, _empty_extra, shutil.rmtree], ids=lambda f: f.__name__)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_resumes_bitwise(
    uninterrupted, tmp_path, damage
):
    out = tmp_path / "damaged"
    _interrupted_copy(uninterrupted, out)
    damage(out / "checkpoints" / str(STEPS))
    proc = run_cli("train", TINY, "--out", out, "--no-progress", *_overrides())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    notices = proc.stderr.strip().splitlines()
    if damage is shutil.rmtree:  # a deleted checkpoint is simply not there
        assert notices == []
    else:
        assert len(notices) == 1 and f"checkpoint {STEPS} of '{out}' is unusable" in notices[0]
        assert [p.name.split("-")[0] for p in (out / checkpoint.SET_ASIDE).iterdir()] == [str(STEPS)]
    _, params_a = _final_params(uninterrupted)
    step_b, params_b = _final_params(out)
    assert step_b == STEPS
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["step"] for r in _rows(out) if "split" not in r] == list(range(1, STEPS + 1))


def test_with_no_usable_checkpoint_only_restart_from_scratch_trains_again(uninterrupted, tmp_path):
    out = tmp_path / "ruined"
    _interrupted_copy(uninterrupted, out)
    kept = sorted(p for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    for step_dir in kept:
        _empty_extra(step_dir)
    proc = run_cli("train", TINY, "--out", out, "--no-progress", *_overrides())
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == len(kept) + 1 and "--restart-from-scratch" in lines[-1] and str(out) in lines[-1]
    assert len(list((out / checkpoint.SET_ASIDE).iterdir())) == len(kept)  # moved, never deleted
    proc = run_cli("train", TINY, "--out", out, "--no-progress", "--restart-from-scratch", *_overrides())
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    _, params_a = _final_params(uninterrupted)
    _, params_b = _final_params(out)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["step"] for r in _rows(out) if "split" not in r] == list(range(1, STEPS + 1))


@contextlib.contextmanager
def _tmpfs(path, options):
    """A small tmpfs at `path` (skips the test where this process may not mount one)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_mid_save_fails_in_one_line_and_the_rerun_resumes_bitwise(uninterrupted, tmp_path):
    with _tmpfs(tmp_path / "disk", "size=700k") as disk:  # room for the step-5 checkpoint, not step 10's
        out = disk / "run"
        proc = run_cli("train", TINY, "--out", out, "--no-progress", *_overrides())
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "failed" and "No space left on device" in summary["error"]
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)  # space freed
        proc = run_cli("train", TINY, "--out", out, "--no-progress", *_overrides())
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        _, params_a = _final_params(uninterrupted)
        _, params_b = _final_params(out)
        for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert [r["step"] for r in _rows(out) if "split" not in r] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("command", ["train", "sweep", "plan", "eval", "fit", "plot", "report"])
def test_a_read_only_output_fails_before_any_work_in_one_line(tmp_path, command):
    sweep = tmp_path / "sweep"  # a results table for the reading side's commands
    sweep.mkdir()
    rows = [f"{n},{20 * n},{2 + 1e3 / n},completed" for n in (1e4, 3e4, 1e5, 3e5)]
    (sweep / "results.csv").write_text("params,tokens,loss,status\n" + "\n".join(rows) + "\n")
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as ro:
        target = {
            "train": [TINY, "--out", ro / "run"],
            "sweep": [TINY.parent / "cpu_demo.yaml", "--out", ro],
            "plan": [TINY.parent / "cpu_demo.yaml", "--csv", ro / "p.csv"],
            "eval": [ro],  # fewshot.jsonl and summary.json go into the run directory
            "fit": [sweep, "--json", ro / "fit.json"],
            "plot": [sweep, "--out", ro / "figures"],
            "report": [sweep, "--out", ro / "report"],
        }
        proc = run_cli(command, *target[command])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(lines) == 1 and "is not writable" in lines[0] and str(ro) in lines[0]
