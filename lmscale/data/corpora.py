"""Corpora as `datasets.Dataset`s of documents with one column, `text`.

Each kind has an `identity` (cheap, and what the token cache is keyed on) and a `load`. Errors are
`ConfigError`s of one line that name the key, the file and, for bad UTF-8, the byte offset.
`check_data` rejects a data section that cannot work before anything is read (`config.validate`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from lmscale.config import Config, ConfigError, SourceConfig
from lmscale.data.synthetic import VERSION as SYNTHETIC_VERSION
from lmscale.data.synthetic import SyntheticSource

if TYPE_CHECKING:  # datasets is imported where a cache is built: it and pandas take ~0.5 s to import
    import datasets

SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def synthetic_source(src: SourceConfig) -> SyntheticSource:
    s = src.synthetic
    return SyntheticSource(s.seed, s.words, s.classes, s.branching, s.zipf, s.doc_words)


# -- checks, before any document is read ---------------------------------------------------------
def check_data(cfg: Config) -> None:
    """`data` as a whole: the tokenizer's minimum vocabulary, every source, a mixture's components."""
    d, m = cfg.data, cfg.model
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
    parts = d.components(normalised=False)
    for i, part in enumerate(parts):
        prefix = f"data.mixture[{i}]." if d.corpus == "mixture" else "data."
        if part.corpus == "mixture":
            raise ConfigError(f"{prefix}corpus='mixture': mixtures do not nest")
        check_source(part, prefix)
    total = sum(p.weight for p in parts)
    if not total > 0:
        raise ConfigError(f"data.mixture: weights sum to {total:g}; they must sum to a positive number")


def check_source(src: SourceConfig, prefix: str) -> None:
    """What one source needs beyond its keys' types; `prefix` names it (`data.`, `data.mixture[1].`)."""
    if src.corpus == "files" and not src.paths:
        raise ConfigError(f"{prefix}paths: the files corpus needs at least one file or folder")
    if src.corpus == "hub" and not src.name:
        raise ConfigError(f"{prefix}name: the hub corpus needs a dataset name or folder")
    if src.streaming and src.max_documents == 0:
        raise ConfigError(f"{prefix}streaming=true needs {prefix}max_documents > 0 to bound the stream")
    syn = src.synthetic
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


# -- files --------------------------------------------------------------------------------------
def expand_paths(src: SourceConfig, prefix: str) -> list[Path]:
    """Every corpus file under `paths`, folders searched recursively, in a stable order."""
    files = []
    for raw in src.paths:
        path = Path(str(raw)).expanduser()
        if not path.exists():
            raise ConfigError(f"{prefix}paths: '{path}' does not exist")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise ConfigError(f"{prefix}paths: folder '{path}' has no {', '.join(SUFFIXES)} files")
            files += found
        elif path.suffix in SUFFIXES:
            files.append(path)
        else:
            raise ConfigError(f"{prefix}paths: '{path}' is not one of {', '.join(SUFFIXES)}")
    return files


def _stat(files: list[Path]) -> list:
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _check_utf8(path: Path, prefix: str) -> None:
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{prefix}paths: '{path}' is not UTF-8 at byte offset {e.start}; set "
            f"{prefix}decode_errors: replace to substitute U+FFFD"
        ) from None


def _first_record(path: Path) -> dict | None:
    with path.open("rb") as f:
        if path.suffix == ".json" and f.read(1) == b"[":
            return None  # a JSON array: datasets reads it whole; the field is checked after loading
        f.seek(0)
        for line in f:
            if line.strip():
                try:
                    return json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return None  # datasets reports malformed JSON with its own detail
    return None


def _check_field(path: Path, src: SourceConfig, prefix: str) -> None:
    if path.suffix == ".parquet":
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line error
            raise ConfigError(f"{prefix}paths: '{path}' is not a readable Parquet file ({e})") from None
    else:
        record = _first_record(path)
        if record is None or not isinstance(record, dict):
            return
        names = list(record)
    if src.text_field not in names:
        raise ConfigError(
            f"{prefix}text_field={src.text_field!r}: no such field in '{path}' (has {', '.join(names)})"
        )


