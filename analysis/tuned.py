"""Hyperparameter-tuned frontiers. Runs at one (N, D) that differ only in tuned settings (the learning
rate, the batch size) are reduced to the best setting before a law is fitted, so that a run with a poor
learning rate never enters one; the optimal value of each setting is then fitted as a power law of N
and of C, as DeepSeek LLM did (Bi et al. 2024, section 3.1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.isoflop import BELOW, CONCAVE, OK, WINDOW, Profiles, clusters, minima
from analysis.load import AnalysisError, Results

AUTO = ("lr", "batch_size")  # lmscale's results.csv: every run's peak learning rate and batch size
REPLICATES = ("seed",)  # runs that differ only in these repeat one setting: their losses are averaged
# Columns of lmscale's results.csv that configure a run, beside the sweep axes (dotted config keys): two
# runs at one (N, D) and one tuned setting that disagree on one of them differ in something untuned.
CONFIG = ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "seq_len", "batch_size", "lr")
CANONICAL = ("params", "tokens", "flops", "loss", "flops_budget")
# Tokens are whole steps, so the budgets of one size at two batch sizes differ by up to half a step.
TOKENS_TOLERANCE = 0.1


@dataclasses.dataclass
class Tuned:
    """The best setting at each (N, D), the runs it rests on, and each setting's optimum against N and C."""

    over: list[str]  # the tuned columns
    detected: bool  # found by their name (AUTO) rather than given with --tuned-over
    runs: pd.DataFrame  # one row per (N, D): its best setting, the loss averaged over that setting's runs
    used: list[dict]  # per (N, D): the best setting, its loss, the runs it rests on, the settings compared
    optima: dict[str, dict]  # tuned column -> per-point optima, excluded points, fits against N and C
    settings: (
        pd.DataFrame
    )  # every setting tried: _point, the tuned columns, params, tokens, flops, loss, count
    total: int  # runs before the reduction
    warnings: list[str]

    def note(self) -> str:
        """What the laws were fitted to, in one sentence."""
        how = "detected: runs at one params and tokens differ in it" if self.detected else "--tuned-over"
        runs = sum(len(u["lines"]) for u in self.used)
        return (
            f"the best setting of {', '.join(self.over)} ({how}) at each of {len(self.used)} "
            f"(params, tokens) points: {runs} of {self.total} runs used"
        )

    def to_json(self) -> dict:
        return {"over": self.over, "detected": self.detected, "note": self.note(), "runs": self.total,
                "used": self.used, "optima": self.optima}  # fmt: skip


def points(runs: pd.DataFrame) -> np.ndarray:
    """An integer label per run for its (N, D): params exactly, tokens within TOKENS_TOLERANCE."""
    keys = pd.DataFrame(index=runs.index)
    for col in ("params", "tokens"):
        values = pd.to_numeric(runs[col], errors="coerce") if col in runs.columns else None
        if values is not None and np.isfinite(values).all():
            keys[col] = values.to_numpy(float)
    if "tokens" in keys and "params" in keys:
        keys["tokens"] = keys.groupby("params")["tokens"].transform(lambda t: clusters(t, TOKENS_TOLERANCE))
    if keys.empty:
        return np.zeros(len(runs), int)
    return keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy()


def _varies(values: pd.Series, point: np.ndarray) -> bool:
    return bool(len(values)) and values.groupby(point).nunique(dropna=False).max() > 1


def _tuned_columns(results: Results, point: np.ndarray, given: Sequence[str] | None) -> list[str]:
    """The tuned columns: `given` after checking them, else those of AUTO that vary at some (N, D)."""
    runs, csv, lines = results.runs, results.source, _lines(results)
    if given is None:
        return [c for c in AUTO if c in runs.columns and _varies(runs[c], point)]
    for col in given:
        if col in CANONICAL:
            raise AnalysisError(
                f"'{csv}': column '{col}' (--tuned-over) is a scale or the loss, not a setting"
            )
        if col not in runs.columns:
            raise AnalysisError(
                f"'{csv}': no column '{col}' (given for --tuned-over); has {list(runs.columns)}"
            )
        if runs[col].isna().any():
            raise AnalysisError(f"'{csv}' line {lines[runs[col].isna().argmax()]}: column '{col}' is empty")
        if not _varies(runs[col], point):
            raise AnalysisError(
                f"'{csv}' lines {lines.min()}-{lines.max()}: column '{col}' (--tuned-over) takes one value "
                "at each params and tokens; runs that differ in it are needed to tune over it"
            )
    return list(dict.fromkeys(given))


