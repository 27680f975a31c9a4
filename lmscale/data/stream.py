"""A split's tokens as one stream, read in windows straight from the memory-mapped Arrow cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


class TokenStream:
    """A split's documents as one token stream, memory-mapped from the Arrow cache (never copied whole)."""

    def __init__(self, path: Path):
        # The Arrow stream `datasets` wrote, read as `datasets.Dataset.from_file` reads it, without
        # importing datasets (and pandas with it: half a second at every start)
        self.table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()  # zero-copy, into the map
        column = self.table.column("ids")
        self.chunks = [_values(c.flatten()) for c in column.chunks if len(c)]
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


def _values(array: pa.Array) -> np.ndarray:
    """A primitive Arrow array's values as a NumPy view of its buffer (pyarrow's `to_numpy` would import
    pandas to check for extension types)."""
    dtype = np.dtype(str(array.type))
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)
