"""Downstream accuracy predicted from small models: the two-step ladder of Bhagia et al. 2024 (OLMo).

    step 1, task loss against scale:   L(N) = E + A N^-alpha
    step 2, accuracy against task loss: acc(L) = lo + (hi - lo) sigmoid(k (L - m))

The task loss is the answer's negative log-likelihood (lmscale's `logprob_per_token`, negated, or a
`nll`/`loss` metric). Chaining the steps predicts accuracy at a new scale. The interval is a bootstrap
over models (every resample fitted at once, as in `analysis.emergence`), widened by the binomial noise
of one evaluation at the target, so that it covers what the model would score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.emergence import DISCRETE_METRICS, _search, _sse, fit_bounds
from analysis.load import AnalysisError
from analysis.significance import point_noise

LOSS_METRICS = {"logprob_per_token": -1.0, "nll": 1.0, "loss": 1.0, "logprob_sum": -1.0}  # sign to a loss
ALPHAS = np.linspace(0.02, 1.5, 150)  # step 1's grid of exponents; E and A are solved in closed form
DECADES = 3.0  # --predict may reach this many decades beyond the models fitted


def chain(
    scale_N, loss_N, acc_N, target: float, chance: float, metric: str, se_target: float,
    bootstrap: int = 200, seed: int = 0,
) -> tuple[float, float, float]:  # fmt: skip
    """Predicted accuracy at `target` scale with a 95% interval, fitted to models' (scale, loss, acc)."""
    x_N, L_N, y_N = (np.asarray(a, float) for a in (scale_N, loss_N, acc_N))
    n = len(x_N)
    rng = np.random.default_rng(seed)
    W_BxN = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap)]).astype(float)
    f_GxN = (x_N[None, :] / x_N.max()) ** -ALPHAS[:, None]  # scaled so that A stays of order L
    sse, E_BxG, A_BxG = _sse(W_BxN, L_N, f_GxN, None)
    best = sse.argmin(1)
    rows = np.arange(len(W_BxN))
    alpha_B, E_B, A_B = ALPHAS[best], E_BxG[rows, best], A_BxG[rows, best]
    L_B = E_B + A_B * (target / x_N.max()) ** -alpha_B
    k_B, m_B, lo_B, span_B, _ = _search(L_N, y_N, W_BxN, fit_bounds(metric, chance, y_N))
    acc_B = lo_B + span_B / (1.0 + np.exp(-k_B * (L_B - m_B)))
    acc_B[1:] += rng.normal(0.0, se_target, size=bootstrap)  # one evaluation's noise at the target
    if metric in DISCRETE_METRICS:
        acc_B = np.clip(acc_B, 0.0, 1.0)
    low, high = np.nanpercentile(acc_B[1:], [2.5, 97.5])
    return float(acc_B[0]), float(low), float(high)


def _curves(table: pd.DataFrame, x: str, metric_of: dict) -> list[tuple]:
    """Per (group, task, shots): models' scale, task loss, accuracy, n and stderr, and the chance level."""
    out = []
    for (group, task, shots), cell in table.groupby(["group", "task", "shots"], sort=True):
        metric = metric_of.get(task)
        loss = next((m for m in LOSS_METRICS if m in set(cell["metric"])), None)
        if metric is None or loss is None:
            continue
        acc = cell[cell["metric"] == metric].groupby(x)[["value", "stderr", "n", "chance"]].mean()
        nll = cell[cell["metric"] == loss].groupby(x)["value"].mean() * LOSS_METRICS[loss]
        both = acc.join(nll.rename("loss"), how="inner")
        out.append((group, task, int(shots), metric, both))
    if not out:
        losses = ", ".join(LOSS_METRICS)
        raise AnalysisError(
            f"--predict/--holdout-largest: no task has both an accuracy and a loss ({losses})"
        )
    return out


def _noise(metric: str, both: pd.DataFrame, at: float) -> float:
    se = point_noise(metric, both["value"].to_numpy(), both["stderr"].to_numpy(), both["n"].to_numpy())
    if se is None:
        return 0.0
    n = float(both["n"].median())
    return float(np.sqrt(at * (1 - at) / n)) if np.isfinite(n) and 0 < at < 1 else float(np.median(se))


def predict(table: pd.DataFrame, x: str, metric_of: dict, target: float, **kw) -> pd.DataFrame:
    """Predicted accuracy of each (group, task, shots) at `target` scale, fitted to every model."""
    scales = table[x]
    if not scales.min() / 10**DECADES <= target <= scales.max() * 10**DECADES:
        raise AnalysisError(
            f"--predict {target:g}: outside {DECADES:g} decades of the data's {x} "
            f"({scales.min():.3g} to {scales.max():.3g})"
        )
    rows = []
    for group, task, shots, metric, both in _curves(table, x, metric_of):
        if len(both) < 4:
            continue
        chance = float(both["chance"].iloc[0])
        guess = float(both["value"].iloc[-1])
        pred, low, high = chain(
            both.index, both["loss"], both["value"], target, chance, metric, _noise(metric, both, guess), **kw
        )
        rows.append((group, task, shots, metric, target, pred, low, high))
    return pd.DataFrame(
        rows, columns=["group", "task", "shots", "metric", x, "predicted", "ci_low", "ci_high"]
    )


def holdout_largest(table: pd.DataFrame, x: str, metric_of: dict, **kw) -> pd.DataFrame:
    """Fit without each curve's largest model; predicted against observed accuracy for that model."""
    rows = []
    for group, task, shots, metric, both in _curves(table, x, metric_of):
        if len(both) < 5:
            continue
        fit, held = both.iloc[:-1], both.iloc[-1]
        target = float(both.index[-1])
        chance = float(both["chance"].iloc[0])
        se = _noise(metric, both, float(held["value"]))
        pred, low, high = chain(fit.index, fit["loss"], fit["value"], target, chance, metric, se, **kw)
        inside = bool(low <= held["value"] <= high)
        rows.append((group, task, shots, metric, target, float(held["value"]), pred, low, high, inside))
    columns = ["group", "task", "shots", "metric", x, "observed", "predicted", "ci_low", "ci_high", "inside"]
    return pd.DataFrame(rows, columns=columns)
