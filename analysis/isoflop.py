"""IsoFLOP budgets: runs grouped by compute, the best run of each budget, whole budgets held out, and
approach 2: a parabola in log N near each budget's minimum gives N*(C) (Hoffmann et al. 2022, 3.2), and
the power law N* = k_n C^a, fitted to every profile at once (`analysis.isoflop_line`), gives the
compute-optimal allocation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.isoflop_line import A_RANGE, joint_line
from analysis.laws import Fit, allocation_fit
from analysis.load import AnalysisError


def clusters(values: np.ndarray, tolerance: float) -> np.ndarray:
    """A label per value: in increasing order, a value more than `tolerance` (relative) above the first
    value of the current cluster starts a new one; the label is that first value."""
    values = np.asarray(values, float)
    labels = np.empty(len(values))
    start = None
    for i in np.argsort(values):
        if start is None or values[i] > start * (1 + tolerance):
            start = values[i]
        labels[i] = start
    return labels


def isoflop_groups(runs: pd.DataFrame, tolerance: float = 0.25) -> np.ndarray:
    """Group label per run: a `flops_budget` column if present, else runs within 25% in compute."""
    if "flops_budget" in runs.columns:
        return runs["flops_budget"].to_numpy()
    return clusters(runs["flops"].to_numpy(), tolerance)


def best_of_each_budget(runs: pd.DataFrame) -> pd.DataFrame:
    """The lowest-loss run of each compute budget (IsoFLOP group)."""
    return runs.loc[runs.groupby(isoflop_groups(runs))["loss"].idxmin()]


def held_out_budgets(runs: pd.DataFrame, holdout_frac: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole compute budgets (IsoFLOP groups), largest first, until holdout_frac of the runs are held out."""
    labels = pd.Series(isoflop_groups(runs), index=runs.index)
    budget_C = runs.groupby(labels)["flops"].median().sort_values(ascending=False)
    sizes = labels.value_counts()[budget_C.index].cumsum()
    n_hold = max(1, int(round(holdout_frac * len(runs))))
    held_budgets = budget_C.index[: int(np.searchsorted(sizes.to_numpy(), n_hold)) + 1]
    held = labels.isin(held_budgets)
    return runs[~held], runs[held]


def isoflop_refusal(excluded: list[dict], kept: int) -> AnalysisError:
    """Approach 2's error when fewer than 2 budgets are usable, with the reason each one was excluded."""
    why = "; ".join(f"C={e['C']:.3g}: {e['reason']}" for e in excluded)
    return AnalysisError(
        f"approach2: need 2 or more IsoFLOP budgets with a minimum inside 3 or more distinct sizes, found "
        f"{kept}" + (f" ({why})" if why else "")
    )


# -- approach 2: the minimum of each IsoFLOP profile ----------------------------------------------
# A budget's N* comes from a parabola in log N fitted near its minimum: by default through the best
# size and WINDOW sizes either side of it (up to 5 sizes). One parabola
# through every size of a wide (1.5 decades) or lopsided grid is pulled off the minimum by the
# profile's asymmetry (the A/N and B/D walls rise at different rates); the simulation study in
# tests/test_isoflop_simulation.py chose the default. window=None fits every size (Hoffmann et al.).
WINDOW = 2
OK, BELOW, ABOVE, CONCAVE = 0, 1, 2, 3


@dataclasses.dataclass
class Profiles:
    """IsoFLOP budgets with 3 or more distinct sizes, as arrays padded to M sizes (count 0 = padding)."""

    C_G: np.ndarray  # median compute of each budget
    logN_GxM: np.ndarray  # distinct sizes, ascending
    loss_GxM: np.ndarray  # mean loss of the runs at each size
    count_GxM: np.ndarray  # runs at each size
    runs: int


