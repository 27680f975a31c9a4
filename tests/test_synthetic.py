"""The synthetic corpus: its closed-form entropy rate against estimates from large samples."""

from __future__ import annotations

import numpy as np

from lmscale.data.synthetic import SyntheticSource, entropy
from lmscale.data.tokenizer import Tokenizer


def plug_in_conditional_entropy(context: np.ndarray, outcome: np.ndarray) -> float:
    """H(outcome | context) in nats from joint counts."""
    pairs, counts = np.unique(np.stack([context, outcome]), axis=1, return_counts=True)
    ctx, ctx_index = np.unique(pairs[0], return_inverse=True)
    ctx_counts = np.bincount(ctx_index, weights=counts)
    p_joint = counts / counts.sum()
    p_cond = counts / ctx_counts[ctx_index]
    return float(-(p_joint * np.log(p_cond)).sum())


def test_entropy_per_word_matches_a_plug_in_estimate():
    src = SyntheticSource(seed=4, words=64, classes=8, branching=3, zipf=1.0, doc_words=400)
    words = np.concatenate([src.sample_words(1024, block) for block in range(4)])  # 1.6M words
    cls = words % src.classes  # classes partition the words
    prev2 = (cls[:, :-2] * src.classes + cls[:, 1:-1]).ravel()
    h_move = plug_in_conditional_entropy(prev2, cls[:, 2:].ravel())
    h_emit = plug_in_conditional_entropy(cls.ravel(), words.ravel())
    assert abs(h_move + h_emit - src.entropy_per_word()) < 0.005 * src.entropy_per_word()


def test_entropy_rate_per_token_matches_the_sample():
    src = SyntheticSource()  # the defaults `data.corpus: synthetic` uses
    tok = Tokenizer.byte()
    words = np.concatenate([src.sample_words(1024, block) for block in range(4)])
    nats = -src.log_prob(words)
    docs = list(src.documents(4096))
    tokens = np.array([len(tok.encode(d)) + 1 for d in docs])  # + EOS
    assert abs(nats.mean() - src.entropy_per_document()) < 3 * nats.std() / np.sqrt(len(nats))
    assert abs(tokens.mean() / src.tokens_per_document(tok.encode) - 1) < 0.002
    empirical = nats.sum() / tokens.sum()
    assert abs(empirical / src.entropy_rate(tok.encode) - 1) < 0.002
    # The stationary start: a document's first class pair is as likely as any later pair.
    first = words[:, 0] % src.classes * src.classes + words[:, 1] % src.classes
    later = words[:, 60] % src.classes * src.classes + words[:, 61] % src.classes
    assert abs(entropy(np.bincount(first) / len(first)) - entropy(np.bincount(later) / len(later))) < 0.15


def test_same_seed_same_text_and_frequent_words_are_short():
    a, b = SyntheticSource(seed=1), SyntheticSource(seed=1)
    assert list(a.documents(5)) == list(b.documents(5))
    assert list(a.documents(5)) != list(SyntheticSource(seed=2).documents(5))
    p = a.word_probabilities()
    lengths = np.array([len(w) for w in a.vocabulary])
    assert p @ lengths < lengths.mean()
    assert len(set(a.vocabulary)) == a.words
