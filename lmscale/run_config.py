"""A run directory's config.yaml: the environment it records, and the check that a rerun is the same run."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import flax
import jax
import optax

import lmscale
from lmscale import schedule
from lmscale.config import Config, ConfigError, from_dict, read_yaml

# How a run warms up is compared by its effect: config.yaml files written before `warmup_steps` became an
# alternative to `warmup_frac` hold both keys, of which the schedule used one.
_BY_EFFECT = {"warmup_frac", "warmup_steps"}


def environment() -> dict:
    """The library versions and devices of this process: the part of a run's metadata that asks JAX."""
    devices = jax.devices()
    return {
        "versions": {
            "lmscale": lmscale.__version__,
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "orbax_checkpoint": importlib.metadata.version("orbax-checkpoint"),  # not imported: 0.2 s
            "python": platform.python_version(),
        },
        "devices": {
            "platform": devices[0].platform,
            "kind": devices[0].device_kind,
            "count": len(devices),
            "processes": jax.process_count(),
        },
    }


def check_same_config(path: Path, cfg: Config) -> None:
    """A run directory belongs to one config; resuming it with another would mix two runs."""
    old = from_dict(read_yaml(path))
    old_dict, new = old.to_dict(), cfg.to_dict()
    for section in [s for s in new if s != "log"]:  # a tracker watches a run and changes no step of it
        for key in new[section]:
            if section == "train" and key in _BY_EFFECT:
                continue
            if old_dict[section].get(key) != new[section][key]:
                raise ConfigError(
                    f"{section}.{key}={new[section][key]!r} differs from {old_dict[section].get(key)!r} in "
                    f"'{path}'; use a new --out to train a different config"
                )
    was, now = schedule.warmup(old.train, old.steps), schedule.warmup(cfg.train, cfg.steps)
    if was != now:
        raise ConfigError(
            f"train: {now} warmup steps differ from the {was} of '{path}'; use a new --out to train a "
            "different config"
        )
