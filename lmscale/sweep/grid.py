"""Sweep specs: a base run config plus a `sweep:` section, expanded into validated cells.

A cell is one run: a readable, unique run id and a fully resolved `Config`. The axes are sizes
(explicit shapes, or parameter counts turned into shapes by a rule), token budgets (fixed, tokens per
parameter, or IsoFLOP budgets), seeds, a learning-rate rule and any other config key. Every bad spec
raises `ConfigError` with one line naming the key, before anything is built or trained.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from pathlib import Path
from typing import Any

from lmscale import flops
from lmscale.config import Config, ConfigError, from_dict, parse_overrides, read_yaml, validate
from lmscale.sweep.shapes import SizeRule, shape_for_params

SWEEP_KEYS = ("sizes", "tokens", "seeds", "lr", "axes", "eval")
SIZE_KEYS = (
    "shapes", "params", "count", "aspect_ratio", "head_dim", "n_heads", "d_model_multiple",
    "d_ff_multiple", "aspect_weight",
)  # fmt: skip
SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "d_ff")
TOKEN_FORMS = ("fixed", "per_param", "isoflop")
ISOFLOP_KEYS = ("budgets", "sizes", "spread", "tokens_per_param")
LR_KEYS = ("rule", "base", "base_width", "exponent")
EVAL_KEYS = ("tasks", "shots", "examples", "batch_size", "steps")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its id, its resolved config and the sweep coordinates it sits at."""

    run_id: str
    cfg: Config
    coords: dict  # dotted axis key -> value, plus `flops_budget` for IsoFLOP cells

    @property
    def flops(self) -> float:
        """Detailed training FLOPs of the whole run (what the trainer logs)."""
        return self.cfg.steps * flops.step_flops(self.cfg)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Few-shot evaluation after every run (`sweep.eval`); None fields mean every task / shot count."""

    tasks: tuple[str, ...] | None = None
    shots: tuple[int, ...] | None = None  # None: every default count that fits the context
    examples: int = 100
    batch_size: int = 64
    steps: str = "latest"  # latest | all: every checkpoint the run kept (checkpoint.keep_period)


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str  # the YAML file's stem: the sweep directory under --out
    cells: list[Cell]  # cheapest first
    eval: EvalSpec | None = EvalSpec()  # None: `sweep.eval: false`, no evaluation


# -- reading the spec ---------------------------------------------------------------------------


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r}: expected a mapping with keys {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown sweep key '{key}.{unknown[0]}'; expected one of {', '.join(allowed)}")
    return value


def _values(value: Any, key: str) -> list:
    """A scalar or a non-empty list; an empty list empties the whole grid."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{key}=[]: an empty list makes the grid empty")
    return values


def _number(value: Any, key: str, positive: bool = True) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected a number") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise ConfigError(f"{key}={x:g}: must be a positive number")
    return x


def _numbers(section: dict, form: str, label: str) -> list[dict]:
    """`{form: x}` per positive number listed under `section[form]`; `[{}]` (no axis) if it is absent."""
    if form not in section:
        return [{}]
    key = f"{label}.{form}"
    return [{form: _number(x, key)} for x in _values(section[form], key)]


def _integer(value: Any, key: str, minimum: int = 1) -> int:
    x = _number(value, key, positive=False)
    if not x.is_integer() or x < minimum:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {minimum}")
    return int(x)


def _set(raw: dict, dotted: str, value: Any, label: str = "") -> None:
    node = raw
    *sections, name = dotted.split(".")
    for part in sections:
        if node.get(part) is None:  # a section left empty in YAML reads as None
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"'{label}{dotted}': '{label}{part}' is not a section")
    node[name] = value


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


def _apply_sweep_override(spec: dict, key: str, value: Any) -> None:
    rest = key.removeprefix("sweep").removeprefix(".")
    if not rest:
        raise ConfigError(f"override '{key}': name a key inside the sweep section")
    if rest.startswith("axes."):  # axis names are dotted config keys themselves
        if spec.get("axes") is None:  # absent, or left empty in YAML
            spec["axes"] = {}
        _axes_mapping(spec["axes"])[rest.removeprefix("axes.")] = value
    else:
        _set(spec, rest, value, label="sweep.")


