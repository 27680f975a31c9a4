"""Parameter and FLOP counts: the one home for N, 6ND, the detailed count and FLOPs per train step.

The detailed count follows Hoffmann et al. 2022 (Chinchilla), Appendix F: every matmul is 2 FLOPs per
multiply-add, softmax is 3 FLOPs per logit, embeddings count as a matmul with the one-hot input, and
the backward pass costs twice the forward pass.
"""

from __future__ import annotations

import dataclasses
import math

from lmscale.config import Config, ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # token embedding, plus the unembedding when untied and learned positions
    nonembedding: int


def param_counts(m: ModelConfig) -> ParamCounts:
    """Exact parameter counts of `lmscale.model.Transformer` for this config."""
    D, F, V = m.d_model, m.ff_dim, m.vocab_size
    attention = 4 * D * m.n_heads * m.head_dim  # query, key, value, out
    mlp = (3 if m.mlp == "swiglu" else 2) * D * F
    norms = 2 * D
    nonembedding = m.n_layers * (attention + mlp + norms) + D  # + final norm
    embedding = V * D * (1 if m.tie_embeddings else 2)
    if m.pos_emb == "learned":
        embedding += m.seq_len * D
    return ParamCounts(embedding + nonembedding, embedding, nonembedding)


def forward_flops_terms(m: ModelConfig, causal_half: bool = False) -> dict[str, float]:
    """Forward FLOPs for one sequence of `seq_len` tokens, term by term (Chinchilla App. F)."""
    L, D, F, V, NH = m.seq_len, m.d_model, m.ff_dim, m.vocab_size, m.n_heads * m.head_dim
    causal = 0.5 if causal_half else 1.0  # a causal mask leaves about half the L x L scores in use
    per_layer = {
        "attention_qkv": 2 * 3 * L * D * NH,
        "attention_scores": causal * 2 * L * L * NH,
        "attention_softmax": causal * 3 * m.n_heads * L * L,
        "attention_values": causal * 2 * L * L * NH,
        "attention_out": 2 * L * NH * D,
        "mlp": 2 * L * (3 if m.mlp == "swiglu" else 2) * D * F,
    }
    terms = {"embedding": 2.0 * L * V * D}
    terms |= {k: float(m.n_layers * v) for k, v in per_layer.items()}
    terms["output_logits"] = 2.0 * L * D * V
    return terms


def train_flops_per_token(m: ModelConfig, causal_half: bool = False) -> float:
    """Detailed training FLOPs per token: forward plus a backward pass of twice the cost."""
    return 3.0 * sum(forward_flops_terms(m, causal_half).values()) / m.seq_len


def step_flops(cfg: Config) -> float:
    """Detailed FLOPs of one train step: batch x seq_len tokens, causal attention as `cfg` counts it."""
    tokens = cfg.train.batch_size * cfg.model.seq_len
    return tokens * train_flops_per_token(cfg.model, cfg.train.flops_causal_half)


def flops_6nd(m: ModelConfig, tokens: float) -> float:
    """The 6ND approximation (Kaplan et al. 2020), with N the total parameter count."""
    return 6.0 * param_counts(m).total * tokens


def params_for_6nd(compute: float, tokens_per_param: float) -> float:
    """The N with C = 6ND at D = tokens_per_param * N: N = sqrt(C / (6 D/N)) (Hoffmann et al. 2022)."""
    return math.sqrt(compute / (6.0 * tokens_per_param))
