import json

import pytest

from lmscale import peak
from lmscale.cli import main


def test_bench_reports_throughput_and_mfu_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "s", "--steps", "1", "--no-fit", "--no-eval", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peak_source"].startswith("calibrated")
    (row,) = result["train"]
    assert row["size"] == "s" and row["tokens_per_s"] > 0
    assert row["mfu"] == row["flops_per_s"] / result["peak_flops"]
    assert 0 < row["mfu"] < 1.5
    pipeline = result["pipeline"]
    assert pipeline["vs_trainer"]["s"] == pytest.approx(pipeline["tokens_per_s"] / row["tokens_per_s"])


def test_bench_rejects_unknown_sizes(capsys):
    assert main(["bench", "--sizes", "xxl"]) == 2
    assert "xxl" in capsys.readouterr().err


def test_device_peak_table_matches_device_kind_prefixes():
    assert peak.table_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert peak.table_peak("NVIDIA H100 PCIe") == 756e12
    assert peak.table_peak("TPU v5 lite") == 197e12
    assert peak.table_peak("TPU v5p") == 459e12
    assert peak.table_peak("Some Future Chip") is None


def test_fit_bench_times_jax_against_scipy_on_the_same_starts():
    from analysis.bench import bench_fit, synthetic_points

    row = bench_fit(synthetic_points(60, seed=0), scipy_starts=3, bootstrap=10)
    assert row["starts"] == 4500 and row["scipy_starts_timed"] == 3
    assert row["scipy_loop_s_estimated"] == pytest.approx(row["scipy_s_per_start"] * 4500)
    assert row["speedup_vs_scipy"] == pytest.approx(row["scipy_loop_s_estimated"] / row["jax_fit_s"])
    assert row["bootstrap_s"] > 0 and row["objective"] > 0
