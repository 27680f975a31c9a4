import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lmscale import config, flops, sharding
from lmscale.model import Transformer
from lmscale.step_fns import build

SHAPES = [
    {"n_layers": 1, "d_model": 32, "n_heads": 1, "vocab_size": 64},
    {"n_layers": 2, "d_model": 64, "n_heads": 4, "mlp": "swiglu"},
    {"n_layers": 3, "d_model": 96, "n_heads": 6, "tie_embeddings": False},
    {"n_layers": 4, "d_model": 128, "n_heads": 8, "pos_emb": "learned", "d_ff": 200},
    {"n_layers": 6, "d_model": 256, "n_heads": 4, "scan_layers": False, "pos_emb": "sinusoidal"},
]
EMBEDDING_LEAVES = ("embed", "unembed", "pos_embed")


def _leaf_counts(model_cfg: config.ModelConfig) -> tuple[int, int]:
    tokens = jnp.zeros((1, model_cfg.seq_len), jnp.int32)
    params = nn.unbox(jax.eval_shape(Transformer(model_cfg).init, jax.random.PRNGKey(0), tokens))
    params = params["params"]
    size = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    return size(params), sum(size(params[k]) for k in EMBEDDING_LEAVES if k in params)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layers']}-D{s['d_model']}")
def test_param_counts_equal_the_leaves_of_the_parameter_tree(shape):
    m = config.from_dict({"model": shape}).model
    total, embedding = _leaf_counts(m)
    counts = flops.param_counts(m)
    assert counts.total == total
    assert counts.embedding == embedding
    assert counts.nonembedding == total - embedding


def test_detailed_flops_match_xla_cost_analysis_within_ten_percent():
    """XLA counts what runs, Chinchilla's Appendix F counts the model. They differ in:
    - embedding: Chinchilla counts 2*L*V*D for the lookup; XLA sees a gather (0 FLOPs);
    - softmax: 3 FLOPs per score here, XLA counts max/sub/exp/sum/div separately;
    - elementwise work Chinchilla leaves out: RMSNorm, GELU, RoPE, residuals, the loss, AdamW.
    Unrolled layers, because XLA's cost analysis counts a scanned loop body once."""
    model = {"n_layers": 4, "d_model": 256, "n_heads": 4, "seq_len": 128, "scan_layers": False}
    cfg = config.from_dict({"model": model, "train": {"batch_size": 8, "tokens": 10**9}})
    steps = build(cfg, sharding.make_mesh(cfg.mesh))
    cost = steps.compile_train_step().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    tokens = cfg.train.batch_size * cfg.model.seq_len
    detailed = tokens * flops.train_flops_per_token(cfg.model)
    assert abs(xla / detailed - 1) < 0.10, (xla, detailed)
    terms = flops.forward_flops_terms(cfg.model)
    without_embedding = detailed - 3 * terms["embedding"] * cfg.train.batch_size
    assert abs(xla / without_embedding - 1) < 0.10


def test_causal_half_halves_only_the_quadratic_terms():
    m = config.from_dict({"model": {"seq_len": 1024}}).model
    full, half = flops.forward_flops_terms(m), flops.forward_flops_terms(m, causal_half=True)
    quadratic = {"attention_scores", "attention_softmax", "attention_values"}
    for name in full:
        assert half[name] == (full[name] / 2 if name in quadratic else full[name])


def test_detailed_count_approaches_6nd_when_attention_is_small():
    # With L << D the L^2 attention terms vanish and 6ND is the whole story (Kaplan et al. 2020).
    m = config.from_dict({"model": {"n_layers": 8, "d_model": 1024, "n_heads": 8, "seq_len": 32}})
    m = m.model
    ratio = flops.train_flops_per_token(m) / (6 * flops.param_counts(m).total)
    assert 0.98 < ratio < 1.05


def test_a_train_step_costs_its_tokens_times_the_flops_per_token_as_the_config_counts_them():
    spec = {"model": {"seq_len": 256}, "train": {"batch_size": 4, "tokens": 10**6}}
    for causal_half in (False, True):
        cfg = config.from_dict(spec | {"train": spec["train"] | {"flops_causal_half": causal_half}})
        per_token = flops.train_flops_per_token(cfg.model, causal_half)
        assert flops.step_flops(cfg) == 4 * 256 * per_token
    half = config.from_dict(spec | {"train": spec["train"] | {"flops_causal_half": True}})
    assert flops.step_flops(half) < flops.step_flops(config.from_dict(spec))
