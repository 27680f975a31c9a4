import json
import sys

import pytest

from lmscale import peak
from lmscale.cli import main


def test_bench_reports_throughput_and_mfu_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--sizes", "s", "--steps", "1", "--no-fit", "--no-eval", "--no-peer", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["peak_source"].startswith("calibrated")
    (row,) = result["train"]
    assert row["size"] == "s" and row["tokens_per_s"] > 0
    assert row["mfu"] == row["flops_per_s"] / result["peak_flops"]
    assert 0 < row["mfu"] < 1.5
    pipeline = result["pipeline"]
    assert pipeline["vs_trainer"]["s"] == pytest.approx(pipeline["tokens_per_s"] / row["tokens_per_s"])


def test_without_torch_bench_says_it_skipped_the_peer(monkeypatch):
    from lmscale import bench

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert bench.bench_peers(["s"], rounds=1).startswith("skipped: torch is not installed")


def test_the_peer_ratio_compares_both_step_times_on_one_shape():
    pytest.importorskip("torch")
    from lmscale import bench

    model = {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 16, "pos_emb": "learned"}
    row = bench.bench_peer("t", model, batch=4, rounds=3, steps_per_round=2)
    assert row["step_time_s"] > 0 and row["peer_step_time_s"] > 0
    assert row["speedup_range"][0] <= row["speedup_vs_peer"] <= row["speedup_range"][1]
    assert row["tokens_per_s"] == pytest.approx(4 * 16 / row["step_time_s"])


def test_the_torch_peer_has_lmscales_parameter_count_on_nanogpts_cpu_recipe():
    pytest.importorskip("torch")
    from lmscale import bench, flops
    from lmscale.peer_torch import TorchStep

    cfg = bench._config(bench.RECIPE, bench.RECIPE_BATCH)
    assert TorchStep(cfg).nonembedding_params() == flops.param_counts(cfg.model).nonembedding == 787_584


def test_bench_rejects_unknown_sizes(capsys):
    assert main(["bench", "--sizes", "xxl"]) == 2
    assert "xxl" in capsys.readouterr().err


def test_bench_rejects_a_cpu_device_count_below_one(capsys):
    assert main(["bench", "--cpu-devices", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "lmscale bench: error: --cpu-devices=0: must be positive"
    ]


def test_device_peak_table_matches_device_kind_prefixes():
    assert peak.table_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert peak.table_peak("NVIDIA H100 PCIe") == 756e12
    assert peak.table_peak("TPU v5 lite") == 197e12
    assert peak.table_peak("TPU v5p") == 459e12
    assert peak.table_peak("Some Future Chip") is None
    assert peak.table_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak.table_peak("NVIDIA L40S") == 362e12  # not the L4 it starts with
    assert peak.table_peak("NVIDIA L4") == 121e12


class _Device:
    def __init__(self, kind, platform="gpu", coords=None):
        self.device_kind, self.platform, self.coords = kind, platform, coords


def test_the_run_peak_counts_chips_and_an_unknown_device_reports_no_mfu():
    gpus = [_Device("NVIDIA H100 80GB HBM3") for _ in range(8)]
    assert peak.peak_flops(gpus)[0] == 8 * 989e12
    # A v3-8: four chips, each seen by JAX as two TensorCore devices with the chip's coordinates.
    v3 = [_Device("TPU v3", "tpu", (x, y, 0)) for x in range(2) for y in range(2) for _ in range(2)]
    assert peak.peak_flops(v3)[0] == 4 * 123e12
    v4 = [_Device("TPU v4", "tpu", (x, y, z)) for x in range(2) for y in range(2) for z in range(2)]
    assert peak.peak_flops(v4)[0] == 8 * 275e12
    value, source = peak.peak_flops([_Device("Tesla V100-SXM2-32GB")])
    assert value is None and "Tesla V100-SXM2-32GB" in source


def test_fit_bench_times_jax_against_scipy_on_the_same_starts():
    from analysis.bench import bench_fit, synthetic_points

    row = bench_fit(synthetic_points(60, seed=0), scipy_starts=3, bootstrap=10)
    assert row["starts"] == 4500 and row["scipy_starts_timed"] == 3
    assert row["scipy_loop_s_estimated"] == pytest.approx(row["scipy_s_per_start"] * 4500)
    assert row["speedup_vs_scipy"] == pytest.approx(row["scipy_loop_s_estimated"] / row["jax_fit_s"])
    assert row["bootstrap_s"] > 0 and row["objective"] > 0
