"""Several processes under `jax.distributed`: the environment each reads, its bounded start, and
`lmscale launch`, which starts P of them on this host the way a pod starts one per host.

The launcher itself never imports JAX (its children do), so `lmscale launch --help` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lmscale.config import ConfigError

# The settings a process of a multi-process run reads, beside the SLURM, Open MPI and TPU pod variables
# that JAX detects by itself. JAX reads the coordinator's address; lmscale passes the other two.
COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0, which runs the coordinator
NUM_PROCESSES = "JAX_NUM_PROCESSES"  # processes in the run, the same in every one
PROCESS_ID = "JAX_PROCESS_ID"  # this process's index, 0 .. JAX_NUM_PROCESSES-1
INIT_TIMEOUT = "LMSCALE_INIT_TIMEOUT_S"  # seconds to wait for every process to join (default 300)
HEARTBEAT_TIMEOUT = "LMSCALE_HEARTBEAT_TIMEOUT_S"  # a silent process is dead after this (default 100)


def _env_int(name: str, default: int | None = None) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected an integer") from None


def initialize(setting: str) -> None:
    """`jax.distributed.initialize()` for mesh.distributed=`setting`, bounded: a process that does not
    meet all the others within LMSCALE_INIT_TIMEOUT_S prints one line and exits 2 (JAX's own timeout
    would abort it with a stack trace), and processes launched with different counts exit 2 together."""
    import jax

    address, num, pid = os.environ.get(COORDINATOR), _env_int(NUM_PROCESSES), _env_int(PROCESS_ID)
    wait_s, heartbeat_s = _env_int(INIT_TIMEOUT, 300), _env_int(HEARTBEAT_TIMEOUT, 100)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    who = f"process {pid} of {num}" if pid is not None and num is not None else "this process"
    watchdog = threading.Timer(
        wait_s,
        _give_up,
        [
            f"mesh.distributed={setting}: {who} did not meet every process at the coordinator "
            f"{address or '(auto-detected)'} within {wait_s} s; check {COORDINATOR}, {NUM_PROCESSES} and "
            f"{PROCESS_ID} ({INIT_TIMEOUT} sets the wait)"
        ],
    )
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(
            address,
            num,
            pid,
            initialization_timeout=wait_s + 60,  # the watchdog ends the wait first, with one line
            heartbeat_timeout_seconds=heartbeat_s,
            shutdown_timeout_seconds=heartbeat_s,
        )
    except (ValueError, RuntimeError) as e:  # no coordinator found: not a multi-host launch
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"mesh.distributed={setting}: jax.distributed.initialize() failed ({reason}); launch one "
            "process per host, or use mesh.distributed=auto on a single machine"
        ) from None
    finally:
        watchdog.cancel()
    if num is not None and jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        counts = sorted({int(c) for c in multihost_utils.process_allgather(np.int32(num))})
        if counts != [jax.process_count()]:
            raise ConfigError(
                f"{NUM_PROCESSES}: the processes were launched with {counts}, but "
                f"{jax.process_count()} joined the coordinator at {address}"
            )


def _give_up(message: str) -> None:
    print(f"lmscale: error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


# -- the local launcher -----------------------------------------------------------------------


def add_command(sub: argparse._SubParsersAction) -> None:
    la = sub.add_parser(
        "launch",
        help="start P local processes under jax.distributed, as a pod starts one per host",
        description="Run `lmscale COMMAND ...` in P processes on this host, each with K simulated CPU "
        f"devices, as one multi-process run: each gets {COORDINATOR} (a free port on 127.0.0.1), "
        f"{NUM_PROCESSES}, {PROCESS_ID} and XLA_FLAGS=--xla_force_host_platform_device_count=K, plus "
        f"{INIT_TIMEOUT}=60 and {HEARTBEAT_TIMEOUT}=20 unless set. Process 0 writes to this terminal; "
        "the others to --log-dir. SIGTERM and SIGINT are forwarded to every process. If one fails, the "
        "rest are stopped after --grace seconds. Exit status: 0 if every process succeeded, else the "
        "first failure's (1 for a process killed by a signal). Use it to debug a pod config on a "
        "workstation, e.g. `lmscale launch --processes 2 --devices-per-process 4 -- train CONFIG`.",
    )
    la.add_argument("--processes", type=int, required=True, metavar="P", help="number of processes")
    la.add_argument(
        "--devices-per-process", type=int, default=1, metavar="K", help="CPU devices each (default: 1)"
    )
    la.add_argument("--log-dir", type=Path, help="output of processes 1..P-1 (default: a temporary dir)")
    la.add_argument(
        "--grace", type=float, default=30.0, help="seconds the others get after one fails (default: 30)"
    )
    la.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="an lmscale command")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(port: int, processes: int, index: int, devices: int) -> dict:
    """The environment of process `index`: the coordinator, the counts and its own simulated devices."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env.update(
        {
            COORDINATOR: f"127.0.0.1:{port}",
            "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",  # JAX's default binds every interface
            NUM_PROCESSES: str(processes),
            PROCESS_ID: str(index),
            "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
            "JAX_PLATFORMS": env.get("JAX_PLATFORMS") or "cpu",
        }
    )
    env.setdefault(INIT_TIMEOUT, "60")
    env.setdefault(HEARTBEAT_TIMEOUT, "20")
    return env


