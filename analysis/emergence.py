"""Emergence curves: few-shot metrics against scale, and the scale at which each one turns on.

The curve model is a logistic in log10 scale (Schaeffer et al. 2023 compare such midpoints across metrics):

    value(s) = lo + (hi - lo) * sigmoid(k * (log10 s - m)),   midpoint = 10**m

`exact_match` keeps lo = 0 and hi = 1 fixed (a generated answer is right by chance with probability ~0),
so its midpoint is the scale where half the examples are solved. Fixing the bounds makes that midpoint
identifiable from a curve that has not saturated. Every other metric fits lo and hi as well, and its
midpoint is the scale halfway between the fitted floor and ceiling; decreasing metrics get hi < lo. That
covers `token_accuracy`, whose floor is chance-level agreement rather than 0, the log-probabilities, edit
distance, and any metric name this module does not know.

For fixed (k, m) the model is linear in lo and hi - lo, so those are solved in closed form (variable
projection) and only (k, m) are searched: a grid, then three finer local grids. The bootstrap resamples
runs as multinomial weights, and every resample is fitted at once with matrix products.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.load import AnalysisError, tokens_from_compute

DISCRETE_METRICS = frozenset({"exact_match"})
FIXED_BOUNDS = {"exact_match": (0.0, 1.0)}  # (lo, hi) held fixed in the logistic fit
KNOWN_METRICS = ("exact_match", "token_accuracy", "edit_distance", "logprob_per_token", "logprob_sum")
SCALES = {"params": "Parameters N", "flops": "Training compute C (FLOPs)"}

FLAT_ATOL_FIXED = 0.02  # a fixed-bounds metric moving less than this over all scales is flat
FLAT_RTOL = 0.01  # a free-bounds metric moving less than this fraction of its magnitude is flat
MIN_COVERAGE = 0.5  # free-bound fits must span half their floor-to-ceiling range over the observed scales
MIN_R2 = 0.5


def metric_kind(metric: str) -> str:
    """`discrete` for all-or-nothing metrics (exact match), `continuous` for everything else."""
    return "discrete" if metric in DISCRETE_METRICS else "continuous"


def metric_order(metrics) -> list[str]:
    """Discrete metrics first, then the known continuous ones, then unknown names alphabetically."""
    rank = {m: i for i, m in enumerate(KNOWN_METRICS)}
    return sorted(set(metrics), key=lambda m: (metric_kind(m) != "discrete", rank.get(m, len(rank)), m))


def emergence_curves(fewshot: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, shots, metric, run): mean value, scale (params, flops, tokens) and kind.

    Rows whose value is NaN (a metric the evaluator could not compute) are left out.
    """
    missing = [
        c for c in ("run_id", "params", "flops", "task", "shots", "metric", "value") if c not in fewshot
    ]
    if missing:
        raise AnalysisError(f"few-shot table: missing column '{missing[0]}'")
    df = fewshot.copy()
    for col in ("params", "flops", "value", "shots"):
        numeric = pd.to_numeric(df[col], errors="coerce")
        if (numeric.isna() & df[col].notna()).any():
            row = int((numeric.isna() & df[col].notna()).idxmax())
            raise AnalysisError(
                f"few-shot table: column '{col}' has non-numeric value {df[col][row]!r} (row {row})"
            )
        df[col] = numeric
    for col in ("params", "flops"):
        if not (df[col] > 0).all():
            row = int((~(df[col] > 0)).idxmax())
            raise AnalysisError(
                f"few-shot table: column '{col}' has non-positive or missing value (row {row})"
            )
    df = df[np.isfinite(df["value"])]
    if df.empty:
        raise AnalysisError("few-shot table: no finite metric values")
    if "stderr" not in df:
        df["stderr"] = np.nan
    if "n" not in df:
        df["n"] = np.nan
    if "tokens" not in df:
        df["tokens"] = tokens_from_compute(df["flops"], df["params"])
    df["shots"] = df["shots"].astype(int)
    df["_var"] = pd.to_numeric(df["stderr"], errors="coerce") ** 2
    keys = ["task", "shots", "metric", "run_id"]
    out = df.groupby(keys, sort=False).agg(
        params=("params", "first"),
        flops=("flops", "first"),
        tokens=("tokens", "first"),
        value=("value", "mean"),
        _var=("_var", "mean"),
        _k=("value", "size"),
        n=("n", lambda n: n.sum(min_count=1)),
    )
    out["stderr"] = np.sqrt(out.pop("_var") / out.pop("_k"))  # stderr of a mean of repeated evaluations
    out = out.reset_index()
    out["kind"] = out["metric"].map(metric_kind)
    return out.sort_values(["task", "shots", "metric", "params", "flops"], ignore_index=True)


