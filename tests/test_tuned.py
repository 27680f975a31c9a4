"""Hyperparameter-tuned frontiers: a learning-rate sweep reduced to the best run of each (N, D) before a
law is fitted, the runs it used, the optimal learning rate as a power law of N and C, and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import fit as fits
from analysis import plots
from analysis.cli import main
from analysis.laws import Fit
from analysis.load import load_results
from analysis.report import _tuned
from analysis.tuned import tune
from lmscale import results
from lmscale.sweep import grid
from tests.conftest import ROOT

pytestmark = pytest.mark.fits  # optimised XLA: see tests/conftest.py

LR_CPU = ROOT / "experiments" / "lr_cpu.yaml"
SIZES = "sweep.sizes.params=[2.5e+4,1.0e+5,4.0e+5]"  # 1.2 decades: the lr optimum moves by a factor 2.3
LR_OPT_EXPONENT = -0.3  # lr_opt = 0.1 N^-0.3: 4.3e-3 at the smallest size, 2.0e-3 at the largest
PENALTY = 0.03  # loss grows by 3.6% at 3x off the optimum: quadratic in log lr


def true_loss(N, D, lr):
    """A small model's L(N, D), raised by a penalty quadratic in log(lr / lr_opt(N))."""
    return (1.5 + 60 / N**0.3 + 80 / D**0.3) * (1 + PENALTY * np.log(lr / (0.1 * N**LR_OPT_EXPONENT)) ** 2)


