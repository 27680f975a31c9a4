"""The pod path run for real: several processes under `jax.distributed` on this host, started by
`lmscale launch` (a coordinator on 127.0.0.1, CPU collectives over gloo, each process with its own
simulated devices), training, stopping, resuming, sweeping and evaluating as one process would."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from lmscale import runlog
from tests.conftest import TINY, lmscale_env, run_cli
from tests.test_sweep import SPEC as SWEEP  # three cells of 20 steps, each evaluated

TWENTY_STEPS = [
    "model.n_layers=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.seq_len=32",
    "train.batch_size=8",
    "train.tokens=5120",  # 20 steps
    "train.log_every=1",
    "train.eval_every=10",
    "train.eval_batches=2",
    "checkpoint.every_steps=5",
]


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _kill(pid: int) -> None:
    for child in _children(pid):
        _kill(child)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Launch:
    """`lmscale launch --processes P --devices-per-process K -- ARGV` running in `cwd`."""

    def __init__(self, cwd, *argv, processes=2, devices=2, env=None):
        cmd = [sys.executable, "-m", "lmscale", "launch", "--processes", str(processes)]
        cmd += ["--devices-per-process", str(devices), "--log-dir", str(cwd / "logs"), "--", *map(str, argv)]
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=lmscale_env() | (env or {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.logs = cwd / "logs"

    def child(self, index: int) -> int:
        """The pid of process `index`, once the launcher has started it."""
        for _ in range(200):
            for pid in _children(self.proc.pid):
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"JAX_PROCESS_ID={index}".encode() in f.read().split(b"\0"):
                        return pid
            time.sleep(0.05)
        raise AssertionError(f"process {index} never started")

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        _kill(self.proc.pid)
        self.proc.communicate()


@pytest.fixture
def launch():
    """Start launches; any left running when the test ends is killed with all its processes."""
    started = []

    def start(*args, **kwargs) -> Launch:
        started.append(Launch(*args, **kwargs))
        return started[-1]

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.kill()


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _train_rows(run_dir):
    return [r for r in runlog.read_jsonl(run_dir / "metrics.jsonl") if "split" not in r]


def test_a_mesh_that_does_not_fit_the_devices_of_every_process_exits_2_with_one_line(tmp_path, launch):
    t0 = time.perf_counter()
    run = launch(tmp_path, "train", TINY, "--out", "run", *TWENTY_STEPS, "mesh.data=3", devices=1).wait(120)
    assert time.perf_counter() - t0 < 60
    assert run.returncode == 2
    assert _errors(run.stderr) == [
        "lmscale train: error: mesh: data*fsdp*tensor = 3*1*1 = 3 does not match the 2 devices"
    ]
    assert "does not match the 2 devices" in (tmp_path / "logs" / "process-1.log").read_text()


def test_the_launcher_imports_no_jax():
    code = "import sys, lmscale.cli; lmscale.cli._parser(); assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=lmscale_env(), check=True, timeout=60)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Twenty steps in 1 process x 4 devices."""
    out = tmp_path_factory.mktemp("one") / "run"
    one = run_cli("train", TINY, "--out", out, "--no-progress", *TWENTY_STEPS, devices=4)
    assert one.returncode == 0, one.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh", [["mesh.data=4"], ["mesh.data=1", "mesh.fsdp=4"], ["mesh.data=2", "mesh.tensor=2"]]
)
def test_two_processes_of_two_devices_match_one_of_four_at_every_step(tmp_path, launch, one_process, mesh):
    two = launch(tmp_path, "train", TINY, "--out", "two", "--no-progress", *TWENTY_STEPS, *mesh).wait()
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _train_rows(one_process), _train_rows(tmp_path / "two")
    assert [r["step"] for r in b] == list(range(1, 21))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "grad_norm"):
            assert abs(ra[key] - rb[key]) <= 1e-5 * abs(ra[key]), f"{key} at step {ra['step']}"
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["mfu"] > 0
    meta = yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["meta"]
    assert meta["devices"]["count"] == 4 and meta["devices"]["processes"] == 2
    # process 1 trained too, but wrote nothing: only process 0 logs and summarises
    assert "completed" in (tmp_path / "logs" / "process-1.log").read_text()


def _bad_start(tmp_path, port: int, processes: list[int], index: int) -> subprocess.Popen:
    """`lmscale train` as process `index` of a run that says it has `processes[index]` processes."""
    env = lmscale_env(1) | {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(processes[index]),
        "JAX_PROCESS_ID": str(index),
        "LMSCALE_INIT_TIMEOUT_S": "10",
    }
    cmd = [sys.executable, "-m", "lmscale", "train", str(TINY), "--out", str(tmp_path / "run"), *TWENTY_STEPS]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]
    finally:
        for p in procs:
            _kill(p.pid)


@pytest.mark.slow
def test_a_process_that_cannot_reach_the_coordinator_exits_2_with_one_line_within_60_s(tmp_path):
    from lmscale.launch import free_port

    t0 = time.perf_counter()
    [(code, err)] = _finish([_bad_start(tmp_path, free_port(), [2, 2], 1)], 60)
    assert time.perf_counter() - t0 < 60
    assert code == 2 and len(_errors(err)) == 1, err
    assert "process 1 of 2 did not meet every process at the coordinator 127.0.0.1:" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_processes_launched_with_different_process_counts_exit_2_with_one_line_each(tmp_path):
    from lmscale.launch import free_port

    port, t0 = free_port(), time.perf_counter()
    finished = _finish([_bad_start(tmp_path, port, [2, 3], i) for i in (0, 1)], 60)
    assert time.perf_counter() - t0 < 60
    for code, err in finished:
        assert code == 2 and len(_errors(err)) == 1, err
        assert "JAX_NUM_PROCESSES: the processes were launched with [2, 3], but 2 joined" in err


