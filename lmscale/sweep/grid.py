"""Sweep grids: a base run config plus a typed `sweep:` section (lmscale.sweep.spec), expanded into cells.

A cell is one run: a readable, unique run id and a fully resolved `Config`. The axes are sizes
(explicit shapes, or parameter counts turned into shapes by a rule), token budgets (fixed, tokens per
parameter, or IsoFLOP budgets), seeds, a learning-rate rule and any other config key. Every bad spec
raises `ConfigError` with one line naming the key, before anything is built or trained, and before
JAX is imported.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

from lmscale import flops
from lmscale.config import Config, ConfigError, from_dict, read_yaml, set_dotted, validate
from lmscale.sweep.shapes import SizeRule, shape_for_params
from lmscale.sweep.spec import EvalSpec, IsoFlop, Lr, Sizes, Tokens, read, split_overrides


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its id, its resolved config and the sweep coordinates it sits at."""

    run_id: str
    cfg: Config
    coords: dict  # dotted axis key -> value, plus `flops_budget` for IsoFLOP cells
    role: str = "run"  # or, in a cooldown sweep (lmscale.sweep.cooldown), `trunk` or `branch`
    trunk: str | None = None  # a branch's trunk run id
    branch_step: int = 0  # the trunk step a branch starts from

    @property
    def flops(self) -> float:
        """Detailed training FLOPs of the whole run (what the trainer logs), from step 0."""
        return self.cfg.steps * flops.step_flops(self.cfg)

    @property
    def flops_spent(self) -> float:
        """What training the cell adds: a branch starts from its trunk's step `branch_step`."""
        return (self.cfg.steps - self.branch_step) * flops.step_flops(self.cfg)


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str  # the YAML file's stem: the sweep directory under --out
    cells: list[Cell]  # cheapest first
    eval: EvalSpec | None = EvalSpec()  # None: `sweep.eval: false`, no evaluation


def evaluated(sweep: Sweep) -> set[str]:
    """The run ids `sweep.eval` evaluates: every trained run (never a cooldown trunk), or with
    `runs: largest` the largest token budget of each shape, seed and learning rate."""
    cells = [c for c in sweep.cells if c.role != "trunk"] if sweep.eval is not None else []
    if sweep.eval is None or sweep.eval.runs == "all":
        return {c.run_id for c in cells}
    largest: dict[tuple, Cell] = {}
    for c in cells:
        key = (repr(c.cfg.model), c.cfg.train.seed, c.cfg.train.lr)
        if key not in largest or c.cfg.steps > largest[key].cfg.steps:
            largest[key] = c
    return {c.run_id for c in largest.values()}


# -- token budgets and evaluation -------------------------------------------------------------


def _isoflop_targets(iso: IsoFlop) -> list[tuple[float, float]]:
    """(compute budget C, target total params N) pairs, geometrically spaced around N*(C)."""
    pairs = []
    for C in iso.budgets:
        optimum = flops.params_for_6nd(C, iso.tokens_per_param)
        for k in range(iso.sizes):
            offset = 2.0 * k / (iso.sizes - 1) - 1.0 if iso.sizes > 1 else 0.0
            pairs.append((C, optimum * iso.spread**offset))
    return pairs


def _check_eval_fits(spec: EvalSpec | None, cells: list[Cell]) -> None:
    """Explicit shot counts must fit every cell's context; checked exactly for the byte tokenizer
    (a BPE's prompts are no longer than their bytes, so they fit whenever the bytes do)."""
    if spec is None or spec.shots is None:
        return
    from lmscale.data.tokenizer import Tokenizer
    from lmscale.fewshot import tasks
    from lmscale.fewshot.requests import build_requests

    names = spec.tasks or tuple(tasks.TASKS)
    for seq_len in sorted({c.cfg.model.seq_len for c in cells if c.cfg.data.tokenizer == "byte"}):
        build_requests(Tokenizer.byte(), names, spec.shots, spec.examples, seq_len, option="sweep.eval.shots")


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


