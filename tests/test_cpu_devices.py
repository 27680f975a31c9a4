"""mesh.cpu_devices: one host's CPU split into several JAX devices, trained data-parallel."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, TINY, run_cli


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _devices(run_dir) -> int:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["meta"]["devices"]["count"]


def test_two_cpu_devices_train_the_same_losses_as_one(tmp_path, tiny_overrides):
    one, two = tmp_path / "one", tmp_path / "two"
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
        proc = run_cli("train", TINY, "--out", out, "--no-progress", *tiny_overrides, "mesh.cpu_devices=2")
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
