"""Approach 2 against a known L(N, D): IsoFLOP grids drawn around the true optimum with 0.5-1% noise,
centred, lopsided (the optimum near the second of five sizes) and wide (1.5 decades), 50 seeded
trials each. `python -m tests.test_isoflop_simulation` prints the table the README quotes;
`python -m tests.test_isoflop_simulation DIR`, with DIR holding an earlier lmscale's `analysis` package
(`git archive 3d3bd2a analysis | tar -x -C DIR`: each budget's own vertex, then a line through them),
prints it for that method.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import fit as fits

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

# Hoffmann et al. 2022's published L(N, D); N*(C) grows as C^a with a = beta / (alpha + beta).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TRUE_A = BETA / (ALPHA + BETA)
BUDGETS = np.geomspace(1e18, 1e22, 9)  # FLOPs, half a decade apart, like published IsoFLOP sweeps
# name: (sizes, decades spanned, grid index of the optimum, jitter of the grid in steps)
GRIDS = {"centred": (5, 1.0, 2, 0.5), "lopsided": (5, 1.0, 1, 0.25), "wide": (7, 1.5, 3, 0.5)}
TRIALS, RESAMPLES = 50, 200


def n_opt(C: float) -> float:
    G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return G * (C / 6) ** TRUE_A


def isoflop_grid(grid: str, noise: float, seed: int) -> pd.DataFrame:
    """One IsoFLOP sweep: per budget, sizes evenly in log N around the true optimum, shifted at random."""
    sizes, decades, at, jitter = GRIDS[grid]
    rng = np.random.default_rng(seed)
    step = decades / (sizes - 1)
    rows = []
    for C in BUDGETS:
        shift = rng.uniform(-jitter, jitter)
        log10_n = np.log10(n_opt(C)) + step * (np.arange(sizes) - at + shift)
        N = 10.0**log10_n
        loss = E + A / N**ALPHA + B / (C / (6 * N)) ** BETA
        loss *= np.exp(noise * rng.standard_normal(sizes))
        rows += [{"params": n, "flops": C, "loss": v} for n, v in zip(N, loss, strict=True)]
    return pd.DataFrame(rows)


def study(approach2, grid: str, noise: float) -> dict:
    """Median |a - a_true|, mean bias, and how often the 95% interval holds a_true, over TRIALS."""
    errors, hits = [], 0
    for seed in range(TRIALS):
        fit = approach2(isoflop_grid(grid, noise, seed), bootstrap=RESAMPLES, seed=seed)
        errors.append(fit.params["a"] - TRUE_A)
        lo, hi = fit.ci.get("a", (np.nan, np.nan))
        hits += lo <= TRUE_A <= hi
    errors = np.array(errors)
    return {
        "median_error": float(np.median(errors)), "mean_error": float(errors.mean()),
        "median_abs_error": float(np.median(np.abs(errors))), "coverage": hits / TRIALS,
    }  # fmt: skip


# The lopsided grid at 1% noise is the hard case. A budget's vertex taken on its own falls below its
# smallest size more often at large C, where the profile is flatter against the noise (9% of budgets at
# 1e18 FLOPs, 30% at 1e22); excluding those budgets left minima displaced upwards and tilted a by
# +0.013. The parabola's shape is not the cause: without noise its bias is below 0.0005 on every grid,
# and the known IsoFLOP form E + A/N^alpha + B/D^beta in place of the parabola gave the same +0.014. The
# joint fit (`analysis.isoflop_line`) needs no vertex per budget, so nothing is selected on the noise.


def test_joint_line_recovers_vertices_on_a_line_even_past_a_budgets_sizes():
    from analysis.isoflop_line import joint_line

    logC = np.log(np.geomspace(1e18, 1e21, 4))
    vertex = 2.0 + 0.45 * (logC - logC.mean())
    x = vertex[:, None] + np.linspace(-1.5, 1.5, 5)
    x[-1] = vertex[-1] + np.linspace(0.5, 2.5, 5)  # every size of the top budget above its minimum
    logL = 0.7 + 0.03 * (x - vertex[:, None]) ** 2
    a, m = joint_line(logC, x, logL[None], np.ones((1, *x.shape)))
    assert a[0] == pytest.approx(0.45, abs=1e-5) and m[0] == pytest.approx(2.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("grid, noise", [(g, n) for n in (0.005, 0.01) for g in GRIDS])
def test_approach2_exponent_is_accurate_and_its_interval_covers_the_truth(grid, noise):
    result = study(fits.approach2, grid, noise)
    print(grid, noise, result)
    assert abs(result["median_error"]) < 0.01, result
    assert result["coverage"] >= 0.9, result


if __name__ == "__main__":  # the table: grid x method, bias and coverage
    import sys

    methods = {
        "local window (default)": fits.approach2,
        "full parabola": lambda runs, **k: fits.approach2(runs, window=None, **k),
    }
    if len(sys.argv) > 1:  # a checkout of an earlier lmscale's analysis package, for "before"
        sys.path.insert(0, sys.argv[1])
        import importlib

        for name in [m for m in sys.modules if m.startswith("analysis")]:
            del sys.modules[name]
        methods = {"before": importlib.import_module("analysis.fit").approach2}
    for noise in (0.005, 0.01):
        for grid in GRIDS:
            for name, method in methods.items():
                r = study(method, grid, noise)
                cells = [f"{r[k]:+.4f}" for k in ("median_error", "mean_error")]
                cells += [f"{r['median_abs_error']:.4f}", f"{r['coverage']:.0%}"]
                print(f"| {grid} | {noise:.1%} | {name} | " + " | ".join(cells) + " |", flush=True)
