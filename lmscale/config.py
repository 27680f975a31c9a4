"""Typed run config and its loader: YAML plus dotted `key=value` overrides into typed sections.

Choices are `Literal` types and bounds `Annotated` checks, so one loader (which also reads the sweep
spec) rejects every bad key or value; `validate` adds what needs several keys, the data or the devices."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from lmscale import yaml_loader
from lmscale.config_types import Check, ConfigError, NonNegFloat, NonNegInt, OpenUnit, PosFloat, PosInt  # noqa: F401
from lmscale.tracking import LogConfig

# Logical axis -> mesh axes. Order matters: a mesh axis is used at most once per array, so `batch`
# claims `fsdp` for activations first and `embed` only picks it up on parameters (the FSDP split).
DEFAULT_RULES: dict[str, Any] = {
    "batch": ["data", "fsdp"],
    "layers": None,
    "length": None,
    "vocab": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
    "kv": None,
    "embed": "fsdp",
}
MESH_AXES = ("data", "fsdp", "tensor")  # the fields of MeshConfig; sharding.py checks and applies the rules


@dataclasses.dataclass
class ModelConfig:
    n_layers: PosInt = 2
    d_model: PosInt = 64
    n_heads: PosInt = 4
    vocab_size: PosInt = 320  # at least the tokenizer's ids (byte: 257); 320 = 5 * 64 divides evenly
    seq_len: PosInt = 128
    d_ff: NonNegInt = 0  # 0: 4*d_model for gelu, 8/3*d_model rounded up to a multiple of 64 for swiglu
    mlp: Literal["gelu", "swiglu"] = "gelu"
    pos_emb: Literal["rope", "learned", "sinusoidal"] = "rope"
    rope_theta: PosFloat = 10_000.0
    tie_embeddings: bool = True
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # params are always float32
    remat: bool = False
    scan_layers: bool = True
    norm_eps: PosFloat = 1e-6

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model


@dataclasses.dataclass
class TrainConfig:
    batch_size: PosInt = 16  # sequences per optimizer step, across all devices
    tokens: PosInt = 1_000_000  # token budget; steps = tokens // (batch_size * seq_len)
    steps: PosInt | None = None  # or the budget in steps (tokens = steps * batch_size * seq_len), not both
    seed: NonNegInt = 0
    lr: PosFloat = 3e-3  # peak learning rate
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"  # lmscale/schedule.py
    # warmup, in one of two forms (not both; null: the schedule's default, lmscale/schedule.py):
    warmup_frac: Annotated[float, Check(lambda x: 0 <= x < 1, "must be in [0, 1)")] | None = None  # cosine
    warmup_steps: NonNegInt | None = None  # every schedule; wsd and constant only take this form
    decay_frac: Annotated[float, Check(lambda x: 0 < x < 1, "must be in (0, 1)")] = 0.2  # wsd's decay
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "1-sqrt"  # wsd
    final_lr_frac: Annotated[float, Check(lambda x: 0 <= x <= 1, "must be in [0, 1]")] = 0.1
    weight_decay: NonNegFloat = 0.1
    b1: OpenUnit = 0.9
    b2: OpenUnit = 0.95
    eps: PosFloat = 1e-8
    grad_clip: NonNegFloat = 1.0  # global-norm clip; 0 disables
    grad_accum: PosInt = 1
    log_every: PosInt = 10
    eval_every: PosInt = 100
    eval_batches: NonNegInt = 4
    flops_causal_half: bool = False

    def total_steps(self, seq_len: int) -> int:
        return self.tokens // (self.batch_size * seq_len)


MeshSize = Annotated[int, Check(lambda n: n >= 1 or n == -1, "must be positive, or -1 for the rest")]


@dataclasses.dataclass
class MeshConfig:
    data: MeshSize = -1
    fsdp: MeshSize = 1
    tensor: MeshSize = 1
    rules: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))
    distributed: Literal["auto", "true", "false"] = "auto"  # call jax.distributed.initialize()
    cpu_devices: PosInt = 1  # JAX devices this host's CPU is split into (sharding.use_cpu_devices)

    def shape(self, n_devices: int) -> dict[str, int]:
        sizes = {a: getattr(self, a) for a in MESH_AXES}
        rest = [a for a, s in sizes.items() if s == -1]
        known = math.prod(s for s in sizes.values() if s != -1)
        if rest:
            sizes[rest[0]] = max(n_devices // known, 1)
        return sizes


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: PosInt = 100
    keep: PosInt = 2
    keep_period: NonNegInt = 0  # also keep checkpoints at multiples of this step (0: none), to evaluate later
    keep_steps: list = dataclasses.field(default_factory=list)  # also save and keep these (branch points)
    async_save: bool = True
    final: bool = True  # save at the last step; false: a throwaway run ends without one (~0.5-1 s saved)


@dataclasses.dataclass
class SyntheticConfig:
    seed: NonNegInt = 0  # the corpus's own seed, apart from train.seed: every run of a sweep sees one corpus
    documents: PosInt = 20_000  # documents generated (about 14M tokens at the defaults)
    doc_words: PosInt = 128  # words per document
    words: PosInt = 4096  # vocabulary of the generator
    classes: PosInt = 64  # word classes, a second-order Markov chain over them
    branching: PosInt = 8  # successor classes per class pair
    zipf: PosFloat = 1.0  # exponent of every Zipfian choice


@dataclasses.dataclass
class TaskTextConfig:
    documents: PosInt = 50_000  # training documents: one k-shot prompt with answers each
    names: list = dataclasses.field(default_factory=list)  # tasks to include; [] = every task
    max_shots: NonNegInt = 8  # each document shows k in [0, max_shots] solved lines before its last one
    seed: int = 0  # instances are drawn from the training split only, whatever the seed


@dataclasses.dataclass
class SourceConfig:
    """Where documents come from: one corpus, or one component of `data.mixture`."""

    corpus: Literal["synthetic", "stdlib", "tasks", "files", "hub", "mixture"] = "synthetic"
    paths: list = dataclasses.field(default_factory=list)  # files: .txt/.jsonl/.json/.parquet files, folders
    text_field: str = "text"  # files and hub: the column holding the document text
    decode_errors: Literal["strict", "replace"] = "strict"  # what to do with bytes that are not UTF-8
    name: str = ""  # hub: dataset name, or a local dataset folder
    config: str = ""  # hub: dataset config name
    split: str = "train"  # hub: split to read
    streaming: bool = False  # hub: stream instead of downloading; needs max_documents
    max_documents: NonNegInt = 0  # files and hub: keep the first N documents; 0 keeps all
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    tasks: TaskTextConfig = dataclasses.field(default_factory=TaskTextConfig)


@dataclasses.dataclass
class MixtureComponent(SourceConfig):
    weight: NonNegFloat = 1.0  # share of training sequences; weights are normalised by their sum
    # names this component's validation loss (summary.json's final_val_loss_<label>); "" = the corpus,
    # suffixed with the component's index when another component has the same corpus
    label: Annotated[str, Check(lambda x: x == "" or x.isidentifier(), "must be a Python identifier")] = ""


@dataclasses.dataclass
class DataConfig(SourceConfig):
    mixture: list = dataclasses.field(default_factory=list)  # components when corpus is 'mixture'
    tokenizer: Literal["byte", "bpe"] = "byte"  # bpe: trained on this corpus with model.vocab_size ids
    bpe_train_documents: PosInt = 20_000  # documents the BPE is trained on
    # share of the text held out for validation, chosen by `val_split` (lmscale/data/split.py)
    val_fraction: Annotated[float, Check(lambda x: 0 < x <= 0.5, "must be in (0, 0.5]")] = 0.01
    val_split: Literal["auto", "hash", "tail"] = "auto"  # auto: hash, or tail when hash leaves a split empty
    cache_dir: str = ""  # tokenized Arrow cache; "" = $LMSCALE_CACHE or ~/.cache/lmscale

    def components(self, normalised: bool = True) -> list[MixtureComponent]:
        """The sources to mix, with weights normalised to sum to one (or as given)."""
        if self.corpus != "mixture":
            fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SourceConfig)}
            return [MixtureComponent(**fields, weight=1.0)]
        parts = [build(MixtureComponent, raw, f"data.mixture[{i}].") for i, raw in enumerate(self.mixture)]
        total = sum(p.weight for p in parts) if normalised else 1.0
        corpora = [p.corpus for p in parts]
        labels = [
            p.label or (p.corpus if corpora.count(p.corpus) == 1 else f"{p.corpus}_{i}")
            for i, p in enumerate(parts)
        ]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ConfigError(f"data.mixture[{i}].label={label!r}: another component has this label")
        return [
            dataclasses.replace(p, weight=p.weight / total, label=label)
            for p, label in zip(parts, labels, strict=True)
        ]


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    @property
    def steps(self) -> int:
        return self.train.total_steps(self.model.seq_len)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- the loader: YAML mappings into typed sections, for the run config and the sweep spec alike ----

# How an unknown key and a value that is not a mapping read, per `kind` of section (build's argument).
_WORDING = {
    "config": ("unknown config key '{key}'", "{key}: expected a mapping, got {value!r}"),
    "sweep": (
        "unknown sweep key '{key}'; expected one of {known}",
        "{key}={value!r}: expected a mapping with keys {known}",
    ),
}


def _coerce(key: str, value: Any, typ: Any, kind: str) -> Any:
    """`value` as `typ`. A tuple field takes one value or a non-empty list of them (a sweep axis)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is Annotated:
        value = _coerce(key, value, args[0], kind)
        for check in args[1:]:
            if not check.ok(value):
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                raise ConfigError(f"{key}={shown}: {check.need}")
        return value
    if origin in (typing.Union, types.UnionType):  # `X | None`: None stays None
        return None if value is None else _coerce(key, value, args[0], kind)
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            either = " or ".join(args) if len(args) == 2 else "one of " + ", ".join(args)
            raise ConfigError(f"{key}={value!r}: expected {either}")
        return value
    if dataclasses.is_dataclass(typ):
        return build(typ, value or {}, f"{key}.", kind)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ in (int, float):
        try:
            number = None if isinstance(value, bool) else float(value)
        except (TypeError, ValueError):
            number = None
        if typ is float and number is not None:  # every float key is finite: NaN or Inf never trains
            if not math.isfinite(number):
                raise ConfigError(f"{key}={value!r}: must be a finite number")
            return number
        if number is None or not number.is_integer():
            raise ConfigError(f"{key}={value!r}: expected {'a number' if typ is float else 'an integer'}")
        return int(number)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    if origin is tuple:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ConfigError(f"{key}=[]: an empty list makes the grid empty")
        item = args[0]  # a mapping is named by its index, a number by the list's key
        keys = [f"{key}[{i}]" if dataclasses.is_dataclass(item) else key for i in range(len(items))]
        return tuple(_coerce(k, x, item, kind) for k, x in zip(keys, items, strict=True))
    if typ is list or origin is list:
        if isinstance(value, (str, dict)):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return list(value)
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return {k: _coerce(f"{key}.{k}", v, args[1], kind) for k, v in value.items()} if args else value
    return value


