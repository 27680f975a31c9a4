"""Decoder-only Transformer: pre-norm RMSNorm, RoPE, causal attention, GELU or SwiGLU MLP.

Shape suffixes: B batch, L length, S cache length, D d_model, N heads, H head dim, F d_ff, V vocab.

Decoding runs the same modules with a key/value cache (`init_cache`): `model.apply(v, tokens_BxL,
cache, pos_B)` writes the new keys and values at each row's position and returns (logits, cache).
Without a cache the training path is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmscale.config import ModelConfig

constrain = nn.with_logical_constraint


def _weight(mod: nn.Module, name: str, shape: tuple, axes: tuple, std: float) -> jax.Array:
    """A float32 parameter carrying logical axis names, cast to the module's compute dtype."""
    init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
    return mod.param(name, init, shape, jnp.float32).astype(mod.cfg.compute_dtype)


def matmul(x_BxLxI: jax.Array, w_IxO: jax.Array, n_in: int = 1) -> jax.Array:
    """Contract the last `n_in` axes of x with the leading axes of w as one 2-D GEMM.

    Flattening batch and length first keeps the backward pass (dW = x^T g) a plain GEMM; as a 3-D
    einsum XLA:CPU lowers it to a transposing contraction that ran about 2x slower.
    """
    lead, inner = x_BxLxI.shape[: x_BxLxI.ndim - n_in], x_BxLxI.shape[x_BxLxI.ndim - n_in :]
    out = w_IxO.shape[n_in:]
    x_MxI = x_BxLxI.reshape(-1, math.prod(inner))
    y_MxO = x_MxI @ w_IxO.reshape(math.prod(inner), math.prod(out))
    return y_MxO.reshape(*lead, *out)


def _norm(cfg: ModelConfig, name: str) -> nn.Module:
    return nn.RMSNorm(
        epsilon=cfg.norm_eps,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        name=name,
    )


def rope(x_BxLxNxH: jax.Array, theta: float, pos_BxL: jax.Array | None = None) -> jax.Array:
    """Rotary position embedding (Su et al. 2021), applied in float32; positions default to 0..L-1."""
    L, H = x_BxLxNxH.shape[1], x_BxLxNxH.shape[3]
    inv_freq_h = theta ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    pos_BxL = jnp.arange(L)[None, :] if pos_BxL is None else pos_BxL
    angle_BxLxh = pos_BxL.astype(jnp.float32)[:, :, None] * inv_freq_h[None, None, :]
    sin, cos = jnp.sin(angle_BxLxh)[:, :, None, :], jnp.cos(angle_BxLxh)[:, :, None, :]
    x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x_BxLxNxH.dtype)