# -- sizes ------------------------------------------------------------------------------------


def _size_rule(sizes: dict, need: bool) -> SizeRule | None:
    keys = ("aspect_ratio", "head_dim", "n_heads", "d_model_multiple", "d_ff_multiple", "aspect_weight")
    if not need:
        given = [k for k in keys if k in sizes]
        if given:
            raise ConfigError(f"sweep.sizes.{given[0]}: a shape rule needs sweep.sizes.params to apply to")
        return None
    if "aspect_ratio" not in sizes:
        raise ConfigError("sweep.sizes.aspect_ratio: required to turn parameter counts into shapes")
    if ("head_dim" in sizes) == ("n_heads" in sizes):
        raise ConfigError("sweep.sizes: give exactly one of head_dim and n_heads")
    head_dim = _integer(sizes["head_dim"], "sweep.sizes.head_dim") if "head_dim" in sizes else None
    n_heads = _integer(sizes["n_heads"], "sweep.sizes.n_heads") if "n_heads" in sizes else None
    multiple = sizes.get("d_model_multiple", head_dim or 16)
    count = sizes.get("count", "nonembedding")
    if count not in ("nonembedding", "total"):
        raise ConfigError(f"sweep.sizes.count={count!r}: expected one of nonembedding, total")
    d_ff_multiple = sizes.get("d_ff_multiple", 0)
    return SizeRule(
        aspect_ratio=_number(sizes["aspect_ratio"], "sweep.sizes.aspect_ratio"),
        head_dim=head_dim,
        n_heads=n_heads,
        d_model_multiple=_integer(multiple, "sweep.sizes.d_model_multiple"),
        d_ff_multiple=_number(d_ff_multiple, "sweep.sizes.d_ff_multiple") if d_ff_multiple else 0.0,
        aspect_weight=_number(sizes.get("aspect_weight", 0.25), "sweep.sizes.aspect_weight", positive=False),
        count=count,
    )


def _explicit_shapes(shapes: Any) -> list[dict]:
    shapes = _values(shapes, "sweep.sizes.shapes")
    for i, shape in enumerate(shapes):
        key = f"sweep.sizes.shapes[{i}]"
        _mapping(shape, key, SHAPE_KEYS)
        missing = [k for k in ("n_layers", "d_model", "n_heads") if k not in shape]
        if missing:
            raise ConfigError(f"{key}.{missing[0]}: required in an explicit shape")
        for k, v in shape.items():
            _integer(v, f"{key}.{k}", minimum=0 if k == "d_ff" else 1)
        if int(shape["d_model"]) % int(shape["n_heads"]):
            raise ConfigError(
                f"{key}: model.d_model={shape['d_model']} is not divisible by "
                f"model.n_heads={shape['n_heads']}"
            )
    return [{k: int(v) for k, v in shape.items()} for shape in shapes]


# -- token budgets ----------------------------------------------------------------------------


def _isoflop_targets(iso: dict) -> list[tuple[float, float]]:
    """(compute budget C, target total params N) pairs, geometrically spaced around N*(C)."""
    _mapping(iso, "sweep.tokens.isoflop", ISOFLOP_KEYS)
    if "budgets" not in iso:
        raise ConfigError("sweep.tokens.isoflop.budgets: required (compute budgets in FLOPs, 6ND)")
    budgets = [
        _number(c, "sweep.tokens.isoflop.budgets")
        for c in _values(iso["budgets"], "sweep.tokens.isoflop.budgets")
    ]
    n = _integer(iso.get("sizes", 5), "sweep.tokens.isoflop.sizes")
    spread = _number(iso.get("spread", 4.0), "sweep.tokens.isoflop.spread")
    ratio = _number(iso.get("tokens_per_param", 20.0), "sweep.tokens.isoflop.tokens_per_param")
    pairs = []
    for C in budgets:
        optimum = math.sqrt(C / (6.0 * ratio))  # C = 6 N D with D = ratio * N (Hoffmann et al. 2022)
        for k in range(n):
            offset = 2.0 * k / (n - 1) - 1.0 if n > 1 else 0.0
            pairs.append((C, optimum * spread**offset))
    return pairs