def build(cls: type, raw: Any, prefix: str = "", kind: str = "config") -> Any:
    """A typed section from a YAML mapping; ConfigError (one line, naming the key) for anything else."""
    hints, fields = typing.get_type_hints(cls, include_extras=True), dataclasses.fields(cls)
    words = {"key": prefix.rstrip(".") or "config", "value": raw, "known": ", ".join(f.name for f in fields)}
    unknown_key, not_mapping = _WORDING[kind]
    if not isinstance(raw, dict):
        raise ConfigError(not_mapping.format(**words))
    unknown = sorted(set(raw) - {f.name for f in fields})
    if unknown:
        raise ConfigError(unknown_key.format(**words | {"key": prefix + unknown[0]}))
    kwargs = {name: _coerce(prefix + name, value, hints[name], kind) for name, value in raw.items()}
    for f in fields:
        # a mapping merges over its default, keeping the default's order
        if f.name in kwargs and hints[f.name] is dict and f.default_factory is not dataclasses.MISSING:
            kwargs[f.name] = {**f.default_factory(), **kwargs[f.name]}
        elif f.name not in kwargs and f.default is f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{f.name}: required")
    return cls(**kwargs)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; a section that is absent or left empty in YAML becomes one."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse `a.b=value` strings; values are read as YAML scalars (`3`, `1e-3`, `true`, `[a, b]`)."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        try:
            value = yaml_loader.safe_load(text) if text else ""
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override '{item}': the value is not valid YAML: {yaml_loader.problem(e)}"
            ) from None
        parsed.append((key.strip(), value))
    return parsed


