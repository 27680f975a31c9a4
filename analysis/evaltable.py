"""Evaluation tables of any origin, read into the long shape the emergence fits take.

A table is long: one row per (model, task, shots, metric) with a value, as lmscale's `fewshot.csv` or a
table built from lm-evaluation-harness results. lm-eval's conventions are understood: a metric named
`X_stderr` is the standard error of `X` (and becomes its `stderr`), a `,filter` suffix (`acc,none`) is
dropped, and `acc_norm` stands in for `acc` wherever a task has both, unless the metrics are chosen.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import AnalysisError, _read_csv, line

ROLES = ("model", "params", "flops", "shots", "task", "metric", "value", "stderr", "n", "group", "chance")
DEFAULTS = {"model": ("model", "run_id")} | {r: (r,) for r in ROLES if r != "model"}
NUMERIC = ("params", "flops", "shots", "value", "stderr", "n", "chance")
PREFERRED = (("acc_norm", "acc"),)  # (kept, dropped) where a task reports both
AGGREGATES = ("mean", "points")  # points: each model its own point (a sweep's seeds and token counts)


@dataclasses.dataclass(frozen=True)
class Options:
    """How to read a table: column mapping, filters, chance levels and how to treat repeated models."""

    columns: dict = dataclasses.field(default_factory=dict)  # role -> the table's column name
    tasks: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    shots: tuple[int, ...] = ()
    chance: dict = dataclasses.field(default_factory=dict)  # task -> chance level
    aggregate: str | None = None  # "mean": average models of one size; None: repeated models are an error


def table_path(path: str | Path) -> Path:
    """A sweep directory means its fewshot.csv; anything else is taken as a CSV file."""
    path = Path(path)
    return path / "fewshot.csv" if path.is_dir() else path


def load_table(path: str | Path, options: Options = Options()) -> pd.DataFrame:
    """Canonical columns run_id (the model), group, params, flops, task, shots, metric, value, stderr,
    n, chance; `line` is each row's line in the file, for errors."""
    csv = table_path(path)
    df = _read_csv(csv)
    out = pd.DataFrame(index=df.index)
    for role in ROLES:
        given = options.columns.get(role)
        if given is not None and given not in df.columns:
            raise AnalysisError(
                f"'{csv}': no column '{given}' (given for --{role}-col); has {list(df.columns)}"
            )
        col = given or next((c for c in DEFAULTS[role] if c in df.columns), None)
        if col is not None:
            out[role] = df[col]
            if role in NUMERIC:
                out[role] = _numeric(out[role], csv, col)
    for role in ("model", "task", "metric", "value"):
        if role not in out:
            raise AnalysisError(f"'{csv}': missing column '{role}' (map one with --{role}-col)")
    if "params" not in out and "flops" not in out:
        raise AnalysisError(f"'{csv}': missing column 'params' (map one with --params-col or --flops-col)")
    for role, default in (("shots", 0), ("stderr", np.nan), ("n", np.nan), ("group", ""), ("chance", np.nan)):
        if role not in out:
            out[role] = default
    out["line"] = [line(i) for i in df.index]
    out["metric"] = out["metric"].astype(str).str.split(",").str[0]
    out["task"], out["group"] = out["task"].astype(str), out["group"].fillna("").astype(str)
    out = _fold_stderr(out)
    out = _filter(out, options, csv)
    out = _chance(out, options.chance)
    out = _repeated_models(out, options.aggregate, csv)
    out["shots"] = out["shots"].astype(int)
    return out.rename(columns={"model": "run_id"}).reset_index(drop=True)


def _numeric(values: pd.Series, csv: Path, col: str) -> pd.Series:
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any():
        i = bad.idxmax()
        raise AnalysisError(f"'{csv}' line {line(i)}: column '{col}' has non-numeric value {values[i]!r}")
    return numeric


def _fold_stderr(df: pd.DataFrame) -> pd.DataFrame:
    """`X_stderr` rows become the `stderr` of the matching `X` rows."""
    is_se = df["metric"].str.endswith("_stderr")
    if not is_se.any():
        return df
    keys = ["group", "model", "task", "shots", "metric"]
    se = df[is_se].assign(metric=df.loc[is_se, "metric"].str.removesuffix("_stderr"))
    se = se.groupby(keys, sort=False)["value"].mean().rename("_se")
    out = df[~is_se].join(se, on=keys)
    out["stderr"] = out["stderr"].where(out["stderr"].notna(), out.pop("_se"))
    return out


def _filter(df: pd.DataFrame, options: Options, csv: Path) -> pd.DataFrame:
    for role, wanted in (("task", options.tasks), ("metric", options.metrics), ("shots", options.shots)):
        if wanted:
            unknown = sorted(set(wanted) - set(df[role]), key=str)
            if unknown:
                raise AnalysisError(
                    f"'{csv}': no {role} {unknown[0]!r}; has {sorted(set(df[role]), key=str)}"
                )
            df = df[df[role].isin(wanted)]
    if not options.metrics:  # lm-eval reports acc and acc_norm; the normalised one is the one to read
        for kept, dropped in PREFERRED:
            has = set(df.loc[df["metric"] == kept, "task"])
            df = df[~((df["metric"] == dropped) & df["task"].isin(has))]
    df = df[np.isfinite(df["value"])]
    if df.empty:
        raise AnalysisError(f"'{csv}': no finite values left to fit")
    return df


def _chance(df: pd.DataFrame, chance: dict) -> pd.DataFrame:
    unknown = sorted(set(chance) - set(df["task"]))
    if unknown:
        raise AnalysisError(
            f"--chance: unknown task '{unknown[0]}'; tasks: {', '.join(sorted(set(df['task'])))}"
        )
    for task, level in chance.items():
        df.loc[df["task"] == task, "chance"] = level
    return df


def _repeated_models(df: pd.DataFrame, aggregate: str | None, csv: Path) -> pd.DataFrame:
    """Models of one size in one group are an error, unless asked to average them."""
    scale = [c for c in ("params", "flops") if c in df]
    keys = ["group", *scale, "task", "shots", "metric"]
    models = df.groupby(keys, sort=False)["model"].transform("nunique")
    if (models > 1).any() and aggregate is None:
        first = df[models > 1].iloc[0]
        others = ", ".join(sorted(set(df[(df[keys] == first[keys]).all(axis=1)]["model"].astype(str)))[:3])
        raise AnalysisError(
            f"'{csv}' line {first['line']}: models {others} share {scale[0]}={first[scale[0]]:g}, "
            f"task '{first['task']}', {first['shots']}-shot {first['metric']}; separate them "
            "with --group-col or average them with --aggregate mean"
        )
    if (
        models > 1
    ).any() and aggregate == "mean":  # one point per size: the models' mean, each keeping its own stderr
        df = df.assign(model=df[scale[0]].map(lambda v: f"{scale[0]}={v:g}"))
    return df


def parse_chance(items: list[str]) -> dict:
    """`--chance task=value` items as {task: value}."""
    out = {}
    for item in items:
        task, _, value = item.partition("=")
        try:
            out[task] = float(value)
        except ValueError:
            raise AnalysisError(f"--chance {item}: expected TASK=VALUE with a number") from None
    return out
