"""Token sources: iterators of int32 `[batch, seq_len + 1]` arrays whose position can be saved.

`MarkovSource` is a seeded first-order Markov chain over the vocabulary. Every token has the same
Zipfian distribution over `branching` successors, so its entropy rate is known exactly: it is the
loss a perfect model reaches.
"""

from __future__ import annotations

import numpy as np

from lmscale.config import Config

_SPLITS = {"train": 0, "val": 1}


class MarkovSource:
    """Batch `i` is a pure function of (seed, split, i): saving `i` is saving the position."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        batch_size: int,
        seed: int,
        split: str = "train",
        branching: int = 8,
        alpha: float = 1.0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self.seq_len, self.batch_size, self.seed, self.split = seq_len, batch_size, seed, split
        self.process_index, self.process_count = process_index, process_count
        table_rng = np.random.default_rng([seed, 7919])  # the chain is shared by both splits
        self.successors_VxK = np.stack(
            [table_rng.choice(vocab_size, size=branching, replace=False) for _ in range(vocab_size)]
        ).astype(np.int32)
        p = np.arange(1, branching + 1, dtype=np.float64) ** -alpha
        self.probs_K = p / p.sum()
        self.cdf_K = np.cumsum(self.probs_K)
        self.vocab_size = vocab_size
        self.batch_index = 0

    @property
    def entropy_rate(self) -> float:
        """Nats per token: the irreducible loss after the first token of a sequence."""
        return float(-(self.probs_K * np.log(self.probs_K)).sum())

    def batch(self, index: int) -> np.ndarray:
        """This process's rows of global batch `index`."""
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], index])
        B, L = self.batch_size, self.seq_len + 1
        start_B = rng.integers(0, self.vocab_size, size=B)
        pick_BxL = np.searchsorted(self.cdf_K, rng.random((B, L - 1)), side="right")
        pick_BxL = np.minimum(pick_BxL, len(self.cdf_K) - 1)
        out_BxL = np.empty((B, L), np.int32)
        out_BxL[:, 0] = start_B
        for t in range(1, L):
            out_BxL[:, t] = self.successors_VxK[out_BxL[:, t - 1], pick_BxL[:, t - 1]]
        rows = B // self.process_count
        return out_BxL[self.process_index * rows : (self.process_index + 1) * rows]

    def __iter__(self) -> MarkovSource:
        return self

    def __next__(self) -> np.ndarray:
        out = self.batch(self.batch_index)
        self.batch_index += 1
        return out

    def state(self) -> dict:
        return {"batch_index": self.batch_index}

    def restore(self, state: dict) -> None:
        self.batch_index = int(state["batch_index"])


def make_source(cfg: Config, split: str, process_index: int = 0, process_count: int = 1):
    return MarkovSource(
        cfg.model.vocab_size,
        cfg.model.seq_len,
        cfg.train.batch_size,
        cfg.train.seed,
        split=split,
        branching=cfg.data.markov_branching,
        alpha=cfg.data.markov_alpha,
        process_index=process_index,
        process_count=process_count,
    )