def _check_axes(axes: dict[str, tuple], base: dict, taken: dict[str, str]) -> None:
    """Every `sweep.axes` value, checked by the loader as part of the base run config."""
    for key, values in axes.items():
        if key in taken:
            raise ConfigError(f"sweep.axes.{key}: already set by another sweep axis ({taken[key]})")
        try:
            for value in values:
                raw = copy.deepcopy(base)
                set_dotted(raw, key, value)
                from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"sweep.axes.{key}: {e}") from None


def expand(raw: dict, name: str, overrides: list[str] = ()) -> Sweep:
    """Expand a sweep YAML mapping (plus CLI overrides) into cells, cheapest first."""
    raw = copy.deepcopy(raw)
    section = raw.pop("sweep", None)
    if section is None:
        raise ConfigError(f"sweep '{name}': no 'sweep:' section; use `lmscale train` for a single run")
    base_overrides, sweep_overrides = split_overrides(list(overrides))
    spec = read(section or {}, sweep_overrides)
    base_cfg = from_dict(raw, base_overrides)  # unknown keys in the run config or overrides fail here
    base = base_cfg.to_dict()
    sizes, tokens = spec.sizes or Sizes(), spec.tokens or Tokens()
    rule = sizes.rule(isoflop=tokens.isoflop is not None)
    taken = spec.taken()
    for item in base_overrides:
        key = item.partition("=")[0].strip()
        if key in taken:
            raise ConfigError(f"override '{item}': {key} is set by {taken[key]}; override that instead")
    axes = spec.axes or {}
    _check_axes(axes, base, taken)
    axis_keys = list(axes)

    # (size, token budget) pairs: a cross product, except IsoFLOP, where each budget picks its sizes.
    if tokens.isoflop:
        pairs = [({"params": N}, {"flops_budget": C}) for C, N in _isoflop_targets(tokens.isoflop)]
    else:  # at most one form of each is given; none leaves the base config's value
        size_list = [{"shape": s} for s in sizes.shapes or ()] + [{"params": n} for n in sizes.params or ()]
        budget_list = [{"fixed": x} for x in tokens.fixed or ()]
        budget_list += [{"per_param": x} for x in tokens.per_param or ()]
        if tokens.cooldowns:  # a WSD branch per budget; trunks are attached once the cells are named
            c = tokens.cooldowns
            for form, values in (("fixed", c.budgets), ("per_param", c.per_param)):
                key = "sweep.tokens.cooldowns." + ("budgets" if form == "fixed" else form)
                budget_list += [{form: x, "key": key, "decay": c.decay_frac} for x in values or ()]
        pairs = list(itertools.product(size_list or [{}], budget_list or [{}]))

    seeds = spec.seeds or (base_cfg.train.seed,)
    cells = []
    for values in itertools.product(*axes.values(), seeds):
        *axis_values, seed = values
        coords = dict(zip(axis_keys, axis_values, strict=True))
        cell_raw = copy.deepcopy(base)
        for key, value in coords.items():
            set_dotted(cell_raw, key, value)
        set_dotted(cell_raw, "train.seed", seed)
        for size, budget in pairs:
            cells.append(_cell(cell_raw, size, budget, rule, spec.lr, coords))
    if tokens.max_flops is not None:
        cells = _under_ceiling(cells, tokens.max_flops)
    if not cells:
        raise ConfigError(f"sweep '{name}': the grid is empty")
    if spec.repeats:
        cells += _repeats(cells, spec.repeats, seeds)
    cells = _name(cells, axis_keys)
    _check_eval_fits(spec.eval, cells)
    from lmscale.sweep import cooldown

    if tokens.cooldowns:
        cells = cooldown.attach_trunks(cells)
    ordered = sorted(cells, key=lambda c: (c.flops, c.run_id))
    return Sweep(name, [c for unit in cooldown.groups(ordered) for c in unit], spec.eval)


