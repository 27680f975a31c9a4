"""The largest compute held out and predicted: each law is refitted on the smaller budgets and asked for
the held-out runs' losses, with a 95% interval from its bootstrap draws.

- Approach 3, L(N, D), predicts every held-out run.
- Approach 2 predicts the best loss of each held-out budget from a power law through the IsoFLOP minima
  of the kept budgets (the loss at N*(C), against C).
- The frontier law L(C) predicts the best run of each held-out budget.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.fit import approach2, best_of_each_budget, fit_chinchilla, fit_frontier, fit_power
from analysis.isoflop import held_out_budgets, isoflop_groups
from analysis.laws import LAW_NAMES, Fit
from analysis.load import AnalysisError

HOLDOUT_FRAC = 0.2  # whole budgets, largest first, until a fifth of the runs are held out


@dataclasses.dataclass
class Holdout:
    """Predicted against observed loss for each held-out run a law speaks for."""

    table: pd.DataFrame  # law, params, tokens, flops, loss, predicted, ci_low, ci_high, rel_error
    fitted_runs: int
    held_runs: int
    held_flops: list[float]  # the median compute of each held-out budget
    below: float  # the largest compute of the runs fitted
    skipped: dict[str, str]  # law name -> why it made no prediction

    def errors(self) -> dict[str, float]:
        """Mean |relative error| per law, in the order the laws were tried."""
        by_law = self.table.groupby("law", sort=False)["rel_error"]
        return {law: float(np.abs(e).mean()) for law, e in by_law}

    def misses(self) -> dict[str, tuple[int, int, int]]:
        """Per law with a band: (runs below its 95% interval, runs above it, runs with an interval)."""
        t = self.table[self.table["ci_low"].notna() & self.table["ci_high"].notna()]
        return {
            law: (int((g["loss"] < g["ci_low"]).sum()), int((g["loss"] > g["ci_high"]).sum()), len(g))
            for law, g in t.groupby("law", sort=False)
        }

    def warnings(self) -> list[str]:
        """A law with most of its held-out runs (two or more) outside its 95% interval: that interval,
        the spread of the refitted law, does not cover what the law predicts. All on one side is a bias."""
        out = []
        for law, (below, above, n) in self.misses().items():
            k = below + above
            if k < 2 or 2 * k <= n:
                continue
            if max(below, above) == n:
                side, verb = ("below", "over") if below == n else ("above", "under")
                mean = float(self.table.loc[self.table["law"] == law, "rel_error"].mean())
                out.append(
                    f"{law}: all {n} held-out runs lie {side} its 95% interval (mean error "
                    f"{100 * mean:+.2g}%): it {verb}-predicts the largest compute, so its extrapolation "
                    "is biased on these runs."
                )
            else:
                out.append(
                    f"{law}: {k} of {n} held-out runs lie outside its 95% interval ({below} below, {above} "
                    "above): the law does not describe the largest compute, and its interval understates "
                    "the error."
                )
        return out


def prediction_band(fit: Fit, **inputs) -> tuple[np.ndarray, np.ndarray] | None:
    """2.5-97.5 percentiles of the bootstrap draws' predictions at `inputs`, or None without draws."""
    if not fit.samples:
        return None
    draws = len(next(iter(fit.samples.values())))
    preds_SxX = np.asarray(
        [fit.predict(**inputs, params={**fit.params, **{k: v[i] for k, v in fit.samples.items()}})
         for i in range(draws)],
        float,
    )  # fmt: skip
    return tuple(np.nanpercentile(preds_SxX, [2.5, 97.5], axis=0))


def minima_law(fit: Fit, bootstrap: int, seed: int) -> Fit:
    """Approach 2's loss law: L*(C) = E + A C^-alpha through the loss at each IsoFLOP minimum, without E
    on fewer than 5 budgets."""
    points = fit.extra["isoflop"]
    C = np.array([p["C"] for p in points])
    loss = np.array([p["loss_star"] for p in points])
    if len(C) < 3:
        raise AnalysisError(f"{len(C)} IsoFLOP minima below the held-out budgets; a power law needs 3")
    return fit_power(C, loss, "flops", len(C) >= 5, bootstrap, seed)


def _rows(name: str, fit: Fit, targets: pd.DataFrame, by: str) -> list[dict]:
    inputs = {"x": targets["flops"]} if by == "flops" else {"N": targets["params"], "D": targets["tokens"]}
    pred = np.asarray(fit.predict(**inputs), float)
    band = prediction_band(fit, **inputs) or (np.full(len(pred), np.nan),) * 2
    rows = []
    for (_, r), p, lo, hi in zip(targets.iterrows(), pred, *band, strict=True):
        rows.append({
            "law": name, "params": r["params"], "tokens": r["tokens"], "flops": r["flops"], "loss": r["loss"],
            "predicted": float(p), "ci_low": float(lo), "ci_high": float(hi),
            "rel_error": float((p - r["loss"]) / r["loss"]),
        })  # fmt: skip
    return rows


def predict_held_out(runs: pd.DataFrame, bootstrap: int = 0, seed: int = 0) -> Holdout:
    """Fit every law on the runs below the largest budgets and predict the held-out ones."""
    train, held = held_out_budgets(runs, HOLDOUT_FRAC)
    if train.empty:
        raise AnalysisError("every run is in the largest compute budget; none left to fit")
    best = best_of_each_budget(held)
    n_d_loss = (train["params"], train["tokens"], train["loss"])
    laws = {
        "chinchilla": (lambda: fit_chinchilla(*n_d_loss, bootstrap, seed), held, "params"),
        "approach2": (lambda: minima_law(approach2(train), bootstrap, seed), best, "flops"),
        "power": (lambda: fit_frontier(train, bootstrap, seed), best, "flops"),
    }  # fmt: skip
    rows, skipped = [], {}
    for key, (make, targets, by) in laws.items():
        try:
            rows += _rows(LAW_NAMES[key], make(), targets, by)
        except AnalysisError as e:
            skipped[LAW_NAMES[key]] = str(e)
    held_flops = sorted(held.groupby(isoflop_groups(held))["flops"].median().tolist())
    return Holdout(
        pd.DataFrame(rows), len(train), len(held), held_flops, float(train["flops"].max()), skipped
    )
