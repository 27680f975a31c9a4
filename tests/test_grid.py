"""Sweep specs expand into the cells they describe, with readable unique ids; bad specs fail early."""

import copy
import math
import subprocess
import sys

import pytest

from lmscale import flops
from lmscale.config import ConfigError
from lmscale.sweep import grid
from tests.conftest import ROOT, lmscale_env

BASE = {
    "model": {"seq_len": 32, "vocab_size": 320},
    "train": {"batch_size": 8, "tokens": 8192},
}
RULE = {"aspect_ratio": 32, "head_dim": 16, "d_ff_multiple": 4}


def expand(sweep: dict, overrides=(), base=BASE) -> grid.Sweep:
    return grid.expand({**copy.deepcopy(base), "sweep": sweep}, "test", list(overrides))


def test_explicit_shapes_cross_fixed_budgets_and_seeds_cheapest_first():
    shapes = [{"n_layers": 2, "d_model": 64, "n_heads": 4}, {"n_layers": 1, "d_model": 32, "n_heads": 2}]
    sweep = expand({"sizes": {"shapes": shapes}, "tokens": {"fixed": [2560, 5120]}, "seeds": [0, 1]})
    assert len(sweep.cells) == 8
    assert sweep.cells[0].run_id == "L1-D32-T2.56K-s0"
    assert {c.run_id for c in sweep.cells} >= {"L2-D64-T5.12K-s1", "L1-D32-T5.12K-s1"}
    costs = [c.flops for c in sweep.cells]
    assert costs == sorted(costs)
    cell = next(c for c in sweep.cells if c.run_id == "L2-D64-T5.12K-s1")
    assert (cell.cfg.model.n_layers, cell.cfg.model.d_model, cell.cfg.model.n_heads) == (2, 64, 4)
    assert (cell.cfg.train.tokens, cell.cfg.train.seed) == (5120, 1)
    assert cell.cfg.train.batch_size == 8  # untouched base keys pass through


def test_repeats_train_the_named_sizes_again_at_every_budget_with_each_extra_seed():
    shapes = [{"n_layers": 2, "d_model": 64, "n_heads": 4}, {"n_layers": 1, "d_model": 32, "n_heads": 2}]
    spec = {"sizes": {"shapes": shapes}, "tokens": {"fixed": [2560, 5120]}}
    sweep = expand({**spec, "repeats": {"seeds": [1, 2], "sizes": ["L2-D64"]}})
    ids = {c.run_id for c in sweep.cells}
    assert len(sweep.cells) == 4 + 2 * 2
    assert {f"L2-D64-T{t}-s{s}" for t in ("2.56K", "5.12K") for s in (1, 2)} <= ids
    assert not any(i.startswith("L1-D32") and not i.endswith("-s0") for i in ids)
    again = next(c for c in sweep.cells if c.run_id == "L2-D64-T5.12K-s2")
    assert (again.cfg.train.seed, again.cfg.train.tokens, again.cfg.model.d_model) == (2, 5120, 64)


