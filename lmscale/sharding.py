"""Device mesh `data x fsdp x tensor` and the logical-axis rules that place arrays on it.

Every parameter and large activation is named with logical axes (batch, length, embed, heads, kv,
mlp, vocab, layers); the config's `mesh.rules` maps those names to mesh axes. Data parallelism,
FSDP and tensor parallelism are therefore the same code with different rules and mesh sizes.
`check_mesh` rejects, before anything compiles, a mesh or a rule that does not fit the devices and
the model. The rules table itself (`DEFAULT_RULES`) is the default of `mesh.rules` in lmscale.config,
which must import without JAX.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding

from lmscale.config import MESH_AXES, Config, ConfigError, MeshConfig, ModelConfig

# The names `mesh.rules` may map: every array axis of the model is one of these.
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers")

# Environment variables that mark a multi-process launch (SLURM, Open MPI, TPU pod, explicit).
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _is_multihost_launch() -> bool:
    if any(int(os.environ.get(v, "1") or 1) > 1 for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")  # set on every host of a TPU pod


def settle(tree: Any) -> Any:
    """`tree` once every device has finished the program that computed it.

    XLA:CPU runs each device's part of a program on a shared pool of worker threads, and a part waiting
    in a collective holds its thread. Two programs with collectives in flight at once on a multi-device
    CPU (`mesh.cpu_devices` > 1) can therefore deadlock, and XLA aborts the process after 40 s ("Expected
    2 threads to join the rendezvous"); so can one program whose collectives do not depend on each other
    (see `unordered_collectives`). Reading a replicated result (`jax.device_get`) waits for one device
    only. So every program with collectives other than the train step, which only ever follows itself
    through its donated state, is settled before another is dispatched; few-shot decoding runs on one
    device there instead. On an accelerator this costs a host round trip per evaluation batch, nothing
    per step.
    """
    return jax.block_until_ready(tree)


def unordered_collectives(mesh: Mesh) -> bool:
    """Whether `mesh` is several CPU devices of one process, where XLA:CPU may run a program's
    independent collectives in another order on each device and deadlock (reproduced: a decoding
    program with 2 all-reduces and 7 all-gathers). The train and eval steps have one combined
    all-reduce each; programs with more run on one device there instead."""
    return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu" and jax.process_count() == 1


def use_cpu_devices(n: int) -> None:
    """Split this host's CPU into `n` JAX devices (`mesh.cpu_devices`) before anything starts JAX's
    backend; `mesh.data: -1` then trains data-parallel over them. XLA:CPU runs most fused elementwise
    work of a step on one thread, so one device leaves cores idle that a second device's half of the
    batch uses: nanoGPT's CPU recipe step went from 46 to 33 ms on 2 cores (`lmscale bench` with
    XLA_FLAGS=--xla_force_host_platform_device_count=2). Not applied under a multi-process launch or an
    XLA_FLAGS device count, which decide the devices themselves. Warns when the backend had already
    started with another count (a second command in one Python process); config.yaml's `meta.devices`
    records the count a run had."""
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 or _is_multihost_launch() or "xla_force_host_platform_device_count" in flags:
        return
    if jax.config.jax_num_cpu_devices == n:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        note = f"mesh.cpu_devices={n} not applied: JAX's CPU backend started with {have}"
        warnings.warn(note, stacklevel=3)


def initialize_distributed(setting: str) -> bool:
    """Call `jax.distributed.initialize()` once per process when running on several hosts.

    Must run before anything touches a device. `auto` initializes only under a multi-host launch,
    so single-host runs never wait on a coordinator; lmscale.launch names the variables it reads.
    """
    if setting == "false" or (setting == "auto" and not _is_multihost_launch()):
        return False
    if not jax.distributed.is_initialized():
        from lmscale import launch  # the environment it reads (JAX_NUM_PROCESSES, ...) and bounded waits

        launch.initialize(setting)
    return True


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = cfg.shape(len(devices))
    # Auto axes: shardings are decided by in/out shardings and logical constraints, GSPMD style.
    return jax.make_mesh(
        tuple(shape[a] for a in MESH_AXES),
        MESH_AXES,
        axis_types=(AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def rules(cfg: MeshConfig) -> tuple[tuple[str, Any], ...]:
    """Flax logical-axis rules, in config order (a mesh axis goes to the first name that claims it)."""
    return tuple((name, tuple(ax) if isinstance(ax, list) else ax) for name, ax in cfg.rules.items())


def tree_shardings(abstract_boxed: Any, mesh: Mesh, axis_rules: tuple) -> Any:
    """NamedShardings for a tree whose leaves are `nn.Partitioned` boxes (unboxed leaves replicate)."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, axis_rules)