def read_yaml(path: str | Path) -> Any:
    """The parsed file; ConfigError naming the file when it is empty, repeats a key or cannot be read."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' is not a file")
    try:
        raw = yaml_loader.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {yaml_loader.problem(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}' cannot be read: {e.strerror}") from None
    if raw is None:
        raise ConfigError(f"config file '{path}' is empty")
    return raw


def from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    """A Config from a YAML mapping and overrides; a run's own config.yaml (it has `meta`) reads as it was
    written, without the checks of a user's alternatives (`schedule.resolve`)."""
    from lmscale import schedule

    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections (model, train, ...), got {raw!r:.80}")
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    written = raw.pop("meta", None) is not None  # describes the run, never configures it
    parsed = parse_overrides(list(overrides))
    for key, value in parsed:
        set_dotted(raw, key, value)
    cfg = build(Config, raw)
    return cfg if written else schedule.resolve(cfg, raw.get("train"), {k for k, _ in parsed})


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{path}': expected a mapping of sections (model, train, ...), "
            f"got a {type(raw).__name__}"
        )
    return from_dict(raw, overrides)


def validate(cfg: Config, n_devices: int) -> Config:
    """Raise ConfigError (one line, naming the key) for what the types alone cannot rule out: keys that
    must agree with each other, the data sources and the mesh."""
    from lmscale import (
        checkpoint,
        schedule,
        sharding,
        tracking,
    )  # JAX: validation runs once the CLI has parsed
    from lmscale.data import corpora

    m, t = cfg.model, cfg.train
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if m.pos_emb == "rope" and m.head_dim % 2:
        raise ConfigError(f"model.d_model={m.d_model}: rope needs an even head dim, got {m.head_dim}")
    if cfg.steps < 1:
        raise ConfigError(
            f"train.tokens={t.tokens} is less than one batch "
            f"({t.batch_size} x {m.seq_len} = {t.batch_size * m.seq_len} tokens)"
        )
    schedule.check(t, cfg.steps)
    checkpoint.check(cfg.checkpoint)
    corpora.check_data(cfg)
    tracking.check(cfg.log)
    sharding.check_mesh(cfg, n_devices)
    return cfg