def _lines(results: Results) -> np.ndarray:
    return results.lines if results.lines is not None else np.arange(len(results.runs)) + 2


def _check_untuned(results: Results, point: np.ndarray, setting: np.ndarray, over: list[str]) -> None:
    """At one (N, D), runs may differ in the tuned columns, in a column that only records them (a
    `train.lr` axis beside `lr`) and, within one setting, in their seed; in anything else they differ in
    something untuned, and the best of them would not be the best of the tuned columns alone."""
    runs, lines = results.runs, _lines(results)
    config = [c for c in runs.columns if (c in CONFIG or "." in c) and c not in (*over, *REPLICATES)]
    by_value = runs[over].astype(str).agg("|".join, axis=1).to_numpy()
    for col in config:
        recorded = not _varies(runs[col], by_value)  # a function of the tuned values over the whole table
        for group, within in ((setting, "the same params, tokens and " + ", ".join(over)),
                              (point, "the same params and tokens")):  # fmt: skip
            if group is point and recorded:
                continue
            first = runs[col].groupby(group).transform("first")
            differs = ~((runs[col] == first) | (runs[col].isna() & first.isna()))
            if differs.any():
                i = int(differs.to_numpy().argmax())
                j = int(np.flatnonzero(group == group[i])[0])
                raise AnalysisError(
                    f"'{results.source}' line {lines[i]}: column '{col}' is {_text(runs[col].iloc[i])} here "
                    f"and {_text(runs[col].iloc[j])} on line {lines[j]}, at {within}; tune over it too "
                    f"(--tuned-over {','.join([*over, col])})"
                )


def tune(results: Results, given: Sequence[str] | None = None) -> Tuned | None:
    """The best setting of the tuned columns at each (N, D); None when nothing is tuned over.

    `given` names the tuned columns (--tuned-over); without it, `lr` and `batch_size` are tuned over
    where runs at one (N, D) differ in them. Runs of one setting are repeats (seeds): their mean loss
    is the setting's. Errors name the table's column and line.
    """
    runs = results.runs
    point = points(runs)
    over = _tuned_columns(results, point, given)
    if not over:
        return None
    keys = runs[over].assign(_point=point)
    setting = keys.groupby(["_point", *over], dropna=False, sort=False).ngroup().to_numpy()
    _check_untuned(results, point, setting, over)
    by_setting = runs.assign(_point=point, _setting=setting).groupby("_setting")
    scale = [c for c in ("params", "tokens", "flops") if c in runs.columns]
    table = by_setting.first()[["_point", *over, *scale]]
    table["loss"], table["count"] = by_setting["loss"].mean(), by_setting["loss"].size()
    best = table.groupby("_point")["loss"].idxmin()
    lines, ids = _lines(results), runs.get("run_id")
    used, first = [], []
    for p, s in best.items():
        members = np.flatnonzero(setting == s)
        first.append(members[0])
        row = runs.iloc[members[0]]
        entry = {k: float(row[k]) for k in ("params", "tokens", "flops") if k in row}
        entry |= {c: _plain(row[c]) for c in over} | {"loss": float(table.loc[s, "loss"])}
        entry |= {"settings": int((table["_point"] == p).sum()), "lines": [int(lines[i]) for i in members]}
        if ids is not None:
            entry["runs"] = [str(ids.iloc[i]) for i in members]
        used.append(entry)
    reduced = runs.iloc[first].reset_index(drop=True)
    reduced["loss"] = table.loc[best.to_numpy(), "loss"].to_numpy()
    tuned = Tuned(over, given is None, reduced, used, {}, table, len(runs), [])
    for col in over:
        _optimum(tuned, table, best, col)
    return tuned


def _plain(value):
    """A table value as JSON holds it: numbers as float, anything else as text."""
    return float(value) if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _text(value) -> str:
    value = _plain(value)
    return f"{value:g}" if isinstance(value, float) else repr(value)


