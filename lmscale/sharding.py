"""Device mesh `data x fsdp x tensor` and the logical-axis rules that place arrays on it.

Every parameter and large activation is named with logical axes (batch, length, embed, heads, kv,
mlp, vocab, layers); the config's `mesh.rules` maps those names to mesh axes. Data parallelism,
FSDP and tensor parallelism are therefore the same code with different rules and mesh sizes.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding

from lmscale.config import MESH_AXES, ConfigError, MeshConfig

# Environment variables that mark a multi-process launch (SLURM, Open MPI, TPU pod, explicit).
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _is_multihost_launch() -> bool:
    if any(int(os.environ.get(v, "1") or 1) > 1 for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")  # set on every host of a TPU pod


def initialize_distributed(setting: str) -> bool:
    """Call `jax.distributed.initialize()` once per process when running on several hosts.

    Must run before anything touches a device. `auto` initializes only under a multi-host launch,
    so single-host runs never wait on a coordinator.
    """
    if setting == "false" or (setting == "auto" and not _is_multihost_launch()):
        return False
    if not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:  # no coordinator found: not a multi-host launch
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(
                f"mesh.distributed={setting}: jax.distributed.initialize() failed ({reason}); launch one "
                "process per host, or use mesh.distributed=auto on a single machine"
            ) from None
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
