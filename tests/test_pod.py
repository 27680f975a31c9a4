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
