"""The results contract: summary.json's fields and order, a failed run's summary, and no JAX to read them."""

import json

from lmscale import config, flops, results
from tests.conftest import run_python

SUMMARY_ORDER = [
    "status", "params", "params_nonembedding", "params_embedding", "n_layers", "d_model", "n_heads",
    "d_ff", "vocab_size", "seq_len", "batch_size", "steps_budget", "tokens_budget", "warmup_steps",
    "warmup_frac", "lr", "seed", "steps", "tokens", "flops", "flops_6nd",
    "flops_causal_half", "final_loss", "final_val_loss", "wall_time_s", "train_time_s", "compile_time_s",
    "tokens_per_s", "mfu", "peak_flops", "peak_source", "data_entropy_rate", "data_epochs",
    "data_fingerprint", "fewshot",
]  # fmt: skip
CFG = config.from_dict({"model": {"seq_len": 32}, "train": {"batch_size": 8, "tokens": 8 * 32 * 10}})


def _summary(**measured):
    fields = dict(final_loss=2.0, final_val_loss=float("nan"), wall_time_s=3.0, train_time_s=2.0)
    fields |= dict(compile_time_s=0.5, peak_flops=1e12, peak_source="table", data_entropy_rate=None)
    fields |= dict(data_epochs=0, data_fingerprint="abc")
    return results.run_summary(CFG, "completed", 10, **(fields | measured))


def test_reading_the_results_contract_imports_no_jax():
    code = "import sys, lmscale.results, lmscale.sweep.runner; print(int('jax' in sys.modules))"
    assert run_python(code, devices=1) == 0


def test_a_summary_holds_the_contract_fields_in_their_order_with_nan_as_null():
    summary = _summary()
    assert list(summary) == SUMMARY_ORDER
    assert summary["tokens"] == 8 * 32 * 10 and summary["flops"] == 10 * flops.step_flops(CFG)
    assert (summary["steps_budget"], summary["tokens_budget"]) == (10, 8 * 32 * 10)
    assert (summary["warmup_steps"], summary["warmup_frac"]) == (0, 0.0)  # 5% of 10 steps, rounded down
    assert summary["mfu"] == summary["flops"] / 2.0 / 1e12 and summary["final_val_loss"] is None
    assert _summary(train_time_s=0.0)["mfu"] is None


def test_a_run_that_failed_before_its_first_summary_gets_its_planned_shape(tmp_path):
    failed = results.failed_summary(CFG, tmp_path, "training: RuntimeError: out of memory")
    assert failed["params"] == flops.param_counts(CFG.model).total and failed["steps"] == 0
    assert list(failed)[-2:] == ["status", "error"] and failed["status"] == "failed"
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    again = results.failed_summary(CFG, tmp_path, "x")
    assert again["final_loss"] == 2.0 and again["status"] == "failed" and again["error"] == "x"
