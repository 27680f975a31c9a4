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
from jax.sharding import NamedSharding, PartitionSpec

from lmscale import sharding
from lmscale.config import ModelConfig
from lmscale.model import Transformer, init_cache, unstack_layers

MIN_BUCKET = 16


def bucket(n: int, cap: int) -> int:
    """The smallest power of two (at least MIN_BUCKET) holding n, capped at `cap`."""
    return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), cap)


@dataclasses.dataclass(frozen=True)
class Score:
    """Per continuation token: fp32 log-probability and whether it was the greedy (argmax) choice."""

    logprobs: np.ndarray
    greedy: np.ndarray
    first_logprobs: np.ndarray | None = None  # [V]: every token's log-prob at the first position


class Decoder:
    """Jitted scoring and generation for `params` of a `Transformer(cfg)`, under an optional mesh."""

    def __init__(self, cfg: ModelConfig, params: Any, batch_size: int = 64, mesh=None, rules: tuple = ()):
        if mesh is not None and sharding.unordered_collectives(mesh):  # decoding gathers several outputs
            mesh, rules = None, ()
        self.cfg, self.batch_size = cfg, batch_size
        self.mesh, self.rules = mesh, rules
        self.model = Transformer(cfg)
        # Decoding runs the layers unrolled (same params, unstacked), so the cache is updated in place.
        self.unrolled = Transformer(dataclasses.replace(cfg, scan_layers=False))
        self.load(params)
        # Results come back replicated: on a multi-host mesh every process can then read all of them.
        out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
        self._score = jax.jit(self._score_fn, out_shardings=out)
        self._run = jax.jit(self._run_fn, static_argnames=("max_new", "cache_len"), out_shardings=out)

    def load(self, params: Any) -> None:
        """Swap in other params of the same model (another checkpoint): nothing recompiles."""
        if self.mesh is None:  # params on a mesh the decoder does not use: onto one device
            params = jax.device_put(params, jax.local_devices()[0])
        self.params = params
        self.unrolled_params = unstack_layers(params, self.cfg)

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

    def _run_fn(
        self,
        params: Any,
        unrolled_params: Any,
        tokens_BxS: jax.Array,
        len_B: jax.Array,
        cont_BxA: jax.Array,
        cont_len_B: jax.Array,
        limit_B: jax.Array,
        stop_V: jax.Array,
        max_new: int,
        cache_len: int,
    ) -> tuple[jax.Array, ...]:
        """One cached forward over each prompt and its continuation, then greedy generation.

        `tokens_BxS` holds the context followed by the continuation less its last token (the
        teacher-forced pass). Returns the continuation's log-probs and greedy flags [B, A], the full
        log-prob vector of its first token [B, V], and greedy tokens [B, max_new] (-1 after a row's
        stop token or its limit).

        Greedy generation agrees with the continuation up to its first token that is not the greedy
        choice (or is a stop token), so those tokens are copied from the teacher-forced pass, whose
        keys and values are already cached, and decoding starts at that token: a row the model gets
        right costs at most one decode step.
        """
        B, S, A = tokens_BxS.shape[0], tokens_BxS.shape[1], cont_BxA.shape[1]
        # The forward pass runs the model as configured (a scan over layers compiles to faster code)
        # on a cache of exactly its length; decoding then runs unrolled layers on per-layer caches
        # grown to `cache_len`, which it updates in place.
        cache = init_cache(self.cfg, B, S)
        logits_BxSxV, cache = self.model.apply({"params": params}, tokens_BxS, cache, jnp.zeros(B, jnp.int32))
        if self.cfg.scan_layers:
            cache = tuple({"k": cache["k"][i], "v": cache["v"][i]} for i in range(self.cfg.n_layers))
        grow = ((0, 0), (0, 0), (0, cache_len - S), (0, 0))  # [B, N, S, H]
        cache = tuple({k: jnp.pad(v, grow) for k, v in layer.items()} for layer in cache)
        variables = {"params": unrolled_params}
        W = max(A, 1)  # positions len-1 .. len-2+W predict the continuation's tokens
        pos_BxW = jnp.minimum(len_B[:, None] - 1 + jnp.arange(W)[None, :], S - 1)
        pred_BxWxV = jnp.take_along_axis(logits_BxSxV, pos_BxW[..., None], axis=1)
        choice_BxW = jnp.argmax(pred_BxWxV, axis=-1).astype(jnp.int32)
        logp_BxA = greedy_BxA = first_BxV = jnp.zeros((B, 0))
        t_B = jnp.zeros(B, jnp.int32)
        out_BxT = jnp.full((B, max_new), -1, jnp.int32)
        if A:
            logp_BxAxV = jax.nn.log_softmax(pred_BxWxV.astype(jnp.float32), axis=-1)
            logp_BxA = jnp.take_along_axis(logp_BxAxV, cont_BxA[..., None], axis=-1)[..., 0]
            greedy_BxA = choice_BxW == cont_BxA
            first_BxV = logp_BxAxV[:, 0]
            real_BxA = jnp.arange(A)[None, :] < cont_len_B[:, None]
            diverge_BxA = real_BxA & (~greedy_BxA | stop_V[cont_BxA])
            # No divergence: decoding starts at the last token (its keys are not cached yet).
            t_B = jnp.where(
                diverge_BxA.any(axis=1), jnp.argmax(diverge_BxA, axis=1), jnp.maximum(cont_len_B - 1, 0)
            )
            t_B = jnp.minimum(t_B, limit_B).astype(jnp.int32)
            copied_BxT = jnp.pad(cont_BxA, ((0, 0), (0, max(max_new - A, 0))))[:, :max_new]
            out_BxT = jnp.where(jnp.arange(max_new)[None, :] < t_B[:, None], copied_BxT, out_BxT)
        next_B = jnp.take_along_axis(choice_BxW, jnp.minimum(t_B, W - 1)[:, None], axis=1)[:, 0]

        def cond(carry):
            i, _, _, _, _, done_B = carry
            return (i < max_new) & ~done_B.all()

        def body(carry):
            i, t_B, next_B, cache, out_BxT, done_B = carry
            done_B = done_B | (t_B >= limit_B)
            rows = jnp.arange(B)
            out_BxT = out_BxT.at[rows, jnp.minimum(t_B, max_new - 1)].set(
                jnp.where(done_B, out_BxT[rows, jnp.minimum(t_B, max_new - 1)], next_B)
            )
            done_B = done_B | stop_V[next_B]
            logits_Bx1xV, cache = self.unrolled.apply(variables, next_B[:, None], cache, len_B + t_B)
            next_B = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
            return i + 1, t_B + 1, next_B, cache, out_BxT, done_B

        carry = (jnp.int32(0), t_B, next_B, cache, out_BxT, limit_B <= 0)
        out_BxT = jax.lax.while_loop(cond, body, carry)[4] if max_new else out_BxT
        return logp_BxA, greedy_BxA, first_BxV, out_BxT

    # -- host API --------------------------------------------------------------------------------
    def _batches(
        self, lengths: Sequence[int], within: Sequence[int] | None = None
    ) -> Iterator[tuple[int, list[int]]]:
        """(bucket length, request indices) per batch; within a bucket, ordered by `within` (or length)."""
        key = lengths if within is None else within
        groups: dict[int, list[int]] = {}
        for i in sorted(range(len(lengths)), key=lambda i: (bucket(lengths[i], self.cfg.seq_len), key[i])):
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
        """Greedy continuations of each prompt, up to `max_new` tokens, ending after a stop token."""
        return [g for _, g in self.score_and_generate([(p, []) for p in prompts], max_new, stop_ids)]

    def score_and_generate(
        self,
        requests: Sequence[tuple[Sequence[int], Sequence[int]]],
        max_new: int,
        stop_ids: Sequence[int],
        limits: Sequence[int] | None = None,
    ) -> list[tuple[Score, list[int]]]:
        """For each (context, continuation): the continuation's score and a greedy generation.

        Both come from one cached prefill of the context. Generation stops after a stop token, after
        `max_new` tokens (or the request's own limit), or at the context length. Continuation and
        `max_new` are padded to powers of two so that few shapes compile.
        """
        stop_V = np.zeros(self.cfg.vocab_size, bool)
        stop_V[list(stop_ids)] = True
        steps = 1 << max(max_new - 1, 0).bit_length() if max_new else 0
        longest = max((len(c) for _, c in requests), default=0)
        A = 1 << max(longest - 1, 0).bit_length() if longest else 0
        out: list[tuple[Score, list[int]] | None] = [None] * len(requests)
        # Rows that stop after similar numbers of tokens share a batch: the loop runs to the longest.
        within = [len(c) if limits is None else limits[i] for i, (_, c) in enumerate(requests)]
        fed = [len(ctx) + max(len(cont) - 1, 0) for ctx, cont in requests]  # tokens in the forward pass
        for size, idx in self._batches(fed, within):
            tokens_BxS = np.zeros((self.batch_size, size), np.int32)
            cont_BxA = np.zeros((self.batch_size, A), np.int32)
            len_B, limit_B = np.ones(self.batch_size, np.int32), np.zeros(self.batch_size, np.int32)
            cont_len_B = np.zeros(self.batch_size, np.int32)
            for row, i in enumerate(idx):
                ctx, cont = requests[i]
                if not ctx or fed[i] > self.cfg.seq_len:
                    raise ValueError(
                        f"request of {len(ctx)}+{len(cont)} tokens: the context must be non-empty and "
                        f"both must fit {self.cfg.seq_len} tokens"
                    )
                tokens_BxS[row, : fed[i]] = [*ctx, *cont[:-1]]
                cont_BxA[row, : len(cont)] = cont
                len_B[row], cont_len_B[row] = len(ctx), len(cont)
                limit = max_new if limits is None else min(limits[i], max_new)
                limit_B[row] = min(limit, self.cfg.seq_len - len(ctx))
            # Enough for any row of this bucket and step count, so each pair compiles once
            cache_len = max(size, bucket(size + steps, self.cfg.seq_len))
            with self._context():
                result = self._run(
                    self.params, self.unrolled_params, tokens_BxS, len_B, cont_BxA, cont_len_B,
                    limit_B, stop_V, max_new=steps, cache_len=cache_len,
                )  # fmt: skip
                logp_BxA, greedy_BxA, first_BxV, tokens_BxT = jax.device_get(result)
            for row, i in enumerate(idx):
                n = len(requests[i][1])
                first = first_BxV[row] if n else None
                score = Score(logp_BxA[row, :n], greedy_BxA[row, :n], first)
                out[i] = (score, [int(t) for t in tokens_BxT[row] if t >= 0])
        return out
