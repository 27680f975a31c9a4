"""The results contract, without JAX: a run's `summary.json` and the sweep tables built from them.

A run directory's `summary.json` holds the fields `run_summary` writes, in that order, plus the few-shot
aggregates `write_fewshot` merges in. A sweep directory's `results.csv` is one row per run (its
flattened summary and its sweep coordinates from `cell.json`), `fewshot.csv` one row per run, task,
shot count and metric, and `fewshot_training.csv` the same at every checkpoint a run evaluated, for the
runs evaluated before their last step. DESIGN.md, "Results", is the contract these implement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmscale import flops, runlog, schedule
from lmscale.config import Config
from lmscale.fewshot import tasks

if TYPE_CHECKING:
    import pandas as pd

CELL = "cell.json"  # the run's id and sweep coordinates (columns of results.csv beyond the summary)
# `chance` (last, so older readers by position still work) is the metric's value for a uniform guess
FEWSHOT_COLUMNS = [
    *("run_id", "params", "flops", "tokens", "task", "shots", "metric", "value", "stderr", "n", "chance")
]
# Accuracy over training: every checkpoint step a run evaluated, with the tokens and FLOPs seen by then.
TRAINING_COLUMNS = ["run_id", "params", "step", "flops", "tokens", *FEWSHOT_COLUMNS[4:]]


def read_json(path: Path) -> dict | None:
    """A JSON file's object, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_summary(run_dir: Path) -> dict | None:
    """The run's `summary.json`, or None if it has not written one."""
    return read_json(Path(run_dir) / "summary.json")


# -- a run's summary --------------------------------------------------------------------------


def run_shape(cfg: Config) -> dict:
    """The summary fields fixed by the config: parameter counts, shape and the training settings."""
    m, counts = cfg.model, flops.param_counts(cfg.model)
    warmup = schedule.warmup(cfg.train, cfg.steps)
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
        "steps_budget": cfg.steps,  # the budget in both forms: steps here, tokens as `tokens_budget`
        "tokens_budget": cfg.steps * cfg.train.batch_size * m.seq_len,
        "warmup_steps": warmup,  # the warmup in both forms
        "warmup_frac": warmup / cfg.steps,
        "lr": cfg.train.lr,
        "seed": cfg.train.seed,
    }


def run_metadata(cfg: Config, environment: dict, data: dict) -> dict:
    """config.yaml's `meta`: the `versions` and `devices` of `environment`, the step count and the data."""
    return {
        **environment,
        "steps": cfg.steps,
        "tokens_per_step": cfg.train.batch_size * cfg.model.seq_len,
        "data": data,
    }


def run_summary(
    cfg: Config,
    status: str,
    steps: int,
    *,
    final_loss: float,
    final_val_loss: float,
    wall_time_s: float,
    train_time_s: float,
    compile_time_s: float | None,
    peak_flops: float | None,
    peak_source: str | None,
    data_entropy_rate: float | None,
    data_epochs: int,
    data_fingerprint: str,
    components: dict[str, dict] | None = None,
) -> dict:
    """`summary.json` of a run `steps` steps in, non-finite values as None; evaluation fills `fewshot`.

    `train_time_s` is time in train steps only, the denominator of throughput and MFU. `components`
    maps a mixture component's label to its `final_val_loss` and `data_entropy_rate`, which become
    `final_val_loss_<label>` and `data_entropy_rate_<label>`: a law can be fitted to one component.
    """
    tokens = steps * cfg.train.batch_size * cfg.model.seq_len
    spent = steps * flops.step_flops(cfg)
    summary = {
        "status": status,
        **run_shape(cfg),
        "steps": steps,
        "tokens": tokens,
        "flops": spent,
        "flops_6nd": flops.flops_6nd(cfg.model, tokens),
        "flops_causal_half": cfg.train.flops_causal_half,
        "final_loss": final_loss,
        "final_val_loss": final_val_loss,
        "wall_time_s": wall_time_s,
        "train_time_s": train_time_s,
        "compile_time_s": compile_time_s,
        "tokens_per_s": tokens / train_time_s if train_time_s else None,
        "mfu": spent / train_time_s / peak_flops if train_time_s and peak_flops else None,
        "peak_flops": peak_flops,
        "peak_source": peak_source,
        "data_entropy_rate": data_entropy_rate,
        "data_epochs": data_epochs,
        "data_fingerprint": data_fingerprint,
        **{f"{key}_{label}": v for label, values in (components or {}).items() for key, v in values.items()},
        "fewshot": {},
    }
    return runlog.finite_or_none(summary)


def failed_summary(cfg: Config, run_dir: Path, error: str) -> dict:
    """The run's last summary (or its planned shape if it never wrote one), marked failed."""
    summary = read_summary(run_dir)
    if summary is None:
        summary = {**run_shape(cfg), "steps": 0, "tokens": 0, "flops": 0, "fewshot": {}}
    return summary | {"status": "failed", "error": error}


# -- few-shot results of a run ----------------------------------------------------------------


