"""Learning-rate schedules, all ending exactly at the run's own budget: cosine, warmup-stable-decay
(WSD) and constant.

The step arithmetic (`warmup`, `decay_start`, `check`) is plain Python, read by the sweep planner and the
config checks before JAX is imported; `schedule` builds the optax schedule and imports optax itself.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from lmscale.config import Config, ConfigError, TrainConfig

if TYPE_CHECKING:
    import optax


# Each pair is one setting in two forms: a config gives at most one of them.
ALTERNATIVES = (("tokens", "steps"), ("warmup_frac", "warmup_steps"))
DEFAULT_WARMUP_FRAC = 0.05  # cosine, when neither form is given
DEFAULT_WARMUP_STEPS = 100  # wsd and constant, when warmup_steps is not given


def warmup(t: TrainConfig, total_steps: int) -> int:
    """Warmup steps. cosine: `warmup_frac` of the budget, or `warmup_steps` when that form is given.
    wsd and constant: always a fixed count (`warmup_steps`), so that every budget of one shape shares
    its warmup and its constant stage; a `warmup_frac` does not apply to them."""
    if t.schedule == "cosine" and (t.warmup_frac is not None or t.warmup_steps is None):
        return int((DEFAULT_WARMUP_FRAC if t.warmup_frac is None else t.warmup_frac) * total_steps)
    return DEFAULT_WARMUP_STEPS if t.warmup_steps is None else t.warmup_steps


def resolve(cfg: Config, raw_train: dict | None, overridden: set[str]) -> Config:
    """`cfg` with `train.steps` turned into `train.tokens`, after checking that each of ALTERNATIVES is
    given in one form at most. An override of one form replaces the config file's other form."""
    given = {k for k, v in (raw_train or {}).items() if v is not None}
    dropped = {}
    for pair in ALTERNATIVES:
        if set(pair) <= given:
            winners = [k for k in pair if f"train.{k}" in overridden]
            if len(winners) != 1:
                a, b = (f"train.{k}={raw_train[k]}" for k in pair)
                raise ConfigError(f"{a} and {b} are two forms of one setting; give one of them")
            (loser,) = set(pair) - set(winners)
            dropped[loser] = None
    t = dataclasses.replace(cfg.train, **dropped)
    if t.steps is not None:
        t = dataclasses.replace(t, tokens=t.steps * t.batch_size * cfg.model.seq_len, steps=None)
    return dataclasses.replace(cfg, train=t)


def decay_start(t: TrainConfig, total_steps: int) -> int:
    """The first step of WSD's decay: the last `decay_frac` of the run (at least one step) decays.

    Before it the WSD schedule does not depend on the budget: a constant-lr trunk's checkpoint at this
    step is exactly a from-scratch WSD run's state there, which is what a cooldown branch restores."""
    return total_steps - max(1, round(t.decay_frac * total_steps))


def check(t: TrainConfig, total_steps: int) -> None:
    """A WSD run must fit its warmup and its decay, with a step of the stable stage to branch from."""
    if t.schedule != "wsd":
        return
    start, warm = decay_start(t, total_steps), warmup(t, total_steps)
    if start < max(warm, 1):
        raise ConfigError(
            f"train.schedule=wsd: no room for warmup plus decay in {total_steps} steps "
            f"(train.warmup_steps={warm}, train.decay_frac={t.decay_frac:g}: "
            f"{total_steps - start} decay steps)"
        )


class LearningRates:
    """The schedule's learning rate at each update 0..total_steps, float32, evaluated on the host in
    blocks of BLOCK updates as the run reaches them. The train step takes its learning rate as an input
    rather than baking the schedule in as constants, so one compiled step serves every budget of a shape:
    a cooldown trunk and all its branches compile once. Block boundaries sit at multiples of BLOCK from
    update 0, so two runs with one schedule read bitwise the same rates."""

    BLOCK = 4096

    def __init__(self, t: TrainConfig, total_steps: int):
        self.fn, self.total = schedule(t, total_steps), total_steps
        self._block: tuple[int, np.ndarray | None] = (-1, None)

    def __len__(self) -> int:
        return self.total + 1

    def __getitem__(self, step: int) -> np.float32:
        if not 0 <= step <= self.total:
            raise IndexError(f"update {step} is outside the schedule's 0..{self.total}")
        b = step // self.BLOCK
        if self._block[0] != b:
            import jax
            import jax.numpy as jnp

            lo, hi = b * self.BLOCK, min((b + 1) * self.BLOCK, self.total + 1)
            with jax.default_device(jax.devices("cpu")[0]):
                self._block = (b, np.asarray(self.fn(jnp.arange(lo, hi)), np.float32))
        return self._block[1][step - b * self.BLOCK]


def _decay(t: TrainConfig, steps: int) -> optax.Schedule:
    """From peak to `final_lr_frac` of peak over `steps`, in the shape `t.decay_shape`."""
    import jax.numpy as jnp
    import optax

    end = t.lr * t.final_lr_frac
    if t.decay_shape == "linear":
        return optax.linear_schedule(t.lr, end, steps)
    if t.decay_shape == "cosine":
        return optax.cosine_decay_schedule(t.lr, steps, alpha=t.final_lr_frac)

    def one_minus_sqrt(count):  # Hägele et al. 2024, eq. 3: 1 - sqrt(progress), their best cooldown
        progress = jnp.clip(count / steps, 0.0, 1.0)
        return end + (t.lr - end) * (1.0 - jnp.sqrt(progress))

    return one_minus_sqrt


def schedule(t: TrainConfig, total_steps: int) -> optax.Schedule:
    """The learning rate at each update of a run of `total_steps` steps.

    cosine: linear warmup over `warmup_frac` of the steps (or over `warmup_steps`), then cosine decay to
    `final_lr_frac` of peak at exactly `total_steps`. The decay length is the run's own budget: Hoffmann
    et al. 2022 show that a cosine cycle longer than the run overestimates its loss and biases the fits.
    wsd: linear warmup over `warmup_steps`, constant peak, then the last `decay_frac` of the run decays to
    `final_lr_frac` of peak (Hägele et al. 2024: it matches cosine at the same budget).
    constant: linear warmup over `warmup_steps`, then peak to the end (a cooldown sweep's trunk).
    """
    import optax

    steps = warmup(t, total_steps)
    if t.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=t.lr,
            warmup_steps=steps,
            decay_steps=max(total_steps, steps + 1),
            end_value=t.lr * t.final_lr_frac,
        )
    parts = [optax.linear_schedule(0.0, t.lr, steps), optax.constant_schedule(t.lr)]
    if t.schedule == "constant":
        return optax.join_schedules(parts, [steps])
    start = decay_start(t, total_steps)
    return optax.join_schedules([*parts, _decay(t, total_steps - start)], [steps, start])


__all__ = ["warmup", "resolve", "decay_start", "check", "schedule"]
