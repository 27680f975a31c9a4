"""`lmscale sweep`: train every cell of a grid, cheapest first, and keep the sweep's tables current.

Each cell trains under an exclusive `flock` on `RUN_DIR/.lock`, so any number of sweep processes on one
host (or on a filesystem with working POSIX locks) can share a sweep: a cell locked by another process
is skipped and waited for at the end. The kernel drops the lock when its holder dies, even by SIGKILL,
and the next process to take it resumes the run from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from lmscale import results, runlog
from lmscale.config import ConfigError
from lmscale.runlog import LOCK, flocked
from lmscale.sweep import cooldown
from lmscale.sweep.grid import Cell, Sweep

TABLES_LOCK = ".tables.lock"  # per sweep: one process at a time rescans the runs and rewrites the tables
ATTEMPTS = "attempts.jsonl"  # one row per process that started training the run: pid, host, worker, time
# run_sweep's status of a completed run whose evaluation failed; its summary.json stays `completed`
# (its loss counts in every fit) with the failure under `error`, and a rerun evaluates it again.
EVAL_FAILED = "evaluation failed"
POLL_S = 0.5  # how often a process waiting on other processes' runs looks again

# Work on a run after its training completes, e.g. few-shot evaluation. A hook takes the cell, its run
# directory and its summary and returns the summary to keep; it runs at every visit to a completed cell
# (so a kill between training and the hook loses nothing) and must skip work it has already done.
AfterTrain = Callable[[Cell, Path, dict], dict]


def assigned(cells: list[Cell], worker: int, num_workers: int) -> list[Cell]:
    """Worker `worker`'s share: round-robin over the cheapest-first list, so shares cost about the same;
    a cooldown trunk and its branches are one unit, so no share waits on another's trunk."""
    if num_workers < 1:
        raise ConfigError(f"--num-workers={num_workers}: must be positive")
    if not 0 <= worker < num_workers:
        raise ConfigError(f"--worker={worker}: must be in [0, {num_workers}) for --num-workers={num_workers}")
    return [c for unit in cooldown.groups(cells)[worker::num_workers] for c in unit]


def write_tables(sweep_dir: Path) -> pd.DataFrame:
    """Rescan and rewrite the tables atomically; serialised, so the last writer saw the newest runs."""
    with flocked(Path(sweep_dir) / TABLES_LOCK, block=True):
        return results.write_tables(sweep_dir)


# -- the runner -------------------------------------------------------------------------------


