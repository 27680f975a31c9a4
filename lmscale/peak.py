"""Peak FLOP/s per device, the denominator of MFU.

Accelerators: the vendor's dense bf16 peak, keyed by `device.device_kind`. CPUs have no such
number, so the peak is measured: the best rate of a large float32 matmul in this process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from analysis.atomic import write_atomic

# Dense (no sparsity) bf16 peak FLOP/s per chip / GPU, from the vendors' spec sheets. A TPU chip may
# show up as several JAX devices (v2 and v3: one per TensorCore), so the run's peak counts chips.
DEVICE_PEAK_FLOPS = {
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # Trillium, v6e
    "TPU v6e": 918e12,
    "TPU7x": 2307e12,  # Ironwood
    "NVIDIA A100": 312e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100": 989e12,  # SXM
    "NVIDIA H200": 989e12,
    "NVIDIA GH200": 989e12,
    "NVIDIA B200": 2250e12,
    "NVIDIA L4": 121e12,
    "NVIDIA L40S": 362e12,
    "NVIDIA L40": 181e12,
    "NVIDIA A10G": 125e12,
    "NVIDIA A10": 125e12,
}


def table_peak(device_kind: str) -> float | None:
    """The longest table key that is `device_kind` or a whole-word prefix of it ('NVIDIA H100 80GB
    HBM3' and 'NVIDIA A100-SXM4-80GB' find their GPUs; 'NVIDIA L40S' does not find 'NVIDIA L4')."""
    keys = [
        k
        for k in DEVICE_PEAK_FLOPS
        if device_kind.startswith(k) and device_kind[len(k) :][:1] in ("", " ", "-")
    ]
    return DEVICE_PEAK_FLOPS[max(keys, key=len)] if keys else None


@functools.cache
def calibrated_cpu_peak(n: int = 2048, repeats: int = 7) -> float:
    """Best FLOP/s of an n x n float32 matmul on the first CPU device, measured once per process.

    One CPU device already drives every core through XLA's thread pool, so this is the host's peak.
    """
    a = jnp.ones((n, n), jnp.float32, device=jax.devices("cpu")[0])
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def host_key() -> str:
    """What a CPU peak depends on: the CPU model, the cores this process may use and JAX's version."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} | {cores} cores | jax {jax.__version__}"


def cached_cpu_peak(cache_dir: Path, remeasure: bool = False) -> float:
    """The calibrated CPU peak of this host (`host_key`), kept in cache_dir/cpu_peak.json: measured when
    the file has none, or again with `remeasure` (`lmscale bench`), keeping the highest measurement. Load
    from other processes only ever slows the matmul down, so the highest is the best estimate, and one
    calibration on a busy machine cannot stick: one cached at 143 GFLOP/s on a host that measures
    291 had doubled every run's MFU."""
    path, key = Path(cache_dir) / "cpu_peak.json", host_key()
    known = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(path.read_text())
    if key not in known or remeasure:
        measured = calibrated_cpu_peak()
        if measured > known.get(key, 0.0):
            known[key] = measured
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(known, indent=1))  # concurrent runs each write a whole file
    return known[key]


def chips(devices: list) -> int:
    """Physical chips behind `devices`: TPU devices on one chip share its coordinates."""
    coords = [getattr(d, "coords", None) for d in devices]
    if devices[0].platform != "tpu" or any(c is None for c in coords):
        return len(devices)
    return len({tuple(c) for c in coords})


def peak_flops(
    devices: list | None = None, cache_dir: Path | None = None, remeasure: bool = False
) -> tuple[float | None, str]:
    """Peak FLOP/s of the whole run and where the figure comes from; None (MFU not reported) for a
    device kind the table does not know. On CPU, with `cache_dir`, the best calibration of this host kept
    there (`cached_cpu_peak`, measured again with `remeasure`); without, measured in this process."""
    devices = jax.devices() if devices is None else devices
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        if cache_dir is not None:
            peak = cached_cpu_peak(cache_dir, remeasure)
            return peak, "calibrated float32 matmul (host, best kept per host)"
        return calibrated_cpu_peak(), "calibrated float32 matmul (host)"
    per_chip = table_peak(kind)
    if per_chip is None:
        return None, f"unknown: no peak for device_kind '{kind}' in lmscale/peak.py, so MFU is not reported"
    n = chips(devices)
    return per_chip * n, f"table: {kind} bf16 dense x {n} chips"