def profiles(runs: pd.DataFrame) -> tuple[Profiles, list[dict]]:
    """The budgets a parabola can be fitted to, and the others with their reason."""
    labels = isoflop_groups(runs)
    rows, excluded = [], []
    for label in pd.unique(labels):
        g = runs[labels == label]
        C = float(g["flops"].median())
        by_size = g.groupby(np.log(g["params"].to_numpy(float)))["loss"].agg(["mean", "count"])
        if len(by_size) < 3:
            excluded.append({"C": C, "reason": f"{len(by_size)} distinct sizes; a parabola needs 3"})
        else:
            rows.append((C, by_size))
    rows.sort(key=lambda r: r[0])
    excluded.sort(key=lambda e: e["C"])
    M = max((len(b) for _, b in rows), default=0)
    pad = lambda v: np.pad(np.asarray(v, float), (0, M - len(v)))  # noqa: E731
    P = Profiles(
        np.array([c for c, _ in rows]),
        np.stack([pad(b.index) for _, b in rows]) if rows else np.zeros((0, 0)),
        np.stack([pad(b["mean"]) for _, b in rows]) if rows else np.zeros((0, 0)),
        np.stack([pad(b["count"]) for _, b in rows]) if rows else np.zeros((0, 0)),
        len(runs),
    )
    return P, excluded


def parabolas(x_GxM, y_RxGxM, w_RxGxM):
    """Weighted least-squares quadratics y = c2 x^2 + c1 x + c0, batched: [R, G, 3]."""
    X = np.stack([x_GxM**2, x_GxM, np.ones_like(x_GxM)], axis=-1)  # [G, M, 3]
    XtWX = np.einsum("gmi,rgm,gmj->rgij", X, w_RxGxM, X)
    XtWy = np.einsum("gmi,rgm,rgm->rgi", X, w_RxGxM, y_RxGxM)
    with np.errstate(all="ignore"):
        return np.linalg.solve(XtWX + 1e-12 * np.eye(3), XtWy[..., None])[..., 0]


def minima(P: Profiles, loss_RxGxM: np.ndarray, window: int | None = WINDOW) -> dict[str, np.ndarray]:
    """Each budget's minimum in every resample: log N*, the loss there, a status code [R, G], the
    parabola (c2, c1, c0 in log N - centre) and the sizes it used [R, G, M]."""
    present = P.count_GxM > 0
    centre_G = (P.logN_GxM * present).sum(-1) / present.sum(-1)
    x_GxM = np.where(present, P.logN_GxM - centre_G[:, None], 0.0)
    best_RxG = np.argmin(np.where(present, loss_RxGxM, np.inf), axis=-1)
    used = np.broadcast_to(present, loss_RxGxM.shape)
    if window is not None:  # 2 window + 1 sizes centred on the best, shifted inside the grid at its ends
        n_G = present.sum(-1)
        start = np.clip(best_RxG - window, 0, np.maximum(n_G - 1 - 2 * window, 0))
        j = np.arange(x_GxM.shape[1]) - start[..., None]
        used = used & (j >= 0) & (j <= 2 * window)
    coef = parabolas(x_GxM, np.where(used, loss_RxGxM, 0.0), used * P.count_GxM)
    c2, c1, c0 = coef[..., 0], coef[..., 1], coef[..., 2]
    with np.errstate(all="ignore"):
        x_star = -c1 / (2 * c2)
    lo = np.where(used, x_GxM, np.inf).min(-1)
    hi = np.where(used, x_GxM, -np.inf).max(-1)
    code = np.full(best_RxG.shape, OK)
    code[~(c2 > 0)] = CONCAVE
    code[(code == OK) & (x_star < lo)] = BELOW
    code[(code == OK) & (x_star > hi)] = ABOVE
    return {
        "logN_star": x_star + centre_G, "loss_star": c0 - c1**2 / (4 * c2), "code": code,
        "coef": coef, "centre": centre_G, "used": used,
    }  # fmt: skip


def reason(code: int, window: int | None, P: Profiles, g: int) -> str:
    """Why budget g is excluded, in words, with the sizes it sampled."""
    sizes = np.exp(P.logN_GxM[g][P.count_GxM[g] > 0])
    span = f"{sizes.min():.3g}-{sizes.max():.3g}"
    if code == CONCAVE:
        return "no minimum (concave profile)"
    side = "smallest" if code == BELOW else "largest"
    return f"minimum outside the sampled sizes (beyond the {side} size used, N in {span})"