def _load_builder(builder: str, files: list[Path], src: SourceConfig, prefix: str, cache: Path):
    import datasets

    kwargs = {"sample_by": "document", "encoding_errors": src.decode_errors} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(
            builder, data_files=[str(f) for f in files], split="train", cache_dir=str(cache), **kwargs
        )
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs one line
        cause = str(e.__cause__ or e).splitlines()[0] if str(e.__cause__ or e) else type(e).__name__
        raise ConfigError(
            f"{prefix}paths: cannot read {builder} files {[str(f) for f in files]}: {cause}"
        ) from None
    field = "text" if builder == "text" else src.text_field
    if field not in ds.column_names:
        raise ConfigError(
            f"{prefix}text_field={src.text_field!r}: no such field in {[str(f) for f in files]}"
        )
    return _text_column(ds, field)


def _text_column(ds: datasets.Dataset, field: str) -> datasets.Dataset:
    ds = ds.select_columns([field])
    return ds if field == "text" else ds.rename_column(field, "text")


def _files_identity(src: SourceConfig, prefix: str) -> dict:
    return {"files": _stat(expand_paths(src, prefix)), "text_field": src.text_field}


def _load_files(src: SourceConfig, prefix: str, cache: Path) -> datasets.Dataset:
    import datasets

    files = expand_paths(src, prefix)
    by_builder: dict[str, list[Path]] = {}
    for f in files:
        by_builder.setdefault(SUFFIXES[f.suffix], []).append(f)
        if f.suffix == ".txt" and src.decode_errors == "strict":
            _check_utf8(f, prefix)
        elif f.suffix != ".txt":
            _check_field(f, src, prefix)
    parts = [_load_builder(b, fs, src, prefix, cache) for b, fs in by_builder.items()]
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


# -- hub ----------------------------------------------------------------------------------------
def _hub_identity(src: SourceConfig, prefix: str) -> dict:
    ident = {"name": src.name, "config": src.config, "split": src.split, "text_field": src.text_field}
    local = Path(src.name).expanduser()
    if local.is_dir():  # a local dataset folder: its files decide the content
        ident["files"] = _stat(sorted(p for p in local.rglob("*") if p.is_file()))
    return ident


def _load_hub(src: SourceConfig, prefix: str, cache: Path) -> datasets.Dataset:
    import datasets

    local = Path(src.name).expanduser()
    try:
        if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(local))  # a `save_to_disk` folder
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[src.split]
        else:
            ds = datasets.load_dataset(
                src.name, src.config or None, split=src.split, streaming=src.streaming, cache_dir=str(cache)
            )
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad split: one line for all
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{prefix}name={src.name!r}: cannot load split {src.split!r}: {first}") from None
    if src.text_field not in (ds.column_names or []):
        raise ConfigError(
            f"{prefix}text_field={src.text_field!r}: no such column in {src.name!r} (has {ds.column_names})"
        )
    if src.streaming:  # bounded by validation: max_documents > 0
        rows = [{"text": r[src.text_field]} for r in ds.take(src.max_documents)]
        return datasets.Dataset.from_list(
            rows, features=datasets.Features({"text": datasets.Value("string")})
        )
    return _text_column(ds, src.text_field)


# -- stdlib -------------------------------------------------------------------------------------
def stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts))
    return root, files


def _stdlib_identity(src: SourceConfig, prefix: str) -> dict:
    root, files = stdlib_files()
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return {"python": platform.python_version(), "files": len(files), "content_sha256": digest.hexdigest()}


def _load_stdlib(src: SourceConfig, prefix: str, cache: Path) -> datasets.Dataset:
    import datasets

    # A few stdlib modules carry Latin-1 fixtures; the corpus is ours to read, so they are replaced.
    _, files = stdlib_files()
    return datasets.Dataset.from_dict({"text": [f.read_bytes().decode("utf-8", "replace") for f in files]})