# -- the optimal setting against scale ---------------------------------------------------------
def _optimum(tuned: Tuned, table: pd.DataFrame, best: pd.Series, col: str) -> None:
    """Each point's optimum of `col`, from a parabola in log `col` through the best value and up to
    WINDOW either side (as approach 2's IsoFLOP minima), the other tuned columns at their best; then
    log optimum = log k + a log N (and log C) by least squares."""
    values = pd.to_numeric(table[col], errors="coerce")
    if not (values > 0).all():
        return  # a setting that is not a positive number (say, an MLP kind) has no optimum to fit
    others = [c for c in tuned.over if c != col]
    profiles, excluded = [], []
    for entry, (p, s) in zip(tuned.used, best.items(), strict=True):
        same = table["_point"] == p
        for c in others:
            same &= table[c] == table.loc[s, c]
        rows = table[same].sort_values(col)
        where = {k: entry[k] for k in ("params", "tokens", "flops") if k in entry}
        if len(rows) < 3:
            excluded.append(where | {"reason": f"{len(rows)} values of {col}; a parabola needs 3"})
        else:
            profiles.append((where, rows))
    found = []
    if profiles:
        M = max(len(r) for _, r in profiles)
        pad = lambda v: np.pad(np.asarray(v, float), (0, M - len(v)))  # noqa: E731
        P = Profiles(
            np.arange(len(profiles), dtype=float),
            np.stack([pad(np.log(r[col].astype(float))) for _, r in profiles]),
            np.stack([pad(r["loss"]) for _, r in profiles]),
            np.stack([pad(r["count"]) for _, r in profiles]),
            int(sum(r["count"].sum() for _, r in profiles)),
        )
        m = minima(P, P.loss_GxM[None], WINDOW)
        for g, (where, rows) in enumerate(profiles):
            code = m["code"][0, g]
            if code == OK:
                found.append(where | {f"{col}_star": float(np.exp(m["logN_star"][0, g]))})
            else:
                edge = "no minimum (concave)" if code == CONCAVE else _beyond(col, rows[col], code)
                excluded.append(where | {"reason": edge})
    out = {"points": found, "excluded": excluded}
    star = np.array([f[f"{col}_star"] for f in found])
    for x in ("params", "flops"):
        scale = np.array([f.get(x, np.nan) for f in found])
        if len(np.unique(scale)) >= 2 and np.isfinite(scale).all():
            out[f"vs_{x}"] = power_ols(scale, star)
    _warn(tuned, col, out)
    tuned.optima[col] = out


def _beyond(col: str, values: pd.Series, code: int) -> str:
    side, value = ("smallest", values.min()) if code == BELOW else ("largest", values.max())
    return f"the optimum lies beyond the {side} {col} tried ({_plain(value):.4g})"


def _warn(tuned: Tuned, col: str, out: dict) -> None:
    if out["excluded"]:
        where = "; ".join(f"N={e['params']:.3g}: {e['reason']}" for e in out["excluded"] if "params" in e)
        tuned.warnings.append(
            f"{col}_opt leaves out {len(out['excluded'])} of {len(tuned.used)} points ({where}); widen the "
            f"{col} grid there."
        )
    if "vs_params" not in out:
        tuned.warnings.append(f"{col}_opt is not fitted: optima at {len(out['points'])} sizes, 2 needed.")
    elif "ci" not in out["vs_params"]:
        tuned.warnings.append(f"{col}_opt has no interval: optima at 2 sizes leave no residual.")


def power_ols(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict:
    """y = k x^a by least squares in log-log, with Student t intervals from the residual (3+ points)."""
    from scipy import stats

    X = np.stack([np.log(x), np.ones(len(x))], axis=1)
    (a, log_k), *_ = np.linalg.lstsq(X, np.log(y), rcond=None)
    out = {"k": float(np.exp(log_k)), "a": float(a), "points": len(x)}
    dof = len(x) - 2
    if dof > 0:
        resid = np.log(y) - X @ np.array([a, log_k])
        se_a, se_k = np.sqrt(np.diag(resid @ resid / dof * np.linalg.inv(X.T @ X)))
        t = float(stats.t.ppf((1 + level) / 2, dof))
        out["ci"] = {"a": [float(a - t * se_a), float(a + t * se_a)],
                     "k": [float(np.exp(log_k - t * se_k)), float(np.exp(log_k + t * se_k))]}  # fmt: skip
        out["dof"] = dof
    return out
