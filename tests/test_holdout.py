"""The held-out prediction flags a law that misses the largest compute on one side: its interval (the
spread of the refitted law) then cannot cover what it predicts."""

import numpy as np
import pandas as pd
import pytest

from analysis.holdout import predict_held_out

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

TRUE = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}


def _runs(noise: float, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP profiles of L(N, D) = E + A/N^alpha + B/D^beta, 7 sizes at each of 5 budgets, with
    multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.geomspace(1e18, 1e20, 5):
        for N in 0.1 * (C / 6) ** 0.5 * np.geomspace(0.25, 4, 7):
            D = C / (6 * N)
            loss = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            rows.append({"params": N, "tokens": D, "flops": C, "loss": loss * (1 + noise * rng.normal())})
    return pd.DataFrame(rows)


def test_a_law_that_holds_is_not_flagged_and_one_that_misses_the_largest_compute_is():
    runs = _runs(noise=0.002)
    held = predict_held_out(runs, bootstrap=40, seed=0)
    assert held.table.query("law == 'Approach 3'")["rel_error"].abs().max() < 0.02
    assert not [w for w in held.warnings() if w.startswith("Approach 3")]

    broken = runs.copy()
    top = broken["flops"] == broken["flops"].max()
    broken.loc[top, "loss"] *= 0.93  # the largest budget learns something the smaller ones did not
    held = predict_held_out(broken, bootstrap=40, seed=0)
    below, above, n = held.misses()["Approach 3"]
    assert (below, above, n) == (7, 0, 7)
    (warning,) = [w for w in held.warnings() if w.startswith("Approach 3")]
    assert "all 7 held-out runs lie below its 95% interval" in warning and "over-predicts" in warning

    scattered = runs.copy()
    scattered.loc[top, "loss"] *= np.where(np.arange(top.sum()) % 2, 1.07, 0.93)  # off both ways
    held = predict_held_out(scattered, bootstrap=40, seed=0)
    below, above, n = held.misses()["Approach 3"]
    assert below >= 2 and above >= 2 and below + above > n / 2
    (warning,) = [w for w in held.warnings() if w.startswith("Approach 3")]
    assert (
        f"{below + above} of 7 held-out runs lie outside its 95% interval ({below} below, {above} above)"
        in warning
    )
