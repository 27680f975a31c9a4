"""Typed run config: YAML in, dotted `key=value` overrides, validation before anything compiles."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config value; the message names the key and is one line."""


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
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers")
MESH_AXES = ("data", "fsdp", "tensor")
CORPORA = ("synthetic", "stdlib", "tasks", "files", "hub", "mixture")


@dataclasses.dataclass
class ModelConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    vocab_size: int = 320  # at least the tokenizer's ids (byte: 257); 320 = 5 * 64 divides evenly
    seq_len: int = 128
    d_ff: int = 0  # 0: 4*d_model for gelu, 8/3*d_model rounded up to a multiple of 64 for swiglu
    mlp: str = "gelu"  # gelu | swiglu
    pos_emb: str = "rope"  # rope | learned | sinusoidal
    rope_theta: float = 10_000.0
    tie_embeddings: bool = True
    compute_dtype: str = "float32"  # float32 | bfloat16; params are always float32
    remat: bool = False
    scan_layers: bool = True
    norm_eps: float = 1e-6

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
    batch_size: int = 16  # sequences per optimizer step, across all devices
    tokens: int = 1_000_000  # token budget; steps = tokens // (batch_size * seq_len)
    seed: int = 0
    lr: float = 3e-3  # peak learning rate
    warmup_frac: float = 0.05
    final_lr_frac: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    grad_accum: int = 1
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    flops_causal_half: bool = False

    def steps(self, seq_len: int) -> int:
        return self.tokens // (self.batch_size * seq_len)


@dataclasses.dataclass
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))
    distributed: str = "auto"  # auto | true | false: call jax.distributed.initialize()

    def shape(self, n_devices: int) -> dict[str, int]:
        sizes = {a: getattr(self, a) for a in MESH_AXES}
        rest = [a for a, s in sizes.items() if s == -1]
        known = math.prod(s for s in sizes.values() if s != -1)
        if rest:
            sizes[rest[0]] = max(n_devices // known, 1)
        return sizes


@dataclasses.dataclass
class CheckpointConfig:
    every_steps: int = 100
    keep: int = 2
    keep_period: int = 0  # also keep every checkpoint at a multiple of this step (0: none), to evaluate later
    async_save: bool = True


@dataclasses.dataclass
class SyntheticConfig:
    seed: int = 0  # the corpus's own seed, apart from train.seed: every run of a sweep sees one corpus
    documents: int = 20_000  # documents generated (about 14M tokens at the defaults)
    doc_words: int = 128  # words per document
    words: int = 4096  # vocabulary of the generator
    classes: int = 64  # word classes, a second-order Markov chain over them
    branching: int = 8  # successor classes per class pair
    zipf: float = 1.0  # exponent of every Zipfian choice


@dataclasses.dataclass
class TaskTextConfig:
    documents: int = 50_000  # training documents: one k-shot prompt with answers each
    names: list = dataclasses.field(default_factory=list)  # tasks to include; [] = every task
    max_shots: int = 8  # each document shows k in [0, max_shots] solved lines before its last one
    seed: int = 0  # instances are drawn from the training split only, whatever the seed


@dataclasses.dataclass
class SourceConfig:
    """Where documents come from: one corpus, or one component of `data.mixture`."""

    corpus: str = "synthetic"  # synthetic | stdlib | tasks | files | hub | mixture
    paths: list = dataclasses.field(
        default_factory=list
    )  # files: .txt/.jsonl/.json/.parquet files or folders
    text_field: str = "text"  # files and hub: the column holding the document text
    decode_errors: str = "strict"  # strict | replace: what to do with bytes that are not UTF-8
    name: str = ""  # hub: dataset name, or a local dataset folder
    config: str = ""  # hub: dataset config name
    split: str = "train"  # hub: split to read
    streaming: bool = False  # hub: stream instead of downloading; needs max_documents
    max_documents: int = 0  # files and hub: keep the first N documents; 0 keeps all
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    tasks: TaskTextConfig = dataclasses.field(default_factory=TaskTextConfig)


@dataclasses.dataclass
class MixtureComponent(SourceConfig):
    weight: float = 1.0  # share of training sequences; weights are normalised by their sum


@dataclasses.dataclass
class DataConfig(SourceConfig):
    mixture: list = dataclasses.field(default_factory=list)  # components when corpus is 'mixture'
    tokenizer: str = "byte"  # byte | bpe (trained on this corpus with model.vocab_size ids)
    bpe_train_documents: int = 20_000  # documents the BPE is trained on
    val_fraction: float = 0.01  # share of documents held out for validation, chosen by content hash
    cache_dir: str = ""  # tokenized Arrow cache; "" = $LMSCALE_CACHE or ~/.cache/lmscale

    def components(self) -> list[MixtureComponent]:
        """The sources to mix, with weights normalised to sum to one."""
        if self.corpus != "mixture":
            fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SourceConfig)}
            return [MixtureComponent(**fields, weight=1.0)]
        parts = [_build(MixtureComponent, raw, f"data.mixture[{i}].") for i, raw in enumerate(self.mixture)]
        total = sum(p.weight for p in parts)
        return [dataclasses.replace(p, weight=p.weight / total) for p in parts]


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    @property
    def steps(self) -> int:
        return self.train.steps(self.model.seq_len)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return int(f)
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    if typ is list or origin is list:
        if isinstance(value, (str, dict)):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return list(value)
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return value
    return value


