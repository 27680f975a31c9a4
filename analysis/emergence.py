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
import functools

import numpy as np
import pandas as pd

from analysis.load import AnalysisError, tokens_from_compute
from analysis.significance import direction, point_noise, rise_pvalue

# All-or-nothing accuracies: fitted with the ceiling fixed at 1 and the floor at chance (0 by default)
DISCRETE_METRICS = frozenset({"exact_match", "acc_norm", "acc", "em"})
KNOWN_METRICS = (
    "exact_match",
    "acc_norm",
    "acc",
    "em",
    "token_accuracy",
    "prob_correct",
    "brier",
    "edit_distance",
    "logprob_per_token",
    "logprob_sum",
)
SCALES = {"params": "Parameters N", "flops": "Training compute C (FLOPs)"}

FLAT_ATOL_FIXED = 0.02  # a fixed-bounds metric moving less than this over all scales is flat
FLAT_RTOL = 0.01  # a free-bounds metric moving less than this fraction of its magnitude is flat
MIN_COVERAGE = 0.5  # free-bound fits must span half their floor-to-ceiling range over the observed scales
MIN_R2 = 0.5
ALPHA = 0.05  # level of the test that the curve rises above chance and a flat trend
CHUNK = 16  # bootstrap resamples per pass over the global grid (16 x 9680 doubles: 1.2 MB a temporary)


def metric_kind(metric: str) -> str:
    """`discrete` for all-or-nothing metrics (exact match), `continuous` for everything else."""
    return "discrete" if metric in DISCRETE_METRICS else "continuous"


def metric_order(metrics) -> list[str]:
    """Discrete metrics first, then the known continuous ones, then unknown names alphabetically."""
    rank = {m: i for i, m in enumerate(KNOWN_METRICS)}
    return sorted(set(metrics), key=lambda m: (metric_kind(m) != "discrete", rank.get(m, len(rank)), m))


