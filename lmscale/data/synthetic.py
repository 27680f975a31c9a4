"""The `synthetic` corpus: text from a seeded source whose entropy rate is known exactly.

The source is a second-order Markov chain over word classes with Zipfian successors, and each class
emits one of its own words, again Zipfian. Classes partition the vocabulary, so the words determine
the classes and the entropy of a document is a closed-form sum:

    H(doc) = H(pi2) + (n - 2) * H(Zipf_branching) + n * H(Zipf_words_per_class)

where pi2 is the stationary distribution of class pairs, the start of every document. Dividing by the
expected tokens per document under a given tokenizer gives nats per token: the loss floor E of a
model with unbounded context, which a scaling fit over this corpus should recover.

Spellings are pronounceable syllable strings, shorter for frequent words (Zipf's law of abbreviation).
A small model learns the frequent words and class transitions; a larger one memorises the long tail
of rare words and successor sets, so loss keeps improving with scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

VERSION = "1"  # bump when the generated text changes: it keys the token cache
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]


def zipf(n: int, exponent: float) -> np.ndarray:
    p = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
    seed: int = 0
    words: int = 4096  # vocabulary of the generator
    classes: int = 64  # word classes; each emits words // classes words of its own
    branching: int = 8  # successor classes of each class pair
    zipf: float = 1.0  # exponent of every Zipfian choice
    doc_words: int = 128  # words per document

    @functools.cached_property
    def vocabulary(self) -> list[str]:
        """`words` distinct spellings, frequent ranks first and shortest."""
        rng = np.random.default_rng([self.seed, 1])
        seen: dict[str, None] = {}
        while len(seen) < self.words:
            n_syl = 1 + min(int(rng.geometric(0.45)), 4)  # 2-5 syllables, mostly short
            seen.setdefault("".join(rng.choice(_SYLLABLES, n_syl)), None)
        return sorted(seen, key=len)  # stable: frequent ranks get the short words

    @functools.cached_property
    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """successors[S*S, K] class ids; words_of[S, W/S] word ids in rank order; pi2[S*S]."""
        rng = np.random.default_rng([self.seed, 2])
        S, K = self.classes, self.branching
        successors = np.stack([rng.choice(S, K, replace=False) for _ in range(S * S)])
        words_of = np.arange(self.words).reshape(-1, S).T  # class s owns words s, s+S, ...
        return successors, words_of, self._stationary(successors)

    def _stationary(self, successors: np.ndarray) -> np.ndarray:
        """Stationary distribution over class pairs (a, b), index a*S + b, by power iteration."""
        S, p = self.classes, zipf(self.branching, self.zipf)
        pair = np.full(S * S, 1.0 / (S * S))
        nxt = (np.arange(S * S) % S)[:, None] * S + successors  # (a, b) -> (b, c)
        for _ in range(10_000):
            new = np.bincount(nxt.ravel(), (pair[:, None] * p).ravel(), minlength=S * S)
            new = 0.5 * (pair + new)  # lazy chain: same stationary law, never periodic
            if np.abs(new - pair).sum() < 1e-13:
                break
            pair = new
        return new / new.sum()

    # -- entropy -------------------------------------------------------------------------------
    def entropy_per_word(self) -> float:
        """Nats per word in the stationary chain: one class transition plus one emission."""
        per_class = self.words // self.classes
        return entropy(zipf(self.branching, self.zipf)) + entropy(zipf(per_class, self.zipf))

    def entropy_per_document(self) -> float:
        n, pi2 = self.doc_words, self.tables[2]
        per_class = self.words // self.classes
        h_emit, h_move = entropy(zipf(per_class, self.zipf)), entropy(zipf(self.branching, self.zipf))
        return entropy(pi2) + n * h_emit + (n - 2) * h_move

    def word_probabilities(self) -> np.ndarray:
        """Stationary probability of each word id."""
        S, (_, words_of, pi2) = self.classes, self.tables
        class_p = pi2.reshape(S, S).sum(0)
        out = np.zeros(self.words)
        out[words_of] = class_p[:, None] * zipf(words_of.shape[1], self.zipf)
        return out

    def tokens_per_document(self, encode) -> float:
        """Expected tokens per document, EOS included, for `encode(str) -> ids`.

        Byte-level tokenizers split text before each space, so a word's tokens do not depend on its
        neighbours: a document is its first word, n - 1 words with a leading space, and EOS.
        """
        p = self.word_probabilities()
        bare = np.array([len(encode(w)) for w in self.vocabulary])
        spaced = np.array([len(encode(" " + w)) for w in self.vocabulary])
        n = self.doc_words
        return float(p @ bare + (n - 1) * (p @ spaced) + 1)

    def entropy_rate(self, encode) -> float:
        """Nats per token: the loss floor of a model with unbounded context, EOS tokens included."""
        return self.entropy_per_document() / self.tokens_per_document(encode)

    # -- sampling ------------------------------------------------------------------------------
    def sample_words(self, n_docs: int, block: int) -> np.ndarray:
        """Word ids [n_docs, doc_words] of documents block*n_docs ...; a pure function of the seed."""
        rng = np.random.default_rng([self.seed, 3, block])
        successors, words_of, pi2 = self.tables
        S, n = self.classes, self.doc_words
        cdf_pair = np.cumsum(pi2)
        cdf_k = np.cumsum(zipf(self.branching, self.zipf))
        cdf_w = np.cumsum(zipf(words_of.shape[1], self.zipf))
        start = np.minimum(np.searchsorted(cdf_pair, rng.random(n_docs), side="right"), S * S - 1)
        cls = np.empty((n_docs, n), np.int64)
        cls[:, 0], cls[:, 1] = start // S, start % S
        pick = np.minimum(np.searchsorted(cdf_k, rng.random((n_docs, n)), side="right"), len(cdf_k) - 1)
        for t in range(2, n):
            cls[:, t] = successors[cls[:, t - 2] * S + cls[:, t - 1], pick[:, t]]
        emit = np.minimum(np.searchsorted(cdf_w, rng.random((n_docs, n)), side="right"), len(cdf_w) - 1)
        return words_of[cls, emit]

    def log_prob(self, words: np.ndarray) -> np.ndarray:
        """Log-probability of each document [n_docs, doc_words] under the source (nats)."""
        successors, _, pi2 = self.tables
        S = self.classes
        cls, rank = words % S, words // S
        p_k, p_w = zipf(self.branching, self.zipf), zipf(self.words // S, self.zipf)
        out = np.log(pi2[cls[:, 0] * S + cls[:, 1]]) + np.log(p_w[rank]).sum(1)
        rows = successors[cls[:, :-2] * S + cls[:, 1:-1]]  # [docs, n-2, K]
        slot = (rows == cls[:, 2:, None]).argmax(-1)
        return out + np.log(p_k[slot]).sum(1)

    def documents(self, n_docs: int, block_docs: int = 1024):
        """The first `n_docs` documents as strings, in blocks so memory stays flat."""
        vocab = np.array(self.vocabulary, dtype=object)
        for block in range(math.ceil(n_docs / block_docs)):
            count = min(block_docs, n_docs - block * block_docs)
            for row in vocab[self.sample_words(block_docs, block)[:count]]:
                yield " ".join(row)
