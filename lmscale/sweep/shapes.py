"""Parameter counts to model shapes: the size rule of a sweep (aspect ratio, heads, MLP width).

Counts come from `lmscale.flops.param_counts`, so a shape's N is exactly what the trainer reports.
"""

from __future__ import annotations

import dataclasses
import math

from lmscale import flops
from lmscale.config import ConfigError, ModelConfig

MAX_LAYERS = 256


@dataclasses.dataclass(frozen=True)
class SizeRule:
    """How a parameter count becomes a shape: aspect ratio d_model/n_layers, heads, MLP width."""

    aspect_ratio: float
    head_dim: int | None
    n_heads: int | None
    d_model_multiple: int
    d_ff_multiple: float  # 0: the model's default MLP width
    aspect_weight: float  # cost of missing the aspect ratio, against missing the params (both in log)
    count: str  # nonembedding | total

    def model(self, base: ModelConfig, n_layers: int, d_model: int) -> ModelConfig:
        heads = self.n_heads if self.n_heads else max(d_model // self.head_dim, 1)
        d_ff = round(self.d_ff_multiple * d_model) if self.d_ff_multiple else base.d_ff
        return dataclasses.replace(base, n_layers=n_layers, d_model=d_model, n_heads=heads, d_ff=d_ff)

    def params(self, m: ModelConfig) -> int:
        counts = flops.param_counts(m)
        return counts.nonembedding if self.count == "nonembedding" else counts.total


def _nearest_width(rule: SizeRule, base: ModelConfig, n_layers: int, target: float) -> ModelConfig:
    """The multiple of d_model_multiple whose param count is nearest `target` (in log) at this depth."""
    step = rule.d_model_multiple
    count = lambda k: rule.params(rule.model(base, n_layers, k * step))  # noqa: E731
    hi = 1
    while count(hi) < target and hi < 1 << 20:
        hi *= 2
    lo = 1
    while hi - lo > 1:  # the count grows with width: bisect for the first k at or above target
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    k = min((lo, hi), key=lambda k: abs(math.log(count(k) / target)))
    return rule.model(base, n_layers, k * step)


def shape_for_params(rule: SizeRule, base: ModelConfig, target: float, key: str) -> ModelConfig:
    """The shape minimising |ln(N / target)| + aspect_weight * |ln((d_model / n_layers) / aspect_ratio)|
    over every depth, each at its best width. Raises if the heads do not divide d_model."""

    def cost(m: ModelConfig) -> tuple[float, int]:
        miss = abs(math.log(rule.params(m) / target))
        aspect = abs(math.log(m.d_model / m.n_layers / rule.aspect_ratio))
        return miss + rule.aspect_weight * aspect, m.n_layers

    m = min((_nearest_width(rule, base, n, target) for n in range(1, MAX_LAYERS + 1)), key=cost)
    if rule.head_dim and m.d_model % rule.head_dim:
        raise ConfigError(
            f"{key}={target:.4g} gives model.d_model={m.d_model}, not divisible by "
            f"sweep.sizes.head_dim={rule.head_dim}"
        )
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"{key}={target:.4g} gives model.d_model={m.d_model}, not divisible by model.n_heads={m.n_heads}"
        )
    return m