def batch_sharding(mesh: Mesh, axis_rules: tuple) -> NamedSharding:
    """Token batches [batch, length] split over the data-parallel axes."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch", "length"), axis_rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.sharding.PartitionSpec())


def check_process_rows(batch_sharding: NamedSharding, batch_size: int, rows: slice) -> tuple[int, int]:
    """The batch rows [start, stop) this process's devices hold, which must be the `rows` its data
    pipeline reads; a ConfigError when the mesh puts other rows here (a non-data axis such as
    mesh.tensor spanning hosts), which would feed hosts that share rows different data."""
    held = batch_sharding.addressable_devices_indices_map((batch_size, 1)).values()
    spans = sorted({s[0].indices(batch_size)[:2] for s in held})
    start, stop = spans[0][0], spans[-1][1]
    contiguous = all(end == begin for (_, end), (begin, _) in zip(spans, spans[1:], strict=False))
    if not contiguous or (start, stop) != (rows.start, rows.stop):
        raise ConfigError(
            f"mesh: process {jax.process_index()} of {jax.process_count()} holds batch rows {spans} but "
            f"reads rows [{rows.start}, {rows.stop}); the data-parallel axes (mesh.data, mesh.fsdp) must "
            "span the hosts, with mesh.tensor inside one"
        )
    return start, stop


def check_mesh(cfg: Config, n_devices: int) -> None:
    """Mesh sizes against the device count, and every rule against the sizes it splits (ConfigError)."""
    mesh, m, t = cfg.mesh, cfg.model, cfg.train
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    if sum(s == -1 for s in sizes.values()) > 1:
        raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    known = math.prod(s for s in sizes.values() if s != -1)
    if -1 in sizes.values():
        if n_devices % known:
            axis = next(a for a, s in sizes.items() if s == -1)
            raise ConfigError(
                f"mesh.{axis}=-1: the other axes ({known}) do not divide the {n_devices} devices"
            )
    elif known != n_devices:
        raise ConfigError(
            f"mesh: data*fsdp*tensor = {sizes['data']}*{sizes['fsdp']}*{sizes['tensor']} = {known} "
            f"does not match the {n_devices} devices"
        )
    shape = mesh.shape(n_devices)
    rule_axes = {name: _rule_axes(name, rule) for name, rule in mesh.rules.items()}
    if t.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}"
        )
    micro = t.batch_size // t.grad_accum
    dp_axes = rule_axes["batch"]
    dp = math.prod(shape[a] for a in dp_axes)
    if micro % dp:
        raise ConfigError(
            f"train.batch_size={t.batch_size} (micro-batch {micro}) is not divisible by the "
            f"data-parallel size {_axes_product(dp_axes)}={dp}"
        )
    for name, (key, value) in _sharded_dims(m).items():
        split = math.prod(shape[a] for a in rule_axes[name])
        if value % split:
            raise ConfigError(
                f"{key}={value} is not divisible by {_axes_product(rule_axes[name])}={split} "
                f"(mesh.rules.{name}={mesh.rules[name]})"
            )


def _rule_axes(name: str, rule: Any) -> tuple[str, ...]:
    """The mesh axes of one `mesh.rules` entry: null, a mesh axis, or a list of mesh axes."""
    if name not in LOGICAL_AXES:
        raise ConfigError(f"mesh.rules.{name}: unknown logical axis; known: {', '.join(LOGICAL_AXES)}")
    axes = [] if rule is None else [rule] if isinstance(rule, str) else rule
    if not isinstance(axes, list) or not all(isinstance(a, str) for a in axes):
        raise ConfigError(
            f"mesh.rules.{name}={rule!r}: expected null, a mesh axis or a list of them "
            f"({', '.join(MESH_AXES)})"
        )
    for axis in axes:
        if axis not in MESH_AXES:
            raise ConfigError(f"mesh.rules.{name}={rule!r}: unknown mesh axis {axis!r}")
    if len(set(axes)) < len(axes):
        raise ConfigError(f"mesh.rules.{name}={rule!r}: names a mesh axis twice")
    return tuple(axes)


def _axes_product(axes: tuple[str, ...]) -> str:
    """`mesh.data*mesh.fsdp` for the axes a rule splits over (`1` for none)."""
    return "*".join(f"mesh.{a}" for a in axes) or "1"


def _sharded_dims(m: ModelConfig) -> dict[str, tuple[str, int]]:
    """Logical axis of the model's arrays -> (the config key that sizes it, its size).

    A mesh axis goes to the first logical name that claims it within an array, so a name may end up
    split over fewer axes than its rule lists; requiring the full product is the safe bound.
    """
    dims = {
        "heads": ("model.n_heads", m.n_heads),
        "vocab": ("model.vocab_size", m.vocab_size),
        "mlp": ("model.d_ff", m.ff_dim),
        "kv": ("model.d_model/model.n_heads", m.head_dim),
        "embed": ("model.d_model", m.d_model),
        "length": ("model.seq_len", m.seq_len),
    }
    if m.scan_layers:  # unscanned layers are separate arrays: no array has a layers axis
        dims["layers"] = ("model.n_layers", m.n_layers)
    return dims
