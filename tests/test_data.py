"""The token pipeline: exact resume for every corpus kind, hash splits, packing, mixtures, the cache."""

from __future__ import annotations

import hashlib
import json

import datasets
import numpy as np
import pandas as pd
import pytest

from lmscale import config
from lmscale.data import corpora, pipeline
from lmscale.data.tokenizer import Tokenizer

SMALL_SYNTHETIC = {"documents": 300, "doc_words": 48, "words": 512, "classes": 16, "branching": 4}


def words_text(rng: np.random.Generator, n_words: int) -> str:
    vocab = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta", "ηta", "theta", "iota", "kappa"]
    return " ".join(rng.choice(vocab, n_words))


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A folder with .txt, .jsonl and .parquet documents, and a hub-style local dataset folder."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    (root / "txt").mkdir()
    for i in range(40):
        (root / "txt" / f"doc{i:02d}.txt").write_text(words_text(rng, 60 + i))
    rows = [{"text": words_text(rng, 50), "id": i} for i in range(60)]
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame({"body": [words_text(rng, 40) for _ in range(50)]}).to_parquet(root / "docs.parquet")
    hub = root / "hub_folder" / "data"
    hub.mkdir(parents=True)
    (hub / "train.jsonl").write_text(
        "".join(json.dumps({"text": words_text(rng, 45)}) + "\n" for _ in range(80))
    )
    saved = root / "saved"
    datasets.Dataset.from_dict({"text": [words_text(rng, 45) for _ in range(70)]}).save_to_disk(str(saved))
    return root


def make_cfg(tmp_path, data_cfg: dict, seq_len: int = 32, batch: int = 8, **train) -> config.Config:
    raw = {
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 2, "seq_len": seq_len},
        "train": {"batch_size": batch, "tokens": batch * seq_len * 100, **train},
        "data": {"cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2, **data_cfg},
    }
    cfg = config.from_dict(raw)
    return config.validate(cfg, 1)


def kinds(corpus_dir) -> dict[str, dict]:
    return {
        "synthetic": {"corpus": "synthetic", "synthetic": SMALL_SYNTHETIC},
        "stdlib": {"corpus": "stdlib", "max_documents": 200},
        "tasks": {"corpus": "tasks", "tasks": {"documents": 400}},
        "files-txt": {"corpus": "files", "paths": [str(corpus_dir / "txt")]},
        "files-jsonl": {"corpus": "files", "paths": [str(corpus_dir / "docs.jsonl")]},
        "files-parquet": {
            "corpus": "files",
            "paths": [str(corpus_dir / "docs.parquet")],
            "text_field": "body",
        },
        "hub": {"corpus": "hub", "name": str(corpus_dir / "hub_folder")},
        "hub-streaming": {
            "corpus": "hub",
            "name": str(corpus_dir / "hub_folder"),
            "streaming": True,
            "max_documents": 50,
        },
        "hub-saved": {"corpus": "hub", "name": str(corpus_dir / "saved")},
        "mixture": {
            "corpus": "mixture",
            "mixture": [
                {"corpus": "synthetic", "synthetic": SMALL_SYNTHETIC, "weight": 3},
                {"corpus": "files", "paths": [str(corpus_dir / "txt")], "weight": 1},
            ],
        },
    }


@pytest.mark.parametrize(
    "kind",
    [
        "synthetic",
        "stdlib",
        "tasks",
        "files-txt",
        "files-jsonl",
        "files-parquet",
        "hub",
        "hub-streaming",
        "hub-saved",
        "mixture",
    ],
)
def test_restored_source_continues_with_exactly_the_next_batches(tmp_path, corpus_dir, kind):
    cfg = make_cfg(tmp_path, kinds(corpus_dir)[kind])
    uninterrupted = pipeline.prepare(cfg).source("train", 8, seed=3)
    before = [next(uninterrupted) for _ in range(7)]
    saved = json.loads(json.dumps(uninterrupted.state()))  # the checkpoint stores it as JSON
    expected = [next(uninterrupted) for _ in range(40)]  # long enough to cross an epoch of small corpora
    resumed = pipeline.prepare(cfg).source("train", 8, seed=3)  # a new process: the cache is warm
    resumed.restore(saved)
    for want in expected:
        np.testing.assert_array_equal(next(resumed), want)
    assert before[0].shape == (8, 33) and before[0].dtype == np.int32
    assert 0 <= min(b.min() for b in before) and max(b.max() for b in before) < 257


def test_every_token_is_a_target_once_per_epoch(tmp_path, corpus_dir):
    cfg = make_cfg(tmp_path, kinds(corpus_dir)["files-txt"], seq_len=16)
    pipe = pipeline.prepare(cfg)
    stream = pipe.components[0].streams["train"]
    n = stream.n_windows(16)
    src = pipe.source("train", 1, seed=0)
    windows = np.concatenate([next(src) for _ in range(n)])
    expected = np.stack([stream.window(j, 16) for j in range(n)])
    # One epoch is a permutation of the windows, and consecutive windows overlap by one token.
    assert sorted(map(bytes, windows.astype(np.uint16))) == sorted(map(bytes, expected.astype(np.uint16)))
    np.testing.assert_array_equal(expected[1:, 0], expected[:-1, -1])
    flat = np.concatenate([expected[0], *[w[1:] for w in expected[1:]]])
    docs = [t for t in pipe.tokenizer.decode(flat).split("<|endoftext|>") if t]
    assert set(docs[:-1]) <= {p.read_text() for p in (corpus_dir / "txt").glob("*.txt")}


