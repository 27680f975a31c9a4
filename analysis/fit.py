"""Scaling-law fits: power laws, and Chinchilla's three approaches, with bootstrap intervals.

Every law is fitted in log space with a Huber loss summed over points, as in Hoffmann et al. 2022
(Approach 3) and the replication of Besiroglu et al. 2024.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis import optimize
from analysis.load import AnalysisError

CI_LEVEL = 0.95
# Resamples start at the full-data optimum and need percentiles, not 1e-10 gradients.
BOOTSTRAP_SOLVER = {"max_iter": 200, "tol": 1e-7}


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
        return out


def _intervals(samples: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    lo, hi = 100 * (1 - CI_LEVEL) / 2, 100 * (1 + CI_LEVEL) / 2
    out = {}
    for k, v in samples.items():
        v = v[np.isfinite(v)]
        if len(v):
            out[k] = (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
    return out


def _check_points(n: int, n_params: int, law: str) -> None:
    if n < n_params + 1:
        raise AnalysisError(
            f"{law}: {n} points cannot determine {n_params} parameters (need at least {n_params + 1})"
        )


SEPARABLE_MIN_SPREAD = 0.05  # natural-log units: ~5% variation of D at fixed N (and of N at fixed D)


def _check_separable(N: np.ndarray, D: np.ndarray) -> None:
    """L(N, D) needs D to vary apart from N and N apart from D; a sweep at a fixed token budget or a
    fixed tokens-per-parameter ratio has log D a linear function of log N, and its A/N and B/D terms
    trade off freely (the fit then lands on a bound and its allocations mean nothing)."""
    logs = {"tokens": np.log(D), "params": np.log(N)}
    for name, other in (("tokens", "params"), ("params", "tokens")):
        y, x = logs[name], logs[other]
        design = np.stack([x, np.ones_like(x)], axis=1)
        spread = (y - design @ np.linalg.lstsq(design, y, rcond=None)[0]).std()
        if spread < SEPARABLE_MIN_SPREAD:
            raise AnalysisError(
                f"approach3: log {name} is a linear function of log {other} in these runs (residual "
                f"spread {spread:.3f}); L(N, D) needs several token budgets per size, e.g. an IsoFLOP sweep"
            )


def _check_positive(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, float)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise AnalysisError(f"{name}: every value must be positive and finite")
    return values


def _converged(law: str, theta: np.ndarray, f: float, grad_norm: float) -> None:
    if not (np.isfinite(f) and np.all(np.isfinite(theta))) or grad_norm > 1e-6:
        raise AnalysisError(
            f"{law}: the fit did not converge (objective {f:.3g}, gradient norm {grad_norm:.2g})"
        )


# -- power law: L = E + A x^-alpha ---------------------------------------------------------------
def _power_params(theta_RxP: np.ndarray, offset: bool, log_x0: float) -> dict[str, np.ndarray]:
    """Back from centred units: A (x/x0)^-alpha = A x0^alpha x^-alpha."""
    theta = np.atleast_2d(theta_RxP)
    alpha = theta[:, 2] if offset else theta[:, 1]
    with np.errstate(over="ignore"):  # a runaway resample becomes inf, and is dropped from intervals
        A = np.exp(theta[:, 0] + alpha * log_x0)
        if offset:
            return {"E": np.exp(theta[:, 1]), "A": A, "alpha": alpha}
    return {"A": A, "alpha": alpha}


def fit_power(
    x, loss, x_name: str = "flops", offset: bool = True, bootstrap: int = 0, seed: int = 0,
    delta: float = 1e-3,
) -> Fit:  # fmt: skip
    """L(x) = E + A x^-alpha (or A x^-alpha with offset=False), Huber in log space."""
    x, loss = _check_positive(x_name, x), _check_positive("loss", loss)
    log_pred = power_log_pred if offset else power_no_offset_log_pred
    _check_points(len(x), 3 if offset else 2, "power")
    # Centring log x at its mean decorrelates A from alpha: x spans 1e15..1e20 FLOPs, and in raw
    # units the valley along (log A, alpha) is too narrow for L-BFGS to follow quickly.
    log_x0 = float(np.mean(np.log(x)))
    logx, logy = (np.log(x) - log_x0)[:, None], np.log(loss)
    theta, f, g = optimize.multistart(log_pred, power_grid(offset), logx, logy, delta=delta)
    _converged("power", theta, f, g)
    params = {k: float(v[0]) for k, v in _power_params(theta, offset, log_x0).items()}
    fit = Fit("power", params, f, len(x), x=x_name)
    if bootstrap:
        w = optimize.bootstrap_weights(len(x), bootstrap, seed)
        thetas, fs, _ = optimize.minimize(
            log_pred, np.tile(theta, (bootstrap, 1)), logx, logy, w, delta, **BOOTSTRAP_SOLVER
        )
        fit.samples = _power_params(np.where(np.isfinite(fs)[:, None], thetas, np.nan), offset, log_x0)
        fit.ci = _intervals(fit.samples)
    return fit


# -- approach 3: L(N, D) = E + A/N^alpha + B/D^beta ----------------------------------------------
def _chinchilla_params(theta_RxP: np.ndarray) -> dict[str, np.ndarray]:
    theta = np.atleast_2d(theta_RxP)
    alpha, beta = theta[:, 3], theta[:, 4]
    with np.errstate(all="ignore"):  # a runaway resample becomes inf, and is dropped from intervals
        A, B = np.exp(theta[:, 0]), np.exp(theta[:, 1])
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
        return {
            "E": np.exp(theta[:, 2]), "A": A, "B": B, "alpha": alpha, "beta": beta,
            "a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": G,
        }  # fmt: skip


def fit_chinchilla(
    N, D, loss, bootstrap: int = 0, seed: int = 0, delta: float = 1e-3, grid: str | np.ndarray = "hoffmann"
) -> Fit:
    """Approach 3: Huber (delta) on log L, summed over points, L-BFGS from every start of `grid`.

    a = beta / (alpha + beta) and b = alpha / (alpha + beta) are the compute-optimal exponents,
    N_opt = G (C/6)^a with G = (alpha A / (beta B))^(1 / (alpha + beta)) (Hoffmann et al. eq. 4).
    """
    N, D, loss = _check_positive("params", N), _check_positive("tokens", D), _check_positive("loss", loss)
    _check_points(len(N), 5, "approach3")
    _check_separable(N, D)
    starts = hoffmann_grid() if isinstance(grid, str) else np.asarray(grid, float)
    logx, logy = np.log(np.stack([N, D], axis=1)), np.log(loss)
    theta, f, g = optimize.multistart(chinchilla_log_pred, starts, logx, logy, delta=delta)
    _converged("approach3", theta, f, g)
    fit = Fit("chinchilla", {k: float(v[0]) for k, v in _chinchilla_params(theta).items()}, f, len(N))
    if bootstrap:
        # Each resample restarts from the full-data optimum: the same basin, found in a few steps.
        w = optimize.bootstrap_weights(len(N), bootstrap, seed)
        starts_R = np.tile(theta, (bootstrap, 1))
        thetas, fs, _ = optimize.minimize(
            chinchilla_log_pred, starts_R, logx, logy, w, delta, **BOOTSTRAP_SOLVER
        )
        fit.samples = _chinchilla_params(np.where(np.isfinite(fs)[:, None], thetas, np.nan))
        fit.ci = _intervals(fit.samples)
    return fit


# -- compute-optimal allocation ------------------------------------------------------------------
def compute_optimal(fit: Fit, C) -> dict[str, np.ndarray]:
    """N_opt, D_opt and tokens per parameter at compute C (FLOPs, with C = 6 N D)."""
    C = np.asarray(C, float)
    p = fit.params
    if fit.law == "chinchilla":
        N = p["G"] * (C / 6) ** p["a"]
        D = (C / 6) ** p["b"] / p["G"]
    elif fit.law in ("approach1", "approach2"):
        N, D = p["k_n"] * C ** p["a"], p["k_d"] * C ** p["b"]
    else:
        raise AnalysisError(f"law '{fit.law}' has no compute-optimal allocation")
    return {"C": C, "N_opt": N, "D_opt": D, "tokens_per_param": D / N}


def compute_budgets(flops) -> np.ndarray:
    """Powers of ten at the smallest and largest budget, and one and two decades beyond."""
    c_min, c_max = float(np.min(flops)), float(np.max(flops))
    return np.unique(10.0 ** np.round(np.log10([c_min, c_max, 10 * c_max, 100 * c_max])))


def _loglog_slope(C: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """Least squares log Y = log k + s log C; returns (s, k)."""
    s, logk = np.polyfit(np.log(C), np.log(Y), 1)
    return float(s), float(np.exp(logk))


def _allocation_fit(law: str, C: np.ndarray, N_opt: np.ndarray, n_points: int, extra: dict) -> Fit:
    if len(C) < 2:
        raise AnalysisError(f"{law}: need optima at 2 or more compute budgets, found {len(C)}")
    a, k_n = _loglog_slope(C, N_opt)
    b, k_d = _loglog_slope(C, C / (6 * N_opt))
    return Fit(law, {"a": a, "b": b, "k_n": k_n, "k_d": k_d}, float("nan"), n_points, extra=extra)


# -- approach 1: the lower envelope of the learning curves ---------------------------------------
def approach1(curves: pd.DataFrame, n_budgets: int = 30) -> Fit:
    """At each compute C, the run with the lowest loss at C gives N_opt(C) (Hoffmann Approach 1).

    `curves` holds run_id, params, flops, loss rows (learning curves); a table with one row per run
    (final points only) is treated as one-point curves, which gives the Pareto frontier.
    """
    for col in ("params", "flops", "loss"):
        if col not in curves.columns:
            raise AnalysisError(f"approach1: missing column '{col}'")
    if "run_id" not in curves.columns:
        curves = curves.assign(run_id=np.arange(len(curves)))
    runs = [g.sort_values("flops") for _, g in curves.groupby("run_id")]
    lo = min(g["flops"].iloc[0] for g in runs)
    hi = max(g["flops"].iloc[-1] for g in runs)
    budgets = np.geomspace(lo, hi, n_budgets)
    best_loss, best_N = np.full(n_budgets, np.inf), np.full(n_budgets, np.nan)
    for g in runs:
        f, L = g["flops"].to_numpy(float), g["loss"].to_numpy(float)
        inside = (budgets >= f[0]) & (budgets <= f[-1])
        L_at = np.interp(np.log(budgets[inside]), np.log(f), L) if len(f) > 1 else np.full(inside.sum(), L[0])
        better = L_at < best_loss[inside]
        idx = np.flatnonzero(inside)[better]
        best_loss[idx], best_N[idx] = L_at[better], g["params"].iloc[0]
    ok = np.isfinite(best_N)
    C, N_opt = budgets[ok], best_N[ok]
    frontier = [
        {"C": c, "N_opt": n, "D_opt": c / (6 * n), "loss": loss}
        for c, n, loss in zip(C, N_opt, best_loss[ok], strict=True)
    ]
    if len(np.unique(N_opt)) < 2:
        raise AnalysisError("approach1: one size is optimal at every budget; the exponent is not identified")
    return _allocation_fit("approach1", C, N_opt, len(curves), {"frontier": frontier})


# -- approach 2: IsoFLOP profiles ----------------------------------------------------------------
def isoflop_groups(runs: pd.DataFrame, tolerance: float = 0.25) -> np.ndarray:
    """Group label per run: a `flops_budget` column if present, else runs within 25% in compute."""
    if "flops_budget" in runs.columns:
        return runs["flops_budget"].to_numpy()
    order = np.argsort(runs["flops"].to_numpy())
    labels = np.empty(len(runs))
    start = None
    for i in order:
        f = runs["flops"].iloc[i]
        if start is None or f > start * (1 + tolerance):
            start = f
        labels[i] = start
    return labels


def _parabolas(logN_GxM, loss_GxM, w_RxGxM):
    """Weighted least-squares quadratics loss = c2 logN^2 + c1 logN + c0, batched: [R, G, 3]."""
    X = np.stack([logN_GxM**2, logN_GxM, np.ones_like(logN_GxM)], axis=-1)  # [G, M, 3]
    XtWX = np.einsum("gmi,rgm,gmj->rgij", X, w_RxGxM, X)
    XtWy = np.einsum("gmi,rgm,gm->rgi", X, w_RxGxM, loss_GxM)
    with np.errstate(all="ignore"):
        return np.linalg.solve(XtWX + 1e-12 * np.eye(3), XtWy[..., None])[..., 0]


def approach2(runs: pd.DataFrame, bootstrap: int = 0, seed: int = 0) -> Fit:
    """For each IsoFLOP budget, a parabola in log N gives N*(C); a power law through the N* values."""
    labels = isoflop_groups(runs)
    groups = [runs[labels == lab] for lab in np.unique(labels)]
    groups = [g for g in groups if len(g) >= 3]
    if len(groups) < 2:
        raise AnalysisError("approach2: need 2 or more IsoFLOP budgets with 3 or more sizes each")
    M = max(len(g) for g in groups)
    pad = lambda v, fill: np.pad(v, (0, M - len(v)), constant_values=fill)  # noqa: E731
    logN = np.stack([pad(np.log(g["params"].to_numpy(float)), 0.0) for g in groups])
    loss = np.stack([pad(g["loss"].to_numpy(float), 0.0) for g in groups])
    mask = np.stack([pad(np.ones(len(g)), 0.0) for g in groups])
    C = np.array([g["flops"].median() for g in groups])

    def optima(w_RxGxM):
        coef = _parabolas(logN, loss, w_RxGxM)
        with np.errstate(all="ignore"):
            logN_star = -coef[..., 1] / (2 * coef[..., 0])
        valid = coef[..., 0] > 0  # a minimum, not a maximum
        return coef, np.where(valid, logN_star, np.nan)

    coef, logN_star = optima(mask[None])
    if not np.all(np.isfinite(logN_star)):
        bad = C[~np.isfinite(logN_star[0])][0]
        raise AnalysisError(f"approach2: the IsoFLOP profile at C={bad:.3g} has no minimum (not convex)")
    N_star = np.exp(logN_star[0])
    isoflop = [
        {
            "C": float(c),
            "N_star": float(n),
            "loss_star": float(np.polyval(k, np.log(n))),
            "coef": list(map(float, k)),
        }
        for c, n, k in zip(C, N_star, coef[0], strict=True)
    ]
    fit = _allocation_fit("approach2", C, N_star, len(runs), {"isoflop": isoflop})
    if bootstrap:
        rng = np.random.default_rng(seed)
        # Resample runs within each budget (stratified), as counts on the padded grid.
        w = np.zeros((bootstrap, len(groups), M))
        for gi, g in enumerate(groups):
            w[:, gi, : len(g)] = rng.multinomial(len(g), np.full(len(g), 1 / len(g)), size=bootstrap)
        _, logN_b = optima(w)
        logC = np.log(C)
        ok = np.all(np.isfinite(logN_b), axis=1)
        # Batched least squares of log N* on log C, and of log D* = log(C/6) - log N*.
        Xc = np.stack([logC, np.ones_like(logC)], axis=1)
        sol_n = np.linalg.lstsq(Xc, logN_b[ok].T, rcond=None)[0]
        logD_b = np.log(C / 6)[None] - logN_b[ok]
        sol_d = np.linalg.lstsq(Xc, logD_b.T, rcond=None)[0]
        fit.samples = {"a": sol_n[0], "b": sol_d[0], "k_n": np.exp(sol_n[1]), "k_d": np.exp(sol_d[1])}
        fit.ci = _intervals(fit.samples)
    return fit


# -- extrapolation -------------------------------------------------------------------------------
def extrapolation_check(runs: pd.DataFrame, holdout_frac: float = 0.2) -> pd.DataFrame:
    """Fit on the runs below a compute threshold; predict the larger, held-out runs."""
    if not 0 < holdout_frac < 1:
        raise AnalysisError(f"holdout fraction {holdout_frac}: must be in (0, 1)")
    runs = runs.sort_values("flops").reset_index(drop=True)
    n_hold = max(1, int(round(holdout_frac * len(runs))))
    # Runs at the same compute stay on one side, so an IsoFLOP budget is never split.
    cut = runs["flops"].iloc[len(runs) - n_hold]
    train, held = runs[runs["flops"] < cut], runs[runs["flops"] >= cut]
    if train.empty:
        raise AnalysisError(f"extrapolation: no runs below the held-out compute {cut:.3g}")
    threshold = float(train["flops"].max())
    rows = []
    fits = {"power(flops)": lambda t: fit_power(t["flops"], t["loss"], "flops")}
    if "tokens" in runs.columns:
        fits["approach3"] = lambda t: fit_chinchilla(t["params"], t["tokens"], t["loss"])
    for name, make in fits.items():
        try:
            fit = make(train)
        except AnalysisError:
            continue
        pred = (
            fit.predict(x=held["flops"])
            if fit.law == "power"
            else fit.predict(N=held["params"], D=held["tokens"])
        )
        for (_, r), p in zip(held.iterrows(), np.asarray(pred), strict=True):
            rows.append({
                "law": name, "params": r["params"], "flops": r["flops"], "loss": r["loss"],
                "predicted": float(p), "rel_error": float((p - r["loss"]) / r["loss"]),
                "fit_below_flops": threshold,
            })  # fmt: skip
    return pd.DataFrame(rows)


def fit_summary_row(fit: Fit) -> dict:
    """A flat dict of estimates and interval bounds, for tables."""
    out = {"law": fit.law, "n_points": fit.n_points, "objective": fit.objective}
    for k, v in fit.params.items():
        out[k] = v
        if k in fit.ci:
            out[f"{k}_lo"], out[f"{k}_hi"] = fit.ci[k]
    return out


__all__ = [
    "Fit", "fit_power", "fit_chinchilla", "approach1", "approach2", "compute_optimal",
    "extrapolation_check", "hoffmann_grid", "isoflop_groups", "fit_summary_row", "compute_budgets",
]  # fmt: skip
