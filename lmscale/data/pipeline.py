"""The token pipeline: corpus -> hash split -> tokenizer -> Arrow cache -> packed, shuffled, mixed batches.

`prepare(cfg)` builds (or finds) the tokenized cache of every corpus and the tokenizer; `Pipeline.source`
then gives iterators of int32 `[rows, seq_len + 1]` batches whose position is a small JSON state.

- Split: whole documents by the hash of their text, or the tail of each document (lmscale/data/split.py).
- Packing: each split's documents, each followed by EOS, form one token stream; window j is tokens
  [j*L, j*L + L + 1), so every token is a target exactly once per epoch.
- Order: every epoch visits the windows in a fresh permutation drawn from (seed, split, component, epoch).
- Mixtures: each row of a global batch picks its component with the mixture weights, drawn from
  (seed, split, batch index); a component's rows continue its own stream, so the state is the batch
  index plus one count per component.
- Hosts: every process computes the global batch layout and reads only its own rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmscale.config import Config, ConfigError, DataConfig, MixtureComponent
from lmscale.data import corpora, split
from lmscale.data.split import is_val  # noqa: F401 - pipeline.is_val, as before split.py
from lmscale.data.stream import TokenStream
from lmscale.data.tokenizer import Tokenizer

PIPELINE_VERSION = "2"  # bump when cached token files change meaning
_SPLITS = {"train": 0, "val": 1}
# Every run of a corpus is scored on the same validation windows, whatever its own train.seed: a seed
# then changes the model, never the yardstick. (Drawn by train.seed, two seeds' validation sets of the
# cpu_demo mixture differed by 0.12 nats, on models that agree within 0.3% on one shared set.)
VAL_SEED = 0


def cache_root(d: DataConfig) -> Path:
    root = d.cache_dir or os.environ.get("LMSCALE_CACHE") or Path.home() / ".cache" / "lmscale"
    return Path(root).expanduser()


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclasses.dataclass
class Component:
    """One corpus of the mixture, tokenized and split."""

    prefix: str  # config path, for messages: "data." or "data.mixture[1]."
    source: MixtureComponent
    key: str
    meta: dict
    streams: dict[str, TokenStream]


def _build_cache(
    comp: MixtureComponent,
    prefix: str,
    identity: dict,
    tok: Tokenizer,
    d: DataConfig,
    root: Path,
    progress: bool,
    want_val: bool,
) -> Path:
    """Tokenize one corpus into `root/tokens/KEY/{train,val}.arrow` plus meta.json, atomically.

    Nothing is printed until the corpus has loaded, and the bar only once tokenizing has taken a while:
    a bad corpus fails with its one-line error alone on stderr."""
    key = _key(
        {
            "identity": identity,
            "tokenizer": tok.fingerprint,
            "val_fraction": d.val_fraction,
            "version": PIPELINE_VERSION,
        }
        | split.cache_key(d, want_val)
    )
    final = root / "tokens" / key
    if (final / "meta.json").exists():
        return final
    tmp = final.with_name(f"{key}.tmp-{uuid.uuid4().hex[:8]}")
    import datasets  # here, not at the top: a run whose caches exist never imports it (0.5 s with pandas)
    from datasets.arrow_writer import ArrowWriter

    datasets.disable_progress_bars()  # its bars would print before a bad corpus's error; this has one
    tmp.mkdir(parents=True)
    try:
        docs, dropped = corpora.load(comp, prefix, root / "hf")
        features = datasets.Features({"ids": datasets.Sequence(datasets.Value(tok.dtype.name))})
        meta = {"key": key, "identity": identity, "tokenizer": tok.fingerprint, "dropped_documents": dropped}
        parts, meta["val_split"] = split.split(docs, d, want_val)
        desc = f"lmscale: tokenizing {prefix}corpus={comp.corpus!r}"
        total = sum(map(len, parts.values()))
        bar = tqdm(total=total, unit="doc", desc=desc, file=sys.stderr, delay=2.0, disable=not progress)

        def encode(batch: dict) -> dict:
            bar.update(len(batch["text"]))
            return {"ids": tok.encode_documents(batch["text"])}

        for name, part in parts.items():
            ids = part.map(
                encode,
                batched=True,
                remove_columns=["text"],
                features=features,
                cache_file_name=str(tmp / f"{name}.arrow"),
                new_fingerprint=f"{key}-{name}",
            )
            if not (tmp / f"{name}.arrow").exists():  # datasets writes no file for an empty split
                with ArrowWriter(features=features, path=str(tmp / f"{name}.arrow")) as writer:
                    writer.finalize()
            chunks = ids.data.column("ids").chunks if len(ids) else []  # empty: map kept the old columns
            lengths = np.concatenate([c.value_lengths().to_numpy() for c in chunks] + [[1]])
            meta[name] = {
                "documents": len(ids),
                "tokens": int(np.sum(lengths)) - 1,
                "max_doc_tokens": int(np.max(lengths)) - 1,  # EOS not counted
            }
        bar.close()
        if comp.corpus == "synthetic":
            source = corpora.synthetic_source(comp)
            meta["entropy_rate"] = source.entropy_rate(tok.encode)
            meta["entropy_per_word"] = source.entropy_per_word()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same key first: its copy is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _tokenizer(
    cfg: Config,
    comps: list[MixtureComponent],
    prefixes: list[str],
    idents: list[dict],
    root: Path,
    saved: Path | None,
    progress: bool,
) -> Tokenizer:
    d = cfg.data
    if saved is not None and saved.is_file():
        tok = Tokenizer.load(saved)  # a resumed run keeps the tokenizer it started with
    elif d.tokenizer == "byte":
        tok = Tokenizer.byte()
    else:
        key = _key(
            {
                "corpora": idents,
                "weights": [c.weight for c in comps],
                "vocab": cfg.model.vocab_size,
                "docs": d.bpe_train_documents,
                "val": d.val_fraction,
            }
        )
        path = root / "tokenizers" / f"{key}.json"
        if not path.exists():
            texts = []
            for comp, prefix in zip(comps, prefixes, strict=True):
                docs, _ = corpora.load(comp, prefix, root / "hf")
                n = max(1, round(comp.weight * d.bpe_train_documents))
                first = docs.select(range(min(len(docs), 4 * n)))["text"]
                texts += split.training_texts(first, d)[:n]
            if progress:  # the corpora loaded: the input is good
                print(f"lmscale: training a {cfg.model.vocab_size}-id BPE into {path}", file=sys.stderr)
            tok = Tokenizer.train_bpe(texts, cfg.model.vocab_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
            tok.save(tmp)
            os.replace(tmp, path)
        tok = Tokenizer.load(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tok.vocab_size} ids"
        )
    return tok


@dataclasses.dataclass
class Pipeline:
    tokenizer: Tokenizer
    components: list[Component]
    seq_len: int

    @property
    def weights(self) -> np.ndarray:
        return np.array([c.source.weight for c in self.components])

    @property
    def fingerprint(self) -> str:
        return _key(
            [self.tokenizer.fingerprint, [[c.key, c.source.weight] for c in self.components], self.seq_len]
        )

    @property
    def labels(self) -> list[str]:
        """Each component's name in per-component validation losses (`data.mixture[i].label`)."""
        return [c.source.label for c in self.components]

    @property
    def entropy_rates(self) -> dict[str, float | None]:
        """Each component's entropy rate in nats per token, where its generator makes it known."""
        return {c.source.label: c.meta.get("entropy_rate") for c in self.components}

    @property
    def entropy_rate(self) -> float | None:
        """Nats per token of the training stream when every component's is known, else None."""
        rates = [c.meta.get("entropy_rate") for c in self.components]
        return None if None in rates else float(self.weights @ np.array(rates))

    def metadata(self) -> dict:
        """What the run trained on, for config.yaml and summary.json."""
        return {
            "fingerprint": self.fingerprint,
            "tokenizer": {
                "kind": self.tokenizer.kind,
                "vocab_size": self.tokenizer.vocab_size,
                "fingerprint": self.tokenizer.fingerprint,
            },
            "entropy_rate": self.entropy_rate,
            "components": [
                {
                    "corpus": c.source.corpus,
                    "weight": c.source.weight,
                    "cache_key": c.key,
                    **{k: v for k, v in c.meta.items() if k != "tokenizer"},
                }
                for c in self.components
            ],
        }

    def source(
        self, split: str, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
    ) -> Source:
        return Source(self, split, batch_size, seed, process_index, process_count)


