"""One training run: resume or start, step, log, evaluate, checkpoint, and stop cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from lmscale import flops, peak, results, runlog, sharding, tracking
from lmscale.checkpoint import SET_ASIDE, CheckpointCorrupt, Checkpointer
from lmscale.config import Config, ConfigError
from lmscale.data.pipeline import Pipeline, cache_root, prepare, process_rows
from lmscale.preempt import StopRequested
from lmscale.run_config import check_same_config, environment
from lmscale.step_fns import StepFns, build, compilation_cache


@dataclasses.dataclass
class LoopState:
    """What a run carries from one process to the next: a checkpoint's extra record holds it (`to_extra`,
    these keys), a resume restores it (`from_extra`), and the summary reports it."""

    t_start: float  # this process's clock when it began the run: wall time counts from here
    data: dict | None = None  # the training source's position, as of the last checkpoint
    wall_before_s: float = 0.0  # wall time of the run's earlier processes
    train_time_s: float = 0.0  # time in train steps, of every process: not compiles, evaluations or saves
    last_loss: float = math.nan
    last_val_loss: float = math.nan
    last_val_losses: dict = dataclasses.field(default_factory=dict)  # a mixture's, by component label

    @property
    def wall_time_s(self) -> float:
        """Wall time of the run so far, over every process."""
        return self.wall_before_s + time.perf_counter() - self.t_start

    def to_extra(self) -> dict:
        return {
            "data": self.data,
            "wall_time_s": self.wall_time_s,
            "train_time_s": self.train_time_s,
            "last_loss": self.last_loss,
            "last_val_loss": self.last_val_loss,
            "last_val_losses": self.last_val_losses,
        }

    @classmethod
    def from_extra(cls, extra: dict, t_start: float) -> LoopState:
        return cls(
            t_start,
            extra["data"],
            extra.get("wall_time_s", 0.0),
            extra.get("train_time_s", 0.0),
            extra.get("last_loss", math.nan),
            extra.get("last_val_loss", math.nan),
            extra.get("last_val_losses", {}),
        )


def train(
    cfg: Config, out: Path, progress: bool = True, lock: bool = True, restart_from_scratch: bool = False
) -> dict:
    """Train `cfg` into run directory `out`, resuming from its latest checkpoint. Returns the summary.

    With `lock`, process 0 holds `out/.lock` while it trains (a sweep passes False: it holds it already);
    a run another process holds is a ConfigError naming that process, raised before anything is written.
    Checkpoints that fail to restore or verify are set aside; if none is left, the run starts again from
    step 0 only with `restart_from_scratch`, and is otherwise a ConfigError naming the directory.
    """
    out = Path(out)
    primary = jax.process_index() == 0
    if (out / "config.yaml").exists():
        check_same_config(out / "config.yaml", cfg)
        summary = results.read_summary(out) or {}
        if summary.get("status") == "completed":
            return summary
    # Bad data fails here, before the run directory exists.
    pipe = prepare(cfg, out / "tokenizer.json", progress=progress and primary)
    if jax.process_count() > 1:  # each host builds its own cache: they must agree, or batches are nonsense
        from jax.experimental import multihost_utils

        digest = np.frombuffer(bytes.fromhex(pipe.fingerprint[:16]), np.int32)
        multihost_utils.assert_equal(digest, "lmscale: hosts built different data pipelines")
    out.mkdir(parents=True, exist_ok=True)
    taken = (
        runlog.flocked(out / runlog.LOCK, block=False) if lock and primary else contextlib.nullcontext(True)
    )
    with taken as held:
        if jax.process_count() > 1:  # every process stops if process 0 could not take the lock
            from jax.experimental import multihost_utils

            held = bool(np.all(multihost_utils.process_allgather(np.int32(held))))
        if not held:
            raise ConfigError(
                f"run directory '{out}' is being trained by {runlog.holder(out / runlog.LOCK)}; "
                "wait for it to finish, or train into another --out"
            )
        summary = results.read_summary(out) or {}  # the holder may have completed it while we prepared
        if summary.get("status") == "completed":
            return summary
        return _train_locked(cfg, out, pipe, primary, progress, restart_from_scratch)


def _train_locked(
    cfg: Config, out: Path, pipe: Pipeline, primary: bool, progress: bool, restart_from_scratch: bool
) -> dict:
    if primary:
        meta = results.run_metadata(cfg, environment(), pipe.metadata())
        runlog.write_yaml(out / "config.yaml", cfg.to_dict() | {"meta": meta})
        if not (out / "tokenizer.json").exists():
            runlog.write_atomic(out / "tokenizer.json", pipe.tokenizer.hf.to_str(pretty=True))

    t_start = time.perf_counter()
    compilation_cache(cache_root(cfg.data) / "xla")
    mesh = sharding.make_mesh(cfg.mesh)
    steps = build(cfg, mesh)
    # The batch rows this host's pipeline reads must be the ones its devices hold
    rows = process_rows(cfg.train.batch_size, jax.process_index(), jax.process_count())
    sharding.check_process_rows(steps.batch_sharding, cfg.train.batch_size, rows)
    loop = _Loop(cfg, out, steps, pipe, primary, progress, t_start, restart_from_scratch)
    try:
        with StopRequested(sync_every=cfg.train.log_every) as stop:
            summary = loop.run(stop)
    except Exception as e:
        failed = loop.failed(e)
        if isinstance(e, ConfigError):  # e.g. no usable checkpoint: bad input, exit status 2
            raise
        raise failed from e
    finally:
        loop.close()
    return summary


class RunFailed(Exception):
    """A run that raised mid-run, already marked `failed` in its summary.json; the message is one line."""


class _Loop:
    def __init__(
        self,
        cfg: Config,
        out: Path,
        steps: StepFns,
        pipe: Pipeline,
        primary: bool,
        progress: bool,
        t_start: float,
        restart_from_scratch: bool = False,
    ):
        self.cfg, self.out, self.steps, self.pipe, self.primary = cfg, out, steps, pipe, primary
        self.total = cfg.steps
        self.tokens_per_step = cfg.train.batch_size * cfg.model.seq_len
        self.flops_per_step = flops.step_flops(cfg)
        self.peak, self.peak_source = peak.peak_flops(cache_dir=cache_root(cfg.data))
        c = cfg.checkpoint
        self.ckpt = Checkpointer(out / "checkpoints", c.keep, c.async_save, c.keep_period, c.keep_steps)
        pi, pc = jax.process_index(), jax.process_count()
        self.source = pipe.source("train", cfg.train.batch_size, cfg.train.seed, pi, pc)
        val = pipe.source("val", cfg.train.batch_size, cfg.train.seed, pi, pc)
        self.val_batches = [steps.put_batch(next(val)) for _ in range(cfg.train.eval_batches)]
        # The component of every validation row (the global batch's, on every process): a mixture's
        # validation loss is also reported per component.
        n = len(self.val_batches)
        self.val_rows = np.concatenate([val.layout(i) for i in range(n)]) if n else np.zeros(0, np.int64)
        # The fixed batch whose loss each checkpoint records and each restore reproduces.
        self.probe = self.val_batches[0] if self.val_batches else steps.put_batch(next(val))
        self.restart_from_scratch = restart_from_scratch
        self.progress = progress
        # Set by run(): the restored (or fresh) train state and loop state, the log and the bar.
        self.state: Any = None
        self.so_far = LoopState(t_start)
        self.log: runlog.MetricsLog | None = None
        self.bar: tqdm | None = None
        self.compile_s: float | None = None
        self.done = 0  # the last step whose metrics are in
        self.diverged = ""  # the first non-finite step and loss, once there is one
        # Step time: since the last step's metrics arrived, summed over the steps of the logged window.
        self.t_last, self.window_s, self.window_steps = t_start, 0.0, 0

    # -- state ---------------------------------------------------------------------------------
    def _start(self) -> tuple[Any, int, LoopState]:
        if self.primary:  # this process holds the run's lock: no other save is in flight
            self.ckpt.remove_partial()
        had = bool(self.ckpt.all_steps())
        found = self.ckpt.restore_newest(self.steps.abstract_state, self._check, self.out)
        if found is None:
            if had and not self.restart_from_scratch:
                raise ConfigError(
                    f"no usable checkpoint left in '{self.out / 'checkpoints'}' (set aside in "
                    f"'{self.out / SET_ASIDE}'); rerun with --restart-from-scratch to train from step 0"
                )
            return self.steps.init(self.cfg.train.seed), 0, self.so_far
        step, state, extra = found
        so_far = LoopState.from_extra(extra, self.so_far.t_start)
        self.source.restore(so_far.data)
        return state, step, so_far

    def _probe_loss(self, params: Any) -> float:
        return float(jax.device_get(self.steps.eval_loss(params, self.probe)))

    def _check(self, state: Any, extra: dict) -> None:
        """A restored checkpoint must hold a loop state, and its parameters must score the saved loss on
        the fixed batch: that catches a checkpoint written wrong, which its digest cannot."""
        LoopState.from_extra(extra, 0.0)  # an emptied extra record fails here
        saved = extra["verify"]["probe_loss"] if "verify" in extra else None  # older checkpoints: none
        loss = self._probe_loss(state.params) if saved is not None else None
        if saved is not None and not math.isclose(loss, saved, rel_tol=1e-5):
            raise CheckpointCorrupt(f"loss {loss:.6g} on the fixed validation batch, saved as {saved:.6g}")

    def _save(self, step: int) -> None:
        self.so_far.data = self.source.state()
        self.ckpt.save(step, self.state, self.so_far.to_extra(), self._probe_loss(self.state.params))

    # -- at a step -----------------------------------------------------------------------------
    def _record(self, step: int, metrics: dict) -> None:
        """Metrics of a finished step: divergence check, progress bar, and a row when due."""
        if self.diverged:  # the step after the first non-finite one: neither logged nor counted
            return
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
        now = time.perf_counter()
        seconds, self.t_last = now - self.t_last, now
        self.so_far.train_time_s += seconds
        self.window_s += seconds
        self.window_steps += 1
        self.so_far.last_loss = m["loss"]
        self.done = step
        if not math.isfinite(m["loss"]):
            self.diverged = f"non-finite loss {m['loss']} at step {step}"
        if self.bar is not None:
            # refresh=False: the bar redraws at tqdm's own pace (mininterval), not at every step.
            self.bar.set_postfix(
                loss=f"{m['loss']:.4f}", tok_s=f"{self.tokens_per_step / seconds:,.0f}", refresh=False
            )
            self.bar.update(1)
        if step % self.cfg.train.log_every == 0 or step == self.total or self.diverged:
            step_time = self.window_s / self.window_steps
            row = {
                "step": step,
                "tokens": step * self.tokens_per_step,
                "flops": step * self.flops_per_step,
                "loss": m["loss"],
                "lr": m["lr"],
                "grad_norm": m["grad_norm"],
                "step_time_s": step_time,
                "tokens_per_s": self.tokens_per_step / step_time,
                "mfu": self.flops_per_step / step_time / self.peak if self.peak else None,
            }
            self.window_s, self.window_steps = 0.0, 0
            if self.primary:
                self.log.write(row)

    def _evaluate(self, step: int) -> None:
        if not self.val_batches:
            return
        rows = [self.steps.eval_rows(self.state.params, b) for b in self.val_batches]
        losses = np.concatenate(jax.device_get(rows)).astype(np.float64)
        self.so_far.last_val_loss = float(losses.mean())
        labels = self.pipe.labels
        if len(labels) > 1:
            self.so_far.last_val_losses = {
                label: float(losses[self.val_rows == k].mean())
                for k, label in enumerate(labels)
                if (self.val_rows == k).any()
            }
        row = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "flops": step * self.flops_per_step,
            "loss": self.so_far.last_val_loss,
            "split": "val",
        } | {f"loss_{label}": v for label, v in self.so_far.last_val_losses.items()}
        if self.primary:
            self.log.write(row)

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total

    # -- loop ----------------------------------------------------------------------------------
    def run(self, stop: StopRequested) -> dict:
        self.state, start, self.so_far = self._start()
        self.done = start
        if self.primary:
            mirror = tracking.Trackers(self.cfg, self.out, start, (self.out / "config.yaml").read_text())
            self.log = runlog.MetricsLog(self.out / "metrics.jsonl", start, mirror)
            self._write_summary("running")
        t0 = time.perf_counter()
        compiled = self.steps.compile_train_step()
        self.compile_s = time.perf_counter() - t0
        self.bar = (
            tqdm(total=self.total, initial=start, unit="step", desc=self.out.name, file=sys.stderr)
            if self.progress and self.primary
            else None
        )
        pending, self.t_last = None, time.perf_counter()
        status = "completed"
        for step in range(start + 1, self.total + 1):
            batch = self.steps.put_batch(next(self.source))
            self.state, metrics = compiled(self.state, batch, step - 1)
            if pending is not None:  # fetch the previous step's metrics while this one computes
                self._record(*pending)
            pending = (step, metrics)
            # Evaluation and checkpoint run at a synchronised step, after its metrics are in.
            evaluate = self._due(step, self.cfg.train.eval_every)
            c = self.cfg.checkpoint
            save = (self._due(step, c.every_steps) and (step < self.total or c.final)) or step in c.keep_steps
            stopping = stop.now(step)
            if not (evaluate or save or stopping or self.diverged):
                continue
            self._record(*pending)
            pending = None
            sharding.settle(self.state)  # every device is done with the step: see sharding.settle
            if self.diverged:
                status = "diverged"  # the diverged state is never checkpointed
                break
            if evaluate:
                self._evaluate(step)
            if save or stopping:
                self._save(step)
            if stopping:
                status = "running"  # preempted: the same command resumes from this step
                break
            self.t_last = time.perf_counter()  # eval and checkpoint time is not step time
        self.ckpt.close()
        return self._write_summary(status)

    def _write_summary(self, status: str, error: str | None = None) -> dict:
        summary = results.run_summary(
            self.cfg,
            status,
            self.done,
            final_loss=self.so_far.last_loss,
            final_val_loss=self.so_far.last_val_loss,
            wall_time_s=self.so_far.wall_time_s,
            train_time_s=self.so_far.train_time_s,
            compile_time_s=self.compile_s,
            peak_flops=self.peak,
            peak_source=self.peak_source,
            data_entropy_rate=self.pipe.entropy_rate,
            data_epochs=self.source.epochs,
            data_fingerprint=self.pipe.fingerprint,
            components={
                label: {"final_val_loss": loss, "data_entropy_rate": self.pipe.entropy_rates[label]}
                for label, loss in self.so_far.last_val_losses.items()
            },
        )
        if error or self.diverged:
            summary["error"] = error or self.diverged
        if self.primary:
            if self.diverged and not error:
                runlog.write_atomic(self.out / "error.log", f"diverged: {self.diverged}\n")
            runlog.write_json(self.out / "summary.json", summary)
        return summary

    def failed(self, error: Exception) -> RunFailed:
        """A run that raised: shut the checkpointer down, drop its partial save, and mark the run failed
        with the error (its traceback in error.log), so no `running` summary is left behind."""
        message = runlog.one_line(error)
        with contextlib.suppress(Exception):  # the save that failed raises again here
            self.ckpt.close()
        if self.primary:
            with contextlib.suppress(Exception):  # with the disk still full, the summary says running
                self.ckpt.remove_partial()
                runlog.write_atomic(self.out / "error.log", traceback.format_exc())
                self._write_summary("failed", message)
        return RunFailed(f"{message} (the run in '{self.out}' is marked failed; see its error.log)")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.bar is not None:
            self.bar.close()