def _eval_spec(value: Any) -> EvalSpec | None:
    """`sweep.eval`: false, or a mapping of tasks, shots, examples and batch_size (all optional)."""
    from lmscale.fewshot import tasks

    if value is False:
        return None
    spec = _mapping({} if value is None or value is True else value, "sweep.eval", EVAL_KEYS)
    names = None
    if spec.get("tasks") is not None:
        names = tuple(str(t) for t in _values(spec["tasks"], "sweep.eval.tasks"))
        for name in names:
            try:
                tasks.get(name)
            except ConfigError as e:
                raise ConfigError(f"sweep.eval.tasks: {e}") from None
    shots = None
    if spec.get("shots") is not None:
        shots = tuple(
            _integer(k, "sweep.eval.shots", minimum=0) for k in _values(spec["shots"], "sweep.eval.shots")
        )
        tasks.check_shots(shots, "sweep.eval.shots")
    steps = spec.get("steps", EvalSpec.steps)
    if steps not in ("latest", "all"):
        raise ConfigError(f"sweep.eval.steps={steps!r}: expected latest or all")
    return EvalSpec(
        names,
        shots,
        _integer(spec.get("examples", EvalSpec.examples), "sweep.eval.examples"),
        _integer(spec.get("batch_size", EvalSpec.batch_size), "sweep.eval.batch_size"),
        steps,
    )


def _check_eval_fits(spec: EvalSpec | None, cells: list[Cell]) -> None:
    """Explicit shot counts must fit every cell's context; checked exactly for the byte tokenizer
    (a BPE's prompts are no longer than their bytes, so they fit whenever the bytes do)."""
    if spec is None or spec.shots is None:
        return
    from lmscale.data.tokenizer import Tokenizer
    from lmscale.fewshot import evaluate, tasks

    names = spec.tasks or tuple(tasks.TASKS)
    for seq_len in sorted({c.cfg.model.seq_len for c in cells if c.cfg.data.tokenizer == "byte"}):
        evaluate.build_requests(
            Tokenizer.byte(), names, spec.shots, spec.examples, seq_len, option="sweep.eval.shots"
        )


# -- run ids ----------------------------------------------------------------------------------


def human(x: float) -> str:
    """3 significant digits with a K/M/B/T suffix: 2621440 -> '2.62M'."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _axis_label(key: str, value: Any, keys: list[str]) -> str:
    name = key.rsplit(".", 1)[-1]
    if sum(k.rsplit(".", 1)[-1] == name for k in keys) > 1:
        name = key.replace(".", "_")
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9._+]", "_", f"{name}{text}")


def _run_id(cfg: Config, coords: dict, axis_keys: list[str], show_heads: bool, show_ff: bool) -> str:
    m = cfg.model
    parts = [f"L{m.n_layers}", f"D{m.d_model}"]
    parts += [f"H{m.n_heads}"] if show_heads else []
    parts += [f"F{m.ff_dim}"] if show_ff else []
    parts.append(f"T{human(cfg.train.tokens)}")
    parts += [_axis_label(k, coords[k], axis_keys) for k in axis_keys]
    return "-".join(parts + [f"s{cfg.train.seed}"])


# -- expansion --------------------------------------------------------------------------------


def _lr(spec: Any, cfg: Config) -> float:
    rule = spec.get("rule", "constant")
    if rule not in ("constant", "width"):
        raise ConfigError(f"sweep.lr.rule={rule!r}: expected one of constant, width")
    base = _number(spec.get("base", cfg.train.lr), "sweep.lr.base")
    if rule == "constant":
        return base
    if "base_width" not in spec:
        raise ConfigError("sweep.lr.base_width: required by the width rule (the d_model that gets lr = base)")
    width = _number(spec["base_width"], "sweep.lr.base_width")
    exponent = _number(spec.get("exponent", 1.0), "sweep.lr.exponent", positive=False)
    return base * (width / cfg.model.d_model) ** exponent


def _round_tokens(tokens: float, cfg: Config, key: str) -> int:
    """Whole batches: the trainer's step count is tokens // (batch_size * seq_len)."""
    per_step = cfg.train.batch_size * cfg.model.seq_len
    steps = round(tokens / per_step)
    if steps < 1:
        raise ConfigError(
            f"{key}: {tokens:.4g} tokens for L{cfg.model.n_layers}-D{cfg.model.d_model} is less than "
            f"one batch ({per_step} tokens)"
        )
    return steps * per_step


