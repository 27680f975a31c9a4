"""Scaling-law fits: power laws, and Chinchilla's three approaches, with bootstrap intervals.

Every law is fitted in log space with a Huber loss summed over points, as in Hoffmann et al. 2022
(Approach 3) and the replication of Besiroglu et al. 2024. The laws themselves and the `Fit` result
live in `analysis.laws`; the IsoFLOP grouping and approach 2 in `analysis.isoflop`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import optimize
from analysis.isoflop import (
    approach2,
    best_of_each_budget,
    held_out_budgets,
    isoflop_groups,
)
from analysis.laws import (
    Fit,
    allocation_fit,
    chinchilla_log_pred,
    flag_bounds,
    hoffmann_grid,
    power_grid,
    power_log_pred,
    power_no_offset_log_pred,
)
from analysis.load import AnalysisError, tokens_from_compute

# Resamples start at the full-data optimum and need percentiles, not 1e-10 gradients. A cheap
# backtracking pass converges most of them; the backtracking line search stalls on some (|grad| ~ 1),
# which are polished from where they stopped with the zoom line search (strong Wolfe). A resample whose
# gradient is still above BOOTSTRAP_GRAD_TOL is dropped and counted, never kept.
BOOTSTRAP_SOLVER = {"max_iter": 200, "tol": 1e-7}
BOOTSTRAP_POLISH = {"max_iter": 300, "tol": 1e-7, "backtracking": 0}  # per round
BOOTSTRAP_POLISH_ROUNDS = 5
BOOTSTRAP_GRAD_TOL = 1e-6


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


def _check_distinct(name: str, x: np.ndarray, needed: int, law: str) -> None:
    distinct = len(np.unique(x))
    if distinct < needed:
        raise AnalysisError(
            f"{law}: {name} takes {distinct} distinct values; the law needs at least {needed}"
        )


def _padded(rows: np.ndarray) -> np.ndarray:
    """rows repeated cyclically to a power of two (at least 8): polishing compiles for few batch sizes."""
    return np.resize(rows, max(8, 1 << (len(rows) - 1).bit_length()))


def _solve_resamples(log_pred, theta_P, logx_NxK, logy_N, w_RxN, delta) -> tuple[np.ndarray, np.ndarray]:
    """Each resample from the full-data optimum, stalled ones polished: theta [R, P], converged [R]."""
    starts_RxP = np.tile(theta_P, (len(w_RxN), 1))
    solved = optimize.minimize(log_pred, starts_RxP, logx_NxK, logy_N, w_RxN, delta, **BOOTSTRAP_SOLVER)
    theta, f, g = (np.array(a) for a in solved)  # writable copies of the device arrays
    # Polish in rounds, each on the resamples still stalled: the batch shrinks as they converge, so
    # the few slow ones do not hold every other one to the last iteration.
    for _ in range(BOOTSTRAP_POLISH_ROUNDS):
        stalled = np.flatnonzero(~(g <= BOOTSTRAP_GRAD_TOL))  # NaN gradients count as stalled
        if not len(stalled):
            break
        rows = _padded(stalled)
        polished = optimize.minimize(
            log_pred, theta[rows], logx_NxK, logy_N, w_RxN[rows], delta, **BOOTSTRAP_POLISH
        )
        theta[stalled], f[stalled], g[stalled] = (a[: len(stalled)] for a in polished)
    return theta, np.isfinite(f) & np.all(np.isfinite(theta), axis=1) & (g <= BOOTSTRAP_GRAD_TOL)


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
    n_params = 3 if offset else 2
    _check_points(len(x), n_params, "power")
    _check_distinct(x_name, x, n_params, "power")
    # Centring log x at its mean decorrelates A from alpha: x spans 1e15..1e20 FLOPs, and in raw
    # units the valley along (log A, alpha) is too narrow for L-BFGS to follow quickly.
    log_x0 = float(np.mean(np.log(x)))
    logx, logy = (np.log(x) - log_x0)[:, None], np.log(loss)
    theta, f, g = optimize.multistart(log_pred, power_grid(offset), logx, logy, delta=delta)
    _converged("power", theta, f, g)
    params = {k: float(v[0]) for k, v in _power_params(theta, offset, log_x0).items()}
    fit = Fit("power", params, f, len(x), x=x_name)
    if bootstrap:
        # A resample needs as many distinct x as the law has parameters; one that has fewer is drawn again.
        w = optimize.bootstrap_weights(len(x), bootstrap, seed, labels=x, min_distinct=n_params)
        thetas, converged = _solve_resamples(log_pred, theta, logx, logy, w, delta)
        samples = _power_params(thetas[converged], offset, log_x0)
        fit.set_bootstrap(samples, bootstrap, {"did not converge": bootstrap - converged.sum()})
    flag_bounds(fit, float(loss.min()))
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
    # L-BFGS runs in centred units, log N - mean log N (and so for D): A/N^alpha = e^(a - alpha mean)
    # (N/e^mean)^-alpha. The same objective at the same points, but log A no longer moves with alpha
    # along a narrow valley; resamples converge in about 4 times fewer steps, and none stall.
    shift = np.zeros((len(starts[0]), len(starts[0])))
    shift[3, 0], shift[4, 1] = logx.mean(0)  # theta_raw = theta_centred + theta_centred @ shift
    to_raw = lambda theta: theta + theta @ shift  # noqa: E731
    logx_c, starts_c = logx - logx.mean(0), starts - starts @ shift
    theta, f, g = optimize.multistart(chinchilla_log_pred, starts_c, logx_c, logy, delta=delta)
    _converged("approach3", theta, f, g)
    fit = Fit("chinchilla", {k: float(v[0]) for k, v in _chinchilla_params(to_raw(theta)).items()}, f, len(N))
    if bootstrap:
        # Each resample restarts from the full-data optimum: the same basin, found in a few steps.
        w = optimize.bootstrap_weights(len(N), bootstrap, seed)
        thetas, converged = _solve_resamples(chinchilla_log_pred, theta, logx_c, logy, w, delta)
        samples = _chinchilla_params(to_raw(thetas[converged]))
        fit.set_bootstrap(samples, bootstrap, {"did not converge": bootstrap - converged.sum()})
    flag_bounds(fit, float(loss.min()))
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


# -- approach 1: the lower envelope of the learning curves ---------------------------------------
MIN_RUNS_PER_BUDGET = 2  # an envelope point compares runs; one run alone is optimal by default


def _curves_by_run(curves: pd.DataFrame) -> list[pd.DataFrame]:
    """Each run's learning curve, in increasing compute; refuses a table of final points only."""
    for col in ("params", "flops", "loss"):
        if col not in curves.columns:
            raise AnalysisError(f"approach1: missing column '{col}'")
    if "run_id" in curves.columns:
        runs = [g.sort_values("flops") for _, g in curves.groupby("run_id")]
        runs = [g for g in runs if g["flops"].nunique() >= 2]
    else:
        runs = []
    if not runs:
        raise AnalysisError(
            "approach1: needs learning curves (loss along each run); a table of final points only has "
            "none, and one point per run is optimal only at its own compute; use approach2 for IsoFLOP sweeps"
        )
    return runs


