"""The one-line config error and the checked types every config section is built from.

Kept apart from `config` so a section defined beside the code it configures (`tracking.LogConfig`) can
use them without importing the whole config."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Annotated, Any


class ConfigError(ValueError):
    """A bad config value; the message names the key and is one line."""


@dataclasses.dataclass(frozen=True)
class Check:
    """A condition the loader checks once a value has its type, as in `Annotated[int, Check(...)]`."""

    ok: Callable[[Any], bool]
    need: str  # ends the message `{key}={value}: {need}`


PosInt = Annotated[int, Check(lambda n: n >= 1, "expected an integer >= 1")]
NonNegInt = Annotated[int, Check(lambda n: n >= 0, "expected an integer >= 0")]
PosFloat = Annotated[float, Check(lambda x: 0 < x < math.inf, "must be a positive number")]
NonNegFloat = Annotated[float, Check(lambda x: 0 <= x < math.inf, "must be a finite number >= 0")]
OpenUnit = Annotated[float, Check(lambda x: 0 < x < 1, "must be in (0, 1)")]  # Adam's betas
