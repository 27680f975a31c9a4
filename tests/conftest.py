"""Shared fixtures. In-process tests see one CPU device; multi-device tests run in a subprocess
with XLA_FLAGS set before jax is imported there."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "tiny.yaml"

_SESSION_DIRS: list[str] = []  # made by this process, removed when its session ends (pytest_unconfigure)


def _session_dir(variable: str, prefix: str) -> None:
    """A fresh temporary directory in `variable` unless it is set: with xdist, the controller's, which
    its workers and their subprocesses inherit."""
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        _SESSION_DIRS.append(os.environ[variable])


# One token cache per test session, shared with subprocesses; tests never touch the network.
_session_dir("LMSCALE_CACHE", "lmscale-test-cache-")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One XLA compilation cache per test session, shared with subprocesses: many tests compile the same
# small programs (a tiny model's step, a fit's optimiser), and a cached executable is the same program.
_session_dir("JAX_COMPILATION_CACHE_DIR", "lmscale-test-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The suite is mostly compiling small programs, not running them: with XLA's backend (LLVM) optimisation
# off, a tiny model's train step compiles in half the time (2.4 s against 5.1 s on 2 cores), and the
# default run takes 28% less. The HLO passes (fusion, layout, sharding) are the same and floating point
# can differ in the last bits; subprocesses inherit the setting, so a comparison is always between
# programs compiled alike. LMSCALE_TEST_OPTIMIZED=1 runs the suite optimised, as users' runs are.
# Tests marked `fits` are the exception: the analysis side's solvers compile a few programs and run
# their loops long, and optimised they take 30% less (test_fit and test_holdout: 83 s against 120 s).
OPTIMIZED = os.environ.get("LMSCALE_TEST_OPTIMIZED", "0") == "1"
if not OPTIMIZED:
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402

# Start JAX's backend with one CPU device now, so that a config's mesh.cpu_devices (the experiments set
# 2) never splits a test process that later tests share; they get the warning that says so.
jax.devices()


_ONE_MARKER = re.compile(r"(timing|browser)( and not slow)?")


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """`make test`'s serial passes select one marker (`-m "timing and not slow"`): a test module whose
    source never names that marker holds nothing they run, so they skip importing it (collecting every
    module costs seconds: matplotlib, datasets, Orbax, ...)."""
    wanted = _ONE_MARKER.fullmatch(config.option.markexpr or "")
    if wanted and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return f"mark.{wanted.group(1)}" not in collection_path.read_text()
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """XLA's backend optimisation on for tests marked `fits` (see OPTIMIZED above), off for the rest,
    in this process; subprocesses inherit the session's setting. Set before any of the test's fixtures,
    a module's first test setting up its module-scoped ones too, so a run and its resume always compile
    alike."""
    off = not OPTIMIZED and item.get_closest_marker("fits") is None
    if jax.config.read("jax_disable_most_optimizations") != off:
        jax.config.update("jax_disable_most_optimizations", off)


def pytest_unconfigure(config) -> None:
    for path in _SESSION_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def lmscale_env(devices: int = 1, xla_cache: bool = True) -> dict:
    """This process's environment for a fresh interpreter with `devices` CPU devices; `xla_cache=False`
    leaves out the session's compilation cache, for a test that times compiles."""
    env = dict(os.environ)
    if not xla_cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(
    *args: str,
    devices: int = 1,
    fresh: bool = False,
    xla_cache: bool = True,
    cwd: Path | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """`lmscale ARGS`, its exit status and output.

    It runs in this process, as `python -m lmscale` would, unless it needs a fresh interpreter: another
    device count (XLA_FLAGS is read once, at JAX's start), `fresh=True` (process-wide state, such as
    `jax.distributed`) or `xla_cache=False` (compiles timed without the session's compilation cache).
    A fresh interpreter pays JAX's import and every compile again.
    """
    argv = [str(a) for a in args]
    if devices != 1 or fresh or not xla_cache:
        cmd = [sys.executable, "-m", "lmscale", *argv]
        env = lmscale_env(devices, xla_cache)
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    from lmscale.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: --help, usage errors
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def run_python(code: str, devices: int = 8, timeout: int = 600) -> dict:
    """Run `code` in a fresh interpreter with `devices` CPU devices; it prints one JSON line last."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=lmscale_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_model(seq_len: int, seed: int = 0, **variant):
    """A 2-layer, 32-wide model's config and freshly initialised params, for the model and decoder tests.
    Init is jitted: one compile, where an eager init compiles every op."""
    from lmscale import config
    from lmscale.model import Transformer

    model = {"n_layers": 2, "d_model": 32, "n_heads": 2, "vocab_size": 320, "seq_len": seq_len, **variant}
    cfg = config.from_dict({"model": model}).model
    tokens = jax.numpy.zeros((1, 8), jax.numpy.int32)
    return cfg, jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(seed), tokens)["params"]


# For runs whose checkpoints are not the point: no save, so not even Orbax's import (seconds each).
NO_SAVES = ["checkpoint.every_steps=1000000", "checkpoint.final=false"]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """A few-second version of experiments/tiny.yaml."""
    return [
        "model.n_layers=2",
        "model.d_model=32",
        "model.n_heads=2",
        "model.seq_len=32",
        "train.batch_size=8",
        "train.tokens=10240",  # 40 steps
        "train.log_every=1",
        "train.eval_every=10",
        "train.eval_batches=2",
        "checkpoint.every_steps=5",
    ]


@pytest.fixture(scope="module")
def spec(tmp_path_factory, request):
    """The test module's sweep SPEC, written as `<its NAME>.yaml`."""
    path = tmp_path_factory.mktemp("spec") / f"{request.module.NAME}.yaml"
    path.write_text(request.module.SPEC)
    return path


@pytest.fixture(scope="module")
def straight(spec, tmp_path_factory):
    """An uninterrupted sweep of the module's SPEC: its directory and wall time."""
    out = tmp_path_factory.mktemp("straight")
    t0 = time.perf_counter()
    proc = run_cli("sweep", spec, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / spec.stem, time.perf_counter() - t0
