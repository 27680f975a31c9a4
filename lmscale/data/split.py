"""The train/validation split of a corpus's documents, as `data.val_split` says.

- hash: a document is validation when the hash of its text falls under `data.val_fraction`, so the
  split of a document never changes as the corpus grows. Whole documents: a corpus of one document
  (a folder holding one `input.txt`) has nothing to hold out.
- tail: the last `val_fraction` of each document's characters is validation and the rest training,
  as nanoGPT splits one text file 90/10 by position.
- auto (the default): hash, unless it leaves training empty, or validation empty when the run
  evaluates; then tail.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from lmscale.config import DataConfig

if TYPE_CHECKING:  # datasets is imported where a cache is built: it and pandas take ~0.5 s to import
    import datasets


def is_val(texts: list[str], fraction: float) -> np.ndarray:
    """Validation membership by content hash: stable as documents are added or reordered."""
    limit = int(fraction * 2**64)
    digests = (hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest() for t in texts)
    return np.array([int.from_bytes(h, "little") < limit for h in digests], bool)


def tail_start(text: str, fraction: float) -> int:
    """Where a document's validation tail starts: nanoGPT's `int(n * 0.9)` for a tenth."""
    return int(len(text) * (1 - fraction))


def training_texts(texts: list[str], d: DataConfig) -> list[str]:
    """The training part of `texts` (a BPE learns its merges from these): by hash, or each one's head
    under tail, and under auto when the hash would keep none."""
    kept = [t for t, v in zip(texts, is_val(texts, d.val_fraction), strict=True) if not v]
    if d.val_split == "hash" or (d.val_split == "auto" and kept):
        return kept
    return [t[: tail_start(t, d.val_fraction)] for t in texts]


def cache_key(d: DataConfig, want_val: bool) -> dict:
    """What the split adds to a token cache's key; nothing for hash, whose caches predate the others."""
    if d.val_split == "hash":
        return {}
    return {"val_split": d.val_split} | ({"want_val": want_val} if d.val_split == "auto" else {})


def split(docs: datasets.Dataset, d: DataConfig, want_val: bool) -> tuple[dict, str]:
    """{"train": documents, "val": documents} and the rule that chose them (`hash` or `tail`)."""
    if d.val_split != "tail":
        label = np.concatenate(
            [is_val(b["text"], d.val_fraction) for b in docs.select_columns(["text"]).iter(batch_size=1000)]
            + [np.zeros(0, bool)]
        )
        fits = not label.all() and (label.any() or not want_val)  # both splits hold what the run needs
        if d.val_split == "hash" or fits:
            return {
                "train": docs.select(np.flatnonzero(~label)),
                "val": docs.select(np.flatnonzero(label)),
            }, "hash"
    f = d.val_fraction
    parts = {
        "train": docs.map(lambda b: {"text": [t[: tail_start(t, f)] for t in b["text"]]}, batched=True),
        "val": docs.map(lambda b: {"text": [t[tail_start(t, f) :] for t in b["text"]]}, batched=True),
    }
    return {
        k: v.filter(lambda b: [bool(t) for t in b["text"]], batched=True) for k, v in parts.items()
    }, "tail"
