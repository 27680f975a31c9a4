"""Read and validate results tables into pandas, with canonical column names.

Canonical columns: `params`, `tokens`, `flops`, `loss` (plus whatever else the table carries).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

# Where each canonical column comes from in lmscale's results.csv, in order of preference. Compute is
# 6ND FLOPs, the convention of the allocation fits (D_opt = C / 6 N_opt): the detailed `flops` count,
# with attention, is the fallback only for a table that has neither `flops_6nd` nor tokens.
DEFAULT_SOURCES = {
    "params": ("params",),
    "tokens": ("tokens",),
    "flops": ("flops_6nd",),
    "loss": ("final_val_loss", "final_loss", "loss"),
}
SIX_ND = "6 * params * tokens"  # `Results.flops_source` where compute was derived by six_nd


def six_nd(params, tokens):
    """C = 6 N D: training compute in FLOPs, 2 per parameter per token forward and 4 backward (Kaplan
    et al. 2020, section 2.1). The one place analysis multiplies it out."""
    return 6.0 * params * tokens


def tokens_from_compute(flops, params):
    """D = C / (6 N), the inverse of six_nd: the tokens that compute C buys a model of N parameters."""
    return flops / (6 * params)


FEWSHOT_COLUMNS = ("run_id", "params", "flops", "tokens", "task", "shots", "metric", "value")


@dataclasses.dataclass
class Results:
    runs: pd.DataFrame  # one row per completed run, canonical columns present
    excluded: int  # runs dropped: status not `completed`, or a cooldown sweep's trunk (`role: trunk`)
    source: Path
    flops_source: str  # the column `flops` came from, SIX_ND where it was derived, or "none"
    lines: np.ndarray | None = None  # the file line of each row of `runs` (the header is line 1)
    repeated: list[int] = dataclasses.field(default_factory=list)  # lines that repeat an earlier row exactly
    loss_source: str = "final_val_loss"  # the column `loss` came from


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise AnalysisError(f"'{path}' does not exist")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"'{path}' is not a readable CSV: {str(e).splitlines()[0]}") from None


def results_path(path: str | Path) -> Path:
    """A sweep directory means its results.csv; anything else is taken as a CSV file."""
    path = Path(path)
    return path / "results.csv" if path.is_dir() else path


def load_results(
    path: str | Path,
    params_col: str | None = None,
    tokens_col: str | None = None,
    flops_col: str | None = None,
    loss_col: str | None = None,
    require: tuple[str, ...] = ("params", "loss"),
    budget_col: str | None = None,
) -> Results:
    """Load a results table, map its columns to canonical names and validate what is required.

    Compute is 6ND: a mapped column, else `flops_6nd`, else 6 * params * tokens, else `flops`.
    Missing `tokens` is derived as flops / (6 params). `budget_col` becomes `flops_budget`, the label
    that groups runs into IsoFLOP budgets. Errors name the file's column and line (the header is line 1).
    """
    csv = results_path(path)
    df = _read_csv(csv)
    given = {"params": params_col, "tokens": tokens_col, "flops": flops_col, "loss": loss_col}
    out = df.drop(columns=["flops"], errors="ignore")
    sources = {}
    for canon, col in given.items():
        if col is not None:
            if col not in df.columns:
                raise AnalysisError(f"'{csv}': no column '{col}' (given for {canon}); has {list(df.columns)}")
            out[canon], sources[canon] = df[col], col
            continue
        found = next((c for c in DEFAULT_SOURCES[canon] if c in df.columns), None)
        if found is not None:
            out[canon], sources[canon] = df[found], found
    label = component_label(sources.get("loss"))
    if label and f"data_entropy_rate_{label}" in df.columns:
        # one component's loss of a mixture: its floor is that component's entropy rate
        out["data_entropy_rate"] = df[f"data_entropy_rate_{label}"]
    if "flops" not in out and {"tokens", "params"} <= set(out):
        out["flops"], sources["flops"] = six_nd(out["params"], out["tokens"]), SIX_ND
    if "flops" not in out and "flops" in df.columns:
        out["flops"], sources["flops"] = df["flops"], "flops"
    if "tokens" not in out and {"flops", "params"} <= set(out):
        out["tokens"] = tokens_from_compute(out["flops"], out["params"])
    if budget_col is not None:
        if budget_col not in df.columns:
            raise AnalysisError(
                f"'{csv}': no column '{budget_col}' (given for --budget-col); has {list(df.columns)}"
            )
        out["flops_budget"], sources["flops_budget"] = df[budget_col], budget_col
    excluded = 0
    if "status" in out.columns:
        keep = out["status"] == "completed"
        excluded = int((~keep).sum())
        out = out[keep]
    if "role" in out.columns:  # a cooldown trunk's loss is mid-schedule (constant lr): no data point
        keep = out["role"] != "trunk"
        excluded += int((~keep).sum())
        out = out[keep]
    for canon in require:
        if canon not in out.columns:
            flag = f"--{canon}-col"
            raise AnalysisError(f"'{csv}': missing column '{canon}' (map one with {flag})")
        values = pd.to_numeric(out[canon], errors="coerce")
        name = column_name(canon, sources)
        bad = values.isna() | ~np.isfinite(values)
        if bad.any():
            raise AnalysisError(
                f"'{csv}' line {line(bad.idxmax())}: column {name} has NaN or non-numeric values"
            )
        if (values <= 0).any():
            row = (values <= 0).idxmax()
            raise AnalysisError(
                f"'{csv}' line {line(row)}: column {name} has non-positive value {values[row]}"
            )
        out[canon] = values.astype(float)
    if budget_col is not None and out["flops_budget"].nunique() < 2:
        raise AnalysisError(
            f"'{csv}' lines 2-{line(out.index.max())}: column '{budget_col}' (--budget-col) has one value, "
            f"{out['flops_budget'].iloc[0]!r}; IsoFLOP fits need 2 or more budgets"
        )
    lines = np.array([line(i) for i in out.index], int)
    repeated = [line(i) for i in df.index[df.duplicated()]]
    flops_source = sources.get("flops", "none")
    return Results(
        out.reset_index(drop=True), excluded, csv, flops_source, lines, repeated, sources.get("loss", "")
    )


def line(index) -> int:
    """The file line of a row of the table read from a CSV: the header is line 1."""
    return int(index) + 2


def column_name(canon: str, sources: dict[str, str]) -> str:
    """The table's own name for a canonical column, as errors quote it: 'Model Size' (params)."""
    own = sources.get(canon, canon)
    return f"'{own}'" if own == canon else f"'{own}' ({canon})"


