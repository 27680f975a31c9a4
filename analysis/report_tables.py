"""The report's tables, every number through `analysis.numbers`: fitted parameters with intervals, IsoFLOP
minima, allocations, exponents side by side, held-out predictions and run-to-run spread."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import numbers as fmt
from analysis.fit import compute_optimal
from analysis.holdout import Holdout
from analysis.laws import LAW_NAMES, Fit

Table = tuple[list[str], list[list[str]]]


def fit_table(fit: Fit) -> Table:
    """One row per fitted parameter: estimate and 95% bootstrap interval (an edge on a bound is open)."""
    rows = []
    for name, value in fit.params.items():
        ci = fit.ci.get(name)
        interval = fmt.interval(*ci, fit.ci_open.get(name)) if ci else fmt.MISSING
        rows.append([name, fmt.number(value), interval])
    return ["parameter", "estimate", "95% interval"], rows


def isoflop_table(fit: Fit) -> Table:
    """Approach 2's minimum per budget: N*, its interval, the loss there and the sizes used."""
    rows = []
    for p in fit.extra["isoflop"]:
        ci = p.get("N_star_ci")
        interval = fmt.interval(*ci, p.get("ci_open"), kind=fmt.size) if ci else fmt.MISSING
        sizes = f"{len(p['points'])} ({fmt.size(min(p['points']))}–{fmt.size(max(p['points']))})"
        usable = str(p.get("usable_resamples", fmt.MISSING))
        rows.append(
            [fmt.flops(p["C"]), fmt.size(p["N_star"]), interval, fmt.number(p["loss_star"]), sizes, usable]
        )
    return ["C (FLOPs)", "N*", "95% interval", "loss at N*", "sizes used", "usable resamples"], rows


def allocation_table(fits: dict[str, Fit], c_values: np.ndarray) -> Table:
    """N_opt, D_opt and tokens per parameter at a few compute budgets, per approach."""
    rows = []
    for key, fit in fits.items():
        opt = compute_optimal(fit, c_values)
        for i, c in enumerate(c_values):
            n, d, ratio = (float(np.asarray(opt[k])[i]) for k in ("N_opt", "D_opt", "tokens_per_param"))
            rows.append([LAW_NAMES[key], fmt.flops(c), fmt.size(n), fmt.size(d), fmt.number(ratio)])
    return ["approach", "C (FLOPs)", "N_opt (params)", "D_opt (tokens)", "tokens/param"], rows


def _ci(fit: Fit, name: str) -> str:
    ci = fit.ci.get(name)
    return fmt.interval(*ci, fit.ci_open.get(name)) if ci else "none (no bootstrap)"


def exponent_table(fits: dict[str, Fit]) -> Table:
    """Exponents a (N_opt ∝ C^a) and b (D_opt ∝ C^b) with their intervals, one row per approach."""
    rows = [
        [LAW_NAMES[k], fmt.number(f.params["a"]), _ci(f, "a"), fmt.number(f.params["b"]), _ci(f, "b")]
        for k, f in fits.items()
    ]
    return ["approach", "a", "a: 95% interval", "b", "b: 95% interval"], rows


def overlap_sentence(fits: dict[str, Fit]) -> str:
    """Whether the approaches' intervals for a share a value, naming any approach without one."""
    with_ci = {LAW_NAMES[k]: f.ci["a"] for k, f in fits.items() if "a" in f.ci}
    without = [LAW_NAMES[k] for k, f in fits.items() if "a" not in f.ci]
    note = f" {', '.join(without)} {'has' if len(without) == 1 else 'have'} no interval." if without else ""
    if len(with_ci) < 2:
        return "Fewer than two approaches have an interval for a, so agreement cannot be judged." + note
    lo, hi = max(c[0] for c in with_ci.values()), min(c[1] for c in with_ci.values())
    names = " and ".join(with_ci)
    if lo <= hi:
        return f"The 95% intervals for a of {names} overlap (all contain {fmt.number((lo + hi) / 2)})." + note
    return f"The 95% intervals for a of {names} do not overlap: the approaches disagree." + note


def holdout_summary_table(h: Holdout) -> Table:
    misses = h.misses()
    rows = [
        [law, str(len(g)), fmt.percent(float(np.abs(g["rel_error"]).mean())),
         fmt.percent(float(g["rel_error"].abs().max())),
         f"{misses[law][0] + misses[law][1]} of {misses[law][2]}" if law in misses else "no interval"]
        for law, g in h.table.groupby("law", sort=False)
    ]  # fmt: skip
    return ["law", "runs predicted", "mean |error|", "largest |error|", "outside its 95% interval"], rows


def holdout_table(h: Holdout) -> Table:
    rows = [
        [r.law, fmt.size(r.params), fmt.size(r.tokens), fmt.flops(r.flops), fmt.number(r.loss),
         fmt.number(r.predicted), fmt.interval(r.ci_low, r.ci_high), fmt.percent(r.rel_error, signed=True)]
        for r in h.table.itertuples()
    ]  # fmt: skip
    header = [
        "law",
        "N (params)",
        "D (tokens)",
        "C (FLOPs)",
        "observed",
        "predicted",
        "95% interval",
        "error",
    ]
    return header, rows


def seed_spread(runs: pd.DataFrame) -> pd.DataFrame:
    """Final loss across repeated seeds at each (N, D) trained more than once: n, mean, std."""
    groups = runs.groupby(["params", "tokens"])["loss"]
    table = groups.agg(["count", "mean", "std", "min", "max"]).reset_index()
    return table[table["count"] > 1]


def spread_table(spread: pd.DataFrame) -> Table:
    rows = [
        [fmt.size(r.params), fmt.size(r.tokens), str(int(r.count)), fmt.number(r.mean),
         fmt.percent(r.std / r.mean), fmt.percent((r.max - r.min) / r.mean)]
        for r in spread.itertuples()
    ]  # fmt: skip
    return ["N (params)", "D (tokens)", "seeds", "mean loss", "std (relative)", "max − min (relative)"], rows


def residual_rms(fit: Fit, runs: pd.DataFrame) -> float:
    """Root mean square of approach 3's relative residuals over the runs it was fitted to."""
    pred = np.asarray(fit.predict(N=runs["params"], D=runs["tokens"]), float)
    return float(np.sqrt(np.mean(((pred - runs["loss"].to_numpy()) / runs["loss"].to_numpy()) ** 2)))


def frame_table(df: pd.DataFrame) -> Table:
    """A DataFrame as header and rows, each number through the formatter its column names."""
    return [str(c) for c in df.columns], [
        [fmt.quantity(str(c), v) for c, v in zip(df.columns, row, strict=True)]
        for row in df.itertuples(index=False)
    ]