def _cell(
    raw: dict, size: dict, budget: dict, rule: SizeRule | None, lr: Lr | None, coords: dict
) -> tuple[Config, dict]:
    """One cell's config: shape, then tokens (which may depend on the shape), then the lr rule."""
    cfg = from_dict(raw)
    model = cfg.model
    if "shape" in size:
        model = size["shape"].model(model)
    elif "params" in size:
        key = "sweep.tokens.isoflop" if "flops_budget" in budget else "sweep.sizes.params"
        model = shape_for_params(rule, model, size["params"], key)
    cfg = dataclasses.replace(cfg, model=model)
    coords = dict(coords)
    if "fixed" in budget:
        tokens = _round_tokens(budget["fixed"], cfg, budget.get("key", "sweep.tokens.fixed"))
    elif "per_param" in budget:
        tokens = budget["per_param"] * flops.param_counts(model).total
        tokens = _round_tokens(tokens, cfg, budget.get("key", "sweep.tokens.per_param"))
    elif "flops_budget" in budget:
        C = budget["flops_budget"]
        tokens = _round_tokens(C / flops.flops_6nd(model, 1), cfg, f"sweep.tokens.isoflop.budgets={C:.3g}")
        coords["flops_budget"] = C
    else:
        tokens = cfg.train.tokens
    train = dataclasses.replace(cfg.train, tokens=tokens)
    if "decay" in budget:
        train = dataclasses.replace(train, schedule="wsd", decay_frac=budget["decay"])
    cfg = dataclasses.replace(cfg, train=train)
    if lr is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(train, lr=lr.peak(cfg)))
    return cfg, coords


def _under_ceiling(cells: list[tuple[Config, dict]], max_flops: float) -> list[tuple[Config, dict]]:
    """The cells whose 6ND (total parameters) is at most `max_flops`; every size must keep one."""
    kept = [
        (cfg, coords) for cfg, coords in cells if flops.flops_6nd(cfg.model, cfg.train.tokens) <= max_flops
    ]
    left = {_size_label(cfg) for cfg, _ in cells} - {_size_label(cfg) for cfg, _ in kept}
    if left:
        raise ConfigError(
            f"sweep.tokens.max_flops={max_flops:.3g}: size {sorted(left)[0]} has no budget under it; "
            "raise the ceiling or drop the size"
        )
    return kept


def _size_label(cfg: Config) -> str:
    return f"L{cfg.model.n_layers}-D{cfg.model.d_model}"


def _repeats(cells: list[tuple[Config, dict]], repeats, seeds: tuple[int, ...]) -> list[tuple[Config, dict]]:
    """The cells of `repeats.sizes` (every budget and axis value of the first seed) again with each of
    `repeats.seeds`."""
    labels = sorted({_size_label(cfg) for cfg, _ in cells})
    for label in repeats.sizes:
        if label not in labels:
            raise ConfigError(
                f"sweep.repeats.sizes: no size '{label}' in the grid; its sizes: {', '.join(labels)}"
            )
    again = sorted(set(repeats.seeds) & set(seeds))
    if again:
        raise ConfigError(f"sweep.repeats.seeds: seed {again[0]} is already in sweep.seeds")
    first = [(cfg, coords) for cfg, coords in cells if cfg.train.seed == seeds[0]]
    return [
        (dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed)), coords)
        for seed in repeats.seeds
        for cfg, coords in first
        if _size_label(cfg) in repeats.sizes
    ]


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
    sweep = expand(raw, path.stem, overrides)
    counts = sorted({cell.cfg.mesh.cpu_devices for cell in sweep.cells})
    if len(counts) > 1:  # one JAX backend, started once, serves every run of the process
        raise ConfigError(f"mesh.cpu_devices={counts}: a sweep's runs share one process, so one value")
    return sweep
