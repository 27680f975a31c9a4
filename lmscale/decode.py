"""Batched inference for one model: continuation scoring and greedy generation with a KV cache.

Requests are grouped into length buckets (powers of two up to the context length) and padded to a
fixed batch size, so each bucket compiles once. Rows are right-padded: causal attention means a row's
padding never reaches its real positions, so a score does not depend on what it was batched with.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmscale.config import ModelConfig
from lmscale.model import Transformer, init_cache

MIN_BUCKET = 16


def bucket(n: int, cap: int) -> int:
    """The smallest power of two (at least MIN_BUCKET) holding n, capped at `cap`."""
    return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), cap)


@dataclasses.dataclass(frozen=True)
class Score:
    """Per continuation token: fp32 log-probability and whether it was the greedy (argmax) choice."""

    logprobs: np.ndarray
    greedy: np.ndarray


class Decoder:
    """Jitted scoring and generation for `params` of a `Transformer(cfg)`, under an optional mesh."""

    def __init__(self, cfg: ModelConfig, params: Any, batch_size: int = 64, mesh=None, rules: tuple = ()):
        self.cfg, self.params, self.batch_size = cfg, params, batch_size
        self.mesh, self.rules = mesh, rules
        self.model = Transformer(cfg)
        self._score = jax.jit(self._score_fn)
        self._generate = jax.jit(self._generate_fn, static_argnames=("max_new", "cache_len"))

    @contextlib.contextmanager
    def _context(self):
        if self.mesh is None:
            yield
            return
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    # -- device functions ------------------------------------------------------------------------
    def _score_fn(self, params: Any, tokens_BxL: jax.Array, targets_BxL: jax.Array):
        logits_BxLxV = self.model.apply({"params": params}, tokens_BxL)
        logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
        logp_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
        greedy_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
        return logp_BxL, greedy_BxL

    def _generate_fn(
        self,
        params: Any,
        prompt_BxP: jax.Array,
        len_B: jax.Array,
        limit_B: jax.Array,
        stop_V: jax.Array,
        max_new: int,
        cache_len: int,
    ) -> jax.Array:
        """Greedy tokens [B, max_new]; a row stops after a stop token or `limit_B` tokens (then -1s)."""
        B = prompt_BxP.shape[0]
        variables = {"params": params}
        cache = init_cache(self.cfg, B, cache_len)
        logits_BxPxV, cache = self.model.apply(variables, prompt_BxP, cache, jnp.zeros(B, jnp.int32))
        next_B = jnp.argmax(logits_BxPxV[jnp.arange(B), len_B - 1], axis=-1).astype(jnp.int32)
        out_BxT = jnp.full((B, max_new), -1, jnp.int32)

        def cond(carry):
            t, _, _, _, done_B = carry
            return (t < max_new) & ~done_B.all()

        def body(carry):
            t, next_B, cache, out_BxT, done_B = carry
            done_B = done_B | (t >= limit_B)
            out_BxT = out_BxT.at[:, t].set(jnp.where(done_B, -1, next_B))
            done_B = done_B | stop_V[next_B]
            logits_Bx1xV, cache = self.model.apply(variables, next_B[:, None], cache, len_B + t)
            return t + 1, jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32), cache, out_BxT, done_B

        done_B = limit_B <= 0
        carry = (jnp.int32(0), next_B, cache, out_BxT, done_B)
        return jax.lax.while_loop(cond, body, carry)[3]

    # -- host API --------------------------------------------------------------------------------
    def _batches(self, lengths: Sequence[int]) -> Iterator[tuple[int, list[int]]]:
        """(bucket length, request indices) per batch, shortest requests first."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        groups: dict[int, list[int]] = {}
        for i in order:
            groups.setdefault(bucket(lengths[i], self.cfg.seq_len), []).append(i)
        for size, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                yield size, idx[start : start + self.batch_size]

    def score(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Score]:
        """Log-probs of each continuation given its (non-empty) context, masked to the continuation."""
        seqs = [list(ctx) + list(cont) for ctx, cont in requests]
        for (ctx, cont), seq in zip(requests, seqs, strict=True):
            if not ctx or not cont or len(seq) - 1 > self.cfg.seq_len:
                raise ValueError(
                    f"score request of {len(ctx)}+{len(cont)} tokens: context and continuation must "
                    f"be non-empty and fit {self.cfg.seq_len} tokens"
                )
        out: list[Score | None] = [None] * len(requests)
        for size, idx in self._batches([len(s) - 1 for s in seqs]):
            tokens_BxL = np.zeros((self.batch_size, size), np.int32)
            targets_BxL = np.zeros((self.batch_size, size), np.int32)
            for row, i in enumerate(idx):
                tokens_BxL[row, : len(seqs[i]) - 1] = seqs[i][:-1]
                targets_BxL[row, : len(seqs[i]) - 1] = seqs[i][1:]
            with self._context():
                logp_BxL, greedy_BxL = jax.device_get(self._score(self.params, tokens_BxL, targets_BxL))
            for row, i in enumerate(idx):
                ctx_len, n = len(requests[i][0]), len(seqs[i]) - 1
                out[i] = Score(logp_BxL[row, ctx_len - 1 : n], greedy_BxL[row, ctx_len - 1 : n])
        return out

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new: int, stop_ids: Sequence[int]
    ) -> list[list[int]]:
        """Greedy continuations of each prompt, up to `max_new` tokens, ending after a stop token.

        A row never runs past the context length. `max_new` is rounded up to a power of two so that
        few shapes compile; rows still stop at `max_new`.
        """
        stop_V = np.zeros(self.cfg.vocab_size, bool)
        stop_V[list(stop_ids)] = True
        steps = 1 << max(max_new - 1, 0).bit_length()
        out: list[list[int]] = [[] for _ in prompts]
        for size, idx in self._batches([len(p) for p in prompts]):
            prompt_BxP = np.zeros((self.batch_size, size), np.int32)
            len_B, limit_B = np.ones(self.batch_size, np.int32), np.zeros(self.batch_size, np.int32)
            for row, i in enumerate(idx):
                if not prompts[i] or len(prompts[i]) > self.cfg.seq_len:
                    raise ValueError(
                        f"prompt of {len(prompts[i])} tokens: must fit {self.cfg.seq_len} tokens"
                    )
                prompt_BxP[row, : len(prompts[i])] = prompts[i]
                len_B[row] = len(prompts[i])
                limit_B[row] = min(max_new, self.cfg.seq_len - len(prompts[i]))
            cache_len = min(size + steps, self.cfg.seq_len)
            with self._context():
                tokens_BxT = self._generate(
                    self.params, prompt_BxP, len_B, limit_B, stop_V, max_new=steps, cache_len=cache_len
                )
                tokens_BxT = jax.device_get(tokens_BxT)
            for row, i in enumerate(idx):
                out[i] = [int(t) for t in tokens_BxT[row] if t >= 0]
        return out
