"""Every mesh gives the single-device loss and gradients; parameters are split as the rules say."""

import pytest

from tests.conftest import ROOT, run_cli, run_python

SCRIPT = r"""
import json, jax, numpy as np
from lmscale import config, sharding
from lmscale.data.pipeline import make_source
from lmscale.step_fns import build

MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 4, "seq_len": 32, "vocab_size": 320}
TRAIN = {"batch_size": 16, "tokens": 16 * 32 * 20, "lr": 1e-2, "warmup_frac": 0.1}
MESHES = {
    "single": ({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]),
    "data=8": ({"data": 8, "fsdp": 1, "tensor": 1}, jax.devices()),
    "fsdp=8": ({"data": 1, "fsdp": 8, "tensor": 1}, jax.devices()),
    "tensor=4,data=2": ({"data": 2, "fsdp": 1, "tensor": 4}, jax.devices()),
    "data=2,fsdp=2,tensor=2": ({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()),
}
out = {}
for name, (mesh_cfg, devices) in MESHES.items():
    cfg = config.from_dict({"model": MODEL, "train": TRAIN, "mesh": mesh_cfg})
    config.validate(cfg, len(devices))
    steps = build(cfg, sharding.make_mesh(cfg.mesh, devices))
    state = steps.init(0)
    source = make_source(cfg, "train")
    losses, norms = [], []
    for _ in range(20):
        state, m = steps.train_step(state, steps.put_batch(next(source)))
        losses.append(float(m["loss"])); norms.append(float(m["grad_norm"]))
    wi = state.params["layers"]["mlp"]["wi"]
    q = state.params["layers"]["attn"]["query"]
    out[name] = {
        "loss": losses, "grad_norm": norms,
        "wi_spec": [list(a) if isinstance(a, tuple) else a for a in wi.sharding.spec],
        "wi_shard": list(wi.addressable_shards[0].data.shape),
        "q_shard": list(q.addressable_shards[0].data.shape),
        "embed_shard": list(state.params["embed"].addressable_shards[0].data.shape),
        "mu_wi_shard": list(state.opt_state[1][0].mu["layers"]["mlp"]["wi"].addressable_shards[0].data.shape),
        "n_devices": len(wi.sharding.device_set),
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def meshes():
    return run_python(SCRIPT, devices=8)


@pytest.mark.parametrize("mesh", ["data=8", "fsdp=8", "tensor=4,data=2", "data=2,fsdp=2,tensor=2"])
def test_mesh_matches_one_device_after_20_steps(meshes, mesh):
    single, sharded = meshes["single"], meshes[mesh]
    for key in ("loss", "grad_norm"):
        for step, (a, b) in enumerate(zip(single[key], sharded[key], strict=True), 1):
            assert abs(a - b) <= 1e-5 * abs(a), f"{key} at step {step}: {a} vs {b}"


def test_parameters_are_split_the_way_the_rules_say(meshes):
    # wi is [layers, embed, mlp] = [2, 64, 256]; rules: embed->fsdp, mlp->tensor, layers unsplit.
    assert meshes["single"]["wi_shard"] == [2, 64, 256]
    assert meshes["data=8"]["wi_shard"] == [2, 64, 256]  # pure data parallelism replicates
    assert meshes["fsdp=8"]["wi_spec"] == [None, "fsdp", "tensor"]  # tensor has size 1 here
    assert meshes["fsdp=8"]["wi_shard"] == [2, 8, 256]
    assert meshes["tensor=4,data=2"]["wi_spec"] == [None, "fsdp", "tensor"]
    assert meshes["tensor=4,data=2"]["wi_shard"] == [2, 64, 64]
    assert meshes["data=2,fsdp=2,tensor=2"]["wi_shard"] == [2, 32, 128]
    # query is [layers, embed, heads, kv] = [2, 64, 4, 16]: heads over tensor.
    assert meshes["tensor=4,data=2"]["q_shard"] == [2, 64, 1, 16]
    # embed is [vocab, embed] = [320, 64]: vocab over tensor, embed over fsdp.
    assert meshes["data=2,fsdp=2,tensor=2"]["embed_shard"] == [160, 32]
    # Adam's moments follow their parameters.
    assert meshes["fsdp=8"]["mu_wi_shard"] == [2, 8, 256]
    assert all(m["n_devices"] == 8 for k, m in meshes.items() if k != "single")


def test_a_multi_host_config_outside_a_multi_host_launch_exits_2_with_one_line():
    proc = run_cli(
        "plan", ROOT / "experiments" / "tpu_pod.yaml", "--no-time", fresh=True
    )  # mesh.distributed: true: jax.distributed.initialize() must not run in the test process
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "mesh.distributed=true: jax.distributed.initialize() failed" in proc.stderr


def test_a_process_must_hold_the_batch_rows_its_pipeline_reads(monkeypatch):
    import jax

    from lmscale import config, sharding
    from lmscale.data.pipeline import process_rows

    cfg = config.from_dict({})
    mesh = sharding.make_mesh(cfg.mesh)
    batch = sharding.batch_sharding(mesh, sharding.rules(cfg.mesh))
    assert sharding.check_process_rows(batch, 16, process_rows(16, 0, 1)) == (0, 16)
    # One host of two whose devices hold every row (say mesh.tensor spans the hosts): it would read half.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(
        config.ConfigError, match=r"process 0 of 2 holds batch rows \[\(0, 16\)\] but reads rows \[0, 8\)"
    ):
        sharding.check_process_rows(batch, 16, process_rows(16, 0, 2))
