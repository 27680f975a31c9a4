import pytest

from lmscale import config
from lmscale.config import ConfigError, TrainConfig
from lmscale.schedule import check, decay_start, schedule, warmup


def test_schedule_warms_up_then_ends_at_a_tenth_of_peak_on_the_last_step():
    t = TrainConfig(lr=1e-3, warmup_frac=0.1)
    lr = schedule(t, total_steps=200)
    assert float(lr(0)) == 0.0
    assert float(lr(20)) == pytest.approx(1e-3)
    values = [float(lr(s)) for s in range(20, 201)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))  # monotone cosine decay
    assert float(lr(200)) == pytest.approx(1e-4)
    assert float(lr(110)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-3)  # halfway down


def test_schedule_stretches_with_the_budget():
    t = TrainConfig(lr=1e-3, warmup_frac=0.1)
    short, long = schedule(t, 100), schedule(t, 1000)
    assert float(short(100)) == pytest.approx(float(long(1000)))
    assert float(short(55)) == pytest.approx(float(long(550)), rel=1e-5)


def _wsd(**kw) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-3, "schedule": "wsd", "warmup_steps": 10, "decay_frac": 0.2} | kw)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_warms_up_holds_the_peak_then_decays_over_the_last_fifth_to_the_final_fraction(shape):
    lr = schedule(_wsd(decay_shape=shape), total_steps=100)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(5e-4)
    assert [float(lr(s)) for s in range(10, 81)] == [pytest.approx(1e-3, rel=1e-7)] * 71  # stable stage
    decay = [float(lr(s)) for s in range(80, 101)]
    assert all(a > b for a, b in zip(decay[:-1], decay[1:], strict=True))
    assert decay[-1] == pytest.approx(1e-4)  # final_lr_frac of peak, exactly at the run's own budget
    left = {"linear": 0.5, "cosine": 0.5, "1-sqrt": 1 - 0.5**0.5}[shape]  # of the way down, halfway
    assert float(lr(90)) == pytest.approx(1e-4 + 9e-4 * left, rel=1e-5)


def test_before_its_decay_a_wsd_schedule_is_the_same_for_every_budget_and_equals_constant():
    """What makes a cooldown branch exact: a trunk at constant lr is every budget's run up to its decay."""
    trunk = schedule(_wsd(schedule="constant"), total_steps=10)  # the budget does not matter
    for total in (50, 100, 400):
        lr = schedule(_wsd(), total)
        start = decay_start(_wsd(), total)
        assert start == total - round(0.2 * total)
        assert [float(lr(s)) for s in range(start)] == [float(trunk(s)) for s in range(start)]  # bitwise
        assert float(lr(start + 1)) < 1e-3


def test_cosine_keeps_its_warmup_fraction_and_wsd_checks_it_has_room():
    assert warmup(TrainConfig(warmup_frac=0.1), 200) == 20 and warmup(_wsd(), 200) == 10
    check(_wsd(), 12)  # 10 warmup steps, then 2 decaying: the decay starts where the warmup ends
    with pytest.raises(ConfigError, match="train.schedule=wsd: no room for warmup plus decay in 11 steps"):
        check(_wsd(), 11)
    check(TrainConfig(), 1)  # cosine: any budget


def _load(train: dict, *overrides: str, written: bool = False):
    raw = {"model": {"seq_len": 32}, "train": {"batch_size": 8, **train}} | ({"meta": {}} if written else {})
    return config.from_dict(raw, list(overrides))


def test_steps_and_warmup_steps_are_the_other_form_of_tokens_and_warmup_frac():
    cfg = _load({"steps": 300, "warmup_steps": 30})
    assert (cfg.train.tokens, cfg.steps) == (300 * 8 * 32, 300)
    assert warmup(cfg.train, cfg.steps) == 30
    assert float(schedule(cfg.train, cfg.steps)(30)) == pytest.approx(cfg.train.lr)  # peak after 30 updates
    assert warmup(_load({}).train, 400) == 20  # neither form: cosine warms up over 5% of the steps
    assert warmup(_load({}, "train.schedule=wsd").train, 400) == 100  # wsd: 100 steps whatever the budget
    # wsd and constant keep one warmup for every budget: a fraction does not apply to them
    assert warmup(_load({"warmup_frac": 0.3}, "train.schedule=wsd").train, 400) == 100


def test_an_override_of_one_form_replaces_the_files_other_form_and_both_in_one_place_is_an_error():
    cfg = _load({"tokens": 819_200, "warmup_frac": 0.05}, "train.steps=10", "train.warmup_steps=3")
    assert (cfg.steps, warmup(cfg.train, cfg.steps)) == (10, 3)
    cfg = _load({"steps": 10}, "train.tokens=5120")
    assert cfg.steps == 20
    for train, overrides in (
        ({"tokens": 5120, "steps": 10}, ()),
        ({}, ("train.tokens=5120", "train.steps=10")),
    ):
        with pytest.raises(ConfigError, match="train.tokens=5120 and train.steps=10 are two forms"):
            _load(train, *overrides)
    with pytest.raises(ConfigError, match="train.warmup_frac=0.1 and train.warmup_steps=5 are two forms"):
        _load({"warmup_frac": 0.1, "warmup_steps": 5})


def test_a_run_config_written_with_both_warmup_keys_reads_as_it_trained():
    """config.yaml files written before warmup_steps became cosine's other form hold both keys."""
    both = {"tokens": 400 * 8 * 32, "warmup_frac": 0.05, "warmup_steps": 100}
    assert warmup(_load(both, written=True).train, 400) == 20
    assert warmup(_load(both | {"schedule": "wsd"}, written=True).train, 400) == 100
