"""The `sweep:` section as typed dataclasses, read by the run config's own loader (`config.build`).

The loader checks every key's type, choice and bound; `read` then applies `sweep.*` overrides and the
rules that span keys (shapes or params, one token form, the width rule's base width, known tasks).
Importing this module imports no JAX, so `lmscale sweep` and `lmscale plan` reject a bad spec first.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from lmscale import config
from lmscale.config import (
    Check,
    Config,
    ConfigError,
    ModelConfig,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    parse_overrides,
)
from lmscale.fewshot import tasks
from lmscale.sweep.shapes import SizeRule


@dataclasses.dataclass(frozen=True)
class Shape:
    """One explicit model shape, `sweep.sizes.shapes[i]`."""

    n_layers: PosInt
    d_model: PosInt
    n_heads: PosInt
    d_ff: NonNegInt | None = None  # None: the base config's model.d_ff

    def model(self, base: ModelConfig) -> ModelConfig:
        d_ff = base.d_ff if self.d_ff is None else self.d_ff
        return dataclasses.replace(
            base, n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_ff=d_ff
        )


@dataclasses.dataclass(frozen=True)
class Sizes:
    """`sweep.sizes`: explicit shapes, or parameter counts and the rule that turns them into shapes."""

    shapes: tuple[Shape, ...] | None = None
    params: tuple[PosFloat, ...] | None = None
    count: Literal["nonembedding", "total"] = "nonembedding"  # which count `params` means
    # The shape rule (lmscale.sweep.shapes.SizeRule); None where not given.
    aspect_ratio: PosFloat | None = None  # d_model / n_layers aimed for
    head_dim: PosInt | None = None  # give exactly one of head_dim and n_heads
    n_heads: PosInt | None = None
    d_model_multiple: PosInt | None = None  # None: head_dim, or 16
    d_ff_multiple: NonNegFloat | None = None  # d_ff = this * d_model; None or 0: the model's default
    aspect_weight: float | None = None  # None: 0.25

    def rule(self, isoflop: bool) -> SizeRule | None:
        """The shape rule when parameter counts need one (`params`, or an IsoFLOP sweep), else None."""
        keys = [f.name for f in dataclasses.fields(SizeRule) if f.name != "count"]
        if self.params is None and not isoflop:
            given = [k for k in keys if getattr(self, k) is not None]
            if given:
                raise ConfigError(
                    f"sweep.sizes.{given[0]}: a shape rule needs sweep.sizes.params to apply to"
                )
            return None
        if self.aspect_ratio is None:
            raise ConfigError("sweep.sizes.aspect_ratio: required to turn parameter counts into shapes")
        if (self.head_dim is None) == (self.n_heads is None):
            raise ConfigError("sweep.sizes: give exactly one of head_dim and n_heads")
        return SizeRule(
            aspect_ratio=self.aspect_ratio,
            head_dim=self.head_dim,
            n_heads=self.n_heads,
            d_model_multiple=self.d_model_multiple or self.head_dim or 16,
            d_ff_multiple=self.d_ff_multiple or 0.0,
            aspect_weight=0.25 if self.aspect_weight is None else self.aspect_weight,
            count="total" if isoflop else self.count,  # C = 6ND counts every parameter
        )


@dataclasses.dataclass(frozen=True)
class IsoFlop:
    """`sweep.tokens.isoflop`: sizes spaced around each compute budget's optimum."""

    budgets: tuple[PosFloat, ...]  # compute budgets C in FLOPs (6ND)
    sizes: PosInt = 5  # sizes per budget
    spread: PosFloat = 4.0  # sizes run from N*/spread to N* x spread
    tokens_per_param: PosFloat = 20.0  # D/N at the optimum N* (Hoffmann et al. 2022)


