"""The compiled functions of a run: sharded init, train step and eval loss, built once per config."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from lmscale import sharding
from lmscale.config import Config
from lmscale.model import Transformer, unstack_layers
from lmscale.optim import optimizer
from lmscale.schedule import LearningRates


@struct.dataclass
class TrainState:
    step: jax.Array  # optimizer updates done, int32 scalar
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]; split for anything stochastic after init


@dataclasses.dataclass
class StepFns:
    """Jitted, sharded functions; every call runs under the run's mesh and logical-axis rules."""

    cfg: Config
    mesh: Mesh
    rules: tuple
    model: Transformer
    state_shardings: Any
    batch_sharding: NamedSharding
    abstract_state: Any  # ShapeDtypeStructs carrying shardings: the restore target for Orbax
    _init: Any
    _train: Any
    _eval: Any  # each sequence's loss
    lrs: LearningRates  # the learning rate of each update 0..total_steps

    @contextlib.contextmanager
    def context(self):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def init(self, seed: int) -> TrainState:
        with self.context():
            return sharding.settle(self._init(jax.random.PRNGKey(seed)))

    def train_step(
        self, state: TrainState, batch: jax.Array, step: int | None = None
    ) -> tuple[TrainState, dict]:
        """One update; `step` is the updates done so far (read from `state` when not given)."""
        with self.context():
            return self._train(state, batch, self.lrs[_updates_done(state, step)])

    def eval_rows(self, params: Any, batch: jax.Array) -> jax.Array:
        """Each sequence's mean loss, [B], replicated on every device (and every process)."""
        with self.context():
            return sharding.settle(self._eval(params, batch))

    def eval_loss(self, params: Any, batch: jax.Array) -> float:
        """The batch's mean loss over its tokens."""
        return float(np.mean(jax.device_get(self.eval_rows(params, batch)), dtype=np.float64))

    def put_batch(self, local_batch: np.ndarray) -> jax.Array:
        """Assemble the global batch from this process's rows."""
        return jax.make_array_from_process_local_data(self.batch_sharding, local_batch)

    def lower_train_step(self):
        lr = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(self.mesh))
        with self.context():
            return self._train.lower(self.abstract_state, self.abstract_batch(), lr)

    def compile_train_step(self, lowered=None) -> CompiledStep:
        """Ahead-of-time compiled train step, so step times never include compilation (from `lowered`,
        this StepFns' `lower_train_step()`, when the caller has it already)."""
        return CompiledStep((lowered or self.lower_train_step()).compile(), self.lrs)

    def abstract_batch(self) -> jax.ShapeDtypeStruct:
        shape = (self.cfg.train.batch_size, self.cfg.model.seq_len + 1)
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.batch_sharding)


def _updates_done(state: TrainState, step: int | None) -> int:
    return int(jax.device_get(state.step)) if step is None else step


@dataclasses.dataclass
class CompiledStep:
    """The compiled train step and the schedule it reads: `(state, batch, step)`, where `step` is the
    updates done so far (read from `state` when not given, which waits for the previous step)."""

    executable: Any
    lrs: LearningRates

    def __call__(self, state: TrainState, batch: jax.Array, step: int | None = None):
        return self.executable(state, batch, self.lrs[_updates_done(state, step)])

    def __getattr__(self, name: str):  # cost_analysis, memory_analysis, as_text, ...
        return getattr(self.executable, name)