def _axes_mapping(axes: Any) -> dict:
    if not isinstance(axes, dict):
        raise ConfigError(f"sweep.axes={axes!r}: expected a mapping of dotted config keys to lists")
    return axes


def _axes(spec: dict, base: dict, taken: dict[str, str]) -> dict[str, list]:
    axes = dict(_axes_mapping(spec.get("axes") or {}))
    for key, values in axes.items():
        values = _values(values, f"sweep.axes.{key}")
        if key in taken:
            raise ConfigError(f"sweep.axes.{key}: already set by another sweep axis ({taken[key]})")
        try:
            for value in values:
                _check_key(base, key, value)
        except ConfigError as e:
            raise ConfigError(f"sweep.axes.{key}: {e}") from None
        axes[key] = values
    return axes


def _check_key(base: dict, key: str, value: Any) -> None:
    raw = copy.deepcopy(base)
    _set(raw, key, value)
    from_dict(raw)


def expand(raw: dict, name: str, overrides: list[str] = ()) -> Sweep:
    """Expand a sweep YAML mapping (plus CLI overrides) into cells, cheapest first."""
    raw = copy.deepcopy(raw)
    spec = raw.pop("sweep", None)
    if spec is None:
        raise ConfigError(f"sweep '{name}': no 'sweep:' section; use `lmscale train` for a single run")
    spec = _mapping(spec or {}, "sweep", SWEEP_KEYS)
    base_overrides, sweep_overrides = split_overrides(list(overrides))
    for key, value in sweep_overrides:
        _apply_sweep_override(spec, key, value)
    _mapping(spec, "sweep", SWEEP_KEYS)
    base_cfg = from_dict(raw, base_overrides)  # unknown keys in the run config or overrides fail here
    base = base_cfg.to_dict()

    sizes = _mapping(spec.get("sizes") or {}, "sweep.sizes", SIZE_KEYS)
    if "shapes" in sizes and "params" in sizes:
        raise ConfigError("sweep.sizes: give either shapes or params, not both")
    tokens = _mapping(spec.get("tokens") or {}, "sweep.tokens", TOKEN_FORMS)
    if len(tokens) > 1:
        raise ConfigError(f"sweep.tokens: give one of {', '.join(TOKEN_FORMS)}, not {', '.join(tokens)}")
    isoflop = "isoflop" in tokens
    if isoflop and ("shapes" in sizes or "params" in sizes):
        raise ConfigError(
            "sweep.sizes: an IsoFLOP sweep picks its sizes around each budget's optimum; "
            "give only the shape rule"
        )
    rule = _size_rule(sizes, need="params" in sizes or isoflop)
    if isoflop:
        rule = dataclasses.replace(rule, count="total")  # C = 6ND counts every parameter
    seeds = [
        _integer(s, "sweep.seeds", minimum=0)
        for s in _values(spec.get("seeds", base_cfg.train.seed), "sweep.seeds")
    ]
    lr_spec = _mapping(spec.get("lr") or {}, "sweep.lr", LR_KEYS)
    eval_spec = _eval_spec(spec.get("eval"))

    taken: dict[str, str] = {}
    if sizes or isoflop:
        taken |= {f"model.{k}": "sweep.sizes" for k in SHAPE_KEYS}
    if tokens:
        taken["train.tokens"] = "sweep.tokens"
    if "seeds" in spec:
        taken["train.seed"] = "sweep.seeds"
    if lr_spec:
        taken["train.lr"] = "sweep.lr"
    for item in base_overrides:
        key = item.partition("=")[0].strip()
        if key in taken:
            raise ConfigError(f"override '{item}': {key} is set by {taken[key]}; override that instead")
    axes = _axes(spec, base, taken)
    axis_keys = list(axes)

    # (size, token budget) pairs: a cross product, except IsoFLOP, where each budget picks its sizes.
    if isoflop:
        pairs = [({"params": N}, {"flops_budget": C}) for C, N in _isoflop_targets(tokens["isoflop"])]
    else:
        if "shapes" in sizes:
            size_list = [{"shape": s} for s in _explicit_shapes(sizes["shapes"])]
        else:
            size_list = _numbers(sizes, "params", "sweep.sizes")
        budget_list = _numbers(tokens, "fixed" if "fixed" in tokens else "per_param", "sweep.tokens")
        pairs = list(itertools.product(size_list, budget_list))

    cells = []
    for values in itertools.product(*axes.values(), seeds):
        *axis_values, seed = values
        coords = dict(zip(axis_keys, axis_values, strict=True))
        cell_raw = copy.deepcopy(base)
        for key, value in coords.items():
            _set(cell_raw, key, value)
        _set(cell_raw, "train.seed", seed)
        for size, budget in pairs:
            cells.append(_cell(cell_raw, size, budget, rule, lr_spec, coords))
    if not cells:
        raise ConfigError(f"sweep '{name}': the grid is empty")
    cells = _name(cells, axis_keys)
    _check_eval_fits(eval_spec, cells)
    return Sweep(name, sorted(cells, key=lambda c: (c.flops, c.run_id)), eval_spec)


