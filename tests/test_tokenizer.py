"""Tokenizers round-trip text exactly: bytes for any UTF-8, and a BPE trained here."""

from __future__ import annotations

import numpy as np
import pytest

from lmscale.data import corpora
from lmscale.data.tokenizer import EOS, Tokenizer


def random_unicode(rng: np.random.Generator, n: int) -> str:
    """Code points from every plane (surrogates excluded), controls and NUL included."""
    points = rng.integers(0, 0x110000, size=4 * n)
    points = points[(points < 0xD800) | (points > 0xDFFF)][:n]
    return "".join(map(chr, points)) + "\x00\t\n\r 😀 e\u0301"


def test_byte_tokenizer_round_trips_arbitrary_utf8():
    tok = Tokenizer.byte()
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = random_unicode(rng, 300)
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.vocab_size == 257 and tok.eos_id == 256


@pytest.fixture(scope="module")
def stdlib_texts() -> list[str]:
    _, files = corpora.stdlib_files()
    return [f.read_text("utf-8", errors="replace") for f in files[:120]]


def test_bpe_trained_on_a_local_corpus_round_trips_exactly(stdlib_texts, tmp_path):
    tok = Tokenizer.train_bpe(stdlib_texts[:80], vocab_size=600)
    assert tok.kind == "bpe" and tok.vocab_size == 600
    held_out = stdlib_texts[80:]
    ids = tok.encode_batch(held_out)
    assert [tok.decode(i) for i in ids] == held_out
    # It compresses code: well under one token per byte.
    assert sum(map(len, ids)) < 0.6 * sum(len(t.encode()) for t in held_out)
    rng = np.random.default_rng(1)
    text = random_unicode(rng, 500)  # characters it never saw still round-trip through bytes
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.kind == "bpe" and again.fingerprint == tok.fingerprint
    assert again.encode(held_out[0]) == ids[0]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_the_eos_string_inside_a_document_is_text_not_a_boundary(stdlib_texts, tmp_path, kind):
    tok = Tokenizer.byte() if kind == "byte" else Tokenizer.train_bpe(stdlib_texts[:20], vocab_size=400)
    tok.save(tmp_path / "tokenizer.json")
    text = f'print("{EOS}")'
    for t in (tok, Tokenizer.load(tmp_path / "tokenizer.json")):
        (doc,) = t.encode_documents([text])
        assert doc.tolist().count(t.eos_id) == 1 and doc[-1] == t.eos_id  # only the one packing adds
        assert t.decode(doc[:-1]) == text


def test_bpe_training_is_deterministic(stdlib_texts):
    a = Tokenizer.train_bpe(stdlib_texts[:40], vocab_size=400)
    b = Tokenizer.train_bpe(stdlib_texts[:40], vocab_size=400)
    assert a.fingerprint == b.fingerprint


def test_documents_end_with_eos():
    tok = Tokenizer.byte()
    docs = tok.encode_documents(["ab", "", "é"])
    assert [d.tolist() for d in docs] == [[97, 98, 256], [256], [195, 169, 256]]
    assert tok.decode(np.concatenate(docs)) == f"ab{EOS}{EOS}é{EOS}"


def test_saved_byte_tokenizer_loads_as_bytes(tmp_path):
    Tokenizer.byte().save(tmp_path / "tokenizer.json")
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.kind == "byte" and tok.encode("é") == [195, 169]
