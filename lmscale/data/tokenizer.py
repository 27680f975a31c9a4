"""Tokenizers: UTF-8 bytes by default, or a byte-level BPE trained locally with `tokenizers`.

Both are stored as a Hugging Face `tokenizer.json`, so a run directory's tokenizer loads anywhere.
Byte ids 0-255 are the UTF-8 bytes; the end-of-document token follows the ordinary vocabulary.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of `tokenizers`' ByteLevel."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {b: chr(c) for b, c in chars.items()}


def _byte_level(model: models.Model) -> HFTokenizer:
    tok = HFTokenizer(model)
    # No prefix space and no trimming: decode(encode(text)) == text, byte for byte.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class Tokenizer:
    """A `tokenizers.Tokenizer` with lmscale's conventions: one EOS id and uint arrays out."""

    def __init__(self, hf: HFTokenizer, kind: str):
        # A literal "<|endoftext|>" inside a document is text, not a document boundary.
        hf.encode_special_tokens = True
        self.hf, self.kind = hf, kind
        self.eos_id = hf.token_to_id(EOS)
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)

    @classmethod
    def byte(cls) -> Tokenizer:
        """UTF-8 bytes as ids 0-255, EOS as 256."""
        vocab = {char: b for b, char in _byte_alphabet().items()}
        hf = _byte_level(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.add_special_tokens([EOS])
        return cls(hf, "byte")

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
        """Byte-level BPE with `vocab_size` ids in all (EOS included), learned from `texts` in order."""
        hf = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(hf, "bpe")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        hf = HFTokenizer.from_file(str(path))
        kind = "byte" if isinstance(hf.model, models.BPE) and _is_byte_vocab(hf) else "bpe"
        return cls(hf, kind)

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    @property
    def fingerprint(self) -> str:
        """Content hash: two tokenizers with equal fingerprints encode identically."""
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, no EOS added."""
        if self.kind == "byte":
            return list(text.encode("utf-8"))
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "byte":
            return [list(t.encode("utf-8")) for t in texts]
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Each document's ids followed by EOS, in the tokenizer's storage dtype (for packing)."""
        if self.kind == "byte":
            eos = np.array([self.eos_id], self.dtype)
            return [np.concatenate([np.frombuffer(t.encode("utf-8"), np.uint8), eos]) for t in texts]
        return [np.array([*ids, self.eos_id], self.dtype) for ids in self.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "byte":
            return "".join(_decode_bytes(ids, self.eos_id))
        return self.hf.decode(ids, skip_special_tokens=False)


def _decode_bytes(ids: list[int], eos_id: int) -> Iterator[str]:
    start = 0
    for i, t in enumerate(ids + [eos_id]):
        if t >= 256:
            yield bytes(ids[start:i]).decode("utf-8", errors="replace")
            if i < len(ids):
                yield EOS if t == eos_id else ""
            start = i + 1


def _is_byte_vocab(hf: HFTokenizer) -> bool:
    vocab = hf.get_vocab(with_added_tokens=False)
    return len(vocab) == 256 and all(vocab.get(c) == b for b, c in _byte_alphabet().items())


def for_run(run_dir: str | Path) -> Tokenizer:
    """The tokenizer a run trained with (`RUN_DIR/tokenizer.json`)."""
    path = Path(run_dir) / "tokenizer.json"
    if not path.is_file():
        from lmscale.config import ConfigError

        raise ConfigError(f"'{path}' does not exist: not an lmscale run directory")
    return Tokenizer.load(path)
