"""Emergence curves and logistic midpoints on synthetic few-shot tables with known midpoints."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from analysis.emergence import (
    emergence_curves,
    emergence_midpoints,
    fit_logistic,
    metric_kind,
    metric_order,
)
from analysis.load import AnalysisError

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

TRUE_LOG10_MID = {0: 7.4, 4: 7.0}  # exact_match midpoint in log10(params), per shot count
SLOPE = 2.5  # per decade


def logistic(log10_n: np.ndarray, mid: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-SLOPE * (log10_n - mid)))


def make_fewshot(params: np.ndarray, tokens_per_param: float = 20.0, noise: float = 0.01, seed: int = 0):
    """Few-shot long table: exact_match and its continuous counterparts follow one logistic in log10 N."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(params):
        for shots, mid in TRUE_LOG10_MID.items():
            p = float(logistic(np.log10(n), mid))
            values = {
                "exact_match": np.clip(p + rng.normal(0, noise), 0.0, 1.0),
                "logprob_sum": -20.0 + 15.0 * p + rng.normal(0, 15 * noise),
                "edit_distance": 6.0 - 5.0 * p + rng.normal(0, 5 * noise),
                "answer_entropy": 0.7 + rng.normal(0, noise / 10),  # unknown name, flat
            }
            for metric, value in values.items():
                rows.append(
                    {
                        "run_id": f"run{i:02d}",
                        "params": n,
                        "flops": 6.0 * n * tokens_per_param * n,
                        "tokens": tokens_per_param * n,
                        "task": "addition",
                        "shots": shots,
                        "metric": metric,
                        "value": value,
                        "stderr": noise,
                        "n": 200,
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture
def fewshot() -> pd.DataFrame:
    return make_fewshot(np.repeat(np.logspace(6, 9, 7), 2))


def row(table: pd.DataFrame, shots: int, metric: str) -> pd.Series:
    return table[(table["shots"] == shots) & (table["metric"] == metric)].iloc[0]


def test_exact_match_midpoint_is_recovered_inside_its_interval(fewshot):
    table = emergence_midpoints(fewshot, x="params", bootstrap=200, seed=0)
    for shots, true_mid in TRUE_LOG10_MID.items():
        r = row(table, shots, "exact_match")
        assert r["reason"] == ""
        assert abs(np.log10(r["midpoint"]) - true_mid) < 0.05
        assert r["ci_low"] < r["midpoint"] < r["ci_high"]
        assert r["ci_low"] <= 10**true_mid <= r["ci_high"]
        assert (
            np.log10(r["ci_high"] / r["ci_low"]) < 0.3
        )  # 14 nearly noiseless runs pin it to a fraction of a decade
        assert r["slope_per_decade"] == pytest.approx(SLOPE, rel=0.15)
        assert (r["lo"], r["hi"]) == (0.0, 1.0)  # exact match keeps its bounds fixed


def test_continuous_counterparts_fit_their_own_floor_and_ceiling(fewshot):
    table = emergence_midpoints(fewshot, bootstrap=100)
    logprob = row(table, 0, "logprob_sum")
    assert abs(np.log10(logprob["midpoint"]) - TRUE_LOG10_MID[0]) < 0.1
    assert logprob["lo"] == pytest.approx(-20.0, abs=1.0) and logprob["hi"] == pytest.approx(-5.0, abs=1.0)
    edit = row(table, 4, "edit_distance")  # decreasing with scale: the ceiling is below the floor
    assert abs(np.log10(edit["midpoint"]) - TRUE_LOG10_MID[4]) < 0.1
    assert edit["hi"] < edit["lo"]


def test_table_puts_discrete_metric_beside_continuous_ones_and_unknown_names_are_continuous(fewshot):
    table = emergence_midpoints(fewshot, bootstrap=0)
    assert list(table[table["shots"] == 0]["metric"]) == [
        "exact_match",
        "edit_distance",
        "logprob_sum",
        "answer_entropy",
    ]
    kinds = dict(zip(table["metric"], table["kind"], strict=True))
    assert kinds == {
        "exact_match": "discrete",
        "edit_distance": "continuous",
        "logprob_sum": "continuous",
        "answer_entropy": "continuous",
    }
    assert metric_kind("token_accuracy") == "continuous"
    assert metric_order(["zeta", "logprob_sum", "exact_match", "alpha"]) == [
        "exact_match",
        "logprob_sum",
        "alpha",
        "zeta",
    ]
    assert table["ci_low"].isna().all()  # no bootstrap asked, no interval invented


def test_flat_curve_gives_nan_with_reason(fewshot):
    table = emergence_midpoints(fewshot, bootstrap=50)
    flat = row(table, 0, "answer_entropy")
    assert np.isnan(flat["midpoint"]) and np.isnan(flat["ci_low"])
    assert flat["reason"].startswith("flat curve")
    zeros = fit_logistic(np.logspace(6, 9, 7), np.zeros(7), bounds=(0.0, 1.0))
    assert np.isnan(zeros.midpoint) and zeros.reason.startswith("flat curve")


def test_midpoint_outside_observed_range_is_not_identifiable():
    params = np.logspace(6, 8, 9)
    late = fit_logistic(params, logistic(np.log10(params), 9.0), bounds=(0.0, 1.0), x_name="params")
    assert np.isnan(late.midpoint) and "above the largest observed params" in late.reason
    early = fit_logistic(params, logistic(np.log10(params), 5.0), bounds=(0.0, 1.0), x_name="params")
    assert np.isnan(early.midpoint) and "below the smallest observed params" in early.reason


def test_curve_without_sigmoid_shape_or_with_too_few_scales_is_not_identifiable():
    params = np.logspace(6, 9, 8)
    linear = fit_logistic(params, -10.0 + np.log10(params))  # straight line in log scale: any midpoint fits
    assert np.isnan(linear.midpoint) and linear.reason.startswith("no sigmoid shape")
    few = fit_logistic(params[:3], [-9.0, -5.0, -1.0], x_name="params")
    assert np.isnan(few.midpoint) and few.reason == "only 3 distinct params values; need 4 for a logistic fit"


def test_compute_axis_gives_the_midpoint_in_flops(fewshot):
    table = emergence_midpoints(fewshot, x="flops", bootstrap=50)
    r = row(table, 0, "exact_match")
    true_flops = 6.0 * 20.0 * (10 ** TRUE_LOG10_MID[0]) ** 2  # flops = 120 N^2 in this table
    assert abs(np.log10(r["midpoint"] / true_flops)) < 0.1
    assert r["x"] == "flops"


def test_bootstrap_is_seeded_and_vectorized_fast():
    params = np.repeat(np.logspace(6, 9, 5), 2)
    rng = np.random.default_rng(3)
    value = np.clip(logistic(np.log10(params), 7.5) + rng.normal(0, 0.03, params.size), 0, 1)
    start = time.perf_counter()
    a = fit_logistic(params, value, bounds=(0.0, 1.0), bootstrap=200, seed=7)
    elapsed = time.perf_counter() - start
    again = fit_logistic(params, value, bounds=(0.0, 1.0), bootstrap=200, seed=7)
    other = fit_logistic(params, value, bounds=(0.0, 1.0), bootstrap=200, seed=8)
    assert elapsed < 1.0
    assert a.ci == again.ci and a.ci != other.ci
    assert a.boot_log10_mid.shape == (200,)
    assert np.allclose(a.predict([10**a.m]), 0.5)


def test_repeated_evaluations_of_a_run_are_averaged(fewshot):
    doubled = pd.concat([fewshot, fewshot.assign(value=fewshot["value"] + 0.1)], ignore_index=True)
    curves = emergence_curves(doubled)
    assert len(curves) == len(emergence_curves(fewshot))
    one = curves[(curves["run_id"] == "run00") & (curves["metric"] == "logprob_sum") & (curves["shots"] == 0)]
    src = fewshot[
        (fewshot["run_id"] == "run00") & (fewshot["metric"] == "logprob_sum") & (fewshot["shots"] == 0)
    ]
    assert one["value"].iloc[0] == pytest.approx(src["value"].iloc[0] + 0.05)
    assert one["stderr"].iloc[0] == pytest.approx(0.01 / np.sqrt(2))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop(columns="metric"), "missing column 'metric'"),
        (lambda df: df.assign(value=df["value"].astype(object).where(df.index != 3, "n/a")), "non-numeric"),
        (lambda df: df.assign(params=df["params"].where(df.index != 5, -1.0)), "non-positive"),
        (
            lambda df: df.assign(value=df["value"] * 100),
            "task 'addition' 0-shot exact_match: .* outside the metric",
        ),
    ],
)
def test_bad_tables_raise_one_line_analysis_errors(fewshot, change, message):
    with pytest.raises(AnalysisError, match=message) as err:
        emergence_midpoints(change(fewshot), bootstrap=0)
    assert "\n" not in str(err.value)