def sinusoid(L: int, D: int) -> jax.Array:
    """Fixed sinusoidal positions (Vaswani et al. 2017)."""
    inv_freq = 10_000.0 ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)
    angle_LxD2 = jnp.arange(L, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.concatenate([jnp.sin(angle_LxD2), jnp.cos(angle_LxD2)], axis=-1)


Cache = dict | tuple  # {"k", "v"}: [layers, B, N, S, H] when scanned, else a tuple of [B, N, S, H] per layer


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
    """An empty key/value cache: stacked on a layer axis for scanned layers, one per layer otherwise.

    Head-major ([B, N, S, H]), so attention reads it without a transpose. Unrolled layers keep separate
    buffers, so a decode loop updates them in place; a stacked cache is sliced and restacked by the
    scan at every step.
    """
    shape = (batch, cfg.n_heads, length, cfg.head_dim)
    if cfg.scan_layers:
        shape = (cfg.n_layers, *shape)
        return {"k": jnp.zeros(shape, cfg.compute_dtype), "v": jnp.zeros(shape, cfg.compute_dtype)}
    zeros = lambda: jnp.zeros(shape, cfg.compute_dtype)  # noqa: E731
    return tuple({"k": zeros(), "v": zeros()} for _ in range(cfg.n_layers))


def cached_attention(
    q_BxLxNxH: jax.Array, k_BxLxNxH: jax.Array, v_BxLxNxH: jax.Array, cache: Cache, pos_B: jax.Array
) -> tuple[jax.Array, Cache]:
    """Write the L new keys and values at positions pos_B.. of each row; attend to the cache causally."""
    write = jax.vmap(lambda c_NxSxH, u_NxLxH, p: jax.lax.dynamic_update_slice(c_NxSxH, u_NxLxH, (0, p, 0)))
    dtype = cache["k"].dtype
    k_BxNxSxH = write(cache["k"], k_BxLxNxH.transpose(0, 2, 1, 3).astype(dtype), pos_B)
    v_BxNxSxH = write(cache["v"], v_BxLxNxH.transpose(0, 2, 1, 3).astype(dtype), pos_B)
    L, S, H = q_BxLxNxH.shape[1], k_BxNxSxH.shape[2], q_BxLxNxH.shape[3]
    qpos_BxL = pos_B[:, None] + jnp.arange(L)[None, :]
    mask_Bx1xLxS = (jnp.arange(S)[None, None, :] <= qpos_BxL[:, :, None])[:, None]
    # fp32 scores whatever the compute dtype, as in the uncached path's attention
    scores_BxNxLxS = (
        jnp.einsum("blnh,bnsh->bnls", q_BxLxNxH, k_BxNxSxH, preferred_element_type=jnp.float32) * H**-0.5
    )
    scores_BxNxLxS = jnp.where(mask_Bx1xLxS, scores_BxNxLxS, -jnp.inf)
    probs_BxNxLxS = jax.nn.softmax(scores_BxNxLxS, axis=-1).astype(dtype)
    o_BxLxNxH = jnp.einsum("bnls,bnsh->blnh", probs_BxNxLxS, v_BxNxSxH)
    return o_BxLxNxH, {"k": k_BxNxSxH, "v": v_BxNxSxH}


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, cache: Cache | None = None, pos_B: jax.Array | None = None
    ) -> tuple[jax.Array, Cache | None]:
        c = self.cfg
        D, N, H = c.d_model, c.n_heads, c.head_dim
        std_in, std_out = D**-0.5, (N * H * 2 * c.n_layers) ** -0.5
        qkv = []
        for name in ("query", "key", "value"):
            w_DxNxH = _weight(self, name, (D, N, H), ("embed", "heads", "kv"), std_in)
            y_BxLxNxH = matmul(x_BxLxD, w_DxNxH)
            qkv.append(constrain(y_BxLxNxH, ("batch", "length", "heads", "kv")))
        q_BxLxNxH, k_BxLxNxH, v_BxLxNxH = qkv
        pos_BxL = None if cache is None else pos_B[:, None] + jnp.arange(x_BxLxD.shape[1])[None, :]
        if c.pos_emb == "rope":
            q_BxLxNxH = rope(q_BxLxNxH, c.rope_theta, pos_BxL)
            k_BxLxNxH = rope(k_BxLxNxH, c.rope_theta, pos_BxL)
        if cache is None:
            o_BxLxNxH = jax.nn.dot_product_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, is_causal=True)
        else:
            o_BxLxNxH, cache = cached_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, cache, pos_B)
        o_BxLxNxH = constrain(o_BxLxNxH, ("batch", "length", "heads", "kv"))
        w_NxHxD = _weight(self, "out", (N, H, D), ("heads", "kv", "embed"), std_out)
        return matmul(o_BxLxNxH, w_NxHxD, n_in=2), cache


class Mlp(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        c = self.cfg
        D, F = c.d_model, c.ff_dim
        w_DxF = _weight(self, "wi", (D, F), ("embed", "mlp"), D**-0.5)
        h_BxLxF = matmul(x_BxLxD, w_DxF)
        if c.mlp == "swiglu":
            g_DxF = _weight(self, "wg", (D, F), ("embed", "mlp"), D**-0.5)
            h_BxLxF = jax.nn.silu(matmul(x_BxLxD, g_DxF)) * h_BxLxF
        else:
            h_BxLxF = jax.nn.gelu(h_BxLxF)
        h_BxLxF = constrain(h_BxLxF, ("batch", "length", "mlp"))
        w_FxD = _weight(self, "wo", (F, D), ("mlp", "embed"), (F * 2 * c.n_layers) ** -0.5)
        return matmul(h_BxLxF, w_FxD)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, x_BxLxD: jax.Array, cache: Cache | None = None, pos_B: jax.Array | None = None
    ) -> tuple[jax.Array, Cache | None]:
        h_BxLxD, cache = Attention(self.cfg, name="attn")(_norm(self.cfg, "attn_norm")(x_BxLxD), cache, pos_B)
        x_BxLxD = x_BxLxD + h_BxLxD
        x_BxLxD = x_BxLxD + Mlp(self.cfg, name="mlp")(_norm(self.cfg, "mlp_norm")(x_BxLxD))
        return constrain(x_BxLxD, ("batch", "length", "embed")), cache


