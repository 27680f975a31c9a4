import jax
import pytest

from lmscale import sharding


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: seen.append(1))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "TPU_WORKER_HOSTNAMES",
    ):
        monkeypatch.delenv(var, raising=False)
    return seen


def test_single_host_never_waits_on_a_coordinator(calls):
    assert sharding.initialize_distributed("auto") is False
    assert calls == []


@pytest.mark.parametrize(
    "var, value",
    [
        ("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3"),
        ("SLURM_NTASKS", "4"),
        ("JAX_COORDINATOR_ADDRESS", "h:1"),
    ],
)
def test_multihost_launch_initializes_jax_distributed(calls, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    assert sharding.initialize_distributed("auto") is True
    assert calls == [1]


def test_explicit_settings_win(calls, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert sharding.initialize_distributed("false") is False
    assert sharding.initialize_distributed("true") is True
    assert calls == [1]