def compilation_cache(directory: str | os.PathLike) -> None:
    """Keep compiled steps in `directory` (unless $JAX_COMPILATION_CACHE_DIR names another), so a later
    run of the same shape loads its executable instead of compiling: the same program, the same bits.
    Every program is kept, however fast it compiled (unless $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
    says otherwise): JAX's default keeps only those over 1 s, and a CPU run's ~40 programs (its train
    step among them) each compile in under 1 s, which cost every repeated run 1.7 s of compiling."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# On CPU, scanned layers up to this depth run unrolled in the train step and the eval loss (same
# stacked params, sliced per layer): XLA:CPU's while loop copies the carries and each layer's parameter
# slice every iteration, which cost ~35% of a 4-layer step. Deeper models keep the loop, whose compile
# time stays flat in depth.
UNROLL_ON_CPU_UP_TO = 8


def unrolls(cfg: Config, mesh: Mesh) -> bool:
    """Whether the train step runs the scanned layers unrolled (see UNROLL_ON_CPU_UP_TO)."""
    m = cfg.model
    return m.scan_layers and m.n_layers <= UNROLL_ON_CPU_UP_TO and mesh.devices.flat[0].platform == "cpu"


def build(cfg: Config, mesh: Mesh, total_steps: int | None = None) -> StepFns:
    total_steps = cfg.steps if total_steps is None else total_steps
    model = Transformer(cfg.model)
    if unrolls(cfg, mesh):
        unrolled = Transformer(dataclasses.replace(cfg.model, scan_layers=False))
        apply = lambda params, tokens: unrolled.apply({"params": unstack_layers(params, cfg.model)}, tokens)  # noqa: E731
    else:
        apply = lambda params, tokens: model.apply({"params": params}, tokens)  # noqa: E731
    tx = optimizer(cfg.train, 0.0)  # the state's structure only; each step's lr is an input
    rules = sharding.rules(cfg.mesh)
    accum = cfg.train.grad_accum

    def init_boxed(rng: jax.Array) -> TrainState:
        init_rng, rng = jax.random.split(rng)
        tokens = jnp.zeros((1, cfg.model.seq_len), jnp.int32)
        params = model.init(init_rng, tokens)["params"]
        # The optimizer state mirrors the boxed params, so it inherits their logical axes.
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), rng)

    # Inner jits: JAX caches a jitted function's trace by its argument types, so the model is traced
    # once per batch shape, for the train step's gradient and the eval losses alike, and init once for
    # its shapes and its sharded program. A Flax trace is the costly part of a run's start-up.
    @jax.jit
    def row_losses(params: Any, tokens_BxL1: jax.Array) -> jax.Array:
        """Mean next-token loss of each sequence, [B]."""
        logits_BxLxV = apply(params, tokens_BxL1[:, :-1])
        targets_BxL = tokens_BxL1[:, 1:]
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL).mean(-1)

    def loss_fn(params: Any, tokens_BxL1: jax.Array) -> jax.Array:
        return row_losses(params, tokens_BxL1).mean()  # every row has L targets: the mean over tokens

    init_boxed = jax.jit(init_boxed)
    grad_fn = jax.value_and_grad(loss_fn)

    def train_step(state: TrainState, batch_BxL1: jax.Array, lr: jax.Array) -> tuple[TrainState, dict]:
        if accum == 1:
            loss, grads = grad_fn(state.params, batch_BxL1)
        else:
            # Micro-batch a takes rows a, a+A, a+2A, ...: each device keeps its own rows in every
            # micro-batch, so accumulation moves no data between devices.
            B, L1 = batch_BxL1.shape
            micro_AxMxL1 = batch_BxL1.reshape(B // accum, accum, L1).swapaxes(0, 1)

            def body(carry, micro_MxL1):
                micro_MxL1 = nn.with_logical_constraint(micro_MxL1, ("batch", "length"))
                return jax.tree.map(jnp.add, carry, grad_fn(state.params, micro_MxL1)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(body, zeros, micro_AxMxL1)
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
        updates, opt_state = optimizer(cfg.train, lr).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract_boxed = jax.eval_shape(init_boxed, jax.random.PRNGKey(0))
    state_shardings = sharding.tree_shardings(abstract_boxed, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    replicated = sharding.replicated(mesh)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(abstract_boxed),
        state_shardings,
    )
    init = jax.jit(lambda rng: nn.unbox(init_boxed(rng)), out_shardings=state_shardings)
    train = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    evaluate = jax.jit(
        row_losses, in_shardings=(state_shardings.params, batch_sharding), out_shardings=replicated
    )
    return StepFns(
        cfg,
        mesh,
        rules,
        model,
        state_shardings,
        batch_sharding,
        abstract_state,
        init,
        train,
        evaluate,
        LearningRates(cfg.train, total_steps),
    )
