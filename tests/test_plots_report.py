"""Figures and reports from synthetic sweep directories generated from a known L(N, D)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from analysis.fit import frontier
from analysis.load import AnalysisError
from analysis.numbers import flops, interval, number
from analysis.plots import plot_all
from analysis.report import write_report
from analysis.sweep import analyse
from tests.test_emergence import logistic

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

# Hoffmann et al. 2022's published L(N, D) = E + A/N^alpha + B/D^beta.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
BUDGETS = (1e17, 1e18, 1e19)  # FLOPs
SIZE_FACTORS = (1 / 8, 1 / 3, 1.0, 3.0, 8.0)  # around each budget's optimum
EMERGENCE_LOG10_N = {0: 7.8, 3: 7.5}  # exact_match crosses 0.5 here, per shot count
LOSS_NOISE = 0.002  # relative
BOOTSTRAP = 40
FIGURES = (
    "loss_vs_compute",
    "isoflop",
    "compute_optimal",
    "loss_contours",
    "learning_curves_tokens",
    "learning_curves_flops",
    "emergence",
    "emergence_training",
)


def read_number(text: str) -> float:
    """A number as the report writes it, 1.5 or 6.31×10⁷, read back."""
    mantissa, _, power = text.strip().partition("×10")
    return float(mantissa) * 10 ** int(power.translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")) or 0)


def true_loss(n, d):
    return E + A / np.asarray(n, float) ** ALPHA + B / np.asarray(d, float) ** BETA


def true_n_opt(c: float) -> float:
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    return g * (c / 6) ** (BETA / (ALPHA + BETA))


def write_run(run_dir: Path, summary: dict, steps: int = 6) -> None:
    """summary.json, and metrics.jsonl with `steps` training rows and one validation row."""
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    rows = []
    for step in range(1, steps + 1):
        frac = step / steps
        tokens, flops = summary["tokens"] * frac, summary["flops"] * frac
        rows.append(
            {
                "step": step,
                "tokens": tokens,
                "flops": flops,
                "loss": float(true_loss(summary["params"], tokens)),
            }
        )
    rows.append(
        {"step": steps, "tokens": summary["tokens"], "flops": summary["flops"], "loss": 9.9, "split": "val"}
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_sweep(root: Path, budgets=BUDGETS, fewshot: bool = True) -> Path:
    """An IsoFLOP sweep of len(budgets) x 5 runs, one diverged run, learning curves, a fewshot.csv and
    a fewshot_training.csv (exact match at three checkpoints of each run)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    rows, shots_rows, training_rows = [], [], []
    for c in budgets:
        for f in SIZE_FACTORS:
            n = float(true_n_opt(c) * f)
            d = c / (6 * n)
            flops = 6 * n * d * (1 + 0.2 * np.sqrt(1e6 / n))  # attention adds more for small models
            loss = float(true_loss(n, d) * (1 + rng.normal(0, LOSS_NOISE)))
            run_id = f"C{c:.0e}_N{n:.2e}"
            summary = {"status": "completed", "params": n, "params_nonembedding": 0.9 * n, "tokens": d}
            summary |= {"flops": flops, "final_loss": loss * 1.01, "final_val_loss": loss}
            write_run(root / run_id, summary)
            rows.append({"run_id": run_id, **summary})
            for shots, mid in EMERGENCE_LOG10_N.items():
                p = float(logistic(np.log10(n), mid))
                values = {
                    "exact_match": float(np.clip(p + rng.normal(0, 0.005), 0, 1)),
                    "logprob_sum": -12 + 10 * p + rng.normal(0, 0.05),
                    "edit_distance": 3.0,  # flat: no midpoint to find
                }
                for metric, value in values.items():
                    shots_rows.append(
                        {"run_id": run_id, "params": n, "flops": flops, "tokens": d, "task": "copy"}
                        | {"shots": shots, "metric": metric, "value": value, "stderr": 0.005, "n": 500}
                    )
                for step, seen in ((10, 0.25), (20, 0.5), (40, 1.0)):
                    training_rows.append(
                        {"run_id": run_id, "params": n, "step": step, "flops": flops * seen}
                        | {"tokens": d * seen, "task": "copy", "shots": shots, "metric": "exact_match"}
                        | {"value": values["exact_match"] * seen, "stderr": 0.005, "n": 500}
                    )
    diverged = {"run_id": "diverged", "status": "diverged", "params": 1e9, "params_nonembedding": 9e8}
    diverged |= {"tokens": 1e8, "flops": 6e17, "final_loss": np.nan, "final_val_loss": np.nan}
    rows.append(diverged)
    write_run(root / "diverged", {**diverged, "final_loss": None, "final_val_loss": None})
    pd.DataFrame(rows).to_csv(root / "results.csv", index=False)
    if fewshot:
        pd.DataFrame(shots_rows).to_csv(root / "fewshot.csv", index=False)
        pd.DataFrame(training_rows).to_csv(root / "fewshot_training.csv", index=False)
    return root


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweeps") / "hoffmann")


