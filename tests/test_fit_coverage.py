"""Bootstrap intervals cover the truth: 50 seeded trials per law, realistic noise (slow)."""

import numpy as np
import pytest

from analysis import fit as fits

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

TRIALS = 50


def _coverage(fit_trial, truth: dict) -> dict[str, float]:
    hits = {k: 0 for k in truth}
    for seed in range(TRIALS):
        fit = fit_trial(seed)
        for k, v in truth.items():
            lo, hi = fit.ci[k]
            hits[k] += lo <= v <= hi
    return {k: h / TRIALS for k, h in hits.items()}


@pytest.mark.slow
def test_power_law_intervals_cover_the_truth_in_90_percent_of_trials():
    truth = {"E": 1.9, "A": 35.0, "alpha": 0.1}
    x = np.geomspace(1e15, 1e19, 20)  # FLOPs of a CPU-to-GPU sweep

    def trial(seed):
        rng = np.random.default_rng(1000 + seed)
        loss = (truth["E"] + truth["A"] * x ** -truth["alpha"]) * np.exp(0.005 * rng.standard_normal(len(x)))
        return fits.fit_power(x, loss, "flops", bootstrap=200, seed=seed)

    coverage = _coverage(trial, truth)
    print("power coverage", coverage)
    assert all(c >= 0.9 for c in coverage.values()), coverage


@pytest.mark.slow
def test_chinchilla_intervals_cover_the_truth_in_90_percent_of_trials():
    truth = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}

    def trial(seed):
        rng = np.random.default_rng(2000 + seed)
        N, D = 10 ** rng.uniform(7, 10, 80), 10 ** rng.uniform(9, 12, 80)
        clean = truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"]
        loss = clean * np.exp(0.01 * rng.standard_normal(len(N)))
        return fits.fit_chinchilla(N, D, loss, bootstrap=200, seed=seed)

    coverage = _coverage(trial, truth)
    print("chinchilla coverage", coverage)
    assert all(c >= 0.9 for c in coverage.values()), coverage