class Runner:
    """Visits cells in order; trains those it can lock, then waits for and finishes the rest."""

    def __init__(
        self,
        sweep: Sweep,
        out: Path,
        worker: int = 0,
        progress: bool = True,
        after_train: Sequence[AfterTrain] = (),
    ):
        import jax  # imported here: the CLI validates the spec before paying for jax

        self.sweep, self.worker, self.progress = sweep, worker, progress
        self.after_train = list(after_train)
        self.sweep_dir = Path(out) / sweep.name
        self.primary = jax.process_index() == 0
        # Every host of a multi-host run trains the same cell at once, so hosts must not race for locks;
        # such a run is one worker, and separate pods split a sweep with --worker.
        self.locking = jax.process_count() == 1
        self.status: dict[str, str] = {}
        self.stopped = False

    def run(self, cells: list[Cell]) -> dict[str, str]:
        """Statuses of `cells` after training each of them or seeing another process finish it."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(
            total=len(cells), unit="run", desc=self.sweep.name, file=sys.stderr, disable=not self.progress
        )
        try:
            waiting = [c for c in cells if not self._visit(c, block=False, bar=bar)]
            while waiting and not self.stopped:  # locked by another process, or a branch whose point is
                time.sleep(POLL_S)  # not trained yet: wait for it, then finish it if its holder died
                waiting = [c for c in waiting if not self._visit(c, block=False, bar=bar)]
        finally:
            bar.close()
            if self.primary:
                write_tables(self.sweep_dir)
        return self.status

    def _visit(self, cell: Cell, block: bool, bar: tqdm) -> bool:
        """Train or skip `cell` under its lock; False if another process holds it and `block` is off."""
        if self.stopped:
            return True
        run_dir = self.sweep_dir / cell.run_id
        if cell.trunk and self._branch_waits(cell, run_dir):
            return False
        run_dir.mkdir(exist_ok=True)
        lock = flocked(run_dir / LOCK, block) if self.locking else contextlib.nullcontext(True)
        with lock as held:
            if not held:
                return False
            status = self._run_cell(cell, run_dir)
        self.status[cell.run_id] = status
        self.stopped = status == "running"  # SIGTERM: checkpointed; the same command resumes
        if self.primary:
            write_tables(self.sweep_dir)
        bar.update(1)
        bar.set_postfix(
            {s: sum(v == s for v in self.status.values()) for s in sorted(set(self.status.values()))}
        )
        return True

    def _branch_waits(self, cell: Cell, run_dir: Path) -> bool:
        """A branch waits until its trunk has its branch point, or has stopped short of it for good."""
        trunk_dir = self.sweep_dir / cell.trunk
        if cooldown.started(run_dir) or cooldown.branch_point(trunk_dir, cell.branch_step).is_dir():
            return False
        if cooldown.blocked(cell, trunk_dir) is None:
            return True
        if not self.locking:
            return False
        with flocked(trunk_dir / LOCK, block=False) as free:  # held: being retried or resumed
            return not free

    def _run_cell(self, cell: Cell, run_dir: Path) -> str:
        """One cell: train it unless finished, then the after-training hooks on a completed run.

        Returns the run's status, or EVAL_FAILED for a completed run whose hooks failed."""
        summary = results.read_summary(run_dir) or {}
        reason = cooldown.blocked(cell, self.sweep_dir / cell.trunk) if cell.trunk else None
        if reason and not cooldown.started(run_dir):  # its trunk diverged or failed before the branch point
            summary = cooldown.record(cell, results.failed_summary(cell.cfg, run_dir, reason))
            if self.primary:
                runlog.write_json(run_dir / "summary.json", summary)
            print(f"lmscale sweep: {cell.run_id}: {reason}", file=sys.stderr)
            return summary["status"]
        # A diverged run would diverge again, so it is final; train() returns a completed run's summary
        # at once, after checking that its directory holds this cell's config.
        if summary.get("status") != "diverged":
            summary = self._train(cell, run_dir, record=summary.get("status") != "completed")
        if summary.get("status") == "completed" and self.after_train and cell.role != cooldown.TRUNK:
            try:
                for hook in self.after_train:
                    summary = hook(cell, run_dir, summary)
                summary.pop("error", None)  # an evaluation that failed on an earlier visit has now run
            except Exception as e:  # noqa: BLE001 - one bad run must not stop the sweep
                summary = self._hook_failed(cell, run_dir, summary, e)
            if self.primary:
                runlog.write_json(run_dir / "summary.json", summary)
            if "error" in summary:
                return EVAL_FAILED
        return summary["status"]

    def _hook_failed(self, cell: Cell, run_dir: Path, summary: dict, error: Exception) -> dict:
        """A failed after-training hook (evaluation) leaves the trained run completed, so its loss still
        counts in every fit: the summary keeps what the hook wrote before failing and notes the error,
        and the next visit runs the hook again without retraining."""
        message = self._report(cell, run_dir, error, "after training")
        on_disk = results.read_summary(run_dir) or {}
        return (on_disk if on_disk.get("status") == "completed" else summary) | {"error": message}

    def _train(self, cell: Cell, run_dir: Path, record: bool) -> dict:
        """Train (or resume) the run; `record` notes this process in cell.json and attempts.jsonl."""
        from lmscale.train import train

        if self.primary and record:
            cell_json = {"run_id": cell.run_id, "sweep": self.sweep.name, "coords": cell.coords}
            runlog.write_json(run_dir / results.CELL, cell_json)
            attempt = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "worker": self.worker,
                "time": time.time(),
            }
            with (run_dir / ATTEMPTS).open("a") as f:
                f.write(json.dumps(attempt) + "\n")
        try:
            if cell.trunk and self.primary:
                cooldown.seed(cell, self.sweep_dir / cell.trunk, run_dir)
            summary = train(cell.cfg, run_dir, progress=self.progress, lock=False)  # _visit holds it
        except ConfigError:
            raise  # the run directory holds another config, or the spec is bad: stop, exit status 2
        except Exception as e:  # noqa: BLE001 - a failed run is recorded and the sweep carries on
            summary = self._fail(cell, run_dir, e, "training")
        if cell.role != "run":
            summary = cooldown.record(cell, summary)
            if self.primary:
                runlog.write_json(run_dir / "summary.json", summary)
        return summary

    def _fail(self, cell: Cell, run_dir: Path, error: Exception, stage: str) -> dict:
        summary = results.failed_summary(cell.cfg, run_dir, self._report(cell, run_dir, error, stage))
        if self.primary:
            runlog.write_json(run_dir / "summary.json", summary)
        return summary

    def _report(self, cell: Cell, run_dir: Path, error: Exception, stage: str) -> str:
        """The one-line message of `error` in `stage`, printed and with its traceback in error.log."""
        message = f"{stage}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        print(f"lmscale sweep: {cell.run_id}: {message}; see {run_dir / 'error.log'}", file=sys.stderr)
        if self.primary:
            runlog.write_atomic(run_dir / "error.log", traceback.format_exc())
        return message


def run_sweep(
    sweep: Sweep,
    out: Path,
    worker: int = 0,
    num_workers: int = 1,
    progress: bool = True,
    after_train: Sequence[AfterTrain] = (),
) -> dict[str, str]:
    """Run this worker's share of `sweep` into `out/<sweep name>/`; returns run_id -> status."""
    cells = assigned(sweep.cells, worker, num_workers)
    return Runner(sweep, out, worker, progress, after_train).run(cells)