def load_fewshot(path: str | Path) -> pd.DataFrame:
    """The long-format few-shot table of a sweep (`fewshot.csv`)."""
    path = Path(path)
    csv = path / "fewshot.csv" if path.is_dir() else path
    df = _read_csv(csv)
    missing = [c for c in FEWSHOT_COLUMNS if c not in df.columns]
    if missing:
        raise AnalysisError(f"'{csv}': missing column '{missing[0]}'")
    return df


def load_fewshot_training(path: str | Path) -> pd.DataFrame:
    """Few-shot metrics at each evaluated checkpoint of each run (a sweep's `fewshot_training.csv`)."""
    path = Path(path)
    csv = path / "fewshot_training.csv" if path.is_dir() else path
    df = _read_csv(csv)
    missing = [c for c in ("step", *FEWSHOT_COLUMNS) if c not in df.columns]
    if missing:
        raise AnalysisError(f"'{csv}': missing column '{missing[0]}'")
    if df.empty:
        raise AnalysisError(f"'{csv}': no run evaluated more than one checkpoint")
    return df


def component_label(loss_col: str | None) -> str | None:
    """The mixture component whose validation loss `loss_col` names (`final_val_loss_<label>`), or None."""
    match = re.fullmatch(r"final_val_loss_(\w+)", loss_col or "")
    return match[1] if match else None


def load_curves(sweep_dir: str | Path, loss_col: str | None = None) -> pd.DataFrame:
    """Training curves of every completed run: run_id, params, step, tokens, flops, loss, split.

    `flops` is 6 * params * tokens, the convention of results.csv's `flops_6nd` (metrics.jsonl logs the
    detailed count), so that the envelope of the curves and the final points share one compute axis.
    A cooldown sweep's curve of a size is its branches' end points, under the trunk's run id: every
    point there has finished its schedule, where the trunk's own points (constant lr) have not. Each end
    point is the branch's final validation loss, since one training batch's loss is too noisy for a point
    that stands alone (on a mixture corpus it swings by 0.3 nats from batch to batch).

    With `loss_col` naming one mixture component's loss (`final_val_loss_<label>`), the curves are
    that component's: a branch's end point is its `final_val_loss_<label>`, and a run's curve is its
    validation rows' `loss_<label>` (training rows score the whole mixture).
    """
    sweep_dir, label = Path(sweep_dir), component_label(loss_col)
    frames = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        if summary.get("status") != "completed" or summary.get("role") == "trunk":
            continue
        if summary.get("trunk"):  # a cooldown branch: its end point on the trunk's curve
            loss, split = summary.get(f"final_val_loss_{label}" if label else "final_val_loss"), "val"
            if label is None and (loss is None or not np.isfinite(loss)):
                loss, split = summary["final_loss"], "train"
            if loss is not None and np.isfinite(loss):
                N, D = summary["params"], summary["tokens"]
                end = {"run_id": summary["trunk"], "params": N, "step": summary["steps"], "tokens": D}
                frames.append(pd.DataFrame([end | {"flops": six_nd(N, D), "loss": loss, "split": split}]))
            continue
        metrics = summary_path.parent / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if label is None:
            rows = [r | {"split": "train"} for r in rows if "split" not in r and r.get("loss") is not None]
        else:
            rows = [r | {"loss": r[f"loss_{label}"]} for r in rows if r.get(f"loss_{label}") is not None]
        curve = pd.DataFrame(rows)
        if curve.empty:
            continue
        curve["run_id"] = summary_path.parent.name
        curve["params"] = summary["params"]
        curve["flops"] = six_nd(curve["params"], curve["tokens"])
        frames.append(curve[["run_id", "params", "step", "tokens", "flops", "loss", "split"]])
    if not frames:
        whose = f"a validation loss for component '{label}'" if label else "metrics.jsonl"
        raise AnalysisError(f"'{sweep_dir}': no completed runs with {whose}")
    return pd.concat(frames, ignore_index=True)