def approach1(curves: pd.DataFrame, n_budgets: int = 30) -> Fit:
    """At each compute C, the run with the lowest loss at C gives N_opt(C) (Hoffmann Approach 1).

    `curves` holds run_id, params, flops, loss rows along each run (6ND FLOPs); a budget counts only
    where the curves of at least MIN_RUNS_PER_BUDGET runs reach it.
    """
    runs = _curves_by_run(curves)
    lo = min(g["flops"].iloc[0] for g in runs)
    hi = max(g["flops"].iloc[-1] for g in runs)
    budgets = np.geomspace(lo, hi, n_budgets)
    best_loss, best_N = np.full(n_budgets, np.inf), np.full(n_budgets, np.nan)
    covering = np.zeros(n_budgets, int)
    for g in runs:
        f, L = g["flops"].to_numpy(float), g["loss"].to_numpy(float)
        inside = (budgets >= f[0]) & (budgets <= f[-1])
        covering += inside
        L_at = np.interp(np.log(budgets[inside]), np.log(f), L)
        better = L_at < best_loss[inside]
        idx = np.flatnonzero(inside)[better]
        best_loss[idx], best_N[idx] = L_at[better], g["params"].iloc[0]
    ok = covering >= MIN_RUNS_PER_BUDGET
    C, N_opt = budgets[ok], best_N[ok]
    frontier = [
        {"C": c, "N_opt": n, "D_opt": tokens_from_compute(c, n), "loss": loss, "runs": int(k)}
        for c, n, loss, k in zip(C, N_opt, best_loss[ok], covering[ok], strict=True)
    ]
    if len(np.unique(N_opt)) < 2:
        raise AnalysisError(
            f"approach1: {len(C)} budgets reached by {MIN_RUNS_PER_BUDGET} or more runs, with "
            f"{len(np.unique(N_opt))} distinct optimal sizes; the exponent is not identified"
        )
    return allocation_fit("approach1", C, N_opt, len(curves), {"frontier": frontier})