@dataclasses.dataclass(frozen=True)
class Cooldowns:
    """`sweep.tokens.cooldowns`: several budgets per size, served by one constant-lr trunk (WSD branches)."""

    per_param: tuple[PosFloat, ...] | None = None  # tokens = each x total params, increasing
    budgets: tuple[PosFloat, ...] | None = None  # or absolute token budgets, increasing
    # each branch decays over the last decay_frac of its budget (train.decay_frac of its WSD schedule)
    decay_frac: Annotated[float, Check(lambda x: 0 < x < 1, "must be in (0, 1)")] = 0.2


@dataclasses.dataclass(frozen=True)
class Tokens:
    """`sweep.tokens`: one of fixed budgets, tokens per parameter, IsoFLOP budgets or cooldowns."""

    fixed: tuple[PosFloat, ...] | None = None
    per_param: tuple[PosFloat, ...] | None = None
    isoflop: IsoFlop | None = None
    cooldowns: Cooldowns | None = None
    # A compute ceiling on a cross of sizes and budgets: a cell above it (6ND, total parameters) is left
    # out, so small sizes can run to budgets the largest cannot afford (an IsoFLOP-envelope grid).
    max_flops: PosFloat | None = None

    FORMS = ("fixed", "per_param", "isoflop", "cooldowns")  # the ways to give budgets: one at most

    def given(self) -> list[str]:
        return [name for name in self.FORMS if getattr(self, name) is not None]


