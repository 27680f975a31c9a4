"""The two-step downstream prediction (task loss from scale, accuracy from task loss) on a known ladder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.ladder import holdout_largest, predict
from analysis.load import AnalysisError

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

SIZES = np.logspace(7, 10, 8)
CHANCE, N_EXAMPLES = 0.25, 1000


def ladder_table(seed: int) -> pd.DataFrame:
    """acc = chance + (1 - chance) sigmoid(-4 (L - 2.6)), L = 1.8 + 2 (N / 1e7)^-0.3, binomial noise."""
    rng = np.random.default_rng(seed)
    loss = 1.8 + 2.0 * (SIZES / 1e7) ** -0.3
    p = CHANCE + (1 - CHANCE) / (1 + np.exp(4.0 * (loss - 2.6)))
    acc = rng.binomial(N_EXAMPLES, p) / N_EXAMPLES
    nll = loss + rng.normal(0, 0.01, len(SIZES))
    rows = [(f"m{i}", n, "acc", a) for i, (n, a) in enumerate(zip(SIZES, acc, strict=True))]
    rows += [(f"m{i}", n, "nll", v) for i, (n, v) in enumerate(zip(SIZES, nll, strict=True))]
    table = pd.DataFrame(rows, columns=["run_id", "params", "metric", "value"])
    return table.assign(group="", task="mc", shots=0, stderr=np.nan, n=N_EXAMPLES, chance=CHANCE)


def test_held_out_largest_model_is_predicted_within_its_interval():
    row = holdout_largest(ladder_table(0), "params", {"mc": "acc"}).iloc[0]
    assert row["ci_low"] <= row["observed"] <= row["ci_high"]
    assert abs(row["predicted"] - row["observed"]) < 0.05
    assert row["params"] == SIZES[-1]


def test_prediction_beyond_three_decades_is_refused():
    with pytest.raises(AnalysisError, match="outside 3 decades"):
        predict(ladder_table(0), "params", {"mc": "acc"}, 1e14)


@pytest.mark.slow
def test_held_out_accuracy_lies_in_its_interval_in_90_percent_of_trials():
    inside = [
        holdout_largest(ladder_table(s), "params", {"mc": "acc"}, seed=s)["inside"].iloc[0] for s in range(50)
    ]
    assert np.mean(inside) >= 0.9, np.mean(inside)