def _build(cls: type, raw: dict, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'")
    kwargs = {}
    for name, value in raw.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, typ)
    for f in dataclasses.fields(cls):  # mappings merge over their defaults, keeping default order
        if f.name in kwargs and hints[f.name] is dict and f.default_factory is not dataclasses.MISSING:
            kwargs[f.name] = {**f.default_factory(), **kwargs[f.name]}
    return cls(**kwargs)


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error as one line: what is wrong and where (`line 2, column 5`)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse `a.b=value` strings; values are read as YAML scalars (`3`, `1e-3`, `true`, `[a, b]`)."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': the value is not valid YAML: {yaml_problem(e)}") from None
        parsed.append((key.strip(), value))
    return parsed


def read_yaml(path: str | Path) -> Any:
    """The parsed file, {} when it is empty; ConfigError naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' is not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}' cannot be read: {e.strerror}") from None
    return {} if raw is None else raw


def from_dict(raw: dict, overrides: list[str] = ()) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections (model, train, ...), got {raw!r:.80}")
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    raw.pop("meta", None)  # written into run dirs; describes the run, never configures it
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(raw, key, value)
    return _build(Config, raw, "")


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{path}': expected a mapping of sections (model, train, ...), "
            f"got a {type(raw).__name__}"
        )
    return from_dict(raw, overrides)


def _positive(cfg: Config, keys: list[str]) -> None:
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value <= 0:
            raise ConfigError(f"{key}={value}: must be positive")


def validate(cfg: Config, n_devices: int) -> Config:
    """Raise ConfigError (one line, naming the key) for anything that would fail later."""
    m, t = cfg.model, cfg.train
    _positive(
        cfg,
        [
            "model.n_layers", "model.d_model", "model.n_heads", "model.vocab_size",
            "model.seq_len", "train.batch_size", "train.tokens", "train.lr", "train.grad_accum",
            "train.log_every", "train.eval_every", "checkpoint.every_steps", "checkpoint.keep",
        ],
    )  # fmt: skip
    if m.d_ff < 0:
        raise ConfigError(f"model.d_ff={m.d_ff}: must be positive, or 0 for the default")
    period, every = cfg.checkpoint.keep_period, cfg.checkpoint.every_steps
    if period < 0 or (period and period % every):
        raise ConfigError(
            f"checkpoint.keep_period={period}: must be 0 or a multiple of checkpoint.every_steps={every}"
        )
    if t.eval_batches < 0:
        raise ConfigError(f"train.eval_batches={t.eval_batches}: must be zero or positive")
    if t.seed < 0:
        raise ConfigError(f"train.seed={t.seed}: must be zero or positive")
    choices = {
        "model.mlp": ("gelu", "swiglu"),
        "model.pos_emb": ("rope", "learned", "sinusoidal"),
        "model.compute_dtype": ("float32", "bfloat16"),
        "mesh.distributed": ("auto", "true", "false"),
        "data.corpus": CORPORA,
        "data.tokenizer": ("byte", "bpe"),
    }
    for key, allowed in choices.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: expected one of {', '.join(allowed)}")
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
    if m.pos_emb == "rope" and m.head_dim % 2:
        raise ConfigError(f"model.d_model={m.d_model}: rope needs an even head dim, got {m.head_dim}")
    if not 0 <= t.warmup_frac < 1:
        raise ConfigError(f"train.warmup_frac={t.warmup_frac}: must be in [0, 1)")
    if not 0 <= t.final_lr_frac <= 1:
        raise ConfigError(f"train.final_lr_frac={t.final_lr_frac}: must be in [0, 1]")
    if cfg.steps < 1:
        raise ConfigError(
            f"train.tokens={t.tokens} is less than one batch "
            f"({t.batch_size} x {m.seq_len} = {t.batch_size * m.seq_len} tokens)"
        )
    _validate_data(cfg)
    _validate_mesh(cfg, n_devices)
    return cfg


def _validate_source(src: SourceConfig, prefix: str) -> None:
    choices = {"corpus": CORPORA, "decode_errors": ("strict", "replace")}
    for name, allowed in choices.items():
        if getattr(src, name) not in allowed:
            raise ConfigError(f"{prefix}{name}={getattr(src, name)!r}: expected one of {', '.join(allowed)}")
    if src.corpus == "files" and not src.paths:
        raise ConfigError(f"{prefix}paths: the files corpus needs at least one file or folder")
    if src.corpus == "hub" and not src.name:
        raise ConfigError(f"{prefix}name: the hub corpus needs a dataset name or folder")
    if src.max_documents < 0:
        raise ConfigError(f"{prefix}max_documents={src.max_documents}: must be zero (all) or positive")
    if src.streaming and src.max_documents == 0:
        raise ConfigError(f"{prefix}streaming=true needs {prefix}max_documents > 0 to bound the stream")
    if src.tasks.documents <= 0 or src.tasks.max_shots < 0:
        raise ConfigError(f"{prefix}tasks: documents must be positive and max_shots zero or positive")
    syn = src.synthetic
    if syn.seed < 0:
        raise ConfigError(f"{prefix}synthetic.seed={syn.seed}: must be zero or positive")
    for name in ("documents", "doc_words", "words", "classes", "branching", "zipf"):
        if getattr(syn, name) <= 0:
            raise ConfigError(f"{prefix}synthetic.{name}={getattr(syn, name)}: must be positive")
    if syn.words % syn.classes:
        raise ConfigError(
            f"{prefix}synthetic.words={syn.words} is not a multiple of synthetic.classes={syn.classes}"
        )
    if syn.branching > syn.classes:
        raise ConfigError(
            f"{prefix}synthetic.branching={syn.branching} exceeds synthetic.classes={syn.classes}"
        )
    if syn.doc_words < 2 or syn.words > 100_000:
        raise ConfigError(f"{prefix}synthetic: doc_words must be >= 2 and words <= 100000")


def _validate_data(cfg: Config) -> None:
    d, m = cfg.data, cfg.model
    if not 0 < d.val_fraction <= 0.5:
        raise ConfigError(f"data.val_fraction={d.val_fraction}: must be in (0, 0.5]")
    if d.bpe_train_documents <= 0:
        raise ConfigError(f"data.bpe_train_documents={d.bpe_train_documents}: must be positive")
    if m.vocab_size < 257:  # 256 bytes + EOS: the byte alphabet is also BPE's starting point
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} is below the {d.tokenizer} tokenizer's minimum of 257 "
            "(256 bytes + end-of-document)"
        )
    if (d.corpus == "mixture") != bool(d.mixture):
        raise ConfigError(
            f"data.mixture: give components exactly when data.corpus is 'mixture' (corpus={d.corpus!r}, "
            f"{len(d.mixture)} components)"
        )
    if d.corpus != "mixture":
        _validate_source(d, "data.")
        return
    total = 0.0
    for i, raw in enumerate(d.mixture):
        if not isinstance(raw, dict):
            raise ConfigError(f"data.mixture[{i}]={raw!r}: expected a mapping with corpus and weight")
        part = _build(MixtureComponent, raw, f"data.mixture[{i}].")
        if part.corpus == "mixture":
            raise ConfigError(f"data.mixture[{i}].corpus='mixture': mixtures do not nest")
        _validate_source(part, f"data.mixture[{i}].")
        if not (part.weight >= 0 and math.isfinite(part.weight)):
            raise ConfigError(f"data.mixture[{i}].weight={part.weight}: must be a finite number >= 0")
        total += part.weight
    if not total > 0:
        raise ConfigError(f"data.mixture: weights sum to {total:g}; they must sum to a positive number")


def _validate_mesh(cfg: Config, n_devices: int) -> None:
    mesh, m, t = cfg.mesh, cfg.model, cfg.train
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}={size}: must be positive, or -1 for the rest")
    if sum(s == -1 for s in sizes.values()) > 1:
        raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if n_devices % known:
            axis = next(a for a, s in sizes.items() if s == -1)
            raise ConfigError(
                f"mesh.{axis}=-1: the other axes ({known}) do not divide the {n_devices} devices"
            )
    elif known != n_devices:
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {sizes['data']}*{sizes['fsdp']}*{sizes['tensor']} = {known} "
            f"does not match the {n_devices} devices"
        )
    shape = mesh.shape(n_devices)
    rule_axes = {name: _rule_axes(name, rule) for name, rule in mesh.rules.items()}
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}"
        )
    micro = t.batch_size // t.grad_accum
    dp_axes = rule_axes["batch"]
    dp = math.prod(shape[a] for a in dp_axes)
    if micro % dp:
        raise ConfigError(
            f"train.batch_size={t.batch_size} (micro-batch {micro}) is not divisible by the "
            f"data-parallel size {_axes_product(dp_axes)}={dp}"
        )
    for name, (key, value) in _sharded_dims(m).items():
        split = math.prod(shape[a] for a in rule_axes[name])
        if value % split:
            raise ConfigError(
                f"{key}={value} is not divisible by {_axes_product(rule_axes[name])}={split} "
                f"(mesh.rules.{name}={mesh.rules[name]})"
            )


def _rule_axes(name: str, rule: Any) -> tuple[str, ...]:
    """The mesh axes of one `mesh.rules` entry: null, a mesh axis, or a list of mesh axes."""
    if name not in LOGICAL_AXES:
        raise ConfigError(f"mesh.rules.{name}: unknown logical axis; known: {', '.join(LOGICAL_AXES)}")
    axes = [] if rule is None else [rule] if isinstance(rule, str) else rule
    if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
        raise ConfigError(
            f"mesh.rules.{name}={rule!r}: expected null, a mesh axis or a list of them "
            f"({', '.join(MESH_AXES)})"
        )
    for axis in axes:
        if axis not in MESH_AXES:
            raise ConfigError(f"mesh.rules.{name}={rule!r}: unknown mesh axis {axis!r}")
    if len(set(axes)) < len(axes):
        raise ConfigError(f"mesh.rules.{name}={rule!r}: names a mesh axis twice")
    return tuple(axes)


def _axes_product(axes: tuple[str, ...]) -> str:
    """`mesh.data*mesh.fsdp` for the axes a rule splits over (`1` for none)."""
    return "*".join(f"mesh.{a}" for a in axes) or "1"


def _sharded_dims(m: ModelConfig) -> dict[str, tuple[str, int]]:
    """Logical axis of the model's arrays -> (the config key that sizes it, its size).

    A mesh axis goes to the first logical name that claims it within an array, so a name may end up
    split over fewer axes than its rule lists; requiring the full product is the safe bound.
    """
    dims = {
        "heads": ("model.n_heads", m.n_heads),
        "vocab": ("model.vocab_size", m.vocab_size),
        "mlp": ("model.d_ff", m.ff_dim),
        "kv": ("model.d_model/model.n_heads", m.head_dim),
        "embed": ("model.d_model", m.d_model),
        "length": ("model.seq_len", m.seq_len),
    }
    if m.scan_layers:  # unscanned layers are separate arrays: no array has a layers axis
        dims["layers"] = ("model.n_layers", m.n_layers)
    return dims
