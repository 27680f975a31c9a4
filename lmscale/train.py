"""One training run: resume or start, step, log, evaluate, checkpoint, and stop cleanly."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint
from tqdm.auto import tqdm

import lmscale
from lmscale import flops, peak, runlog, sharding
from lmscale.checkpoint import Checkpointer
from lmscale.config import Config, ConfigError, from_dict, read_yaml
from lmscale.data.pipeline import Pipeline, prepare, process_rows
from lmscale.step_fns import StepFns, build


@dataclasses.dataclass
class Hook:
    """Runs `fn(step)` every `every` steps and at the last step (Levanter-style `add_hook`)."""

    fn: Callable[[int], None]
    every: int

    def due(self, step: int, last: int) -> bool:
        return step % self.every == 0 or step == last


def run_metadata(cfg: Config, pipe: Pipeline) -> dict:
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
        "steps": cfg.steps,
        "tokens_per_step": cfg.train.batch_size * cfg.model.seq_len,
        "data": pipe.metadata(),
    }


def run_shape(cfg: Config) -> dict:
    """The summary fields fixed by the config: parameter counts, shape and the training settings."""
    m, counts = cfg.model, flops.param_counts(cfg.model)
    return {
        "params": counts.total,
        "params_nonembedding": counts.nonembedding,
        "params_embedding": counts.embedding,
        "n_layers": m.n_layers,
        "d_model": m.d_model,
        "n_heads": m.n_heads,
        "d_ff": m.ff_dim,
        "vocab_size": m.vocab_size,
        "seq_len": m.seq_len,
        "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr,
        "seed": cfg.train.seed,
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
    summary_path = out / "summary.json"
    if (out / "config.yaml").exists():
        _check_same_config(out / "config.yaml", cfg)
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
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
        runlog.write_yaml(out / "config.yaml", cfg.to_dict() | {"meta": run_metadata(cfg, pipe)})
        if not (out / "tokenizer.json").exists():
            runlog.write_atomic(out / "tokenizer.json", pipe.tokenizer.hf.to_str(pretty=True))

    t_start = time.perf_counter()
    mesh = sharding.make_mesh(cfg.mesh)
    steps = build(cfg, mesh)
    # The batch rows this host's pipeline reads must be the ones its devices hold
    rows = process_rows(cfg.train.batch_size, jax.process_index(), jax.process_count())
    sharding.check_process_rows(steps.batch_sharding, cfg.train.batch_size, rows)
    loop = _Loop(cfg, out, steps, pipe, primary, progress)
    try:
        with StopRequested(sync_every=cfg.train.log_every) as stop:
            summary = loop.run(stop, t_start)
    finally:
        loop.close()
    return summary


class _Loop:
    def __init__(self, cfg: Config, out: Path, steps: StepFns, pipe: Pipeline, primary: bool, progress: bool):
        self.cfg, self.out, self.steps, self.primary = cfg, out, steps, primary
        self.total = cfg.steps
        self.tokens_per_step = cfg.train.batch_size * cfg.model.seq_len
        self.flops_per_step = self.tokens_per_step * flops.train_flops_per_token(
            cfg.model, cfg.train.flops_causal_half
        )
        self.peak, self.peak_source = peak.peak_flops()
        c = cfg.checkpoint
        self.ckpt = Checkpointer(out / "checkpoints", c.keep, c.async_save, c.keep_period)
        pi, pc = jax.process_index(), jax.process_count()
        self.pipe = pipe
        self.source = pipe.source("train", cfg.train.batch_size, cfg.train.seed, pi, pc)
        val = pipe.source("val", cfg.train.batch_size, cfg.train.seed, pi, pc)
        self.val_batches = [steps.put_batch(next(val)) for _ in range(cfg.train.eval_batches)]
        self.progress = progress
        self.log, self.bar, self.compile_s, self.done = None, None, None, 0

    # -- state ---------------------------------------------------------------------------------
    def _start(self) -> tuple[Any, int, dict]:
        step = self.ckpt.latest_step()
        if step is None:
            return self.steps.init(self.cfg.train.seed), 0, {}
        state, extra = self.ckpt.restore(step, self.steps.abstract_state)
        self.source.restore(extra["data"])
        return state, step, extra

    def _save(self, step: int) -> None:
        extra = {
            "data": self.source.state(),
            "wall_time_s": self.wall_before + time.perf_counter() - self.t_start,
            "train_time_s": self.train_time_s,
            "last_loss": self.last_loss,
            "last_val_loss": self.last_val_loss,
        }
        self.ckpt.save(step, self.state, extra)

    # -- hooks ---------------------------------------------------------------------------------
    def _record(self, step: int, metrics: dict) -> None:
        """Metrics of a finished step: divergence check, progress bar, and a row when due."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
        now = time.perf_counter()
        seconds, self.t_last = now - self.t_last, now
        self.train_time_s += seconds
        self.window_s += seconds
        self.window_steps += 1
        self.last_loss = m["loss"]
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
        self.last_val_loss = float(np.mean(jax.device_get(losses)))
        row = {
            "step": step,
            "tokens": step * self.tokens_per_step,
            "flops": step * self.flops_per_step,
            "loss": self.last_val_loss,
            "split": "val",
        }
        if self.primary:
            self.log.write(row)

    # -- loop ----------------------------------------------------------------------------------
    def run(self, stop: StopRequested, t_start: float) -> dict:
        self.t_start = t_start
        self.state, start, extra = self._start()
        self.done = start
        self.wall_before = extra.get("wall_time_s", 0.0)
        self.train_time_s = extra.get("train_time_s", 0.0)
        self.last_loss = extra.get("last_loss", float("nan"))
        self.last_val_loss = extra.get("last_val_loss", float("nan"))
        self.window_s, self.window_steps, self.diverged = 0.0, 0, False
        if self.primary:
            self.log = runlog.MetricsLog(self.out / "metrics.jsonl", start)
            self._write_summary("running")
        t0 = time.perf_counter()
        compiled = self.steps.compile_train_step()
        self.compile_s = time.perf_counter() - t0
        # Hooks run at a synchronised step, after its metrics are in; the loop itself stays short.
        hooks = [
            Hook(self._evaluate, self.cfg.train.eval_every),
            Hook(self._save, self.cfg.checkpoint.every_steps),
        ]
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
            due = [hook for hook in hooks if hook.due(step, self.total)]
            stopping = stop.now(step)
            if not (due or stopping or self.diverged):
                continue
            self._record(*pending)
            pending = None
            if self.diverged:
                status = "diverged"  # the diverged state is never checkpointed
                break
            for hook in due:
                hook.fn(step)
            if stopping:
                if self._save not in [hook.fn for hook in due]:
                    self._save(step)
                status = "running"  # preempted: the same command resumes from this step
                break
            self.t_last = time.perf_counter()  # eval and checkpoint time is not step time
        self.ckpt.close()
        return self._write_summary(status)

    def _write_summary(self, status: str) -> dict:
        cfg, m = self.cfg, self.cfg.model
        done = self.done
        tokens = done * self.tokens_per_step
        summary = {
            "status": status,
            **run_shape(cfg),
            "steps": done,
            "tokens": tokens,
            "flops": done * self.flops_per_step,
            "flops_6nd": flops.flops_6nd(m, tokens),
            "flops_causal_half": cfg.train.flops_causal_half,
            "final_loss": self.last_loss,
            "final_val_loss": self.last_val_loss,
            "wall_time_s": self.wall_before + time.perf_counter() - self.t_start,
            "train_time_s": self.train_time_s,
            "compile_time_s": self.compile_s,
            "tokens_per_s": tokens / self.train_time_s if self.train_time_s else None,
            "mfu": (done * self.flops_per_step / self.train_time_s / self.peak)
            if self.train_time_s and self.peak
            else None,
            "peak_flops": self.peak,
            "peak_source": self.peak_source,
            "data_entropy_rate": self.pipe.entropy_rate,
            "data_epochs": self.source.epochs,
            "data_fingerprint": self.pipe.fingerprint,
            "fewshot": {},
        }
        summary = runlog.finite_or_none(summary)
        if self.primary:
            runlog.write_json(self.out / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if getattr(self, "bar", None) is not None:
            self.bar.close()