@dataclasses.dataclass(frozen=True)
class Logistic:
    """A logistic fit in log10 scale; `midpoint` is NaN, with `reason`, when it is not identifiable."""

    midpoint: float  # 10**m in the scale's units, NaN when not identifiable
    ci: tuple[float, float]  # 95% bootstrap percentile interval of the midpoint
    m: float  # fitted centre in log10 scale (finite even when the midpoint is not trusted)
    slope: float  # k, per decade of scale
    lo: float
    hi: float
    r2: float
    n_runs: int
    reason: str  # empty when the midpoint and its interval are trustworthy
    boot_log10_mid: np.ndarray  # per-resample m, NaN for resamples with too few distinct scales

    def predict(self, scale) -> np.ndarray:
        """The fitted curve at `scale` (same units as the fit's x)."""
        z = self.slope * (np.log10(np.asarray(scale, float)) - self.m)
        return self.lo + (self.hi - self.lo) / (1.0 + np.exp(-z))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _sse(
    W_BxN: np.ndarray, y_N: np.ndarray, S: np.ndarray, bounds: tuple[float, float] | None
) -> tuple[np.ndarray, ...]:
    """Weighted SSE, lo and span for every resample b and grid point g; S is GxN (shared) or BxGxN."""
    if S.ndim == 2:
        dot = lambda A: W_BxN @ A.T  # noqa: E731  BxN @ NxG
    else:
        dot = lambda A: np.einsum("bn,bgn->bg", W_BxN, A)  # noqa: E731
    sw, swy, swyy = W_BxN.sum(1)[:, None], (W_BxN @ y_N)[:, None], (W_BxN @ y_N**2)[:, None]
    sws, swss, swsy = dot(S), dot(S * S), dot(S * y_N)
    if bounds is not None:
        lo, span = bounds[0], bounds[1] - bounds[0]
        # sum w (y - lo - span s)^2, expanded
        sse = swyy - 2 * lo * swy + lo**2 * sw - 2 * span * (swsy - lo * sws) + span**2 * swss
        return sse, np.full_like(sse, lo), np.full_like(sse, span)
    det = sw * swss - sws**2
    ok = det > 1e-6 * sw * swss  # s nearly constant over the sample: lo and span trade off
    safe = np.where(ok, det, 1.0)
    span = np.where(ok, (sw * swsy - sws * swy) / safe, 0.0)
    lo = np.where(ok, (swss * swy - sws * swsy) / safe, swy / sw)
    sse = swyy - lo * swy - span * swsy
    return sse, lo, span


