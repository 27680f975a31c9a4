"""What `lmscale fit` says about its fits: per-budget IsoFLOP minima, excluded budgets and their reasons,
resample counts, the frontier a power law in compute is fitted to, unidentified parameters, bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.cli import _print_fit, main
from analysis.fit import fit_frontier
from analysis.laws import Fit, flag_bounds
from analysis.load import load_results
from analysis.report_summary import warnings
from analysis.report_tables import fit_table
from analysis.sweep import Sweep
from tests.test_isoflop_simulation import isoflop_grid

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py


@pytest.fixture
def isoflop_csv(tmp_path):
    """9 IsoFLOP budgets of 7 sizes; the largest budget keeps only sizes above its optimum."""
    runs = isoflop_grid("wide", 0.005, seed=1)
    top = runs["flops"] == runs["flops"].max()
    runs = runs[~top | (runs["params"] > runs.loc[top, "params"].median())].assign(status="completed")
    path = tmp_path / "isoflop.csv"
    runs.to_csv(path, index=False)
    return path


def test_approach2_prints_and_writes_each_budgets_minimum_the_excluded_ones_and_resample_counts(
    isoflop_csv, tmp_path, capsys
):
    out = tmp_path / "fit.json"
    assert (
        main(["fit", str(isoflop_csv), "--law", "approach2", "--bootstrap", "100", "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "objective" not in text  # approach 2 has none, not nan
    assert "95% CI from 100 of 100 bootstrap resamples (none dropped)" in text
    assert "a = 0.4" in text and "(100/100 resamples kept)" in text
    assert text.count("N* = ") == 8 and text.count("usable in") == 8
    result = json.loads(out.read_text())
    (excluded,) = result["excluded"]
    assert (
        excluded["C"] == 1e22
        and excluded["reason"] in ("no minimum (concave profile)",)
        or (excluded["reason"].startswith("minimum outside the sampled sizes (beyond the smallest size"))
    )
    assert f"C = 1×10²²: excluded, {excluded['reason']}" in text
    assert result["bootstrap"] == {"resamples": 100, "kept": 100, "dropped": {}}
    assert len(result["isoflop"]) == 8 and result["window"] == 2
    for p in result["isoflop"]:
        lo, hi = p["N_star_ci"]
        assert lo <= p["N_star"] <= hi and len(p["points"]) == 5 and p["loss_star"] > 0
    assert result["warnings"] == []


def test_approach2_full_window_uses_every_size(isoflop_csv, tmp_path):
    out = tmp_path / "fit.json"
    assert (
        main(["fit", str(isoflop_csv), "--law", "approach2", "--isoflop-window", "full", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["window"] == "full" and {len(p["points"]) for p in result["isoflop"]} == {7}


def test_isoflop_figure_draws_excluded_budgets_hollow_with_their_reason(isoflop_csv, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, out_dir, name: figures.append(fig) or [])
    from analysis.fit import approach2

    runs = load_results(isoflop_csv).runs
    plots.plot_isoflop(runs, approach2(runs), tmp_path)
    ax, bar = figures[0].axes  # the budgets are read off a colour bar of compute
    assert bar.get_ylabel() == "Compute budget C (FLOPs)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    excluded = [label for label in labels if label.startswith("excluded, ")]
    assert len(excluded) == 1 and excluded[0].endswith(": C = $1\\times10^{22}$")  # the reason, its budgets
    assert not any(label.startswith("C = ") for label in labels)  # no legend entry per budget
    hollow = [c for c in ax.collections if c.get_label() == excluded[0]][0]
    assert len(hollow.get_offsets()) == 3 and (hollow.get_facecolors()[:, 3] == 0).all()


@pytest.mark.slow
def test_power_in_flops_on_an_isoflop_table_fits_the_frontier_and_says_so(isoflop_csv, tmp_path, capsys):
    out = tmp_path / "fit.json"
    assert main(["fit", str(isoflop_csv), "--law", "power", "--x", "flops", "--json", str(out)]) == 0
    assert (
        "fitted to the loss-compute frontier: the best run of each compute budget" in capsys.readouterr().out
    )
    result = json.loads(out.read_text())
    assert result["n_points"] <= 9 and "--all-runs" in result["fitted_to"]
    assert main(["fit", str(isoflop_csv), "--law", "power", "--all-runs", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n_points"] == len(pd.read_csv(isoflop_csv))


@pytest.mark.slow
def test_report_warns_when_the_frontier_does_not_identify_E(tmp_path):
    """A demo-sized sweep whose best losses still fall as a pure power law: E runs off to zero."""
    rng = np.random.default_rng(0)
    rows = []
    for C in np.geomspace(1e12, 1e15, 7):
        for f in (0.5, 1.0, 2.0):
            N = 0.1 * np.sqrt(C) * f
            loss = 30 * C**-0.08 * (1 + 0.05 * np.log(f) ** 2) * np.exp(0.003 * rng.standard_normal())
            rows.append({"params": N, "tokens": C / (6 * N), "loss": loss, "status": "completed"})
    path = tmp_path / "demo.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    power = fit_frontier(load_results(path).runs, bootstrap=50)  # the fit analyse() gives the report
    assert any(w.startswith("E ") and "not identified" in w for w in power.warnings), power.warnings
    box = warnings(Sweep(None, None, None, {"power": power}, {}, {}), [])
    assert [w for w in box if not w.startswith("Frontier law L(C): fitted without")] == [
        f"Frontier law L(C): {w}" for w in power.warnings
    ]
    assert power.ci_open.get("E", (False, False))[0]  # the lower edge sits on E's bound, 0


@pytest.mark.parametrize(
    "args, column",
    [
        (["--law", "approach2", "--budget-col", "budget"], "no column 'budget' (given for --budget-col)"),
        (
            ["--law", "approach2", "--budget-col", "run", "--loss-col", "Final Loss"],
            "column 'run' (--budget-col) has one value",
        ),
        (["--law", "power", "--loss-col", "Final Loss"], "line 5: column 'Final Loss' (loss) has NaN"),
    ],
    ids=["missing-budget-col", "one-budget", "nan-in-mapped-column"],
)
def test_bad_input_names_the_users_column_and_line(tmp_path, capsys, args, column):
    runs = isoflop_grid("centred", 0.005, seed=0).rename(columns={"loss": "Final Loss"}).assign(run="a")
    if "NaN" in column:
        runs.loc[3, "Final Loss"] = np.nan
    path = tmp_path / "table.csv"
    runs.to_csv(path, index=False)
    assert main(["fit", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert column in err and len(err.splitlines()) == 1


def test_isoflop_window_must_be_a_count_or_full(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(tmp_path / "x.csv"), "--isoflop-window", "0"])
    assert exit_.value.code == 2 and "--isoflop-window" in capsys.readouterr().err


def test_estimates_and_interval_edges_on_a_bound_of_the_law_are_flagged_and_shown_open(capsys):
    """lmscale's demo frontier: E's interval runs from 0 to past the lowest loss, and E itself sits above
    the lowest loss; an exponent whose interval reaches 0 cannot say that the loss falls with scale."""
    params = {"E": 1.381, "A": 5.29e5, "alpha": 0.541, "beta": 0.0004}
    ci = {"E": (7.46e-06, 1.511), "A": (8.57, 7.39e7), "alpha": (0.0612, 0.751), "beta": (-0.02, 0.3)}
    fit = Fit("power", params, 1e-4, 6, ci=ci)
    flag_bounds(fit, lowest_loss=1.330)
    assert fit.ci_open == {"E": (True, True), "beta": (True, False)}  # alpha's 0.0612 is clear of 0
    assert any(
        w.startswith("E = 1.38 is at or above its bound, the lowest loss (1.33)") for w in fit.warnings
    )
    assert any(w.startswith("beta = 4×10⁻⁴ is at or below its bound, 0") for w in fit.warnings)
    assert any("lower edge at 0 and upper edge at the lowest loss (1.33)" in w for w in fit.warnings)
    out = fit.to_json()
    assert out["ci_open"]["E"] == [True, True] and out["warnings"] == fit.warnings
    _print_fit(out)
    text = capsys.readouterr().out
    assert "E = 1.38  95% CI (< 7.46×10⁻⁶, > 1.51)" in text and "beta = 4×10⁻⁴  95% CI (< -0.02, 0.3]" in text
    rows = {row[0]: row[2] for row in fit_table(fit)[1]}
    assert rows["E"] == "(< 7.46×10⁻⁶, > 1.51)" and rows["alpha"] == "[0.0612, 0.751]"


def test_rows_that_repeat_exactly_are_named_by_line_in_a_warning(isoflop_csv, tmp_path, capsys):
    runs = pd.read_csv(isoflop_csv)
    doubled = tmp_path / "doubled.csv"
    pd.concat([runs, runs.iloc[:3]]).to_csv(doubled, index=False)
    out = tmp_path / "fit.json"
    assert (
        main(["fit", str(doubled), "--law", "power", "--x", "params", "--bootstrap", "0", "--json", str(out)])
        == 0
    )
    first = len(runs) + 2  # the header is line 1
    warning = f"3 rows repeat an earlier row exactly (lines {first}, {first + 1}, {first + 2})"
    assert warning in capsys.readouterr().out
    assert any(w.startswith(warning) for w in json.loads(out.read_text())["warnings"])
    main(["fit", str(isoflop_csv), "--law", "power", "--x", "params", "--bootstrap", "0"])
    assert "repeat an earlier row" not in capsys.readouterr().out