# -- the loss-compute frontier -------------------------------------------------------------------
def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """The best run of each compute budget (IsoFLOP group), kept where it beats all cheaper budgets' best."""
    best = best_of_each_budget(runs).sort_values("flops")
    return best[best["loss"] < best["loss"].cummin().shift(fill_value=np.inf)]


def fit_frontier(runs: pd.DataFrame, bootstrap: int = 0, seed: int = 0) -> Fit:
    """L(C) = E + A C^-alpha through the frontier; without E on fewer than 5 points (E, A and alpha
    need more than three frontier points to be told apart)."""
    edge = frontier(runs)
    if len(edge) < 3:
        raise AnalysisError(f"{len(edge)} runs on the loss-compute frontier; need 3 for a power law")
    fit = fit_power(edge["flops"], edge["loss"], "flops", len(edge) >= 5, bootstrap, seed)
    fit.extra["fitted_to"] = frontier_note(runs, edge)
    return fit


def frontier_note(runs: pd.DataFrame, edge: pd.DataFrame) -> str:
    """What a frontier fit was fitted to, in one sentence."""
    budgets = len(np.unique(isoflop_groups(runs)))
    return (
        f"the loss-compute frontier: the best run of each compute budget, {len(edge)} of {budgets} budgets "
        f"(those that beat every cheaper one), from {len(runs)} runs"
    )


# -- extrapolation -------------------------------------------------------------------------------
def extrapolation_check(runs: pd.DataFrame, holdout_frac: float = 0.2) -> pd.DataFrame:
    """Fit on the smaller compute budgets; predict the larger, held-out ones.

    Budgets are held out whole. The frontier power law L(C) is fitted to the frontier of the kept
    budgets and predicts the best run of each held-out budget; approach 3 predicts every held-out run.
    A law that cannot be fitted to the kept budgets is listed with its reason in `attrs["skipped"]`.
    """
    if not 0 < holdout_frac < 1:
        raise AnalysisError(f"holdout fraction {holdout_frac}: must be in (0, 1)")
    train, held = held_out_budgets(runs, holdout_frac)
    if train.empty:
        raise AnalysisError("extrapolation: every run is in the held-out budgets; none left to fit")
    threshold = float(train["flops"].max())
    checks = {"frontier power(flops)": (lambda t: fit_frontier(t), best_of_each_budget(held))}
    if "tokens" in runs.columns:
        checks["approach3"] = (lambda t: fit_chinchilla(t["params"], t["tokens"], t["loss"]), held)
    rows, skipped = [], {}
    for name, (make, targets) in checks.items():
        try:
            fit = make(train)
        except AnalysisError as e:
            skipped[name] = str(e)
            continue
        pred = (
            fit.predict(x=targets["flops"])
            if fit.law == "power"
            else fit.predict(N=targets["params"], D=targets["tokens"])
        )
        for (_, r), p in zip(targets.iterrows(), np.asarray(pred), strict=True):
            rows.append({
                "law": name, "params": r["params"], "flops": r["flops"], "loss": r["loss"],
                "predicted": float(p), "rel_error": float((p - r["loss"]) / r["loss"]),
                "fit_below_flops": threshold,
            })  # fmt: skip
    table = pd.DataFrame(rows)
    table.attrs["skipped"] = skipped
    return table


__all__ = [
    "fit_power", "fit_chinchilla", "approach1", "approach2", "compute_optimal", "compute_budgets",
    "frontier", "fit_frontier", "extrapolation_check",
]  # fmt: skip
