"""The memory a run needs per device, and the check that it fits before anything is written."""

from __future__ import annotations

import os

from lmscale import flops
from lmscale.config import Config, ConfigError


def memory_bytes(cfg: Config, n_devices: int) -> int:
    """Per-device estimate: float32 params, grads and two Adam moments, plus the activations and their
    gradients alive at the backward pass's peak (coefficients fitted to XLA's CPU memory analysis)."""
    m, t = cfg.model, cfg.train
    shape = cfg.mesh.shape(n_devices)
    dp, tp = shape["data"] * shape["fsdp"], shape["tensor"]
    state = 16 * flops.param_counts(m).total / (shape["fsdp"] * tp)
    tokens = t.batch_size // t.grad_accum / dp * m.seq_len  # per device per micro-batch
    c = 2 if m.compute_dtype == "bfloat16" else 4
    mlp = (3 if m.mlp == "swiglu" else 2) * m.ff_dim
    # Per token per layer: residual-stream tensors (~21 of width D), the MLP's hidden activations, and
    # the attention scores and probabilities (heads x seq_len), the last two split by tensor parallelism.
    per_layer = tokens * c * (21 * m.d_model + (2.5 * mlp + 3.5 * m.n_heads * m.seq_len) / tp)
    layers = tokens * c * m.d_model * m.n_layers + per_layer if m.remat else per_layer * m.n_layers
    logits = 3 * tokens * m.vocab_size / tp * 4  # float32 logits, softmax and its gradient
    return int(state + layers + logits)


def check_memory(cfg: Config, devices: list) -> None:
    """ConfigError (one line, with the estimate) before a run too big for a device (on CPU, RAM / devices)."""
    import jax

    need = memory_bytes(cfg, len(devices))
    mem = jax.local_devices()[0].memory_stats()  # another process's devices report nothing here
    have, where = (mem or {}).get("bytes_limit"), f"{devices[0].device_kind} memory"
    if have is None:  # CPU: the simulated devices share the host's RAM
        local = jax.local_device_count()
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local, f"host RAM / {local}"
    if need > have:
        raise ConfigError(
            f"model.d_model={cfg.model.d_model}, model.n_layers={cfg.model.n_layers}: the memory estimate "
            f"is {need / 2**30:,.1f} GiB per device, more than the {have / 2**30:,.1f} GiB of {where}"
        )