@pytest.fixture(scope="module")
def report(sweep_dir, tmp_path_factory) -> dict[str, Path]:
    return write_report(sweep_dir, tmp_path_factory.mktemp("report"), bootstrap=BOOTSTRAP, seed=0)


def test_report_draws_every_figure_as_png_and_pdf_at_print_size(report):
    figures = report["figures"]
    assert sorted(p.name for p in figures.iterdir()) == sorted(
        f"{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")
    )
    for name in FIGURES:
        png, pdf = figures / f"{name}.png", figures / f"{name}.pdf"
        assert png.stat().st_size > 20_000 and pdf.stat().st_size > 8_000, name
        assert pdf.read_bytes().startswith(b"%PDF")
    height, width, _ = imread(figures / "loss_vs_compute.png").shape
    assert (width, height) == (900, 600)  # 6 x 4 inches at 150 dpi


def test_bare_csv_gets_the_fit_figures_and_logs_why_the_others_are_skipped(sweep_dir, tmp_path, caplog):
    csv = tmp_path / "table.csv"
    shutil.copy(sweep_dir / "results.csv", csv)
    with caplog.at_level(logging.WARNING, logger="analysis.plots"):
        paths = plot_all(csv, tmp_path / "figs", bootstrap=0)
    names = {p.stem for p in paths}
    assert names == {"loss_vs_compute", "isoflop", "compute_optimal", "loss_contours"}
    assert "skipped learning_curves: a bare results CSV has no run directories" in caplog.text
    assert "skipped emergence: a bare results CSV" in caplog.text


def test_single_budget_sweep_skips_isoflop_with_the_reason(tmp_path, caplog):
    sweep = make_sweep(tmp_path / "one", budgets=(1e18,), fewshot=False)
    with caplog.at_level(logging.WARNING, logger="analysis.plots"):
        names = {p.stem for p in plot_all(sweep, tmp_path / "figs", bootstrap=0)}
    assert "isoflop" not in names and "emergence" not in names
    assert "learning_curves_tokens" in names
    assert "skipped isoflop: approach2: need 2 or more IsoFLOP budgets" in caplog.text
    assert f"skipped emergence: '{sweep}' has no fewshot.csv" in caplog.text