class Transformer(nn.Module):
    """Maps int tokens [B, L] to float32 logits [B, L, V]; with a cache, to (logits, updated cache)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self, tokens_BxL: jax.Array, cache: Cache | None = None, pos_B: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, Cache]:
        c = self.cfg
        D, V, L = c.d_model, c.vocab_size, tokens_BxL.shape[1]
        embed_init = nn.with_logical_partitioning(nn.initializers.normal(D**-0.5), ("vocab", "embed"))
        embed_VxD = self.param("embed", embed_init, (V, D), jnp.float32)
        # The lookup reads a whole-table copy: a gather from a vocab- and fsdp-split table would
        # make XLA replicate it anyway, and less efficiently, inside the gather.
        table_VxD = constrain(embed_VxD, (None, None))
        x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(c.compute_dtype)
        if c.pos_emb == "learned":
            pos_init = nn.with_logical_partitioning(nn.initializers.normal(D**-0.5), ("length", "embed"))
            table_LxD = self.param("pos_embed", pos_init, (c.seq_len, D), jnp.float32)
            x_BxLxD = x_BxLxD + (table_LxD[:L] if cache is None else _at(table_LxD, pos_B, L))
        elif c.pos_emb == "sinusoidal":
            table_LxD = sinusoid(L, D) if cache is None else _at(sinusoid(c.seq_len, D), pos_B, L)
            x_BxLxD = x_BxLxD + table_LxD.astype(c.compute_dtype) * D**-0.5
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))

        block = nn.remat(Block, prevent_cse=not c.scan_layers) if c.remat else Block
        if c.scan_layers:
            # One compiled block reused n_layers times: compile time stays flat as depth grows.
            # The cache is scanned over its leading layer axis; positions are the same for every layer.
            layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=c.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxLxD, cache = layers(c, name="layers")(x_BxLxD, cache, pos_B)
        else:
            caches = []
            for i in range(c.n_layers):
                x_BxLxD, layer_cache = block(c, name=f"layer_{i}")(x_BxLxD, cache and cache[i], pos_B)
                caches.append(layer_cache)
            cache = None if cache is None else tuple(caches)

        x_BxLxD = _norm(c, "final_norm")(x_BxLxD)
        if c.tie_embeddings:
            logits_BxLxV = matmul(x_BxLxD, embed_VxD.astype(c.compute_dtype).T)
        else:
            w_DxV = _weight(self, "unembed", (D, V), ("embed", "vocab"), D**-0.5)
            logits_BxLxV = matmul(x_BxLxD, w_DxV)
        logits_BxLxV = constrain(logits_BxLxV.astype(jnp.float32), ("batch", "length", "vocab"))
        return logits_BxLxV if cache is None else (logits_BxLxV, cache)


def unstack_layers(params: Any, cfg: ModelConfig) -> Any:
    """Scanned params (`layers` with a leading layer axis) as the unrolled model's `layer_i` entries."""
    if not cfg.scan_layers:
        return params
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(cfg.n_layers):
        out[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    return out


def _at(table_SxD: jax.Array, pos_B: jax.Array, L: int) -> jax.Array:
    """Rows pos_B..pos_B+L-1 of a position table, per batch row: [B, L, D].

    Positions past the table clip to its last row: only padding ever sits there, and a finite value
    keeps it out of the real rows' attention (a NaN key would not stay masked).
    """
    return jnp.take(table_SxD, pos_B[:, None] + jnp.arange(L)[None, :], axis=0, mode="clip")
