"""`lmscale plan`: every cell priced, nothing trained, and time estimates close to measured runs."""

import json
import math

import jax
import pandas as pd
import pytest

from lmscale import config, flops, memory, sharding
from lmscale.step_fns import build
from lmscale.sweep import plan
from tests.conftest import run_cli

# The time estimates are checked against a measured run: both must see the same machine, so those tests
# (marked `timing`) run alone, after `make test`'s parallel run.
timing = pytest.mark.timing

SPEC = """
model: {n_layers: 1, d_model: 32, n_heads: 2, seq_len: 32, vocab_size: 320}
train: {batch_size: 8, tokens: 10240, lr: 0.01, log_every: 5, eval_every: 10, eval_batches: 2}
checkpoint: {every_steps: 10}
sweep:
  sizes:
    shapes: [{n_layers: 1, d_model: 32, n_heads: 2}, {n_layers: 2, d_model: 64, n_heads: 4}]
  eval: {tasks: [add2, recall], examples: 8}
"""


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plan")
    (tmp / "pair.yaml").write_text(SPEC)
    # Its time estimates include compiles, so the plan and the run it is checked against both compile
    # from scratch, as a user's would, not from the test session's compilation cache.
    proc = run_cli("plan", tmp / "pair.yaml", "--csv", tmp / "plan.csv", cwd=tmp, xla_cache=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, proc.stdout, pd.read_csv(tmp / "plan.csv")


@timing
def test_plan_prints_every_cell_then_the_total_and_writes_no_run(planned):
    tmp, stdout, table = planned
    lines = stdout.strip().splitlines()
    assert lines[0].split() == "run_id L D H F params non-emb tokens FLOPs memory lr time eval".split()
    assert lines[1].split()[0] == "L1-D32-T10.2K-s0" and lines[2].split()[0] == "L2-D64-T10.2K-s0"
    assert lines[-1].startswith("total: 2 runs") and "on 1 x cpu" in lines[-1]
    shapes = ((1, 32, 2), (2, 64, 4))
    models = [
        config.ModelConfig(n_layers=n, d_model=d, n_heads=h, seq_len=32, vocab_size=320) for n, d, h in shapes
    ]
    counts = [flops.param_counts(m) for m in models]
    assert list(table["params"]) == [c.total for c in counts]
    assert list(table["params_nonembedding"]) == [c.nonembedding for c in counts]
    assert (
        list(table["tokens"]) == [10240, 10240]
        and (table["time_s"] > 0).all()
        and (table["eval_s"] > 0).all()
    )
    assert (
        table["flops"].iloc[1] > table["flops"].iloc[0]
        and table["memory_bytes"].iloc[1] > 16 * counts[1].total
    )
    assert table["timed"].all()  # two shapes: both are calibrated
    assert sorted(p.name for p in tmp.iterdir()) == ["pair.yaml", "plan.csv"]  # nothing trained


@timing
def test_time_estimates_are_within_2x_of_the_measured_run_and_its_evaluation(planned):
    tmp, _, table = planned
    only_first = "sweep.sizes.shapes=[{n_layers: 1, d_model: 32, n_heads: 2}]"  # the plan's first row
    proc = run_cli(
        "sweep", tmp / "pair.yaml", "--out", tmp / "runs", "--no-progress", only_first, xla_cache=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads((tmp / "runs" / "pair" / "L1-D32-T10.2K-s0" / "summary.json").read_text())
    estimate = table.set_index("run_id").loc["L1-D32-T10.2K-s0"]
    assert 0.5 < measured["wall_time_s"] / estimate["time_s"] < 2.0, (measured["wall_time_s"], estimate)
    assert 0.5 < measured["eval_time_s"] / estimate["eval_s"] < 2.0, (measured["eval_time_s"], estimate)


def test_evaluating_every_kept_checkpoint_pays_one_compile_and_one_pass_per_checkpoint():
    from lmscale.sweep.grid import EvalSpec

    cfg = config.from_dict(
        {
            "model": {"seq_len": 32},
            "train": {"batch_size": 8, "tokens": 8 * 32 * 100},  # 100 steps
            "checkpoint": {"every_steps": 10, "keep": 2, "keep_period": 50},  # keeps 50, 90 and 100
        }
    )
    timing = plan.EvalTiming(compile_s=3.0, pass_s=0.5)
    assert plan.eval_estimate_s(cfg, timing, EvalSpec(steps="all")) == 3.0 + 3 * 0.5
    assert plan.eval_estimate_s(cfg, timing, EvalSpec()) == 3.0 + 0.5  # the final checkpoint only


def test_memory_estimate_is_within_2x_of_what_xla_allocates():
    cfg = config.from_dict(
        {"model": {"n_layers": 3, "d_model": 96, "n_heads": 6, "seq_len": 64}, "train": {"batch_size": 16}}
    )
    compiled = build(cfg, sharding.make_mesh(cfg.mesh)).compile_train_step()
    mem = compiled.memory_analysis()
    xla = (
        mem.argument_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
    )
    assert 0.5 < memory.memory_bytes(cfg, jax.device_count()) / xla < 2.0


def test_step_times_between_timed_shapes_are_interpolated_in_log_log():
    assert plan._interpolate(10.0, [1.0, 100.0], [0.01, 1.0]) == pytest.approx(0.1)
    assert plan._interpolate(1e4, [1.0, 100.0], [0.01, 1.0]) == pytest.approx(1.0)  # flat beyond the ends
    assert plan._interpolate(4.0, [2.0], [0.5]) == pytest.approx(1.0)  # one shape: time scales with FLOPs


def test_a_shape_that_fails_to_run_is_reported_and_the_rest_are_still_timed(monkeypatch, capsys):
    from lmscale.sweep import grid

    shapes = [{"n_layers": 1, "d_model": d, "n_heads": 2} for d in (32, 64, 128)]
    sweep = grid.expand(
        {"model": {"seq_len": 32}, "train": {"batch_size": 8}, "sweep": {"sizes": {"shapes": shapes}}}, "s"
    )

    def time_shape(cfg):
        if cfg.model.d_model == 128:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nmore")
        return plan.Timing(1.0, 0.01 * cfg.model.d_model / 32, 0.1, True), None, None

    monkeypatch.setattr(plan, "time_shape", time_shape)
    monkeypatch.setattr(plan, "run_costs", lambda steps, state: plan.RunCosts(1.0, 0.5, 0.1, 2.0))
    timed = []

    def time_eval(steps, state, spec):
        timed.append(spec)
        return plan.EvalTiming(3.0, 1.0)

    monkeypatch.setattr(plan, "time_eval", time_eval)
    df, totals = plan.table(sweep, n_devices=1)
    assert (
        "L1-D128-H2 (batch 8) failed: RuntimeError: RESOURCE_EXHAUSTED: out of memory"
        in capsys.readouterr().err
    )
    assert df["time_s"].isna().tolist() == [False, False, True]
    # The evaluator is timed on the smallest and largest shapes. The largest failed to run, so the middle
    # one scales the smallest's pass by FLOPs, as step times do from one timed shape.
    ratio = plan.step_flops(sweep.cells[1].cfg) / plan.step_flops(sweep.cells[0].cfg)
    assert timed == [sweep.eval] and math.isnan(df["eval_s"][2])
    assert df["eval_s"].tolist()[:2] == pytest.approx([3.0 + 1.0, 3.0 + 1.0 * ratio])
    assert totals["time_s"] == pytest.approx(df["time_s"].sum() + df["eval_s"].sum())
    text = plan.render(df, totals, "1 x cpu")
    assert "failed" in text.splitlines()[3] and "1 runs not included" in text.splitlines()[-1]


def test_later_runs_of_a_shape_pay_tracing_not_compilation(monkeypatch):
    """Budgets and schedules do not change the compiled step, so only the first run of a shape compiles."""
    from lmscale.sweep import grid

    spec = {
        "sizes": {"shapes": [{"n_layers": 1, "d_model": 32, "n_heads": 2}]},
        "tokens": {"fixed": [2560, 5120]},
    }
    sweep = grid.expand({"model": {"seq_len": 32}, "train": {"batch_size": 8}, "sweep": spec}, "s")
    timing = plan.Timing(5.0, 0.01, 0.1, True, lower_s=0.5)
    monkeypatch.setattr(plan, "time_shape", lambda cfg: (timing, None, None))
    monkeypatch.setattr(plan, "run_costs", lambda steps, state: plan.RunCosts(0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(plan, "time_eval", lambda steps, state, spec: plan.EvalTiming(0.0, 0.0))
    df, _ = plan.table(sweep, n_devices=1)
    first, second = df.set_index("tokens")["time_s"][[2560, 5120]]
    steps = [c.cfg.steps for c in sweep.cells]
    assert first == pytest.approx(0.1 + 5.0 + 0.01 * steps[0], abs=0.2)
    assert second - 0.01 * steps[1] == pytest.approx(first - 0.01 * steps[0] - 4.5, abs=0.2)


def test_a_branch_restores_instead_of_running_init_and_a_cached_shape_loads_its_eval():
    """A cooldown branch starts from its trunk's checkpoint, so it pays no init; a shape compiled by an
    earlier run of the sweep loads its eval loss from the compilation cache, as it does its step."""
    cfg = config.from_dict({"train": {"steps": 100, "eval_every": 100, "eval_batches": 2}})
    cfg.checkpoint.every_steps = 1000
    timing = plan.Timing(compile_s=5.0, step_s=0.01, setup_s=0.1, measured=True, lower_s=0.5)
    costs = plan.RunCosts(init_compile_s=1.0, eval_compile_s=0.4, save_s=0.2, process_s=0.0)
    evals = 2 * plan.EVAL_COST * 0.01
    fresh = plan.estimate_s(cfg, timing, costs)
    assert fresh == pytest.approx(0.1 + 5.0 + 1.0 + 100 * 0.01 + evals + 0.4 + 0.2)
    branch = plan.estimate_s(cfg, timing, costs, start=80, cached=True)
    assert branch == pytest.approx(0.1 + 0.5 + 20 * 0.01 + evals + 0.2)
