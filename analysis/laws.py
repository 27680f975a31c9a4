"""The laws in log space, their L-BFGS starting grids, and `Fit`, the result of fitting one.

Each law is written as log L_hat(theta, log x), the form the Huber objective of Hoffmann et al. 2022
(eq. 3) compares with log L; `analysis.fit` fits them.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
import numpy as np

from analysis import numbers as fmt
from analysis.load import AnalysisError, tokens_from_compute

CI_LEVEL = 0.95
# What a reader calls each law (`Fit.law`), in the report, its figures and its held-out predictions.
LAW_NAMES = {
    "power": "Frontier law",
    "approach1": "Approach 1",
    "approach2": "Approach 2",
    "chinchilla": "Approach 3",
}
JSON_EXTRA = ("bootstrap", "fitted_to", "window", "noise", "isoflop", "excluded", "frontier", "tuned")


# -- the laws, in log space ------------------------------------------------------------------------
def chinchilla_log_pred(theta, logx_NxK):
    """log L(N, D) = LSE(a - alpha log N, b - beta log D, e); A = e^a, B = e^b, E = e^e (eq. 2)."""
    a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    logN, logD = logx_NxK[:, 0], logx_NxK[:, 1]
    return jnp.logaddexp(jnp.logaddexp(a - alpha * logN, b - beta * logD), e)


def power_log_pred(theta, logx_NxK):
    """log L(x) = LSE(a - alpha log x, e): L = E + A x^-alpha."""
    return jnp.logaddexp(theta[0] - theta[2] * logx_NxK[:, 0], theta[1])


def power_no_offset_log_pred(theta, logx_NxK):
    """log L(x) = a - alpha log x: L = A x^-alpha."""
    return theta[0] - theta[1] * logx_NxK[:, 0]


def hoffmann_grid() -> np.ndarray:
    """Hoffmann et al.'s 4500 starts: alpha, beta in 0..2 by 0.5, e in -1..1 by 0.5, a, b in 0..25 by 5."""
    ab, e, ex = np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5), np.arange(0, 2.01, 0.5)
    return np.array([(a, b, e_, al, be) for al, be, e_, a, b in itertools.product(ex, ex, e, ab, ab)])


def power_grid(offset: bool) -> np.ndarray:
    """Starts in centred units: a is log of the reducible loss A x^-alpha at the data's mid-scale."""
    a = np.arange(-5, 3.1, 1.0)
    alpha = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0])
    if not offset:
        return np.array(list(itertools.product(a, alpha)))
    e = np.arange(-1, 1.01, 0.5)
    return np.array(list(itertools.product(a, e, alpha)))


# -- results -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Fit:
    law: str  # power | chinchilla | approach1 | approach2
    params: dict[str, float]
    objective: float
    n_points: int
    ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    samples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    x: str | None = None  # power law: the scale variable
    extra: dict = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)  # one sentence each
    ci_open: dict[str, tuple[bool, bool]] = dataclasses.field(default_factory=dict)  # edge on a bound

    def predict(self, x=None, N=None, D=None, params: dict | None = None) -> np.ndarray:
        p = self.params if params is None else params
        # A failed fit's NaN parameters (or a bootstrap sample's) predict NaN, without a warning.
        with np.errstate(invalid="ignore", over="ignore"):
            if self.law == "power":
                return p.get("E", 0.0) + p["A"] * np.asarray(x, float) ** -p["alpha"]
            if self.law == "chinchilla":
                N, D = np.asarray(N, float), np.asarray(D, float)
                return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]
        raise AnalysisError(f"law '{self.law}' predicts allocations, not losses")

    def to_json(self) -> dict:
        out = {k: float(v) for k, v in self.params.items()}
        out |= {"law": self.law, "objective": self.objective, "n_points": self.n_points}
        if self.x:
            out["x"] = self.x
        out["ci"] = {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()}
        if self.ci_open:
            out["ci_open"] = {k: list(v) for k, v in self.ci_open.items()}
        out |= {k: self.extra[k] for k in JSON_EXTRA if k in self.extra}
        out["warnings"] = list(self.warnings)
        return out

    def set_bootstrap(self, samples: dict[str, np.ndarray], resamples: int, dropped: dict[str, int]) -> None:
        """Keep the resamples that gave a valid fit; count the dropped ones by reason."""
        self.samples, self.ci = samples, _intervals(samples)
        kept = len(next(iter(samples.values())))
        dropped = {reason: int(n) for reason, n in dropped.items() if n}
        self.extra["bootstrap"] = {"resamples": resamples, "kept": kept, "dropped": dropped}