# -- synthetic ----------------------------------------------------------------------------------
def _synthetic_identity(src: SourceConfig, prefix: str) -> dict:
    s = src.synthetic
    return {"version": SYNTHETIC_VERSION, **{k: getattr(s, k) for k in s.__dataclass_fields__}}


def _load_synthetic(src: SourceConfig, prefix: str, cache: Path) -> datasets.Dataset:
    import datasets

    docs = list(synthetic_source(src).documents(src.synthetic.documents))
    return datasets.Dataset.from_dict({"text": docs})


# -- tasks --------------------------------------------------------------------------------------
def _task_names(src: SourceConfig, prefix: str) -> list[str]:
    from lmscale.fewshot import tasks

    names = [str(n) for n in src.tasks.names] or list(tasks.TASKS)
    unknown = [n for n in names if n not in tasks.TASKS]
    if unknown:
        raise ConfigError(
            f"{prefix}tasks.names: unknown task '{unknown[0]}'; known: {', '.join(tasks.TASKS)}"
        )
    return names


def _tasks_identity(src: SourceConfig, prefix: str) -> dict:
    from lmscale.fewshot import tasks

    t = src.tasks
    names = _task_names(src, prefix)
    versions = {n: tasks.TASKS[n].version for n in names}
    # The text of each task's first documents, digested: a generator edited without a version bump
    # gets a new cache instead of training on the old generator's text.
    sample = "".join(
        x.line
        for n in names
        for d in range(4)
        for x in tasks.training_document(n, d, t.seed, tasks.MAX_SHOTS)
    )
    digest = hashlib.sha256(sample.encode()).hexdigest()[:16]
    return {
        "tasks": versions,
        "sample": digest,
        "documents": t.documents,
        "max_shots": t.max_shots,
        "seed": t.seed,
    }


def _load_tasks(src: SourceConfig, prefix: str, cache: Path) -> datasets.Dataset:
    from lmscale.fewshot import tasks

    t = src.tasks
    return tasks.task_corpus(t.documents, t.seed, _task_names(src, prefix), t.max_shots)


Loader = Callable[[SourceConfig, str, Path], "datasets.Dataset"]
KINDS: dict[str, tuple[Callable[[SourceConfig, str], dict], Loader]] = {
    "files": (_files_identity, _load_files),
    "hub": (_hub_identity, _load_hub),
    "stdlib": (_stdlib_identity, _load_stdlib),
    "synthetic": (_synthetic_identity, _load_synthetic),
    "tasks": (_tasks_identity, _load_tasks),
}


def identity(src: SourceConfig, prefix: str) -> dict:
    """What the corpus's content depends on: equal identities mean equal documents."""
    ident = KINDS[src.corpus][0](src, prefix)
    return {
        "corpus": src.corpus,
        **ident,
        "max_documents": src.max_documents,
        "decode_errors": src.decode_errors,
    }


def load(src: SourceConfig, prefix: str, cache: Path) -> tuple[datasets.Dataset, int]:
    """The documents (the first `max_documents` when set) without null or empty ones, and how many
    of those were dropped: they hold no text to train on."""
    ds = KINDS[src.corpus][1](src, prefix, cache)
    if src.max_documents and len(ds) > src.max_documents:
        ds = ds.select(range(src.max_documents))
    return drop_empty(ds)


def drop_empty(ds: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """`ds` without the documents whose text is null or empty, and how many there were."""
    has_text = np.concatenate(
        [
            np.array([bool(t) for t in b["text"]], bool)
            for b in ds.select_columns(["text"]).iter(batch_size=1000)
        ]
        + [np.ones(0, bool)]
    )
    dropped = int(np.sum(~has_text))
    return (ds.select(np.flatnonzero(has_text)) if dropped else ds), dropped