def brief_reason(reason: str) -> str:
    """An exclusion reason without the sizes it sampled, for a legend or a one-line warning."""
    reason = reason.split(" (")[0].rstrip(".")
    return "fewer than 3 distinct sizes" if reason.endswith("a parabola needs 3") else reason


# The noise level behind the N* intervals. A parabola through 3 points has no residual to estimate
# it from, so it is pooled over budgets: the residual of a cubic in log N through log loss of every
# budget with 5 or more sizes (a quadratic with 4), which follows the asymmetric profile closely.
def noise_level(P: Profiles) -> tuple[float, int, np.ndarray]:
    """Relative loss noise sigma, its degrees of freedom, and the smoothed profiles [G, M]."""
    ss, dof = 0.0, 0
    base = P.loss_GxM.copy()
    for g in range(len(P.C_G)):
        present = P.count_GxM[g] > 0
        M = int(present.sum())
        if M < 4:
            continue
        x, y, w = P.logN_GxM[g, present], np.log(P.loss_GxM[g, present]), P.count_GxM[g, present]
        x = x - x.mean()
        deg = 3 if M >= 5 else 2
        fitted = np.polyval(np.polyfit(x, y, deg, w=np.sqrt(w)), x)
        ss += float(np.sum(w * (y - fitted) ** 2))
        dof += M - deg - 1
        base[g, present] = np.exp(fitted)
    return (float(np.sqrt(ss / dof)) if dof else float("nan")), dof, base


def resampled_losses(P: Profiles, base_GxM, sigma: float, resamples: int, seed: int) -> np.ndarray:
    """Parametric bootstrap: the smoothed profiles with fresh relative noise of level sigma [R, G, M]."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((resamples, *base_GxM.shape)) / np.sqrt(np.maximum(P.count_GxM, 1))
    return base_GxM * np.exp(sigma * eps)


# -- approach 2: IsoFLOP profiles ----------------------------------------------------------------
def approach2(runs: pd.DataFrame, bootstrap: int = 0, seed: int = 0, window: int | None = WINDOW) -> Fit:
    """For each IsoFLOP budget, a parabola in log N near its minimum gives N*(C); the power law
    N* = k_n C^a is one fit of every budget's profile with its vertex on that line
    (`isoflop_line`). `window` sizes either side of the best one enter each parabola (None: every size).

    A budget's own N* is reported where its minimum is bracketed (see `isoflop.minima`); one whose
    minimum is not still enters the joint fit, since leaving it out biases a. The law needs 2 or more
    bracketed budgets. Intervals come from a parametric bootstrap: the profiles, smoothed, with fresh
    noise at the level pooled across budgets; every resample goes through the same rules, and is
    dropped only when fewer than 2 bracketed budgets remain.
    """
    P, excluded = profiles(runs)
    code = np.full(len(P.C_G), CONCAVE)
    if len(P.C_G):
        m = minima(P, P.loss_GxM[None], window)
        code = m["code"][0]
    usable = np.flatnonzero(code == OK)
    for e in excluded:
        e["in_fit"] = False
    excluded += [
        {"C": float(P.C_G[g]), "reason": reason(code[g], window, P, g), "in_fit": True}
        for g in np.flatnonzero(code)
    ]
    excluded.sort(key=lambda e: e["C"])
    if len(usable) < 2:
        raise isoflop_refusal(excluded, len(usable))
    isoflop = [_isoflop_point(P, m, g) for g in usable]
    a, log_n = _line(P, P.loss_GxM[None], m["used"])
    C = P.C_G
    N_line = np.exp(log_n[0] + a[0] * (np.log(C) - np.log(C).mean()))
    extra = {"isoflop": isoflop, "excluded": excluded, "window": "full" if window is None else window}
    fit = allocation_fit("approach2", C, N_line, len(runs), extra)
    if not 0 < a[0] < 1:  # N* and D* = C / 6N* both grow with compute only for a in (0, 1)
        on_bound = " (on its search bound)" if np.isclose(a[0], A_RANGE, atol=1e-3).any() else ""
        fit.warnings.append(
            f"a = {a[0]:.3g}{on_bound} lies outside (0, 1), where N_opt and D_opt both grow with compute: "
            "the IsoFLOP minima do not identify the compute-optimal exponent."
        )
    if bootstrap:
        _approach2_bootstrap(fit, P, window, bootstrap, seed)
        lo, hi = fit.ci.get("a", (np.nan, np.nan))  # none when no resample gave a line
        if "a" in fit.ci and 0 < a[0] < 1 and not 0 < lo <= hi < 1:  # the point inside, the interval out
            fit.warnings.append(
                f"a's 95% interval [{lo:.3g}, {hi:.3g}] reaches outside (0, 1): the IsoFLOP minima do "
                "not pin down the compute-optimal exponent."
            )
    return fit


def _line(P: Profiles, loss_RxGxM: np.ndarray, used_RxGxM: np.ndarray):
    """a and log N* at the mean log C of the line through every profile's vertex [R]."""
    with np.errstate(divide="ignore"):
        log_loss = np.where(P.count_GxM > 0, np.log(loss_RxGxM), 0.0)
    return joint_line(np.log(P.C_G), P.logN_GxM, log_loss, used_RxGxM * P.count_GxM)