def merge(fewshot: dict | None, new: dict) -> dict:
    """{task: {shots: metrics}} with `new`'s (task, shots) entries replacing or adding to `fewshot`'s."""
    out = dict(fewshot or {})
    for task, by_shots in new.items():
        out[task] = {**out.get(task, {}), **by_shots}
    return out


def with_step(by_step: dict, step: int, new: dict) -> dict:
    """`fewshot_steps` ({step: fewshot}, keys as strings) with `new` merged in at `step`, steps in order."""
    out = {**by_step, str(step): merge(by_step.get(str(step)), new)}
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def write_fewshot(
    run_dir: Path, rows: Sequence[dict], aggregates: dict, step: int | None = None, final: bool = True
) -> None:
    """Merge `rows` into `fewshot.jsonl`, replacing only the (task, shots, step) evaluated, and their
    `aggregates` into summary.json: the final checkpoint's under `fewshot`, an earlier one's under
    `fewshot_steps[step]`.

    Both files are rewritten atomically (rows first); every other key of summary.json is kept as it was.
    """
    run_dir = Path(run_dir)
    new = [r | {"step": step} for r in rows]
    done = {(r["task"], r["shots"], r["step"]) for r in new}
    old = runlog.read_jsonl(run_dir / "fewshot.jsonl")
    kept = [r for r in old if (r["task"], r["shots"], r.get("step")) not in done]
    runlog.write_atomic(run_dir / "fewshot.jsonl", "".join(json.dumps(r) + "\n" for r in kept + new))
    summary = read_summary(run_dir) or {}
    if final:
        summary["fewshot"] = merge(summary.get("fewshot"), aggregates)
    else:
        summary["fewshot_steps"] = with_step(summary.get("fewshot_steps") or {}, step, aggregates)
    runlog.write_json(run_dir / "summary.json", summary)


# -- a sweep's tables -------------------------------------------------------------------------


def _long(head: dict, fewshot: dict) -> Iterator[dict]:
    """{task: {shots: {metric: {value, stderr, n}}}} as long-format rows, each starting with `head`."""
    for task, by_shots in fewshot.items():
        for shots, metrics in by_shots.items():
            for metric, v in metrics.items():
                yield (
                    head
                    | {"task": task, "shots": int(shots), "metric": metric}
                    | {k: v.get(k) for k in ("value", "stderr", "n")}
                    | {"chance": tasks.chance(task, metric)}
                )


def _over_training(run_id: str, summary: dict, fewshot: dict) -> Iterator[dict]:
    """A run's few-shot aggregates at each checkpoint it evaluated (its summary's `fewshot_steps`, then
    the final `fewshot`), when it evaluated any before the last."""
    steps = summary.get("steps") or 0
    by_step = {int(s): f for s, f in (summary.get("fewshot_steps") or {}).items()}
    if not by_step or not steps:
        return
    for step, table in sorted((by_step | {steps: fewshot}).items()):
        seen = step / steps  # share of the run's tokens and FLOPs trained on by this checkpoint
        head = {"run_id": run_id, "params": summary.get("params"), "step": step}
        head |= {k: round((summary.get(k) or 0) * seen) for k in ("flops", "tokens")}
        yield from _long(head, table)


def tables(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """results.csv, fewshot.csv and fewshot_training.csv (the runs evaluated at earlier checkpoints
    too), built from every run directory's summary.json."""
    import pandas as pd  # here, not at the top: a single run never builds tables, and pandas takes 0.3 s

    results, fewshot, training = [], [], []
    for path in sorted(Path(sweep_dir).glob("*/summary.json")):
        summary = read_json(path)
        if summary is None:
            continue
        run_id = path.parent.name
        coords = (read_json(path.parent / CELL) or {}).get("coords", {})
        shots_table = summary.pop("fewshot", None) or {}
        training.extend(_over_training(run_id, summary, shots_table))
        summary.pop("fewshot_steps", None)
        results.append({"run_id": run_id, **summary, **coords})
        head = {"run_id": run_id, **{k: summary.get(k) for k in ("params", "flops", "tokens")}}
        fewshot.extend(_long(head, shots_table))
    results_df = pd.json_normalize(results, sep=".") if results else pd.DataFrame(columns=["run_id"])
    return (
        results_df,
        pd.DataFrame(fewshot, columns=FEWSHOT_COLUMNS),
        pd.DataFrame(training, columns=TRAINING_COLUMNS),
    )


def write_tables(sweep_dir: Path) -> pd.DataFrame:
    """Rescan the run directories and rewrite each table atomically; returns results.csv's rows.

    fewshot_training.csv is written once some run has evaluated an earlier checkpoint."""
    results, fewshot, training = tables(sweep_dir)
    runlog.write_atomic(Path(sweep_dir) / "results.csv", results.to_csv(index=False))
    runlog.write_atomic(Path(sweep_dir) / "fewshot.csv", fewshot.to_csv(index=False))
    if len(training) or (Path(sweep_dir) / "fewshot_training.csv").exists():
        runlog.write_atomic(Path(sweep_dir) / "fewshot_training.csv", training.to_csv(index=False))
    return results