def test_validation_documents_never_appear_in_training(tmp_path, corpus_dir):
    cfg = make_cfg(tmp_path, kinds(corpus_dir)["files-jsonl"], seq_len=16)
    pipe = pipeline.prepare(cfg)

    def doc_hashes(split: str) -> set[str]:
        stream = pipe.components[0].streams[split]
        tokens = np.concatenate(stream.chunks)
        docs = pipe.tokenizer.decode(tokens).split("<|endoftext|>")[:-1]
        return {hashlib.sha256(d.encode()).hexdigest() for d in docs}

    train, val = doc_hashes("train"), doc_hashes("val")
    assert train and val and not train & val
    texts = [json.loads(line)["text"] for line in (corpus_dir / "docs.jsonl").read_text().splitlines()]
    assert len(train) + len(val) == len(set(texts))
    # The split is a function of each document alone: more documents never move an old one.
    more = texts + [f"new document {i}" for i in range(500)]
    np.testing.assert_array_equal(pipeline.is_val(more, 0.2)[: len(texts)], pipeline.is_val(texts, 0.2))
    assert abs(pipeline.is_val(more, 0.2).mean() - 0.2) < 0.05


def test_process_rows_tile_the_global_batch(tmp_path, corpus_dir):
    pipe = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["mixture"]))
    full = pipe.source("train", 8, seed=1)
    whole = [next(full) for _ in range(3)]
    parts = [pipe.source("train", 8, seed=1, process_index=i, process_count=4) for i in range(4)]
    for step in range(3):
        np.testing.assert_array_equal(np.concatenate([next(p) for p in parts]), whole[step])


def test_seed_orders_the_windows_and_the_mixture_follows_its_weights(tmp_path, corpus_dir):
    pipe = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["mixture"]))
    a, b = pipe.source("train", 8, seed=1), pipe.source("train", 8, seed=2)
    assert not np.array_equal(next(a), next(b))
    np.testing.assert_array_equal(
        next(pipe.source("train", 8, seed=1)), next(pipe.source("train", 8, seed=1))
    )
    src = pipe.source("train", 64, seed=0)
    for _ in range(50):
        next(src)
    share = src.consumed[0] / sum(src.consumed)
    assert abs(share - 0.75) < 0.02  # weights 3:1, 3200 rows: binomial sd 0.008


def test_every_seed_and_batch_size_is_scored_on_one_validation_set(tmp_path, corpus_dir):
    pipe = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["mixture"]))
    by_seed = [np.concatenate([next(src) for _ in range(3)]) for src in
               (pipe.source("val", 8, seed=s) for s in (0, 1, 7))]  # fmt: skip
    np.testing.assert_array_equal(by_seed[1], by_seed[0])
    np.testing.assert_array_equal(by_seed[2], by_seed[0])
    halves = pipe.source("val", 4, seed=3)
    np.testing.assert_array_equal(np.concatenate([next(halves) for _ in range(6)]), by_seed[0])
    # Weights 3:1: after every batch each component holds its share of the rows to within one.
    src = pipe.source("val", 5, seed=0)
    for batches in range(1, 9):
        next(src)
        rows = 5 * batches
        assert abs(src.consumed[0] - 0.75 * rows) <= 1 and sum(src.consumed) == rows


def test_stratified_rows_hold_every_share_to_within_one_row():
    w = np.array([0.38, 0.12, 0.17, 0.33])
    comp = pipeline.stratified_rows(w, 500)
    for rows in range(1, 501):
        counts = np.bincount(comp[:rows], minlength=4)
        assert np.all(np.abs(counts - w * rows) <= 1), (rows, counts)


def test_second_prepare_reads_the_cache_without_tokenizing(tmp_path, corpus_dir, monkeypatch):
    cfg = make_cfg(tmp_path, kinds(corpus_dir)["files-txt"])
    first = pipeline.prepare(cfg)
    monkeypatch.setattr(corpora, "load", lambda *a: pytest.fail("the corpus was loaded again"))
    second = pipeline.prepare(cfg)
    assert second.fingerprint == first.fingerprint
    # A changed file is a different corpus: a new cache key, never stale tokens.
    monkeypatch.undo()
    path = corpus_dir / "txt" / "doc00.txt"
    original = path.read_text()
    try:
        path.write_text(original + " omega")
        assert pipeline.prepare(cfg).components[0].key != first.components[0].key
    finally:
        path.write_text(original)


