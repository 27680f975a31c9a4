"""IsoFLOP budgets: runs grouped by compute, the best run of each budget, whole budgets held out, and
approach 2's profiles, a parabola in log N per budget whose minimum is N*(C) (Hoffmann et al. 2022, 3.2).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import optimize
from analysis.load import AnalysisError


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


def parabolas(logN_GxM, loss_GxM, w_RxGxM):
    """Weighted least-squares quadratics loss = c2 logN^2 + c1 logN + c0, batched: [R, G, 3]."""
    X = np.stack([logN_GxM**2, logN_GxM, np.ones_like(logN_GxM)], axis=-1)  # [G, M, 3]
    XtWX = np.einsum("gmi,rgm,gmj->rgij", X, w_RxGxM, X)
    XtWy = np.einsum("gmi,rgm,gm->rgi", X, w_RxGxM, loss_GxM)
    with np.errstate(all="ignore"):
        return np.linalg.solve(XtWX + 1e-12 * np.eye(3), XtWy[..., None])[..., 0]


def vertices(coef_RxGx3, logN_GxM, w_RxGxM) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """log N at each parabola's minimum, and per failure reason a [R, G] mask of where it fails."""
    with np.errstate(all="ignore"):
        logN_star = -coef_RxGx3[..., 1] / (2 * coef_RxGx3[..., 0])
    sampled = w_RxGxM > 0
    lo = np.where(sampled, logN_GxM, np.inf).min(axis=-1)
    hi = np.where(sampled, logN_GxM, -np.inf).max(axis=-1)
    concave = ~(coef_RxGx3[..., 0] > 0)
    outside = ~concave & ~((logN_star >= lo) & (logN_star <= hi))
    return logN_star, {"no minimum (concave profile)": concave, "minimum outside the sampled sizes": outside}


def isoflop_profiles(runs: pd.DataFrame) -> tuple[list[pd.DataFrame], list[dict]]:
    """IsoFLOP groups whose parabola has a minimum inside their sizes, and the excluded ones with a reason."""
    labels = isoflop_groups(runs)
    kept, excluded = [], []
    for label in np.unique(labels):
        g = runs[labels == label]
        C, logN = float(g["flops"].median()), np.log(g["params"].to_numpy(float))
        if len(np.unique(logN)) < 3:
            excluded.append({"C": C, "reason": f"{len(np.unique(logN))} distinct sizes; a parabola needs 3"})
            continue
        w = np.ones((1, 1, len(g)))
        coef = parabolas(logN[None], g["loss"].to_numpy(float)[None], w)
        logN_star, failures = vertices(coef, logN[None], w)
        reason = next((r for r, mask in failures.items() if mask[0, 0]), None)
        if reason is None:
            kept.append(g)
        else:
            at = f" (N={np.exp(logN_star[0, 0]):.3g} vs {np.exp(logN.min()):.3g}-{np.exp(logN.max()):.3g})"
            excluded.append({"C": C, "reason": reason + (at if "outside" in reason else "")})
    return kept, excluded


def isoflop_refusal(excluded: list[dict], kept: int) -> AnalysisError:
    """Approach 2's error when fewer than 2 budgets are usable, with the reason each one was excluded."""
    why = "; ".join(f"C={e['C']:.3g}: {e['reason']}" for e in excluded)
    return AnalysisError(
        f"approach2: need 2 or more IsoFLOP budgets with a minimum inside 3 or more distinct sizes, found "
        f"{kept}" + (f" ({why})" if why else "")
    )


def stratified_weights(groups: list[pd.DataFrame], M: int, resamples: int, seed: int) -> np.ndarray:
    """Runs resampled within each budget, each group keeping 3 or more distinct sizes: [R, G, M]."""
    rng = np.random.default_rng(seed)
    w = np.zeros((resamples, len(groups), M))
    for gi, g in enumerate(groups):
        sizes = g["params"].to_numpy(float)
        w[:, gi, : len(g)] = optimize.bootstrap_weights(len(g), resamples, rng, labels=sizes, min_distinct=3)
    return w