def prepare(cfg: Config, tokenizer_path: Path | None = None, progress: bool = False) -> Pipeline:
    """Tokenizer and token caches for `cfg.data`, building what is missing; ConfigError on bad input."""
    d = cfg.data
    root = cache_root(d)
    comps = d.components()
    prefixes = ["data."] if d.corpus != "mixture" else [f"data.mixture[{i}]." for i in range(len(comps))]
    idents = [corpora.identity(c, p) for c, p in zip(comps, prefixes, strict=True)]
    tok = _tokenizer(cfg, comps, prefixes, idents, root, tokenizer_path, progress)
    parts = []
    for comp, prefix, ident in zip(comps, prefixes, idents, strict=True):
        path = _build_cache(comp, prefix, ident, tok, d, root, progress, cfg.train.eval_batches > 0)
        meta = json.loads((path / "meta.json").read_text())
        if meta["train"]["documents"] == 0:
            dropped = meta.get("dropped_documents", 0)
            note = f"; {dropped} null or empty documents dropped" if dropped else ""
            raise ConfigError(
                f"{prefix}corpus={comp.corpus!r}: the corpus is empty "
                f"(no non-empty documents{_where(comp)}{note})"
            )
        streams = {s: TokenStream(path / f"{s}.arrow") for s in _SPLITS}
        parts.append(Component(prefix, comp, path.name, meta, streams))
    _check_lengths(cfg, parts)
    return Pipeline(tok, parts, cfg.model.seq_len)


