"""Fitting speed against scipy: the Approach-3 multistart fit and its bootstrap, in one process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import fit as fits
from analysis import laws
from analysis.load import tokens_from_compute
from analysis.optimize import huber_np

# Hoffmann et al.'s published law, used to draw a 240-point stand-in when no data is given.
PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def synthetic_points(n: int = 240, seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    """IsoFLOP-style points (N, D) from the published law with multiplicative noise."""
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7.5, 10.5, n)
    D = 10 ** rng.uniform(9, 12, n)
    p = PUBLISHED
    loss = p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]
    return pd.DataFrame({"params": N, "tokens": D, "loss": loss * np.exp(noise * rng.standard_normal(n))})


def reference_points(csv: Path) -> pd.DataFrame:
    """The Chinchilla replication's 245 points, less the 5 highest losses (Besiroglu et al. 2024)."""
    df = pd.read_csv(csv).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy(float)
    D = tokens_from_compute(df["Training FLOP"].to_numpy(float), N)
    return pd.DataFrame({"params": N, "tokens": D, "loss": df["loss"]})


def numpy_objective(points: pd.DataFrame, delta: float = 1e-3):
    """The Approach-3 objective of `laws.chinchilla_log_pred` in plain numpy, for scipy."""
    logN, logD = np.log(points["params"].to_numpy(float)), np.log(points["tokens"].to_numpy(float))
    logL = np.log(points["loss"].to_numpy(float))

    def objective(t):
        pred = np.logaddexp(np.logaddexp(t[0] - t[3] * logN, t[1] - t[4] * logD), t[2])
        return huber_np(pred - logL, delta).sum()

    return objective


def _scipy_seconds_per_start(points: pd.DataFrame, starts: np.ndarray, delta: float) -> float:
    """scipy L-BFGS-B with finite-difference gradients, one start at a time (the published loop)."""
    from scipy.optimize import minimize

    objective = numpy_objective(points, delta)
    t0 = time.perf_counter()
    for s in starts:
        minimize(objective, s, method="L-BFGS-B")
    return (time.perf_counter() - t0) / len(starts)


def bench_fit(
    points: pd.DataFrame, scipy_starts: int = 450, bootstrap: int = 1000, seed: int = 0, rounds: int = 3
) -> dict:
    """The batched fit and the scipy loop timed in alternation, `rounds` times (scipy on its share of
    `scipy_starts` random starts each round); medians, and each round's ratio to show the noise."""
    grid = laws.hoffmann_grid()
    N, D, L = points["params"], points["tokens"], points["loss"]
    t0 = time.perf_counter()
    fits.fit_chinchilla(N, D, L)
    cold = time.perf_counter() - t0
    subset = grid[np.random.default_rng(seed).choice(len(grid), scipy_starts, replace=False)]
    warm, per_start = [], []
    for starts in np.array_split(subset, min(rounds, scipy_starts)):
        t0 = time.perf_counter()
        fit = fits.fit_chinchilla(N, D, L)
        warm.append(time.perf_counter() - t0)
        per_start.append(_scipy_seconds_per_start(points, starts, 1e-3))
    jax_s, scipy_total = float(np.median(warm)), float(np.median(per_start)) * len(grid)
    t0 = time.perf_counter()
    fits.fit_chinchilla(N, D, L, bootstrap=bootstrap, seed=seed)
    boot = time.perf_counter() - t0
    return {
        "points": len(points),
        "starts": len(grid),
        "objective": fit.objective,
        "jax_fit_s": jax_s,
        "jax_fit_cold_s": cold,
        "scipy_s_per_start": float(np.median(per_start)),
        "scipy_starts_timed": scipy_starts,
        "scipy_loop_s_estimated": scipy_total,
        "speedup_vs_scipy": scipy_total / jax_s,
        "speedup_per_round": [p * len(grid) / w for p, w in zip(per_start, warm, strict=True)],
        "speedup_vs_scipy_cold": scipy_total / cold,
        "bootstrap_resamples": bootstrap,
        "bootstrap_s": boot,
    }