@pytest.mark.parametrize(
    "repeats, message",
    [
        (
            {"seeds": [1], "sizes": ["L3-D64"]},
            "sweep.repeats.sizes: no size 'L3-D64' in the grid; its sizes: L2-D64",
        ),
        ({"seeds": [0], "sizes": ["L2-D64"]}, "sweep.repeats.seeds: seed 0 is already in sweep.seeds"),
        ({"sizes": ["L2-D64"]}, "sweep.repeats.seeds"),
    ],
)
def test_bad_repeats_name_the_key(repeats, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        expand({"sizes": {"shapes": [{"n_layers": 2, "d_model": 64, "n_heads": 4}]}, "repeats": repeats})


def test_a_compute_ceiling_runs_small_sizes_to_budgets_the_largest_cannot_afford():
    shapes = [{"n_layers": 1, "d_model": 32, "n_heads": 2}, {"n_layers": 2, "d_model": 64, "n_heads": 4}]
    budgets = [2560, 5120, 10240, 20480]
    base = {**BASE, "train": {**BASE["train"], "warmup_steps": 2}}
    small, large = (
        flops.flops_6nd(grid.from_dict({**base, "model": {**base["model"], **s}}).model, 1) for s in shapes
    )
    ceiling = large * 5120 * 1.01  # the large size keeps 2 budgets, the small one all 4
    assert small * 20480 <= ceiling
    tokens = {"cooldowns": {"budgets": budgets}, "max_flops": ceiling}
    sweep = expand({"sizes": {"shapes": shapes}, "tokens": tokens}, base=base)
    branches = {c.run_id: c.cfg.train.tokens for c in sweep.cells if c.role == "branch"}
    assert sorted(t for i, t in branches.items() if i.startswith("L1-D32")) == budgets
    assert sorted(t for i, t in branches.items() if i.startswith("L2-D64")) == budgets[:2]
    trunks = {c.run_id: c.cfg.train.tokens for c in sweep.cells if c.role == "trunk"}
    assert trunks["L2-D64-trunk-s0"] < 5120 < trunks["L1-D32-trunk-s0"]  # each to its own longest decay
    plain = expand({"sizes": {"shapes": shapes}, "tokens": {"fixed": budgets, "max_flops": ceiling}})
    assert len(plain.cells) == 6  # a cross of fixed budgets is capped the same way


def test_param_targets_become_shapes_near_the_target_and_the_aspect_ratio():
    targets = [1e5, 1e6, 1e7, 1e8]
    sweep = expand({"sizes": {"params": targets, **RULE}})
    for cell, target in zip(sweep.cells, targets, strict=True):
        m = cell.cfg.model
        assert abs(math.log(flops.param_counts(m).nonembedding / target)) < math.log(1.3)
        assert m.n_heads * 16 == m.d_model and m.d_ff == 4 * m.d_model
        assert 16 <= m.d_model / m.n_layers <= 64  # within 2x of the aspect ratio
    total = expand({"sizes": {"params": [1e5], "count": "total", **RULE}}).cells[0].cfg.model
    assert abs(math.log(flops.param_counts(total).total / 1e5)) < math.log(1.3)


def test_tokens_per_param_rounds_to_whole_steps():
    sweep = expand({"sizes": {"params": [2e4, 8e4], **RULE}, "tokens": {"per_param": 20}})
    for cell in sweep.cells:
        wanted = 20 * flops.param_counts(cell.cfg.model).total
        assert cell.cfg.train.tokens % (8 * 32) == 0
        assert abs(cell.cfg.train.tokens - wanted) <= 8 * 32 / 2


def test_isoflop_budgets_space_sizes_around_the_optimum_at_constant_compute():
    budgets = [1e12, 1e13]
    sweep = expand({"sizes": RULE, "tokens": {"isoflop": {"budgets": budgets, "sizes": 5, "spread": 3}}})
    assert len(sweep.cells) == 10
    for C in budgets:
        cells = [c for c in sweep.cells if c.coords["flops_budget"] == C]
        params = sorted(flops.param_counts(c.cfg.model).total for c in cells)
        assert len(set(params)) == 5
        optimum = math.sqrt(C / (6 * 20))  # Chinchilla's 20 tokens per parameter
        assert params[0] < optimum < params[-1]
        for c in cells:  # D = C / 6N, up to rounding to whole steps
            assert flops.flops_6nd(c.cfg.model, c.cfg.train.tokens) == pytest.approx(C, rel=0.02)


def test_width_lr_rule_and_other_axes_name_their_runs():
    sweep = expand(
        {
            "sizes": {
                "shapes": [
                    {"n_layers": 1, "d_model": 32, "n_heads": 2},
                    {"n_layers": 1, "d_model": 128, "n_heads": 2},
                ]
            },
            "lr": {"rule": "width", "base": 1e-3, "base_width": 64, "exponent": 1},
            "axes": {"model.mlp": ["gelu", "swiglu"], "train.batch_size": [8, 16]},
        }
    )
    assert len(sweep.cells) == 8
    lrs = {c.cfg.model.d_model: c.cfg.train.lr for c in sweep.cells}
    assert lrs == {32: pytest.approx(2e-3), 128: pytest.approx(5e-4)}
    cell = next(c for c in sweep.cells if c.cfg.model.mlp == "swiglu" and c.cfg.train.batch_size == 16)
    assert "mlpswiglu" in cell.run_id and "batch_size16" in cell.run_id
    assert cell.coords == {"model.mlp": "swiglu", "train.batch_size": 16}
    assert len({c.run_id for c in sweep.cells}) == 8


def test_run_ids_are_deterministic_and_show_heads_only_when_needed():
    spec = {
        "sizes": {
            "shapes": [
                {"n_layers": 1, "d_model": 32, "n_heads": 2},
                {"n_layers": 1, "d_model": 32, "n_heads": 4},
            ]
        }
    }
    ids = [c.run_id for c in expand(spec).cells]
    assert ids == [c.run_id for c in expand(spec).cells]
    assert sorted(ids) == ["L1-D32-H2-T8.19K-s0", "L1-D32-H4-T8.19K-s0"]


def test_overrides_reach_the_base_config_and_the_sweep_section():
    spec = {"sizes": {"params": [2e4], **RULE}, "seeds": [0]}
    sweep = expand(spec, ["train.batch_size=16", "sweep.seeds=[3, 4]", "sweep.axes.model.mlp=[gelu, swiglu]"])
    assert {c.cfg.train.seed for c in sweep.cells} == {3, 4}
    assert {c.cfg.model.mlp for c in sweep.cells} == {"gelu", "swiglu"}
    assert {c.cfg.train.batch_size for c in sweep.cells} == {16}


@pytest.mark.parametrize(
    "sweep, overrides, message",
    [
        ({"axes": {"train.bogus": [1, 2]}}, [], "sweep.axes.train.bogus: unknown config key 'train.bogus'"),
        ({"sizez": {}}, [], "unknown sweep key 'sweep.sizez'"),
        ({"seeds": []}, [], "sweep.seeds=[]: an empty list makes the grid empty"),
        ({"axes": {"model.mlp": []}}, [], "sweep.axes.model.mlp=[]"),
        (
            {"sizes": {"params": [3e4], "aspect_ratio": 32, "n_heads": 5}},
            [],
            "sweep.sizes.params=3e+04 gives model.d_model=48, not divisible by model.n_heads=5",
        ),
        (
            {"sizes": {"params": [1e4], "aspect_ratio": 32, "head_dim": 24, "d_model_multiple": 16}},
            [],
            "not divisible by sweep.sizes.head_dim=24",
        ),
        ({"tokens": {"fixed": [-1e6]}}, [], "sweep.tokens.fixed=-1e+06: must be a positive number"),
        (
            {"tokens": {"isoflop": {"budgets": [-1e12]}}, "sizes": RULE},
            [],
            "sweep.tokens.isoflop.budgets=-1e+12: must be a positive number",
        ),
        ({"tokens": {"fixed": [10]}}, [], "less than one batch (256 tokens)"),
        (
            {"sizes": {"shapes": [{"n_layers": 1, "d_model": 30, "n_heads": 4}]}},
            [],
            "not divisible by model.n_heads=4",
        ),
        ({"seeds": [0, 1]}, ["train.seed=3"], "train.seed is set by sweep.seeds"),
        ({"tokens": {"fixed": [512, 512]}}, [], "two cells share the run id 'L2-D64-T512-s0'"),
        ({"tokens": {"isoflop": {"budgets": [1e11]}}, "sizes": {"params": [1e4], **RULE}}, [], "IsoFLOP"),
        (
            {"tokens": {"fixed": [2560, 5120], "max_flops": 1e3}},
            [],
            "sweep.tokens.max_flops=1e+03: size L2-D64 has no budget under it",
        ),
        ({"tokens": {"max_flops": 1e12}}, [], "sweep.tokens.max_flops: caps a cross of sizes and budgets"),
        (
            {"tokens": {"isoflop": {"budgets": [1e11]}, "max_flops": 1e12}, "sizes": RULE},
            [],
            "an IsoFLOP sweep's budgets are its compute",
        ),
        (
            {"tokens": {"fixed": [2560], "max_flops": -1}},
            [],
            "sweep.tokens.max_flops=-1: must be a positive number",
        ),
        ({"lr": {"rule": "sqrt"}}, [], "sweep.lr.rule='sqrt'"),
        ({"axes": ["model.mlp"]}, [], "sweep.axes=['model.mlp']: expected a mapping"),
        ({"axes": ["model.mlp"]}, ["sweep.axes.model.mlp=[gelu]"], "sweep.axes=['model.mlp']"),
        ({}, ["sweep.axes.model.mlp=[gelu"], "override 'sweep.axes.model.mlp=[gelu': the value is not valid"),
        ({}, ["train.seed=[1,"], "override 'train.seed=[1,': the value is not valid YAML"),
    ],
)
def test_bad_specs_raise_one_line_errors_naming_the_key(sweep, overrides, message):
    with pytest.raises(ConfigError) as e:
        expand(sweep, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_an_axis_override_fills_an_axes_section_left_empty():
    sweep = expand({"axes": None}, ["sweep.axes.model.mlp=[gelu, swiglu]"])
    assert {c.cfg.model.mlp for c in sweep.cells} == {"gelu", "swiglu"}


def test_a_file_without_a_sweep_section_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {d_model: 64}\n")
    with pytest.raises(ConfigError, match="no 'sweep:' section"):
        grid.load(path)


def test_validation_names_the_cell_that_does_not_fit_the_devices():
    sweep = expand({"sizes": {"shapes": [{"n_layers": 1, "d_model": 32, "n_heads": 2}]}})
    with pytest.raises(ConfigError, match=r"cell L1-D32-T8.19K-s0: train.batch_size=8 .* not divisible"):
        grid.validate_cells(sweep, n_devices=3)
    assert grid.validate_cells(sweep, n_devices=2) is sweep


def test_reading_a_sweep_spec_imports_no_jax(tmp_path):
    """`lmscale sweep` and `lmscale plan` reject a bad spec before they pay for importing JAX."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep: {sizes: {x: 1}}\n")
    code = f"""
import sys
from lmscale.config import ConfigError
from lmscale.sweep import grid
sweep = grid.load({str(ROOT / "experiments" / "cpu_demo.yaml")!r}, ["sweep.eval.shots=[0, 4]"])
try:
    grid.load({str(bad)!r})
except ConfigError as e:
    print(e)
print(len(sweep.cells), "jax" in sys.modules)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=lmscale_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    error, loaded = proc.stdout.splitlines()
    assert error.startswith("unknown sweep key 'sweep.sizes.x'; expected one of shapes, params")
    assert loaded == "40 False"  # 6 trunks and their 24 branches; 2 sizes again at seed 1: 2 + 8 more

    for command in ("sweep", "plan"):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "lmscale", command, str(bad)],
            env=lmscale_env(),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        imported = [line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
        errors = [line for line in proc.stderr.splitlines() if "|" not in line]
        assert proc.returncode == 2 and len(errors) == 1 and "sweep.sizes.x" in errors[0]
        assert "jax" not in imported


def test_isoflop_cpu_runs_the_small_sizes_to_16m_tokens_and_the_largest_to_2m_under_its_ceiling():
    sweep = grid.load(ROOT / "experiments" / "isoflop_cpu.yaml")
    longest: dict[str, int] = {}
    for cell in sweep.cells:
        if cell.role == "branch":
            size = cell.run_id.split("-T")[0]
            longest[size] = max(longest.get(size, 0), cell.cfg.train.tokens)
            assert flops.flops_6nd(cell.cfg.model, cell.cfg.train.tokens) <= 3.5e12
    assert sum(c.role == "branch" for c in sweep.cells) == 54 and len(longest) == 6
    in_m = {size: round(t / 1e6, 1) for size, t in longest.items()}
    assert in_m == {
        "L1-D16": 16.0,
        "L4-D16": 16.0,
        "L4-D24": 16.0,
        "L4-D32": 8.0,
        "L4-D48": 4.0,
        "L5-D64": 2.0,
    }
