"""A sweep read for analysis: its runs, learning curves and few-shot tables, every law those allow, the
emergence midpoints, and a one-line reason for each piece that is missing. Plots and the report draw
from one `Sweep`, so they never fit twice or disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.emergence import emergence_midpoints
from analysis.fit import approach1, approach2, fit_chinchilla, fit_frontier
from analysis.laws import Fit
from analysis.load import (
    AnalysisError,
    Results,
    load_curves,
    load_fewshot,
    load_fewshot_training,
    load_results,
)
from analysis.tuned import Tuned, tune


@dataclasses.dataclass
class Sweep:
    """What a sweep directory or results CSV provides, the fits it supports, and why anything is missing."""

    results: Results
    curves: pd.DataFrame | None
    fewshot: pd.DataFrame | None
    fits: dict[str, Fit]  # keys: power (L(C) on the frontier), chinchilla, approach1, approach2
    midpoints: dict[str, pd.DataFrame]  # emergence midpoints against "params" and "flops"
    missing: dict[str, str]  # piece -> one-line reason
    training: pd.DataFrame | None = None  # few-shot metrics at each evaluated checkpoint
    tuned: Tuned | None = None  # runs reduced to the best tuned setting at each (N, D): results.runs


def _try(missing: dict[str, str], key: str, make):
    try:
        return make()
    except AnalysisError as e:
        missing[key] = str(e)
        return None


def analyse(
    source: str | Path, bootstrap: int = 200, seed: int = 0, columns: dict | None = None,
    tuned_over: Sequence[str] | None = None,
) -> Sweep:  # fmt: skip
    """Load a sweep directory or CSV, fit every law its runs allow and the emergence midpoints; runs
    that differ in tuned settings at one (N, D) are reduced to the best (`analysis.tuned`) first."""
    results = load_results(source, **(columns or {}), require=("params", "tokens", "flops", "loss"))
    tuned = tune(results, tuned_over)
    if tuned is not None:
        results = dataclasses.replace(results, runs=tuned.runs, lines=None)
    runs, missing, fits = results.runs, {}, {}
    source = Path(source)
    curves = fewshot = training = None
    if source.is_dir():
        curves = _try(missing, "curves", lambda: load_curves(source, (columns or {}).get("loss_col")))
        if (source / "fewshot_training.csv").is_file():  # absent unless runs kept earlier checkpoints
            training = _try(missing, "emergence_training", lambda: load_fewshot_training(source))
        if (source / "fewshot.csv").is_file():
            fewshot = _try(missing, "fewshot", lambda: load_fewshot(source))
        else:
            missing["fewshot"] = f"'{source}' has no fewshot.csv"
    else:
        missing["curves"] = missing["fewshot"] = "a bare results CSV has no run directories or fewshot.csv"
    fits["power"] = _try(missing, "power", lambda: fit_frontier(runs, bootstrap, seed))
    fits["chinchilla"] = _try(
        missing,
        "chinchilla",
        lambda: fit_chinchilla(runs["params"], runs["tokens"], runs["loss"], bootstrap, seed),
    )
    fits["approach1"] = _try(missing, "approach1", lambda: approach1(curves if curves is not None else runs))
    fits["approach2"] = _try(missing, "approach2", lambda: approach2(runs, bootstrap, seed))
    fits = {k: v for k, v in fits.items() if v is not None}
    midpoints = {}
    if fewshot is not None:
        for x in ("params", "flops"):
            table = _try(missing, "emergence", lambda x=x: emergence_midpoints(fewshot, x, bootstrap, seed))
            if table is not None:
                midpoints[x] = table
    return Sweep(results, curves, fewshot, fits, midpoints, missing, training, tuned)