UNIDENTIFIED_DECADES = 2.0  # an interval of E wider than this many factors of ten does not pin E down
# The optimiser has no box: E, A and B are fitted as logs (so they stay positive) and the exponents are
# free. The bounds are the law's own: L = E + A x^-alpha > E at every point, so E lies between 0 and the
# lowest loss, and a law that falls with scale has exponents above 0. A value within BOUND_TOLERANCE of
# one (a share of the lowest loss for E, the Huber delta in log units; absolute for an exponent) is on it.
BOUND_TOLERANCE = 1e-3


def _on(value: float, bound: float, upper: bool, scale: float) -> bool:
    return value > bound - BOUND_TOLERANCE * scale if upper else value < bound + BOUND_TOLERANCE * scale


def flag_bounds(fit: Fit, lowest_loss: float) -> None:
    """A warning for each estimate on a bound of its law, and for each interval edge on one, which is
    then open (`ci_open`); a warning too for an interval of E too wide to pin E down."""
    limits = {k: (0.0, np.inf, 1.0) for k in ("alpha", "beta") if k in fit.params}
    if "E" in fit.params:
        limits["E"] = (0.0, lowest_loss, lowest_loss)
    for name, (low, high, scale) in limits.items():
        value, named = fit.params[name], {low: "0", high: f"the lowest loss ({fmt.number(lowest_loss)})"}
        if _on(value, low, False, scale):
            why = (
                "the fit degenerated to a pure power law"
                if name == "E"
                else "the loss does not fall with scale"
            )
            fit.warnings.append(
                f"{name} = {fmt.number(value)} is at or below its bound, 0: {why} in these points."
            )
        if _on(value, high, True, scale):
            fit.warnings.append(
                f"{name} = {fmt.number(value)} is at or above its bound, {named[high]}: the law cannot pass "
                "below its best point, so the irreducible loss is not identified by these points."
            )
        if name not in fit.ci:
            continue
        lo, hi = fit.ci[name]
        edges = (_on(lo, low, False, scale), _on(hi, high, True, scale))
        if any(edges):
            fit.ci_open[name] = edges
            on = " and ".join(
                f"{side} edge at {named[b]}"
                for side, b, e in zip(("lower", "upper"), (low, high), edges, strict=True)
                if e
            )
            interval = f"[{fmt.number(lo)}, {fmt.number(hi)}]"
            fit.warnings.append(f"{name}'s 95% interval {interval} has its {on}, on a bound; shown open.")
        decades = np.log10(hi / lo) if lo > 0 else np.inf
        if name == "E" and decades > UNIDENTIFIED_DECADES and not _on(value, low, False, scale):
            fit.warnings.append(
                f"E is not identified: its 95% interval [{fmt.number(lo)}, {fmt.number(hi)}] spans "
                f"{decades:.1f} orders of magnitude."
            )


def _intervals(samples: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    lo, hi = 100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2
    out = {}
    for k, v in samples.items():
        v = v[np.isfinite(v)]
        if len(v):
            out[k] = (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
    return out


def fit_summary_row(fit: Fit) -> dict:
    """A flat dict of estimates and interval bounds, for tables."""
    out = {"law": fit.law, "n_points": fit.n_points, "objective": fit.objective}
    for k, v in fit.params.items():
        out[k] = v
        if k in fit.ci:
            out[f"{k}_lo"], out[f"{k}_hi"] = fit.ci[k]
    return out


# -- compute-optimal allocations: N_opt = k_n C^a, D_opt = k_d C^b ---------------------------------
def _loglog_slope(C: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """Least squares log Y = log k + s log C; returns (s, k)."""
    s, logk = np.polyfit(np.log(C), np.log(Y), 1)
    return float(s), float(np.exp(logk))


def allocation_fit(law: str, C: np.ndarray, N_opt: np.ndarray, n_points: int, extra: dict) -> Fit:
    if len(C) < 2:
        raise AnalysisError(f"{law}: need optima at 2 or more compute budgets, found {len(C)}")
    a, k_n = _loglog_slope(C, N_opt)
    b, k_d = _loglog_slope(C, tokens_from_compute(C, N_opt))
    return Fit(law, {"a": a, "b": b, "k_n": k_n, "k_d": k_d}, float("nan"), n_points, extra=extra)