def test_unusable_fewshot_table_skips_only_the_emergence_figure(sweep_dir, tmp_path, caplog):
    sweep = Path(shutil.copytree(sweep_dir, tmp_path / "s"))
    table = pd.read_csv(sweep / "fewshot.csv")
    table["value"] *= 100  # percent instead of fractions
    table.to_csv(sweep / "fewshot.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="analysis.plots"):
        names = {p.stem for p in plot_all(sweep, tmp_path / "figs", bootstrap=0)}
    assert names == set(FIGURES) - {"emergence"}
    assert "skipped emergence: few-shot table, task 'copy' 0-shot exact_match: value" in caplog.text


def test_frontier_is_the_best_run_per_budget_that_beats_every_cheaper_budget():
    runs = pd.DataFrame({"flops": [1.0, 1.1, 2, 4, 8, 16], "loss": [5.0, 4.8, 5.5, 4.0, 4.2, 3.0]})
    assert frontier(runs)["loss"].tolist() == [4.8, 4.0, 3.0]  # 1 and 1.1 FLOPs are one budget


def test_report_states_exclusions_and_tables_the_fitted_values(sweep_dir, report):
    md = report["markdown"].read_text()
    assert "15 completed runs fitted, 1 excluded" in md
    assert "1 run(s) excluded from every fit (not completed): diverged." in md
    sweep = analyse(sweep_dir, bootstrap=BOOTSTRAP, seed=0)
    chin = sweep.fits["chinchilla"]
    assert chin.params["alpha"] == pytest.approx(ALPHA, rel=0.1)  # 0.2% noise: the law comes back
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        lo, hi = chin.ci[name]
        assert f"| {name} | {number(chin.params[name])} | {interval(lo, hi)} |" in md
    a2 = sweep.fits["approach2"]
    assert re.search(rf"\| Approach 2 \| {re.escape(number(a2.params['a']))} \| ", md)
    assert abs(a2.params["a"] - BETA / (ALPHA + BETA)) < 0.05
    assert f"| Approach 2 | {flops(1e19)} |" in md  # allocation at the largest budget
    assert "## Does the law predict the largest compute?" in md and "| Approach 3 | 5 |" in md
    # two kept budgets make a frontier of two points: the report says why the power law is not checked
    assert "- Frontier law: 2 runs on the loss-compute frontier; need 3" in md
    assert "## What could not be drawn" not in md  # a full sweep supports every fit and figure


def test_report_states_the_compute_convention_and_the_bootstrap_drops(report):
    md = report["markdown"].read_text()
    assert "Compute C counts 6ND FLOPs (derived as 6 · params · tokens)" in md
    assert re.search(rf"Intervals from \d+ of {BOOTSTRAP} bootstrap resamples", md)


def test_learning_curves_count_6nd_flops_like_the_results_table(sweep_dir):
    sweep = analyse(sweep_dir, bootstrap=0)
    curves = sweep.curves
    np.testing.assert_allclose(curves["flops"], 6 * curves["params"] * curves["tokens"])
    assert sweep.fits["approach1"].extra["frontier"][0]["runs"] >= 2


def test_bare_csv_skips_approach1_with_the_reason(sweep_dir, tmp_path):
    csv = tmp_path / "results.csv"
    shutil.copy(sweep_dir / "results.csv", csv)
    sweep = analyse(csv, bootstrap=0)
    assert sweep.missing["approach1"].startswith("approach1: needs learning curves")


def test_report_lists_emergence_midpoints_near_the_true_scale(report):
    lines = report["markdown"].read_text().splitlines()
    for shots, true_mid in EMERGENCE_LOG10_N.items():
        for metric, kind in (("exact_match", "discrete"), ("logprob_sum", "continuous")):
            row = next(line for line in lines if line.startswith(f"| copy | {shots} | {metric} | {kind} |"))
            midpoint, ci_low, ci_high = (read_number(v) for v in row.split("|")[5:8])
            assert abs(np.log10(midpoint) - true_mid) < 0.1, (shots, metric)
            assert ci_low <= midpoint <= ci_high
    flat = next(line for line in lines if line.startswith("| copy | 0 | edit_distance | continuous |"))
    assert "| — | — | — | flat curve" in flat


def test_report_pages_reference_the_same_existing_figures(report):
    md, page = report["markdown"].read_text(), report["html"].read_text()
    md_images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    html_images = re.findall(r"<img src='([^']+)'", page)
    assert sorted(md_images) == sorted(html_images) == sorted(f"figures/{f}.png" for f in FIGURES)
    for rel in md_images:
        assert (report["markdown"].parent / rel).is_file()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<th>parameter</th>" in page and "http" not in page  # tables inline, nothing fetched from outside


def test_failed_report_leaves_the_previous_one_untouched(sweep_dir, report, tmp_path):
    sweep, out = Path(shutil.copytree(sweep_dir, tmp_path / "s")), tmp_path / "out"
    shutil.copytree(report["markdown"].parent, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    table = pd.read_csv(sweep / "results.csv")
    table.loc[0, "params"] = -5
    table.to_csv(sweep / "results.csv", index=False)
    with pytest.raises(AnalysisError, match="column 'params' has non-positive value -5"):
        write_report(sweep, out, bootstrap=0)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_unusable_training_table_is_logged_as_skipped(sweep_dir, tmp_path, caplog):
    sweep = Path(shutil.copytree(sweep_dir, tmp_path / "s"))
    pd.read_csv(sweep / "fewshot_training.csv").drop(columns="step").to_csv(
        sweep / "fewshot_training.csv", index=False
    )
    with caplog.at_level(logging.WARNING, logger="analysis.plots"):
        names = {p.stem for p in plot_all(sweep, tmp_path / "figs", bootstrap=0)}
    assert names == set(FIGURES) - {"emergence_training"}
    assert "skipped emergence_training: " in caplog.text and "missing column 'step'" in caplog.text