def _search(
    x_N: np.ndarray, y_N: np.ndarray, W_BxN: np.ndarray, bounds: tuple[float, float] | None
) -> tuple[np.ndarray, ...]:
    """Least-squares (k, m, lo, span, sse) per resample: a global (k, m) grid, then three finer ones."""
    xs = np.unique(x_N)
    width = xs[-1] - xs[0]
    gap = np.diff(xs).min()
    logk = np.linspace(np.log(0.25 / width), np.log(40.0 / gap), 40)
    signs = (1.0,) if bounds is None else (1.0, -1.0)  # a falling curve: k < 0 when fixed, span < 0 when free
    m = np.linspace(xs[0] - width, xs[-1] + width, 121)
    sign_G, logk_G, m_G = (a.ravel() for a in np.meshgrid(signs, logk, m, indexing="ij"))
    S_GxN = _sigmoid((sign_G * np.exp(logk_G))[:, None] * (x_N[None, :] - m_G[:, None]))
    sse, lo, span = _sse(W_BxN, y_N, S_GxN, bounds)
    best = sse.argmin(1)
    rows = np.arange(len(W_BxN))
    sign_B, logk_B, m_B = sign_G[best], logk_G[best], m_G[best]
    lo_B, span_B, sse_B = lo[rows, best], span[rows, best], sse[rows, best]
    step_logk, step_m = logk[1] - logk[0], m[1] - m[0]
    offsets = np.linspace(-1.0, 1.0, 7)
    d_logk, d_m = (a.ravel() for a in np.meshgrid(offsets, offsets, indexing="ij"))
    for _ in range(3):
        logk_BxG = logk_B[:, None] + step_logk * d_logk[None, :]
        m_BxG = m_B[:, None] + step_m * d_m[None, :]
        k_BxG = sign_B[:, None] * np.exp(logk_BxG)
        S_BxGxN = _sigmoid(k_BxG[..., None] * (x_N[None, None, :] - m_BxG[..., None]))
        sse, lo, span = _sse(W_BxN, y_N, S_BxGxN, bounds)
        best = sse.argmin(1)
        logk_B, m_B = logk_BxG[rows, best], m_BxG[rows, best]
        lo_B, span_B, sse_B = lo[rows, best], span[rows, best], sse[rows, best]
        step_logk, step_m = step_logk / 3.0, step_m / 3.0
    return sign_B * np.exp(logk_B), m_B, lo_B, span_B, sse_B


def _flat_tolerance(
    y_N: np.ndarray, bounds: tuple[float, float] | None, stderr_N: np.ndarray | None
) -> float:
    tol = FLAT_ATOL_FIXED * (bounds[1] - bounds[0]) if bounds else FLAT_RTOL * float(np.abs(y_N).max())
    if stderr_N is not None and np.isfinite(stderr_N).any():
        tol = max(tol, 2.0 * float(np.nanmedian(stderr_N)))
    return tol


def _unidentifiable(
    x_N: np.ndarray,
    y_N: np.ndarray,
    k: float,
    m: float,
    r2: float,
    bounds: tuple[float, float] | None,
    stderr_N: np.ndarray | None,
    x_name: str,
) -> str:
    """Why the point fit's midpoint cannot be trusted, or '' when it can."""
    xs = np.unique(x_N)
    means = np.array([y_N[x_N == v].mean() for v in xs])
    spread, tol = float(means.max() - means.min()), _flat_tolerance(y_N, bounds, stderr_N)
    if spread <= tol:
        return f"flat curve: the metric moves {spread:.3g} across scales (tolerance {tol:.3g})"
    if not r2 >= MIN_R2:
        return f"no sigmoid trend: the logistic explains {max(r2, 0.0):.0%} of the variance"
    if bounds is None:
        coverage = abs(float(_sigmoid(k * (xs[-1] - m)) - _sigmoid(k * (xs[0] - m))))
        if coverage < MIN_COVERAGE:
            return (
                f"no sigmoid shape: the observed scales cover {coverage:.0%} of the fitted floor-to-ceiling "
                "range, so floor, ceiling and midpoint trade off"
            )
    if m < xs[0]:
        return f"midpoint below the smallest observed {x_name} ({10 ** xs[0]:.3g})"
    if m > xs[-1]:
        return f"midpoint above the largest observed {x_name} ({10 ** xs[-1]:.3g})"
    return ""


def _interval(boot_m: np.ndarray, need: int, x_name: str) -> tuple[tuple[float, float], str]:
    """95% percentile interval of the bootstrap midpoints, or NaNs and the reason."""
    usable = float(np.isfinite(boot_m).mean())
    if usable < 0.5:
        reason = (
            f"no interval: only {usable:.0%} of {len(boot_m)} resamples had {need}+ distinct {x_name} values"
        )
        return (np.nan, np.nan), reason
    lo_q, hi_q = np.nanpercentile(boot_m, [2.5, 97.5])
    return (float(10**lo_q), float(10**hi_q)), ""