def _check_lengths(cfg: Config, parts: list[Component]) -> None:
    """Every component must fill at least one training sequence, and validation one when it runs."""
    L = cfg.model.seq_len
    longest = max(c.meta["train"]["max_doc_tokens"] for c in parts)
    if L > longest:
        raise ConfigError(
            f"model.seq_len={L} is longer than every document (the longest has {longest} "
            "tokens): every sequence would be unrelated documents packed together"
        )
    for c in parts:
        train = c.streams["train"]
        if train.n_windows(L) == 0:
            raise ConfigError(
                f"{c.prefix}corpus={c.source.corpus!r}{_where(c.source)}: {train.n_tokens} training tokens "
                f"(end-of-document tokens included), fewer than the model.seq_len+1={L + 1} of one training "
                "sequence; add documents or lower model.seq_len"
            )
    short = [c for c in parts if c.streams["val"].n_windows(L) == 0]
    if cfg.train.eval_batches and short:
        c, d = short[0], cfg.data
        n_docs = c.meta["train"]["documents"] + c.meta["val"]["documents"]
        fix = (
            "data.val_split=tail (the last val_fraction of each document), " if d.val_split != "tail" else ""
        )
        raise ConfigError(
            f"data.val_fraction={d.val_fraction}: {c.prefix}corpus={c.source.corpus!r}{_where(c.source)} has "
            f"no validation sequence of {L + 1} tokens ({c.meta['val']['documents']} of its {n_docs} "
            f"documents, {c.streams['val'].n_tokens} tokens, by data.val_split="
            f"{c.meta.get('val_split', 'hash')}); set "
            f"{fix}a larger data.val_fraction, or train.eval_batches=0"
        )