@dataclasses.dataclass(frozen=True)
class Lr:
    """`sweep.lr`: the peak learning rate of each cell."""

    rule: Literal["constant", "width"] = "constant"  # width: lr = base * (base_width / d_model) ^ exponent
    base: PosFloat | None = None  # None: the base config's train.lr
    base_width: PosFloat | None = None  # the d_model that gets lr = base; required by the width rule
    exponent: float = 1.0

    def peak(self, cfg: Config) -> float:
        base = cfg.train.lr if self.base is None else self.base
        if self.rule == "constant":
            return base
        return base * (self.base_width / cfg.model.d_model) ** self.exponent


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Few-shot evaluation after every run (`sweep.eval`); None fields mean every task / shot count."""

    tasks: tuple[str, ...] | None = None
    shots: tuple[NonNegInt, ...] | None = None  # None: every default count that fits the context
    examples: PosInt = 100
    batch_size: PosInt = 64
    steps: Literal["latest", "all"] = "latest"  # all: every checkpoint the run kept (checkpoint.keep_period)
    runs: Literal["all", "largest"] = "all"  # largest: each size's largest token budget only (per seed, lr)


@dataclasses.dataclass(frozen=True)
class Repeats:
    """`sweep.repeats`: some sizes trained again with more seeds, every budget of each, so that the
    report can set the run-to-run spread of the final loss beside the fit's residuals at a fraction of
    the cost of seeding the whole grid."""

    seeds: tuple[NonNegInt, ...]
    sizes: tuple[str, ...]  # run-id size labels, L<n_layers>-D<d_model>


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """The whole `sweep:` section; None means a section was not given."""

    sizes: Sizes | None = None
    tokens: Tokens | None = None
    seeds: tuple[NonNegInt, ...] | None = None  # None: the base config's train.seed
    repeats: Repeats | None = None
    lr: Lr | None = None
    axes: dict[str, tuple[Any, ...]] | None = None  # dotted config key -> its values
    eval: EvalSpec | None = EvalSpec()  # None: `sweep.eval: false`, no evaluation

    def taken(self) -> dict[str, str]:
        """Config keys the sweep sets -> the sweep key that sets them (they cannot also be overridden)."""
        sizes, tokens = self.sizes or Sizes(), self.tokens or Tokens()
        taken = {}
        if sizes.shapes or sizes.params or tokens.isoflop:
            taken |= {f"model.{f.name}": "sweep.sizes" for f in dataclasses.fields(Shape)}
        if tokens.given():
            taken["train.tokens"] = "sweep.tokens"
        if tokens.cooldowns:
            taken |= dict.fromkeys(("train.schedule", "train.decay_frac"), "sweep.tokens.cooldowns")
        if self.seeds is not None or self.repeats is not None:
            taken["train.seed"] = "sweep.seeds"
        if self.lr is not None:
            taken["train.lr"] = "sweep.lr"
        return taken


def split_overrides(overrides: list[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """CLI overrides into (run-config overrides, sweep-section overrides with parsed values)."""
    base, sweep = [], []
    for item in overrides:
        key, value = parse_overrides([item])[0]
        if key == "sweep" or key.startswith("sweep."):
            sweep.append((key, value))
        else:
            base.append(item)
    return base, sweep


def _override(section: dict, key: str, value: Any) -> None:
    rest = key.removeprefix("sweep").removeprefix(".")
    if not rest:
        raise ConfigError(f"override '{key}': name a key inside the sweep section")
    if rest.startswith("axes."):  # axis names are dotted config keys themselves
        if section.get("axes") is None:  # absent, or left empty in YAML
            section["axes"] = {}
        if isinstance(section["axes"], dict):  # anything else: the loader names it
            section["axes"][rest.removeprefix("axes.")] = value
    else:
        config.set_dotted({"sweep": section}, key, value)


def read(section: Any, overrides: list[tuple[str, Any]] = ()) -> SweepSpec:
    """The typed `sweep:` section with `sweep.*` overrides applied; ConfigError (one line) if it is bad."""
    if isinstance(section, dict):  # anything else: the loader names it
        for key, value in overrides:
            _override(section, key, value)
        if section.get("eval") is None or section.get("eval") is True:  # `eval:` alone: the defaults
            section.pop("eval", None)
        elif section["eval"] is False:
            section["eval"] = None
    spec = config.build(SweepSpec, section, "sweep.", kind="sweep")

    sizes, tokens = spec.sizes or Sizes(), spec.tokens or Tokens()
    if sizes.shapes and sizes.params:
        raise ConfigError("sweep.sizes: give either shapes or params, not both")
    for i, shape in enumerate(sizes.shapes or ()):
        if shape.d_model % shape.n_heads:
            raise ConfigError(
                f"sweep.sizes.shapes[{i}]: model.d_model={shape.d_model} is not divisible by "
                f"model.n_heads={shape.n_heads}"
            )
    if len(tokens.given()) > 1:
        forms = ", ".join(Tokens.FORMS)
        raise ConfigError(f"sweep.tokens: give one of {forms}, not {', '.join(tokens.given())}")
    if tokens.isoflop and (sizes.shapes or sizes.params):
        raise ConfigError(
            "sweep.sizes: an IsoFLOP sweep picks its sizes around each budget's optimum; "
            "give only the shape rule"
        )
    if tokens.cooldowns:
        _check_cooldowns(tokens.cooldowns)
    if tokens.max_flops is not None and (tokens.isoflop or not tokens.given()):
        raise ConfigError(
            "sweep.tokens.max_flops: caps a cross of sizes and budgets (fixed, per_param or cooldowns); "
            "an IsoFLOP sweep's budgets are its compute"
        )
    if spec.lr and spec.lr.rule == "width" and spec.lr.base_width is None:
        raise ConfigError("sweep.lr.base_width: required by the width rule (the d_model that gets lr = base)")
    if spec.eval is not None:
        _check_eval(spec.eval)
    return spec


def _check_cooldowns(spec: Cooldowns) -> None:
    given = [name for name in ("per_param", "budgets") if getattr(spec, name) is not None]
    if len(given) != 1:
        raise ConfigError("sweep.tokens.cooldowns: give one of per_param and budgets")
    values = getattr(spec, given[0])
    if any(b <= a for a, b in zip(values[:-1], values[1:], strict=True)):
        shown = ", ".join(f"{x:g}" for x in values)
        raise ConfigError(f"sweep.tokens.cooldowns.{given[0]}=[{shown}]: budgets must increase")


def _check_eval(spec: EvalSpec) -> None:
    for name in spec.tasks or ():
        try:
            tasks.get(name)
        except ConfigError as e:
            raise ConfigError(f"sweep.eval.tasks: {e}") from None
    if spec.shots is not None:
        tasks.check_shots(spec.shots, "sweep.eval.shots")