def _stop_with_parent() -> None:
    """In a child: SIGTERM when the launcher dies (even by SIGKILL), so it checkpoints and stops rather
    than run on unseen. Linux only; elsewhere the launcher's own signal forwarding is all there is."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _describe(index: int, code: int) -> str:
    if code < 0:
        return f"process {index} was killed by {signal.Signals(-code).name}"
    return f"process {index} exited {code}"


def run(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        raise ConfigError("launch: give the lmscale command after --, e.g. -- train CONFIG")
    if args.processes < 1 or args.devices_per_process < 1:
        raise ConfigError("launch: --processes and --devices-per-process must be positive")
    logs = args.log_dir or Path(tempfile.mkdtemp(prefix="lmscale-launch-"))
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    children: list[subprocess.Popen] = []
    for i in range(args.processes):
        out = None if i == 0 else (logs / f"process-{i}.log").open("w")
        cmd = [sys.executable, "-m", "lmscale", *command]
        env = child_env(port, args.processes, i, args.devices_per_process)
        children.append(
            subprocess.Popen(
                cmd, env=env, stdout=out, stderr=out, start_new_session=True, preexec_fn=_stop_with_parent
            )
        )
        if out is not None:
            out.close()

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed, stopped = _wait(children, args.grace)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not failed:
        return 0
    codes = dict(failed)
    # Every process failed alike (a bad config: exit 2 each), and process 0 has already said why.
    alike = codes.get(0, 0) > 0 and set(codes.values()) == {codes[0]}
    if not alike or stopped:
        what = [_describe(i, c) for i, c in failed]
        if stopped:
            what.append(f"stopped {stopped} {args.grace:g} s after the first failure")
        print(f"lmscale launch: {'; '.join(what)} (output of processes 1.. in {logs})", file=sys.stderr)
    first = failed[0][1]
    return first if first > 0 else 1


def _wait(children: list[subprocess.Popen], grace: float) -> tuple[list[tuple[int, int]], list[int]]:
    """Wait for every child; returns the failures (index, code) in order, and those killed by the
    launcher because they outlived the first failure by `grace` seconds."""
    failed: list[tuple[int, int]] = []
    done: set[int] = set()
    deadline, stopped = None, []
    while len(done) < len(children):
        for i, child in enumerate(children):
            if i not in done and child.poll() is not None:
                done.add(i)
                if child.returncode != 0:
                    failed.append((i, child.returncode))
                    deadline = deadline or time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            for i, child in enumerate(children):
                if i not in done:
                    stopped.append(i)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)
    return failed, stopped
