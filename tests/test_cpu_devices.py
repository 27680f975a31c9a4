"""mesh.cpu_devices: one host's CPU split into several JAX devices, trained data-parallel."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import NO_SAVES, ROOT, TINY, run_cli


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _devices(run_dir) -> int:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["meta"]["devices"]["count"]


def test_two_cpu_devices_train_the_same_losses_as_one(tmp_path, tiny_overrides):
    one, two = tmp_path / "one", tmp_path / "two"
    tiny_overrides = [*tiny_overrides, *NO_SAVES]
    assert run_cli("train", TINY, "--out", one, "--no-progress", *tiny_overrides).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)  # mesh.cpu_devices decides, as in a user's shell
    cmd = [sys.executable, "-m", "lmscale", "train", str(TINY), "--out", str(two), "--no-progress"]
    cmd += [*tiny_overrides, "mesh.cpu_devices=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (_devices(one), _devices(two)) == (1, 2)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5)  # data-parallel: rounding only


def test_a_process_whose_backend_started_keeps_its_devices_and_warns(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"mesh.cpu_devices=2 not applied: JAX's CPU backend started with 1"):
        proc = run_cli(
            "train", TINY, "--out", out, "--no-progress", *tiny_overrides, *NO_SAVES, "mesh.cpu_devices=2"
        )
    assert proc.returncode == 0 and _devices(out) == 1


def test_a_sweep_gives_every_run_one_cpu_device_count(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "model: {n_layers: 1, d_model: 16, n_heads: 1, seq_len: 16}\n"
        "train: {batch_size: 4, tokens: 640}\n"
        "sweep: {axes: {mesh.cpu_devices: [1, 2]}, eval: false}\n"
    )
    proc = run_cli("plan", spec, "--no-time")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lmscale plan: error: mesh.cpu_devices=[1, 2]: a sweep's runs share one process, so one value"
    ]


DECODE_ON_TWO_DEVICES = """
import re, jax
jax.config.update("jax_num_cpu_devices", 2)
import numpy as np
import pandas as pd
from lmscale import config, sharding
from lmscale.fewshot.decode import Decoder
from lmscale.fewshot.evaluate import new_decoder
from lmscale.step_fns import build
raw = {"model": {"n_layers": 2, "d_model": 32, "n_heads": 2, "seq_len": 32},
       "train": {"batch_size": 4, "tokens": 4096}}
cfg = config.validate(config.from_dict(raw), 2)
built = build(cfg, sharding.make_mesh(cfg.mesh))
params = built.init(0).params
on_mesh, alone = new_decoder(built, params, 4), Decoder(cfg.model, jax.device_get(params), 4)
hlo = {}
for name in ("_run", "_score"):
    jitted = getattr(on_mesh, name)
    def traced(*a, _jitted=jitted, _name=name, **k):
        hlo[_name] = _jitted.lower(*a, **k).compile().as_text()
        return _jitted(*a, **k)
    setattr(on_mesh, name, traced)
requests = [([1, 2, 3], [4, 5]), ([3, 4], [5])]
got = [on_mesh.score_and_generate(requests, 4, [7]), on_mesh.score(requests)]
want = [alone.score_and_generate(requests, 4, [7]), alone.score(requests)]
for (g_score, g_gen), (w_score, w_gen) in zip(got[0], want[0]):
    assert g_gen == w_gen
    np.testing.assert_allclose(g_score.logprobs, w_score.logprobs, rtol=1e-5)
for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g.logprobs, w.logprobs, rtol=1e-5)
collective = r"(all-reduce|all-gather|collective-permute|all-to-all)(-start)?\\("
print({n: len(re.findall(collective, t)) for n, t in hlo.items()})
"""


def test_decoding_on_two_cpu_devices_runs_no_collectives():
    """XLA:CPU may order a program's independent collectives differently per device and deadlock: a few-shot
    evaluation on `mesh.cpu_devices: 2` aborted that way. Decoding there runs on one device, same results."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-c", DECODE_ON_TWO_DEVICES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "{'_run': 0, '_score': 0}"


TASKS = ["reverse", "cycle", "unscramble", "repeat", "recall", "modarith", "modlin"]  # cpu_demo's


@pytest.mark.slow  # ~35 s: a cooldown sweep with few-shot evaluation in a fresh 2-device process
def test_a_cooldown_sweep_with_evaluation_completes_on_two_cpu_devices(tmp_path):
    """The path that deadlocked `make demo` on 2 CPU devices: trunk, branches restored from it, evaluation
    every few steps, checkpoints, then few-shot scoring and generation of the branches. With decoding on
    both devices (before the fix) this sweep aborted in XLA's rendezvous after 80 s."""
    spec = tmp_path / "two.yaml"
    spec.write_text(
        "model: {n_layers: 2, d_model: 32, n_heads: 2, seq_len: 128, vocab_size: 320}\n"
        "train: {batch_size: 8, lr: 0.01, warmup_steps: 4, eval_every: 5, eval_batches: 4}\n"
        "mesh: {cpu_devices: 2}\n"
        "checkpoint: {every_steps: 5}\n"
        "sweep:\n"
        "  sizes: {shapes: [{n_layers: 1, d_model: 32, n_heads: 2},\n"
        "                   {n_layers: 2, d_model: 32, n_heads: 2}]}\n"
        "  tokens: {cooldowns: {budgets: [5120, 10240]}}\n"
        f"  eval: {{tasks: [{', '.join(TASKS)}], shots: [0, 1, 2, 4], examples: 100}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "lmscale", "sweep", str(spec), "--out", str(tmp_path), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rendezvous" not in proc.stderr
    fewshot = pd.read_csv(tmp_path / "two" / "fewshot.csv")
    assert set(fewshot["task"]) == set(TASKS)
    assert fewshot["run_id"].str.contains("-T").all()  # branches are evaluated, trunks are not
