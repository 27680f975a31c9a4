"""One training run: resume or start, step, log, evaluate, checkpoint, and stop cleanly."""

from __future__ import annotations

import dataclasses
import math
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint
from tqdm.auto import tqdm

import lmscale
from lmscale import flops, peak, results, runlog, sharding
from lmscale.checkpoint import Checkpointer
from lmscale.config import Config, ConfigError, from_dict, read_yaml
from lmscale.data.pipeline import Pipeline, prepare, process_rows
from lmscale.step_fns import StepFns, build


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
        )


def environment() -> dict:
    """The library versions and devices of this process: the part of a run's metadata that asks JAX."""
    devices = jax.devices()
    return {
        "versions": {
            "lmscale": lmscale.__version__,
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "orbax_checkpoint": orbax.checkpoint.__version__,
            "python": platform.python_version(),
        },
        "devices": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
            "processes": jax.process_count(),
        },
    }


def _check_same_config(path: Path, cfg: Config) -> None:
    """A run directory belongs to one config; resuming it with another would mix two runs."""
    old = from_dict(read_yaml(path)).to_dict()
    new = cfg.to_dict()
    for section in new:
        for key in new[section]:
            if old[section][key] != new[section][key]:
                raise ConfigError(
                    f"{section}.{key}={new[section][key]!r} differs from {old[section][key]!r} in "
                    f"'{path}'; use a new --out to train a different config"
                )


class StopRequested:
    """SIGTERM (preemption, `scancel`, `kill`) asks the loop to checkpoint and exit at the next step.

    With several processes the signal reaches each at its own moment, but all must stop after the same
    step: one saving (a collective) while another runs the next step would hang both. Their flags are
    therefore combined every `sync_every` steps (the logged steps, where the loop waits on the step's
    metrics anyway), and every process stops at the first such step after any of them was asked to.
    """

    def __init__(self, sync_every: int = 1):
        self.requested = False
        self.sync_every = sync_every

    def now(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step`: the same answer in every process."""
        if jax.process_count() == 1:
            return self.requested
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.requested))))

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def train(cfg: Config, out: Path, progress: bool = True) -> dict:
    """Train `cfg` into run directory `out`, resuming from its latest checkpoint. Returns the summary."""
    out = Path(out)
    primary = jax.process_index() == 0
    if (out / "config.yaml").exists():
        _check_same_config(out / "config.yaml", cfg)
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
    if primary:
        meta = results.run_metadata(cfg, environment(), pipe.metadata())
        runlog.write_yaml(out / "config.yaml", cfg.to_dict() | {"meta": meta})
        if not (out / "tokenizer.json").exists():
            runlog.write_atomic(out / "tokenizer.json", pipe.tokenizer.hf.to_str(pretty=True))

    t_start = time.perf_counter()
    mesh = sharding.make_mesh(cfg.mesh)
    steps = build(cfg, mesh)
    # The batch rows this host's pipeline reads must be the ones its devices hold
    rows = process_rows(cfg.train.batch_size, jax.process_index(), jax.process_count())
    sharding.check_process_rows(steps.batch_sharding, cfg.train.batch_size, rows)
    loop = _Loop(cfg, out, steps, pipe, primary, progress, t_start)
    try:
        with StopRequested(sync_every=cfg.train.log_every) as stop:
            summary = loop.run(stop)
    finally:
        loop.close()
    return summary


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
    ):
        self.cfg, self.out, self.steps, self.pipe, self.primary = cfg, out, steps, pipe, primary
        self.total = cfg.steps
        self.tokens_per_step = cfg.train.batch_size * cfg.model.seq_len
        self.flops_per_step = flops.step_flops(cfg)
        self.peak, self.peak_source = peak.peak_flops()
        c = cfg.checkpoint
        self.ckpt = Checkpointer(out / "checkpoints", c.keep, c.async_save, c.keep_period, c.keep_steps)
        pi, pc = jax.process_index(), jax.process_count()
        self.source = pipe.source("train", cfg.train.batch_size, cfg.train.seed, pi, pc)
        val = pipe.source("val", cfg.train.batch_size, cfg.train.seed, pi, pc)
        self.val_batches = [steps.put_batch(next(val)) for _ in range(cfg.train.eval_batches)]
        self.progress = progress
        # Set by run(): the restored (or fresh) train state and loop state, the log and the bar.
        self.state: Any = None
        self.so_far = LoopState(t_start)
        self.log: runlog.MetricsLog | None = None
        self.bar: tqdm | None = None
        self.compile_s: float | None = None
        self.done = 0  # the last step whose metrics are in
        self.diverged = False
        # Step time: since the last step's metrics arrived, summed over the steps of the logged window.
        self.t_last, self.window_s, self.window_steps = t_start, 0.0, 0

    # -- state ---------------------------------------------------------------------------------
    def _start(self) -> tuple[Any, int, LoopState]:
        step = self.ckpt.latest_step()
        if step is None:
            return self.steps.init(self.cfg.train.seed), 0, self.so_far
        state, extra = self.ckpt.restore(step, self.steps.abstract_state)
        so_far = LoopState.from_extra(extra, self.so_far.t_start)
        self.source.restore(so_far.data)
        return state, step, so_far

    def _save(self, step: int) -> None:
        self.so_far.data = self.source.state()
        self.ckpt.save(step, self.state, self.so_far.to_extra())

    # -- at a step -----------------------------------------------------------------------------
    def _record(self, step: int, metrics: dict) -> None:
        """Metrics of a finished step: divergence check, progress bar, and a row when due."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
        now = time.perf_counter()
        seconds, self.t_last = now - self.t_last, now
        self.so_far.train_time_s += seconds
        self.window_s += seconds
        self.window_steps += 1
        self.so_far.last_loss = m["loss"]
        self.done = step
        if not math.isfinite(m["loss"]):
            self.diverged = True
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
        losses = [self.steps.eval_loss(self.state.params, b) for b in self.val_batches]
        self.so_far.last_val_loss = float(np.mean(jax.device_get(losses)))
        row = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "flops": step * self.flops_per_step,
            "loss": self.so_far.last_val_loss,
            "split": "val",
        }
        if self.primary:
            self.log.write(row)

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total

    # -- loop ----------------------------------------------------------------------------------
    def run(self, stop: StopRequested) -> dict:
        self.state, start, self.so_far = self._start()
        self.done = start
        if self.primary:
            self.log = runlog.MetricsLog(self.out / "metrics.jsonl", start)
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
            self.state, metrics = compiled(self.state, batch)
            if pending is not None:  # fetch the previous step's metrics while this one computes
                self._record(*pending)
            pending = (step, metrics)
            # Evaluation and checkpoint run at a synchronised step, after its metrics are in.
            evaluate = self._due(step, self.cfg.train.eval_every)
            save = self._due(step, self.cfg.checkpoint.every_steps) or step in self.cfg.checkpoint.keep_steps
            stopping = stop.now(step)
            if not (evaluate or save or stopping or self.diverged):
                continue
            self._record(*pending)
            pending = None
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

    def _write_summary(self, status: str) -> dict:
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
        )
        if self.primary:
            runlog.write_json(self.out / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.bar is not None:
            self.bar.close()