def lr_sweep(tmp_path, noise: float = 0.001, seeds: int = 1, seed: int = 0) -> pd.DataFrame:
    """The sweep directory lmscale writes for experiments/lr_cpu.yaml (3 sizes x 3 learning rates), with
    a synthetic final loss whose optimal lr falls as N^-0.3, and its results.csv."""
    sweep = grid.load(LR_CPU, [SIZES, f"sweep.seeds={list(range(seeds))}"])
    rng = np.random.default_rng(seed)
    for cell in sweep.cells:
        cfg, run_dir = cell.cfg, tmp_path / "lr_cpu" / cell.run_id
        D = cfg.train.tokens
        loss = true_loss(results.run_shape(cfg)["params"], D, cfg.train.lr)
        loss *= np.exp(noise * rng.standard_normal())
        summary = results.run_summary(
            cfg, "completed", cfg.steps, final_loss=loss + 0.01, final_val_loss=loss, wall_time_s=1.0,
            train_time_s=1.0, compile_time_s=1.0, peak_flops=None, peak_source=None,
            data_entropy_rate=None, data_epochs=1, data_fingerprint="synthetic",
        )  # fmt: skip
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        curve = [
            {"step": k * cfg.steps // 2, "tokens": k * D // 2, "loss": loss * (1.2 - 0.1 * k)} for k in (1, 2)
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
        cell_json = {"run_id": cell.run_id, "sweep": "lr_cpu", "coords": cell.coords}
        (run_dir / results.CELL).write_text(json.dumps(cell_json))
    return results.write_tables(tmp_path / "lr_cpu")


def test_an_lr_sweep_fits_its_law_to_the_best_lr_of_each_size_lists_the_runs_and_fits_lr_opt(
    tmp_path, capsys, monkeypatch
):
    table = lr_sweep(tmp_path, seed=1)  # a t interval on 1 dof: see the simulation below for its coverage
    assert len(table) == 9 and table["train.lr"].nunique() == 3 and table["params"].nunique() == 3
    fitted = []  # what the law is fitted to (the fit itself is tested in tests/test_fit.py)
    law = Fit("power", {"A": 1.0, "alpha": 0.1}, 0.0, 3, x="params")
    monkeypatch.setattr(fits, "fit_power", lambda x, loss, *a, **k: fitted.append((x, loss)) or law)
    out = tmp_path / "fit.json"
    assert main(["fit", str(tmp_path / "lr_cpu"), "--law", "power", "--x", "params", "--no-offset",
                 "--json", str(out)]) == 0  # fmt: skip
    text, result = capsys.readouterr().out, json.loads(out.read_text())
    best = table.loc[table.groupby("params")["final_val_loss"].idxmin()].sort_values("params")
    ((x, loss),) = fitted
    assert list(x) == list(best["params"]) and list(loss) == list(best["final_val_loss"])
    tuned = result["tuned"]
    assert tuned["over"] == ["lr"] and tuned["detected"]
    assert [u["runs"] for u in tuned["used"]] == [[r] for r in best["run_id"]]
    assert [u["lr"] for u in tuned["used"]] == list(best["lr"])
    assert "3 of 9 runs used" in text and all(r in text for r in best["run_id"])
    lr_opt = tuned["optima"]["lr"]["vs_params"]
    lo, hi = lr_opt["ci"]["a"]
    assert lo < LR_OPT_EXPONENT < hi and hi - lo < 0.2 and lr_opt["points"] == 3
    assert "lr_opt = " in text and " N^-0.3" in text and " C^-0.1" in text


@pytest.mark.slow
def test_the_report_of_an_lr_sweep_fits_its_frontier_to_the_best_runs_and_draws_lr_opt(tmp_path):
    lr_sweep(tmp_path)
    assert main(["report", str(tmp_path / "lr_cpu")]) == 0
    report = (tmp_path / "lr_cpu" / "report" / "report.md").read_text()
    assert "3 of 9 completed runs fitted" in report
    assert "## Which settings were best, and how they scale" in report
    assert "from 3 runs" in report  # the frontier law: the best lr of each size only
    assert (tmp_path / "lr_cpu" / "report" / "figures" / "tuned_optimum.png").exists()


@pytest.mark.slow
def test_the_lr_opt_interval_covers_the_true_exponent_in_simulated_sweeps(tmp_path):
    """Student t intervals on 1 degree of freedom: about 95% of sweeps at 0.1% loss noise hold the truth."""
    lr_sweep(tmp_path)
    loaded = load_results(tmp_path / "lr_cpu")
    loaded.runs = loaded.runs[["params", "tokens", "flops", "lr", "loss"]]
    clean = true_loss(loaded.runs["params"], loaded.runs["tokens"], loaded.runs["lr"]).to_numpy()
    exponents, hits = [], 0
    for seed in range(200):
        loaded.runs["loss"] = clean * np.exp(0.001 * np.random.default_rng(seed).standard_normal(len(clean)))
        law = tune(loaded).optima["lr"]["vs_params"]
        exponents.append(law["a"])
        hits += law["ci"]["a"][0] < LR_OPT_EXPONENT < law["ci"]["a"][1]
    assert abs(np.median(exponents) - LR_OPT_EXPONENT) < 0.005
    assert hits / 200 >= 0.9, hits


def test_repeats_of_one_setting_are_averaged_and_all_listed(tmp_path):
    lr_sweep(tmp_path, seeds=2)
    loaded = load_results(tmp_path / "lr_cpu")
    tuned = tune(loaded)
    assert len(tuned.runs) == 3 and tuned.total == 18
    for u in tuned.used:
        rows = loaded.runs[(loaded.runs["params"] == u["params"]) & (loaded.runs["lr"] == u["lr"])]
        assert sorted(u["runs"]) == sorted(rows["run_id"]) and len(u["lines"]) == 2
        assert u["loss"] == pytest.approx(rows["loss"].mean())


def test_the_report_and_figure_show_each_optimum_and_its_law(tmp_path, monkeypatch):
    lr_sweep(tmp_path)
    tuned = tune(load_results(tmp_path / "lr_cpu"))
    blocks = _tuned(tuned)
    tables = [payload[-1] if kind == "details" else payload for kind, payload in blocks
              if kind in ("table", "details")]  # fmt: skip
    assert [row[-1] for row in tables[0][1]] == [u["runs"][0] for u in tuned.used]
    assert [row[0] for row in tables[1][1]] == ["lr_opt = k·N^a", "lr_opt = k·C^a"]
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, out_dir, name: figures.append(fig) or [])
    plots.plot_tuned(tuned, tmp_path)
    labels = [t.get_text() for ax in figures[0].axes for t in ax.get_legend().get_texts()]
    assert any(label.startswith("lr_opt ∝ N^-0.") for label in labels)
    assert any(label.startswith("lr_opt ∝ C^-0.") for label in labels)


def test_an_optimum_at_the_edge_of_the_grid_is_left_out_and_warned_about(tmp_path):
    table = lr_sweep(tmp_path)
    largest = table["params"] == table["params"].max()
    wider = table[largest & (table["lr"] == 1e-2)].assign(**{"lr": 3e-2, "train.lr": 3e-2})
    wider["final_val_loss"] = true_loss(wider["params"], wider["tokens"], 3e-2)
    table = pd.concat([table[~(largest & (table["lr"] == 1e-3))], wider])  # 3e-3 is now the smallest lr tried
    table.to_csv(tmp_path / "edge.csv", index=False)
    tuned = tune(load_results(tmp_path / "edge.csv"), ["lr"])
    (excluded,) = tuned.optima["lr"]["excluded"]
    assert "beyond the smallest lr tried" in excluded["reason"]
    assert any("widen the lr grid" in w for w in tuned.warnings)


@pytest.mark.parametrize(
    "change, args, message",
    [
        (None, ["--tuned-over", "warmup"], "no column 'warmup' (given for --tuned-over)"),
        (None, ["--tuned-over", "seq_len"], "lines 2-10: column 'seq_len' (--tuned-over) takes one value"),
        (None, ["--tuned-over", "lr,tokens"], "column 'tokens' (--tuned-over) is a scale or the loss"),
        ("n_heads", [], "line 6: column 'n_heads' is 7 here and 2 on line 5, at the same params and tokens"),
        ("n_heads", ["--tuned-over", "train.lr"], "line 6: column 'n_heads' is 7 here and 2 on line 5"),
    ],
    ids=[
        "missing-column",
        "constant-column",
        "scale-column",
        "untuned-column-differs",
        "untuned-beside-given",
    ],
)
def test_bad_tuned_over_exits_2_naming_the_column_and_line(tmp_path, capsys, change, args, message):
    table = lr_sweep(tmp_path)
    if change:
        table.loc[4, change] = 7  # line 6 of the file; lines 5-7 are the second size's three runs
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    assert main(["fit", str(path), "--law", "power", "--x", "params", "--no-offset", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if change:
        assert f"(--tuned-over {args[1] if args else 'lr'},n_heads)" in err
