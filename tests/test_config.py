import pytest

from lmscale import config
from lmscale.cli import main
from tests.conftest import NO_SAVES, TINY, run_cli


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
        (["train.seed=-1"], 1, "train.seed=-1"),
        (["data.synthetic.seed=-2"], 1, "data.synthetic.seed=-2"),
        (
            ["data.corpus=mixture", "data.mixture=[{corpus: synthetic, synthetic: {seed: -3}}]"],
            1,
            "data.mixture[0].synthetic.seed=-3",
        ),
        (["mesh.rules.embed=3"], 1, "mesh.rules.embed=3"),
        (["mesh.rules.embed={a: fsdp}"], 1, "mesh.rules.embed"),
        (["mesh.rules.batch=[data, data]"], 1, "mesh.rules.batch"),
        (["mesh.rules.layers=fsdp", "model.n_layers=2", "mesh.fsdp=4"], 8, "model.n_layers=2"),
        (["mesh.rules.kv=tensor", "mesh.tensor=4", "mesh.data=2", "model.d_model=72"], 8, "model.d_model"),
        (
            [
                "mesh.rules.batch=tensor",
                "mesh.tensor=8",
                "mesh.data=1",
                "model.n_heads=8",
                "train.batch_size=12",
            ],
            8,
            "data-parallel size mesh.tensor=8",
        ),
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


@pytest.mark.parametrize(
    "overrides, n_devices, message",
    [
        (
            ["mesh.tensor=8", "mesh.data=1", "model.n_heads=4"],
            8,
            "model.n_heads=4 is not divisible by mesh.tensor=8 (mesh.rules.heads=tensor)",
        ),
        (
            ["mesh.rules.layers=fsdp", "model.n_layers=2", "mesh.fsdp=4"],
            8,
            "model.n_layers=2 is not divisible by mesh.fsdp=4 (mesh.rules.layers=fsdp)",
        ),
        (
            ["mesh.rules.vocab=[data, tensor]", "mesh.data=4", "mesh.tensor=2", "model.vocab_size=324"],
            8,
            "model.vocab_size=324 is not divisible by mesh.data*mesh.tensor=8",
        ),
        (["mesh.data=3", "train.batch_size=32"], 3, "data-parallel size mesh.data*mesh.fsdp=3"),
    ],
)
def test_divisibility_follows_the_mesh_rules(overrides, n_devices, message):
    with pytest.raises(config.ConfigError) as err:
        config.validate(config.load(TINY, overrides), n_devices)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["mesh.rules.vocab=null", "model.vocab_size=321", "mesh.tensor=2"],
        ["mesh.rules.embed=null", "model.d_model=36", "model.n_heads=2", "mesh.fsdp=8", "mesh.data=1"],
        [
            "mesh.rules.heads=null",
            "mesh.rules.mlp=null",
            "model.n_heads=3",
            "model.d_model=96",
            "mesh.tensor=2",
        ],
    ],
)
def test_axes_the_rules_leave_unsplit_need_not_divide(overrides):
    config.validate(config.load(TINY, overrides), 8)


def test_a_config_split_as_its_rules_say_trains(tmp_path, tiny_overrides):
    """vocab_size=321 is not divisible by mesh.tensor=2, but with mesh.rules.vocab=null nothing splits it."""
    out = tmp_path / "run"
    overrides = [*tiny_overrides, *NO_SAVES, "train.tokens=2560", "mesh.tensor=2", "mesh.rules.vocab=null"]
    proc = run_cli(
        "train", TINY, "--out", out, "--no-progress", *overrides, "model.vocab_size=321", devices=2
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("override", ["train.seed=[1,", "model.mlp={a", "mesh.rules.embed=[fsdp"])
def test_an_override_that_is_not_yaml_exits_2_naming_it(tmp_path, capsys, override):
    out = tmp_path / "run"
    assert main(["train", str(TINY), "--out", str(out), override]) == 2
    err = capsys.readouterr().err.strip()
    assert f"override '{override}'" in err and "not valid YAML" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"- a\n- b\n", "expected a mapping of sections"),
        (b"model: {n_layers: [1,\n", "is not valid YAML: expected the node content"),
        (b"model:\n  n_layers: 2\n   d_model: 3\n", "at line 3, column"),
        (b"\xff\xfe model: {}\n", "is not UTF-8"),
    ],
)
def test_an_unreadable_config_file_exits_2_naming_the_file(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
