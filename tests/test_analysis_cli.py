"""The analysis command line: its commands under both names, and its errors."""

import pandas as pd

from analysis.cli import main
from tests.conftest import run_cli


def test_fit_plot_report_are_lmscale_commands_too():
    for command in ("fit", "plot", "report"):
        proc = run_cli(command, "--help")
        assert proc.returncode == 0 and "--loss-col" in proc.stdout


def test_report_needs_a_sweep_directory(tmp_path, capsys):
    csv = tmp_path / "results.csv"
    csv.write_text("params,loss\n1,2\n")
    assert main(["report", str(csv)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


def test_plot_names_a_missing_mapped_column(tmp_path, capsys):
    csv = tmp_path / "points.csv"
    pd.DataFrame({"N": [1e6, 1e7, 1e8], "C": [1e15, 1e16, 1e17], "L": [3.0, 2.8, 2.6]}).to_csv(
        csv, index=False
    )
    assert main(["plot", str(csv), "--params-col", "N", "--flops-col", "C", "--loss-col", "loss"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'loss'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "figures").exists()