def _where(comp: MixtureComponent) -> str:
    if comp.corpus == "files":
        return f" in {', '.join(map(str, comp.paths))}"
    return f" in {comp.name!r}" if comp.corpus == "hub" else ""


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of each global batch that process `process_index` of `process_count` reads."""
    return slice(
        process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count
    )


def stratified_rows(weights: np.ndarray, rows: int) -> np.ndarray:
    """Components of the first `rows` rows of a sequence in which, after any number R of rows,
    component k holds w_k R rows to within one: each row goes to the component furthest below its
    share. Rows drawn at random would carry a multinomial spread (about 4% of the cpu_demo mixture's loss
    on 16K tokens). The sequence does not depend on the batch size, so every batch size shares it."""
    w = np.asarray(weights, float) / np.sum(weights)
    held = np.zeros(len(w))
    out = np.empty(rows, np.int64)
    for r in range(rows):
        k = int(np.argmax(w * (r + 1) - held))
        out[r], held[k] = k, held[k] + 1
    return out


class Source:
    """Batches of one split; `state()` after batch k and `restore` give batch k+1 next, exactly."""

    def __init__(
        self, pipe: Pipeline, split: str, batch_size: int, seed: int, process_index: int, process_count: int
    ):
        self.pipe, self.split, self.batch_size = pipe, split, batch_size
        self.seed = VAL_SEED if split == "val" else seed
        self.rows = process_rows(batch_size, process_index, process_count)
        self.L = pipe.seq_len
        self.streams = [c.streams[split] for c in pipe.components]
        self.n = [s.n_windows(self.L) for s in self.streams]
        self.batch_index, self.consumed = 0, [0] * len(self.streams)
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._strata = np.empty(0, np.int64)  # validation rows' components, as far as drawn

    def _order(self, k: int, epoch: int) -> np.ndarray:
        if (k, epoch) not in self._orders:
            if len(self._orders) > 2 * len(self.n):
                self._orders.pop(next(iter(self._orders)))
            rng = np.random.default_rng([self.seed, _SPLITS[self.split], k, epoch])
            self._orders[(k, epoch)] = rng.permutation(self.n[k]).astype(np.int64)
        return self._orders[(k, epoch)]

    def layout(self, index: int) -> np.ndarray:
        """Component of each row of global batch `index`: drawn by the weights for training; for
        validation, each component's share of the rows so far is its weight to within one row."""
        if len(self.n) == 1:
            return np.zeros(self.batch_size, np.int64)
        if self.split == "val":
            end = (index + 1) * self.batch_size
            if len(self._strata) < end:  # grown by doubling: the sequence's prefixes never change
                self._strata = stratified_rows(self.pipe.weights, max(end, 2 * len(self._strata)))
            return self._strata[end - self.batch_size : end]
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], 2**32 + index])
        return rng.choice(len(self.n), size=self.batch_size, p=self.pipe.weights)

    def __iter__(self) -> Source:
        return self

    def __next__(self) -> np.ndarray:
        comp_B = self.layout(self.batch_index)
        pos_B = np.empty(self.batch_size, np.int64)
        for k in range(len(self.n)):
            rows = np.flatnonzero(comp_B == k)
            pos_B[rows] = self.consumed[k] + np.arange(len(rows))
            self.consumed[k] += len(rows)
        out_BxL = np.empty((self.rows.stop - self.rows.start, self.L + 1), np.int32)
        for r, (k, pos) in enumerate(zip(comp_B[self.rows], pos_B[self.rows], strict=True)):
            n = self.n[k]
            out_BxL[r] = self.streams[k].window(int(self._order(k, pos // n)[pos % n]), self.L)
        self.batch_index += 1
        return out_BxL

    @property
    def epochs(self) -> float:
        """Passes over the largest share of any component consumed so far."""
        return max(c / n for c, n in zip(self.consumed, self.n, strict=True))

    def state(self) -> dict:
        return {
            "batch_index": self.batch_index,
            "consumed": list(self.consumed),
            "fingerprint": self.pipe.fingerprint,
        }

    def restore(self, state: dict) -> None:
        if state.get("fingerprint") != self.pipe.fingerprint:
            raise ConfigError(
                f"data: the corpus or tokenizer differs from the one this run was checkpointed with "
                f"(data fingerprint {state.get('fingerprint')} != {self.pipe.fingerprint}); use a new --out"
            )
        self.batch_index, self.consumed = int(state["batch_index"]), [int(c) for c in state["consumed"]]


def make_source(cfg: Config, split: str, process_index: int = 0, process_count: int = 1) -> Source:
    """The batches `lmscale train` would draw for `cfg`, without a run directory."""
    return prepare(cfg).source(split, cfg.train.batch_size, cfg.train.seed, process_index, process_count)
