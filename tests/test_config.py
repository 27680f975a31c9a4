import pytest

from lmscale import config
from lmscale.cli import main
from tests.conftest import TINY, run_cli


def test_overrides_reach_nested_keys_with_their_types():
    cfg = config.load(TINY, ["train.seed=3", "train.lr=1e-3", "mesh.tensor=2", "model.remat=true"])
    assert cfg.train.seed == 3 and cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.mesh.tensor == 2 and cfg.model.remat is True


def test_rule_override_keeps_the_other_rules_in_order():
    cfg = config.load(TINY, ["mesh.rules.embed=null"])
    assert cfg.mesh.rules["embed"] is None
    assert list(cfg.mesh.rules) == list(config.DEFAULT_RULES)


@pytest.mark.parametrize(
    "overrides, n_devices, key",
    [
        (["model.dropout=0.1"], 1, "model.dropout"),
        (["nonsense.x=1"], 1, "nonsense"),
        (["model.d_model=100", "model.n_heads=3"], 1, "model.d_model"),
        (["mesh.data=4"], 8, "mesh"),
        (["mesh.data=-1", "mesh.fsdp=3"], 8, "mesh.data"),
        (["train.batch_size=12", "mesh.data=8"], 8, "train.batch_size"),
        (["train.batch_size=16", "train.grad_accum=4", "mesh.data=8"], 8, "train.batch_size"),
        (["mesh.tensor=8", "mesh.data=1", "model.n_heads=4"], 8, "model.n_heads"),
        (["model.n_layers=0"], 1, "model.n_layers"),
        (["train.tokens=-5"], 1, "train.tokens"),
        (["train.tokens=10"], 1, "train.tokens"),
        (["train.batch_size=0"], 1, "train.batch_size"),
        (["model.mlp=relu"], 1, "model.mlp"),
        (["train.lr=fast"], 1, "train.lr"),
        (["mesh.rules.batch=pipeline"], 1, "mesh.rules.batch"),
        (["checkpoint.every_steps=100", "checkpoint.keep_period=150"], 1, "checkpoint.keep_period"),
        (["checkpoint.keep_period=-100"], 1, "checkpoint.keep_period"),
    ],
)
def test_bad_values_raise_one_line_errors_naming_the_key(overrides, n_devices, key):
    with pytest.raises(config.ConfigError) as err:
        config.validate(config.load(TINY, overrides), n_devices)
    message = str(err.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.flash=true"], "model.flash"),
        (["model.d_model=50"], "model.d_model"),
        (["mesh.data=2"], "mesh"),
        (["model.d_model=-64"], "model.d_model"),
        (["train.tokens=0"], "train.tokens"),
    ],
)
def test_cli_rejects_bad_configs_with_status_2_and_writes_nothing(tmp_path, capsys, overrides, key):
    out = tmp_path / "run"
    assert main(["train", str(TINY), "--out", str(out), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_rejects_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_batch_not_divisible_by_eight_devices_fails_before_training(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", TINY, "--out", out, "train.batch_size=12", devices=8)
    assert proc.returncode == 2
    assert "train.batch_size=12" in proc.stderr and "data-parallel" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "bench" in proc.stdout
    proc = run_cli("train", "--help")
    assert proc.returncode == 0 and "key=value" in proc.stdout
