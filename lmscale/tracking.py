"""Experiment trackers beside `metrics.jsonl`: TensorBoard event files and Weights & Biases.

`metrics.jsonl` stays the source of truth; a tracker mirrors its rows so a sweep can be watched live in
the tools researchers already use. Both are optional extras, imported only when a run asks for them:

- `log.tensorboard: true` writes event files into the run directory (TensorBoard's own writer): a scalar per
  `metrics.jsonl` field (`train/loss`, `train/lr`, ...), `val/loss`, the config as text, and few-shot
  aggregates (`fewshot/TASK/Kshot/METRIC`) after evaluation.
- `log.wandb: {project, entity, mode, group}` logs the same to a W&B run whose id is kept in the run
  directory (`wandb_id`), so a resumed run, and its evaluation, continue that run. A sweep's runs are
  grouped by the sweep's name and named by their run id.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from lmscale.config_types import ConfigError

EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}  # key: (module, extra)
WANDB_ID = "wandb_id"  # in the run directory: the W&B run this run logs to, across resumes


@dataclasses.dataclass
class WandbConfig:
    project: str = "lmscale"
    entity: str = ""  # "" = your default entity
    # auto: $WANDB_MODE if set, else online when WANDB_API_KEY is set and offline otherwise (no network
    # needed; `wandb sync` uploads later)
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    group: str = ""  # "" = the sweep's name for a sweep's runs, none for a single run
    name: str = ""  # "" = the run directory's name (a sweep's run id)


@dataclasses.dataclass
class LogConfig:
    tensorboard: bool = False  # event files in the run directory; needs lmscale[tensorboard]
    wandb: WandbConfig | None = None  # a mapping (`{}` for the defaults) turns W&B on; needs lmscale[wandb]


def _import(key: str) -> Any:
    """The tracker's package; a ConfigError naming the extra when it is not installed."""
    module, extra = EXTRAS[key]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"log.{key}: the {module} package is not installed; pip install 'lmscale[{extra}]'"
        ) from None


def check(log: LogConfig) -> None:
    """Fail before anything is written when a tracker the config asks for cannot be imported."""
    if log.tensorboard:
        _import("tensorboard")
    if log.wandb is not None:
        _import("wandb")


def _flat_fewshot(fewshot: dict) -> dict[str, float]:
    """{task: {shots: {metric: {value}}}} as scalars named `fewshot/TASK/Kshot/METRIC`."""
    return {
        f"fewshot/{task}/{shots}shot/{metric}": m["value"]
        for task, by_shots in fewshot.items()
        for shots, metrics in by_shots.items()
        for metric, m in metrics.items()
        if m.get("value") is not None
    }


def _scalars(row: dict) -> tuple[int, dict[str, float]]:
    """A metrics.jsonl row as its step and its numeric fields, under `train/` or `val/`."""
    split = row.get("split", "train")
    values = {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split") and v is not None}
    return row["step"], {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


class _TensorBoard:
    """Event files through TensorBoard's own writer and summary protos (no TensorFlow, no PyTorch)."""

    def __init__(self, out: Path, config_text: str, resume_step: int):
        _import("tensorboard")
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.event, self.summary = event_pb2.Event, summary_pb2.Summary
        self.writer = EventFileWriter(str(out))
        if resume_step:  # a resume replays the steps after its checkpoint: readers drop the first copies
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self.writer.add_event(self.event(wall_time=time.time(), step=resume_step + 1, session_log=start))
        elif config_text:
            config = text_pb("config", "```\n" + config_text + "\n```")
            self.writer.add_event(self.event(wall_time=time.time(), step=0, summary=config))

    def write(self, step: int, values: dict[str, float]) -> None:
        scalars = [self.summary.Value(tag=tag, simple_value=value) for tag, value in values.items()]
        self.writer.add_event(
            self.event(wall_time=time.time(), step=step, summary=self.summary(value=scalars))
        )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, cfg: Any, out: Path):
        from lmscale import results, runlog  # they import the config, which imports this module

        wandb = _import("wandb")
        w = cfg.log.wandb
        id_file = out / WANDB_ID
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        if not id_file.exists():
            runlog.write_atomic(id_file, run_id + "\n")
        sweep = (out / results.CELL).exists()  # a sweep's run directory
        mode = w.mode
        if mode == "auto":  # WANDB_MODE, when set, decides; else online only with an API key to log in with
            mode = os.environ.get("WANDB_MODE") or (
                "online" if os.environ.get("WANDB_API_KEY") else "offline"
            )
        self.run = wandb.init(
            project=w.project,
            entity=w.entity or None,
            group=w.group or (out.parent.name if sweep else None),
            name=w.name or out.name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(out),
            config=cfg.to_dict(),
            settings=wandb.Settings(silent=True, console="off"),
        )
        # Every value is plotted against the run's own step, logged as a value: a resumed run replays
        # the steps after its checkpoint, which W&B's own step counter would refuse as going backwards.
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log({"step": step, **values})

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers `cfg.log` asks for, on the run directory `out`; `write` takes metrics.jsonl rows."""

    def __init__(self, cfg: Any, out: Path, resume_step: int = 0, config_text: str = ""):
        self.open: list[Any] = []
        if cfg.log.tensorboard:
            self.open.append(_TensorBoard(out, config_text, resume_step))
        if cfg.log.wandb is not None:
            self.open.append(_Wandb(cfg, out))

    def write(self, row: dict) -> None:
        step, values = _scalars(row)
        for tracker in self.open:
            tracker.write(step, values)

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []


def log_fewshot(cfg: Any, out: Path, step: int, fewshot: dict) -> None:
    """Few-shot aggregates of the checkpoint at `step`, to the run's trackers (after `lmscale eval`)."""
    if not (cfg.log.tensorboard or cfg.log.wandb is not None):
        return
    trackers = Trackers(cfg, Path(out), resume_step=0, config_text="")
    try:
        values = _flat_fewshot(fewshot)
        for tracker in trackers.open:
            tracker.write(step, values)
    finally:
        trackers.close()