def fit_logistic(
    scale,
    value,
    bounds: tuple[float, float] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    stderr=None,
    x_name: str = "scale",
) -> Logistic:
    """Fit value ≈ lo + (hi - lo) sigmoid(k (log10 scale - m)); `bounds` fixes (lo, hi), None fits them."""
    x_N = np.log10(np.asarray(scale, float))
    y_N = np.asarray(value, float)
    stderr_N = None if stderr is None else np.asarray(stderr, float)
    if x_N.shape != y_N.shape or x_N.ndim != 1:
        raise AnalysisError(
            f"fit_logistic: scale and value must be 1-D of one length, got {x_N.shape}, {y_N.shape}"
        )
    if not (np.isfinite(x_N).all() and np.isfinite(y_N).all()):
        raise AnalysisError("fit_logistic: scale must be positive and values finite")
    if bounds and ((y_N < bounds[0] - 1e-9).any() or (y_N > bounds[1] + 1e-9).any()):
        bad = y_N[(y_N < bounds[0]) | (y_N > bounds[1])][0]
        raise AnalysisError(f"fit_logistic: value {bad:g} lies outside the metric's range {list(bounds)}")
    n, n_distinct, need = len(y_N), len(np.unique(x_N)), 3 if bounds else 4
    if n_distinct < need:
        reason = f"only {n_distinct} distinct {x_name} values; need {need} for a logistic fit"
        nan = np.nan
        return Logistic(nan, (nan, nan), nan, nan, nan, nan, nan, n, reason, np.full(bootstrap, nan))
    rng = np.random.default_rng(seed)
    W_BxN = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap)]).astype(float)
    # Centre and scale free-bound targets so the expanded sums keep their precision (e.g. logprob ~ -30).
    shift, unit = (0.0, 1.0) if bounds else (float(y_N.mean()), float(y_N.std()) or 1.0)
    k, m, lo, span, sse = _search(x_N, (y_N - shift) / unit, W_BxN, bounds)
    lo, span, sse = lo * unit + shift, span * unit, sse * unit**2
    sst = float(((y_N - y_N.mean()) ** 2).sum())
    r2 = 1.0 - float(sse[0]) / sst if sst > 0 else np.nan
    _, inverse = np.unique(x_N, return_inverse=True)
    distinct_B = (W_BxN[1:] @ np.eye(n_distinct)[inverse] > 0).sum(1)
    boot_m = np.where(distinct_B >= need, m[1:], np.nan)
    reason = _unidentifiable(x_N, y_N, k[0], m[0], r2, bounds, stderr_N, x_name)
    midpoint, ci = (np.nan, (np.nan, np.nan)) if reason else (float(10 ** m[0]), (np.nan, np.nan))
    if not reason and bootstrap:
        ci, reason = _interval(boot_m, need, x_name)
    hi = float(lo[0] + span[0])
    return Logistic(midpoint, ci, float(m[0]), float(k[0]), float(lo[0]), hi, r2, n, reason, boot_m)


def emergence_midpoints(
    fewshot: pd.DataFrame, x: str = "params", bootstrap: int = 200, seed: int = 0
) -> pd.DataFrame:
    """Midpoint scale per task, shots and metric (discrete metrics first), with 95% bootstrap intervals."""
    if x not in SCALES:
        raise AnalysisError(f"emergence: x must be one of {sorted(SCALES)}, got '{x}'")
    curves = emergence_curves(fewshot)
    rows = []
    for (task, shots), group in curves.groupby(["task", "shots"], sort=True):
        for metric in metric_order(group["metric"]):
            c = group[group["metric"] == metric]
            try:
                fit = fit_logistic(
                    c[x], c["value"], FIXED_BOUNDS.get(metric), bootstrap, seed, c["stderr"], x_name=x
                )
            except AnalysisError as e:
                problem = str(e).removeprefix("fit_logistic: ")
                raise AnalysisError(
                    f"few-shot table, task '{task}' {shots}-shot {metric}: {problem}"
                ) from None
            rows.append(
                {
                    "task": task,
                    "shots": int(shots),
                    "metric": metric,
                    "kind": metric_kind(metric),
                    "x": x,
                    "midpoint": fit.midpoint,
                    "ci_low": fit.ci[0],
                    "ci_high": fit.ci[1],
                    "slope_per_decade": fit.slope,
                    "lo": fit.lo,
                    "hi": fit.hi,
                    "r2": fit.r2,
                    "n_runs": fit.n_runs,
                    "reason": fit.reason,
                }
            )
    return pd.DataFrame(rows)
