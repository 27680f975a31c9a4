"""The Transformer's own properties: causality, the KV cache, and every variant training in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale import config, sharding
from lmscale.data.pipeline import make_source
from lmscale.model import Transformer, init_cache
from lmscale.step_fns import build
from tests.conftest import tiny_model

VARIANTS = {  # every position encoding and both layer loops; the MLP rides along (it mixes no positions)
    "rope-scan": {},
    "learned-untied-loop": {"pos_emb": "learned", "tie_embeddings": False, "scan_layers": False},
    "sinusoidal-swiglu": {"pos_emb": "sinusoidal", "mlp": "swiglu"},
}


def _model(**variant):
    return tiny_model(32, **variant)


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_a_position_sees_no_later_token(variant):
    cfg, params = _model(**variant)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 256, (2, 20))
    changed = tokens.copy()
    changed[:, 12:] = rng.integers(0, 256, (2, 8))
    forward = jax.jit(lambda t: Transformer(cfg).apply({"params": params}, t))
    a, b = forward(jnp.asarray(tokens, jnp.int32)), forward(jnp.asarray(changed, jnp.int32))
    np.testing.assert_array_equal(a[:, :12], b[:, :12])
    assert np.abs(np.asarray(a[:, 12:] - b[:, 12:])).max() > 1e-3  # and the later positions do see them


@pytest.mark.parametrize("variant", list(VARIANTS.values())[1:], ids=list(VARIANTS)[1:])
def test_a_cache_filled_in_chunks_matches_the_plain_forward_in_the_other_variants(variant):
    """The default (RoPE, scanned layers) is the test below; these are the other variants."""
    cfg, params = _model(**variant)
    apply = jax.jit(Transformer(cfg).apply)
    tokens = jnp.array(np.random.default_rng(3).integers(0, 256, (2, 15)), jnp.int32)
    plain = apply({"params": params}, tokens)
    cache, pieces = init_cache(cfg, 2, 16), []
    for lo, hi in ((0, 5), (5, 6), (6, 15)):  # a prompt, one decoded token, then a continuation
        logits, cache = apply({"params": params}, tokens[:, lo:hi], cache, jnp.full(2, lo, jnp.int32))
        pieces.append(logits)
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), plain, atol=1e-5)


def test_scanned_model_with_a_stacked_cache_matches_the_plain_forward():
    cfg, params = _model()
    apply = jax.jit(Transformer(cfg).apply)
    tokens = jnp.array(np.random.default_rng(1).integers(0, 256, (2, 12)), jnp.int32)
    plain = apply({"params": params}, tokens)
    cache = init_cache(cfg, 2, 16)
    first, cache = apply({"params": params}, tokens[:, :7], cache, jnp.zeros(2, jnp.int32))
    rest, _ = apply({"params": params}, tokens[:, 7:], cache, jnp.full(2, 7, jnp.int32))
    np.testing.assert_allclose(jnp.concatenate([first, rest], 1), plain, atol=1e-5)


@pytest.mark.parametrize(
    "variant",
    [  # each option off its default at least once, three compiles rather than one per option
        {"mlp": "swiglu", "pos_emb": "learned", "tie_embeddings": False},
        {"pos_emb": "sinusoidal", "remat": True},
        {"remat": True, "scan_layers": False, "compute_dtype": "bfloat16"},
    ],
    ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()),
)
def test_model_variants_train_and_keep_float32_params(variant):
    model = {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 16, **variant}
    cfg = config.from_dict({"model": model, "train": {"batch_size": 4, "tokens": 4 * 16 * 10}})
    steps = build(cfg, sharding.make_mesh(cfg.mesh))
    state = steps.init(0)
    batch = steps.put_batch(next(make_source(cfg, "train")))
    losses = []
    for _ in range(5):  # the same batch: every variant must fit it better step by step
        state, metrics = steps.train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
