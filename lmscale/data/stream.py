"""A split's tokens as one stream, read in windows straight from the memory-mapped Arrow cache."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np


class TokenStream:
    """A split's documents as one token stream, memory-mapped from the Arrow cache (never copied whole)."""

    def __init__(self, path: Path):
        self.dataset = datasets.Dataset.from_file(str(path))  # memory-mapped
        column = self.dataset.data.column("ids")
        self.chunks = [c.flatten().to_numpy(zero_copy_only=True) for c in column.chunks if len(c)]
        sizes = np.array([len(c) for c in self.chunks], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.n_tokens = int(self.starts[-1])

    def n_windows(self, seq_len: int) -> int:
        return max((self.n_tokens - 1) // seq_len, 0)

    def window(self, j: int, seq_len: int) -> np.ndarray:
        lo, hi = j * seq_len, j * seq_len + seq_len + 1
        c = int(np.searchsorted(self.starts, lo, side="right")) - 1
        if hi <= self.starts[c + 1]:
            return self.chunks[c][lo - self.starts[c] : hi - self.starts[c]]
        parts = []
        while lo < hi:
            take = min(hi, self.starts[c + 1]) - lo
            parts.append(self.chunks[c][lo - self.starts[c] : lo - self.starts[c] + take])
            lo, c = lo + take, c + 1
        return np.concatenate(parts)