def _isoflop_point(P, m: dict, g: int) -> dict:
    """Budget g's minimum: N*, the loss there, the runs used and the parabola in raw log N."""
    c2, c1, c0 = m["coef"][0, g]
    x0 = m["centre"][g]  # c2 (x - x0)^2 + c1 (x - x0) + c0 in powers of x
    used = m["used"][0, g]
    return {
        "C": float(P.C_G[g]), "N_star": float(np.exp(m["logN_star"][0, g])),
        "loss_star": float(m["loss_star"][0, g]), "points": [float(n) for n in np.exp(P.logN_GxM[g, used])],
        "runs": int(P.count_GxM[g, used].sum()),
        "coef": [float(c2), float(c1 - 2 * c2 * x0), float(c2 * x0**2 - c1 * x0 + c0)],
    }  # fmt: skip


def _approach2_bootstrap(fit: Fit, P, window: int | None, resamples: int, seed: int) -> None:
    sigma, dof, base = noise_level(P)
    fit.extra["noise"] = {"sigma_rel": sigma, "dof": dof}
    if not np.isfinite(sigma):
        fit.warnings.append(
            "No intervals: every budget has 3 sizes, so the loss noise cannot be estimated (4 or more "
            "sizes in some budget are needed)."
        )
        return
    losses = resampled_losses(P, base, sigma, resamples, seed)
    m = minima(P, losses, window)
    ok = m["code"] == OK
    a, log_n = _line(P, losses, m["used"])
    k = log_n - a * np.log(P.C_G).mean()
    keep = ok.sum(-1) >= 2
    samples = {"a": a[keep], "b": 1 - a[keep], "k_n": np.exp(k[keep]), "k_d": np.exp(-k[keep]) / 6}
    fit.set_bootstrap(samples, resamples, {"fewer than 2 usable budgets": int((~keep).sum())})
    for point in fit.extra["isoflop"]:
        g = int(np.flatnonzero(P.C_G == point["C"])[0])
        log_n = m["logN_star"][ok[:, g], g]
        lo, hi = np.exp(np.percentile(log_n, [2.5, 97.5])) if len(log_n) else (np.nan, np.nan)
        below, above = (float((m["code"][:, g] == c).mean()) for c in (BELOW, ABOVE))
        point["N_star_ci"] = [float(lo), float(hi)]
        point["ci_open"] = [below >= 0.025, above >= 0.025]  # the sampled sizes cut the interval
        point["usable_resamples"] = int(ok[:, g].sum())
