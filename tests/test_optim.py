import pytest

from lmscale.config import TrainConfig
from lmscale.optim import schedule


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