def _cell(
    raw: dict, size: dict, budget: dict, rule: SizeRule | None, lr_spec: dict, coords: dict
) -> tuple[Config, dict]:
    """One cell's config: shape, then tokens (which may depend on the shape), then the lr rule."""
    cfg = from_dict(raw)
    model = cfg.model
    if "shape" in size:
        model = dataclasses.replace(model, **size["shape"])
    elif "params" in size:
        key = "sweep.tokens.isoflop" if "flops_budget" in budget else "sweep.sizes.params"
        model = shape_for_params(rule, model, size["params"], key)
    cfg = dataclasses.replace(cfg, model=model)
    coords = dict(coords)
    if "fixed" in budget:
        tokens = _round_tokens(budget["fixed"], cfg, "sweep.tokens.fixed")
    elif "per_param" in budget:
        tokens = budget["per_param"] * flops.param_counts(model).total
        tokens = _round_tokens(tokens, cfg, "sweep.tokens.per_param")
    elif "flops_budget" in budget:
        C = budget["flops_budget"]
        tokens = _round_tokens(C / flops.flops_6nd(model, 1), cfg, f"sweep.tokens.isoflop.budgets={C:.3g}")
        coords["flops_budget"] = C
    else:
        tokens = cfg.train.tokens
    train = dataclasses.replace(cfg.train, tokens=tokens)
    cfg = dataclasses.replace(cfg, train=train)
    if lr_spec:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(train, lr=_lr(lr_spec, cfg)))
    return cfg, coords


def _name(cells: list[tuple[Config, dict]], axis_keys: list[str]) -> list[Cell]:
    """Run ids name depth, width and tokens; heads and MLP width too where they alone tell cells apart."""
    by_shape: dict[tuple, set] = {}
    for cfg, _ in cells:
        by_shape.setdefault((cfg.model.n_layers, cfg.model.d_model), set()).add(
            (cfg.model.n_heads, cfg.model.ff_dim)
        )
    show_heads = any(len({h for h, _ in v}) > 1 for v in by_shape.values())
    show_ff = any(len({f for _, f in v}) > 1 for v in by_shape.values())
    named, seen = [], {}
    for cfg, coords in cells:
        run_id = _run_id(cfg, coords, axis_keys, show_heads, show_ff)
        if run_id in seen:
            raise ConfigError(
                f"sweep: two cells share the run id '{run_id}'; space the sizes or budgets further apart"
            )
        seen[run_id] = True
        named.append(Cell(run_id, cfg, coords))
    return named


def validate_cells(sweep: Sweep, n_devices: int) -> Sweep:
    """`config.validate` every cell for this device count; the message names the cell."""
    for cell in sweep.cells:
        try:
            validate(cell.cfg, n_devices)
        except ConfigError as e:
            raise ConfigError(f"cell {cell.run_id}: {e}") from None
    return sweep


def load(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and expand a sweep YAML; the sweep's name is the file's stem."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file '{path}': expected a mapping")
    return expand(raw, path.stem, overrides)