LONG = [*TWENTY_STEPS[:5], "train.tokens=51200", *TWENTY_STEPS[6:]]  # 200 steps


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_after_the_same_step_and_the_rerun_continues(tmp_path, launch):
    args = ("train", TINY, "--out", "run", "--no-progress", *LONG)
    first = launch(tmp_path, *args)
    _wait_for(lambda: len(_train_rows(tmp_path / "run")) >= 10)
    os.kill(first.child(1), signal.SIGTERM)
    stopped = first.wait(120)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    step = json.loads((tmp_path / "run" / "summary.json").read_text())["steps"]
    assert 10 <= step < 200
    for output in (stopped.stdout, (tmp_path / "logs" / "process-1.log").read_text()):
        assert f"running: run  step {step} " in output  # each process stopped after this step
        assert "stopped by SIGTERM after a checkpoint" in output
    assert step in [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    rerun = launch(tmp_path, *args).wait()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r["step"] for r in _train_rows(tmp_path / "run")] == list(range(1, 201))


def _final_digest(run_dir) -> list[int]:
    """The digest of the final checkpoint's state: equal digests, bitwise equal parameters."""
    return json.loads((run_dir / "checkpoints" / "200" / "extra" / "metadata").read_text())["verify"][
        "digest"
    ]


@pytest.mark.slow
def test_sigkill_of_one_process_ends_the_other_and_the_same_launch_resumes_bitwise(tmp_path, launch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    args = ("train", TINY, "--out", "run", "--no-progress", *LONG)
    straight = launch(tmp_path / "a", *args).wait()
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = launch(tmp_path / "b", *args)
    _wait_for(lambda: (tmp_path / "b" / "run" / "checkpoints" / "10" / "commit_success.txt").exists())
    os.kill(killed.child(1), signal.SIGKILL)
    t0 = time.perf_counter()
    ended = killed.wait(90)
    assert time.perf_counter() - t0 < 60
    assert ended.returncode != 0
    assert "lmscale launch: process 1 was killed by SIGKILL" in ended.stderr
    assert json.loads((tmp_path / "b" / "run" / "summary.json").read_text())["steps"] < 200

    rerun = launch(tmp_path / "b", *args).wait()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    a, b = _train_rows(tmp_path / "a" / "run"), _train_rows(tmp_path / "b" / "run")
    assert [r["step"] for r in b] == list(range(1, 201))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert _final_digest(tmp_path / "a" / "run") == _final_digest(tmp_path / "b" / "run")


@pytest.fixture(scope="module")
def pod_sweep(tmp_path_factory):
    """The 3-cell sweep run by 2 processes x 2 devices (each run evaluated across both): its directory."""
    tmp = tmp_path_factory.mktemp("pod")
    (tmp / "mini.yaml").write_text(SWEEP)
    run = Launch(tmp, "sweep", "mini.yaml", "--out", "out", "--no-progress")
    done = run.wait(600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out" / "mini"


@pytest.mark.slow
def test_a_pod_sweep_trains_each_cell_once_with_the_losses_of_one_process(tmp_path, pod_sweep):
    import pandas as pd

    (tmp_path / "mini.yaml").write_text(SWEEP)
    one = run_cli("sweep", tmp_path / "mini.yaml", "--out", tmp_path, "--no-progress", devices=4)
    assert one.returncode == 0, one.stderr[-3000:]
    a = pd.read_csv(tmp_path / "mini" / "results.csv").set_index("run_id").sort_index()
    b = pd.read_csv(pod_sweep / "results.csv").set_index("run_id").sort_index()
    assert list(a.index) == list(b.index) and len(b) == 3 and set(b["status"]) == {"completed"}
    for key in ("final_loss", "final_val_loss"):
        assert ((a[key] - b[key]).abs() <= 1e-5 * a[key].abs()).all(), (a[key], b[key])
    for run_id in b.index:  # every process walked every cell; process 0 alone recorded the attempt
        assert len(runlog.read_jsonl(pod_sweep / run_id / "attempts.jsonl")) == 1


@pytest.mark.slow
def test_eval_across_processes_equals_one_process_on_the_same_checkpoint(tmp_path, pod_sweep, launch):
    import shutil

    args = ("--tasks", "add2,reverse", "--shots", "0,1", "--examples", "8")
    for name in ("one", "two"):
        shutil.copytree(pod_sweep / "L2-D32-T5.12K-s0", tmp_path / name)
        (tmp_path / name / "fewshot.jsonl").unlink()
    one = run_cli("eval", tmp_path / "one", *args)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(tmp_path, "eval", tmp_path / "two", *args).wait()
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [runlog.read_jsonl(tmp_path / name / "fewshot.jsonl") for name in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 2 * 2 * 8
    for a, b in zip(*rows, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert abs(value - b[key]) <= 1e-5 * max(abs(value), 1.0), (key, a, b)
            else:
                assert value == b[key], (key, a, b)