def emergence_curves(fewshot: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, task, shots, metric, run): mean value, scale (params, flops, tokens), kind.

    Rows whose value is NaN (a metric the evaluator could not compute) are left out. `flops`, `group`
    and `chance` are optional (NaN, "" and NaN when absent).
    """
    missing = [c for c in ("run_id", "params", "task", "shots", "metric", "value") if c not in fewshot]
    if missing:
        raise AnalysisError(f"few-shot table: missing column '{missing[0]}'")
    df = fewshot.copy()
    scales = ("params", "flops") if "flops" in df else ("params",)
    for col, default in (("flops", np.nan), ("group", ""), ("chance", np.nan)):
        if col not in df:
            df[col] = default
    for col in (*scales, "value", "shots"):
        numeric = pd.to_numeric(df[col], errors="coerce")
        if (numeric.isna() & df[col].notna()).any():
            row = int((numeric.isna() & df[col].notna()).idxmax())
            raise AnalysisError(
                f"few-shot table: column '{col}' has non-numeric value {df[col][row]!r} (row {row})"
            )
        df[col] = numeric
    for col in scales:
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
    keys = ["group", "task", "shots", "metric", "run_id"]
    out = df.groupby(keys, sort=False).agg(
        chance=("chance", "first"),
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
    return out.sort_values(["group", "task", "shots", "metric", "params", "flops"], ignore_index=True)


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
    ci_open: tuple[bool, bool] = (False, False)  # an end beyond the observed scales: open, at the edge

    def predict(self, scale) -> np.ndarray:
        """The fitted curve at `scale` (same units as the fit's x)."""
        z = self.slope * (np.log10(np.asarray(scale, float)) - self.m)
        return self.lo + (self.hi - self.lo) / (1.0 + np.exp(-z))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _sse(
    W_BxN: np.ndarray,
    y_N: np.ndarray,
    S: np.ndarray,
    bounds: tuple[float, float] | None,
    products: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """Weighted SSE, lo and span for every resample b and grid point g; S is GxN (shared) or BxGxN.

    `products` are S * S and S * y when the caller has them already."""
    if S.ndim == 2:
        dot = lambda A: W_BxN @ A.T  # noqa: E731  BxN @ NxG
    else:
        dot = lambda A: np.einsum("bn,bgn->bg", W_BxN, A)  # noqa: E731
    SS, Sy = products if products is not None else (S * S, S * y_N)
    sw, swy, swyy = W_BxN.sum(1)[:, None], (W_BxN @ y_N)[:, None], (W_BxN @ y_N**2)[:, None]
    sws, swss, swsy = dot(S), dot(SS), dot(Sy)
    if bounds is not None:
        lo, span = bounds[0], bounds[1] - bounds[0]
        # sum w (y - lo - span s)^2, expanded
        sse = swyy - 2 * lo * swy + lo**2 * sw - 2 * span * (swsy - lo * sws) + span**2 * swss
        return sse, np.broadcast_to(lo, sse.shape), np.broadcast_to(span, sse.shape)
    det = sw * swss - sws**2
    ok = det > 1e-6 * sw * swss  # s nearly constant over the sample: lo and span trade off
    safe = np.where(ok, det, 1.0)
    span = np.where(ok, (sw * swsy - sws * swy) / safe, 0.0)
    lo = np.where(ok, (swss * swy - sws * swsy) / safe, swy / sw)
    sse = swyy - lo * swy - span * swsy
    return sse, lo, span


@functools.lru_cache(maxsize=8)
def _grid(x_key: bytes, signs: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """The global (sign, log k, m) grid over the scales in `x_key` and its sigmoids, GxN and S * S.

    Every metric and shot count of a task, and the point fit and bootstrap of one curve, share their
    scales: the grid is computed once for them."""
    x_N = np.frombuffer(x_key)
    xs = np.unique(x_N)
    width = xs[-1] - xs[0]
    gap = np.diff(xs).min()
    logk = np.linspace(np.log(0.25 / width), np.log(40.0 / gap), 40)
    m = np.linspace(xs[0] - width, xs[-1] + width, 121)
    sign_G, logk_G, m_G = (a.ravel() for a in np.meshgrid(signs, logk, m, indexing="ij"))
    S_GxN = _sigmoid((sign_G * np.exp(logk_G))[:, None] * (x_N[None, :] - m_G[:, None]))
    shared = (sign_G, logk_G, m_G, S_GxN, S_GxN * S_GxN)
    for a in shared:
        a.flags.writeable = False  # shared between calls
    return *shared[:3], logk[1] - logk[0], m[1] - m[0], *shared[3:]


def _search(
    x_N: np.ndarray, y_N: np.ndarray, W_BxN: np.ndarray, bounds: tuple[float, float] | None
) -> tuple[np.ndarray, ...]:
    """Least-squares (k, m, lo, span, sse) per resample: a global (k, m) grid, then three finer ones."""
    signs = (1.0,) if bounds is None else (1.0, -1.0)  # a falling curve: k < 0 when fixed, span < 0 when free
    x_N = np.ascontiguousarray(x_N, float)
    sign_G, logk_G, m_G, step_logk, step_m, S_GxN, SS_GxN = _grid(x_N.tobytes(), signs)
    products = (SS_GxN, S_GxN * y_N)
    found = []
    # A few resamples at a time: the BxG temporaries stay in cache instead of being paged in afresh.
    for start in range(0, len(W_BxN), CHUNK):
        sse, lo, span = _sse(W_BxN[start : start + CHUNK], y_N, S_GxN, bounds, products)
        best, rows = sse.argmin(1), np.arange(len(sse))
        found.append((best, lo[rows, best], span[rows, best], sse[rows, best]))
    best, lo_B, span_B, sse_B = (np.concatenate(a) for a in zip(*found, strict=True))
    rows = np.arange(len(W_BxN))
    sign_B, logk_B, m_B = sign_G[best], logk_G[best], m_G[best]
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


def _interval(boot_m: np.ndarray, need: int, x_name: str, xs: np.ndarray) -> tuple:
    """95% percentile interval of the bootstrap midpoints (and which ends are open), or NaNs and why."""
    usable = float(np.isfinite(boot_m).mean())
    if usable < 0.5:
        reason = (
            f"no interval: only {usable:.0%} of {len(boot_m)} resamples had {need}+ distinct {x_name} values"
        )
        return (np.nan, np.nan), (False, False), reason
    lo_q, hi_q = np.nanpercentile(boot_m, [2.5, 97.5])
    # Beyond the observed scales a resample's midpoint is the search's guess, not data: such an end is
    # open, and reported at the observed edge (> largest size).
    opened = (bool(lo_q < xs[0]), bool(hi_q > xs[-1]))
    lo_q, hi_q = max(lo_q, xs[0]), min(hi_q, xs[-1])
    return (float(10**lo_q), float(10**hi_q)), opened, ""


def fit_logistic(
    scale,
    value,
    bounds: tuple[float, float] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    stderr=None,
    x_name: str = "scale",
    weights=None,
) -> Logistic:
    """Fit value ≈ lo + (hi - lo) sigmoid(k (log10 scale - m)); `bounds` fixes (lo, hi), None fits them.

    `weights` (1 / stderr^2, say) weight the least squares; the bootstrap resamples points.
    """
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
    w_N = np.ones(n) if weights is None else np.asarray(weights, float) / np.mean(weights)
    W_BxN *= w_N
    # Centre and scale free-bound targets so the expanded sums keep their precision (e.g. logprob ~ -30).
    shift, unit = (0.0, 1.0) if bounds else (float(y_N.mean()), float(y_N.std()) or 1.0)
    k, m, lo, span, sse = _search(x_N, (y_N - shift) / unit, W_BxN, bounds)
    lo, span, sse = lo * unit + shift, span * unit, sse * unit**2
    sst = float((w_N * (y_N - np.average(y_N, weights=w_N)) ** 2).sum())
    r2 = 1.0 - float(sse[0]) / sst if sst > 0 else np.nan
    _, inverse = np.unique(x_N, return_inverse=True)
    distinct_B = (W_BxN[1:] @ np.eye(n_distinct)[inverse] > 0).sum(1)
    boot_m = np.where(distinct_B >= need, m[1:], np.nan)
    reason = _unidentifiable(x_N, y_N, k[0], m[0], r2, bounds, stderr_N, x_name)
    midpoint, ci = (np.nan, (np.nan, np.nan)) if reason else (float(10 ** m[0]), (np.nan, np.nan))
    opened = (False, False)
    if not reason and bootstrap:
        ci, opened, reason = _interval(boot_m, need, x_name, np.unique(x_N))
    hi = float(lo[0] + span[0])
    return Logistic(midpoint, ci, float(m[0]), float(k[0]), float(lo[0]), hi, r2, n, reason, boot_m, opened)


def fit_bounds(metric: str, chance: float, y_N: np.ndarray) -> tuple[float, float] | None:
    """Fixed (floor, ceiling) of an accuracy: (chance, 1), the floor lowered to the smallest value
    when noise puts one below chance; None (fitted) for every other metric."""
    if metric not in DISCRETE_METRICS:
        return None
    floor = chance if np.isfinite(chance) else 0.0
    return (max(0.0, min(floor, float(y_N.min()))), 1.0)


def emergence_midpoints(
    fewshot: pd.DataFrame,
    x: str = "params",
    bootstrap: int = 200,
    seed: int = 0,
    alpha: float = ALPHA,
    lower_is_better: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Midpoint scale per group, task, shots and metric (discrete metrics first), with 95% bootstrap
    intervals. A midpoint needs a rise above chance and a flat trend significant at `alpha`."""
    if x not in SCALES:
        raise AnalysisError(f"emergence: x must be one of {sorted(SCALES)}, got '{x}'")
    curves = emergence_curves(fewshot)
    if not np.isfinite(curves[x]).all():
        raise AnalysisError(f"emergence: the table has no {x} for every row")
    rows = []
    for (group, task, shots), cell in curves.groupby(["group", "task", "shots"], sort=True):
        for metric in metric_order(cell["metric"]):
            c = cell[cell["metric"] == metric]
            y = c["value"].to_numpy(float)
            chance = float(c["chance"].iloc[0])
            se = point_noise(metric, y, c["stderr"].to_numpy(float), c["n"].to_numpy(float))
            where = f"task '{task}' {shots}-shot {metric}" + (f" (group '{group}')" if group else "")
            sign = direction(metric, lower_is_better)
            p = rise_pvalue(np.log10(c[x].to_numpy(float)), y, se, sign, chance)
            args = (c[x], y, fit_bounds(metric, chance, y))
            try:  # the point fit first: only a curve with a midpoint pays for the bootstrap
                fit = fit_logistic(*args, 0, seed, c["stderr"], x, _weights(se))
                if not fit.reason and p <= alpha and bootstrap:
                    fit = fit_logistic(*args, bootstrap, seed, c["stderr"], x, _weights(se))
            except AnalysisError as e:
                problem = str(e).removeprefix("fit_logistic: ")
                raise AnalysisError(f"few-shot table, {where}: {problem}") from None
            midpoint, ci, opened, reason = fit.midpoint, fit.ci, fit.ci_open, fit.reason
            if p > alpha and not reason.startswith("flat curve"):
                midpoint, ci, opened = np.nan, (np.nan, np.nan), (False, False)
                reason = f"no significant rise (p={p:.2g})"
            rows.append(
                {
                    "group": group,
                    "task": task,
                    "shots": int(shots),
                    "metric": metric,
                    "kind": metric_kind(metric),
                    "x": x,
                    "midpoint": midpoint,
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "ci_open_low": opened[0],
                    "ci_open_high": opened[1],
                    "p_rise": p,
                    "chance": chance,
                    "slope_per_decade": fit.slope,
                    "lo": fit.lo,
                    "hi": fit.hi,
                    "r2": fit.r2,
                    "n_runs": fit.n_runs,
                    "reason": reason,
                }
            )
    return pd.DataFrame(rows)


def _weights(se: np.ndarray | None) -> np.ndarray | None:
    return None if se is None else 1.0 / se**2