def test_a_task_generator_edited_without_a_version_bump_gets_a_new_cache_key(monkeypatch):
    import dataclasses

    from lmscale.fewshot import tasks

    src = config.SourceConfig(corpus="tasks")
    src.tasks.names = ["modlin"]
    before = corpora.identity(src, "data.")
    task = tasks.TASKS["modlin"]

    def draw(rng, ab):  # same version, different text: a local edit someone forgot to version
        inst = task.draw(rng, ab)
        return dataclasses.replace(inst, question="h" + inst.question[1:])

    monkeypatch.setitem(tasks.TASKS, "modlin", dataclasses.replace(task, draw=draw))
    after = corpora.identity(src, "data.")
    assert after["tasks"] == before["tasks"]  # the version did not change...
    assert pipeline._key(after) != pipeline._key(before)  # ...but the cache key did


def test_restoring_into_a_different_corpus_is_an_error(tmp_path, corpus_dir):
    a = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["files-txt"])).source("train", 8, seed=0)
    next(a)
    b = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["files-jsonl"])).source("train", 8, seed=0)
    with pytest.raises(config.ConfigError, match="differs from the one this run was checkpointed with"):
        b.restore(a.state())


def test_pipeline_records_what_it_read(tmp_path, corpus_dir):
    meta = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["mixture"])).metadata()
    syn, files = meta["components"]
    assert syn["weight"] == pytest.approx(0.75) and files["weight"] == pytest.approx(0.25)
    assert syn["entropy_rate"] > 0 and "entropy_rate" not in files
    assert meta["entropy_rate"] is None  # unknown for the files part, so unknown for the stream
    stdlib = pipeline.prepare(make_cfg(tmp_path, kinds(corpus_dir)["stdlib"])).metadata()["components"][0]
    assert stdlib["identity"]["python"] and len(stdlib["identity"]["content_sha256"]) == 64


def test_bpe_is_trained_once_and_a_run_keeps_its_own(tmp_path, corpus_dir):
    cfg = make_cfg(tmp_path, {**kinds(corpus_dir)["files-txt"], "tokenizer": "bpe"}, seq_len=32)
    cfg.model.vocab_size = 512
    first = pipeline.prepare(cfg)
    assert (
        first.tokenizer.kind == "bpe" and 257 < first.tokenizer.vocab_size <= 512
    )  # small corpora stop early
    assert pipeline.prepare(cfg).tokenizer.fingerprint == first.tokenizer.fingerprint  # cached, not retrained
    # A run directory's tokenizer.json wins over whatever the cache holds now.
    own = Tokenizer.train_bpe(["a different corpus entirely " * 50], vocab_size=300)
    own.save(tmp_path / "tokenizer.json")
    resumed = pipeline.prepare(cfg, tmp_path / "tokenizer.json")
    assert resumed.tokenizer.fingerprint == own.fingerprint
    assert resumed.fingerprint != first.fingerprint  # so a checkpoint from `first` would refuse it


def write_null_documents(root, kind: str, texts: list) -> dict:
    """`texts` (some None or empty) as a corpus of `kind`; returns its data config."""
    if kind == "jsonl":
        path = root / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        return {"corpus": "files", "paths": [str(path)]}
    if kind == "parquet":
        path = root / "docs.parquet"
        pd.DataFrame({"body": texts}).to_parquet(path)
        return {"corpus": "files", "paths": [str(path)], "text_field": "body"}
    path = root / "saved"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return {"corpus": "hub", "name": str(path)}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hub"])
def test_null_and_empty_documents_are_dropped_and_counted(tmp_path, kind):
    rng = np.random.default_rng(1)
    texts = [words_text(rng, 40) for _ in range(30)]
    texts[3], texts[7], texts[20] = None, "", None
    data_cfg = write_null_documents(tmp_path, kind, texts)
    pipe = pipeline.prepare(make_cfg(tmp_path, data_cfg, eval_batches=0))
    meta = pipe.metadata()["components"][0]
    assert meta["dropped_documents"] == 3
    assert meta["train"]["documents"] + meta["val"]["documents"] == 27
    assert next(pipe.source("train", 8, 0)).shape == (8, 33)


def test_bpe_trains_on_a_corpus_with_null_documents(tmp_path):
    rng = np.random.default_rng(2)
    texts = [None if i % 5 == 0 else words_text(rng, 40) for i in range(40)]
    cfg = make_cfg(tmp_path, {**write_null_documents(tmp_path, "jsonl", texts), "tokenizer": "bpe"})
    cfg.model.vocab_size = 300
    assert pipeline.prepare(cfg).tokenizer.kind == "bpe"


def test_a_mixture_component_shorter_than_one_sequence_is_named_before_training(tmp_path, corpus_dir):
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    mixture = {
        "corpus": "mixture",
        "mixture": [
            {"corpus": "files", "paths": [str(corpus_dir / "txt")], "weight": 3},
            {"corpus": "files", "paths": [str(short)], "weight": 1},
        ],
    }
    with pytest.raises(config.ConfigError) as err:
        pipeline.prepare(make_cfg(tmp_path, mixture, eval_batches=0))
    message = str(err.value)
    assert "data.mixture[1]" in message and "17 training tokens" in message
    assert "model.seq_len+1=33" in message and str(short) in message
