"""Is a curve's rise real? Noise per point and a test of the rise against chance and a flat trend.

A midpoint means something only when the metric improves with scale by more than the evaluation noise.
The test is an intersection-union test (Berger 1982): the curve rises only if both one-sided z-tests
reject, at level `alpha` each, so the pair keeps level `alpha`:

- trend: the weighted least-squares slope of value on log10 scale is positive in the metric's good
  direction (z = b / se(b), with se(b)^2 = 1 / sum w (x - x_w)^2 and w = 1 / stderr^2);
- chance: the weighted mean of the largest third of the scales (at least two points) lies above the
  task's chance level.

Without standard errors or a binomial n, the noise is estimated from the residuals of the straight line.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, stdtr  # scipy.stats costs a second of import; these are its sf

# Metrics where lower is better (lm-eval's names and lmscale's); everything else is higher-is-better,
# except names the caller marks, and unknown continuous names, which are tested both ways.
LOWER_IS_BETTER = frozenset(
    {
        "perplexity",
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
        "brier",
        "brier_score",
        "edit_distance",
        "ter",
    }
)
HIGHER_IS_BETTER = frozenset(
    {
        "exact_match",
        "acc",
        "acc_norm",
        "em",
        "f1",
        "mcc",
        "token_accuracy",
        "prob_correct",
        "logprob_sum",
        "logprob_per_token",
        "bleu",
        "rouge1",
        "rouge2",
        "rougeL",
        "chrf",
    }
)
PROPORTIONS = frozenset({"exact_match", "acc", "acc_norm", "em", "token_accuracy", "prob_correct"})


def direction(metric: str, lower: frozenset[str] = frozenset()) -> int:
    """+1 when higher is better, -1 when lower is, 0 when unknown (a two-sided test)."""
    if metric in lower or metric in LOWER_IS_BETTER:
        return -1
    return 1 if metric in HIGHER_IS_BETTER else 0


def point_noise(metric: str, y_N: np.ndarray, stderr_N: np.ndarray, n_N: np.ndarray) -> np.ndarray | None:
    """Standard error per point: the table's, else binomial from n for proportions; None if unknown.

    A zero stderr (every example wrong, say) is replaced by the binomial error of half an example, so
    that no point gets infinite weight.
    """
    se = np.asarray(stderr_N, float).copy()
    n = np.asarray(n_N, float)
    if metric in PROPORTIONS and np.isfinite(n).any():
        p = np.clip(y_N, 0.5 / n, 1 - 0.5 / n)
        binomial = np.sqrt(p * (1 - p) / n)
        se = np.where(np.isfinite(se) & (se > 0), se, binomial)
    if not np.isfinite(se).any() or not (se > 0).any():
        return None
    positive = se[np.isfinite(se) & (se > 0)]
    return np.where(np.isfinite(se) & (se > 0), se, np.median(positive))


def rise_pvalue(
    x_N: np.ndarray, y_N: np.ndarray, se_N: np.ndarray | None, sign: int, chance: float = np.nan
) -> float:
    """p-value of "the curve rises above both a flat trend and chance" (x = log10 scale)."""
    xs = np.unique(x_N)
    if len(xs) < 3:
        return 1.0
    known = se_N is not None
    w = 1.0 / se_N**2 if known else np.ones_like(y_N)
    xw = (w * x_N).sum() / w.sum()
    sxx = (w * (x_N - xw) ** 2).sum()
    b = (w * (x_N - xw) * y_N).sum() / sxx
    scale = 1.0
    if not known:  # residual variance of the straight line, with a t distribution
        resid = y_N - (y_N * w).sum() / w.sum() - b * (x_N - xw)
        scale = float(np.sqrt((resid**2).sum() / max(len(y_N) - 2, 1))) or 1e-12
    df = max(len(y_N) - 2, 1)
    sf = (lambda z: ndtr(-z)) if known else (lambda z: stdtr(df, -z))  # noqa: E731  norm.sf, t(df).sf
    z = b / (scale / np.sqrt(sxx))
    p = float(sf(sign * z)) if sign else float(2 * sf(abs(z)))
    if np.isfinite(chance) and sign:
        top = x_N >= xs[-max(2, len(xs) // 3)]
        mean = (w[top] * y_N[top]).sum() / w[top].sum()
        se_top = scale / np.sqrt(w[top].sum())
        p = max(p, float(sf(sign * (mean - chance) / se_top)))
    return p
