"""What a run pays before and after its steps: the CPU peak kept per host, the layers unrolled on CPU,
an optional last checkpoint."""

import subprocess
import sys

import jax
import numpy as np

from lmscale import config, peak, sharding, step_fns
from lmscale.cli import main
from lmscale.data.pipeline import make_source


def test_the_cpu_peak_is_measured_once_per_host_and_then_read_from_the_cache(tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(peak, "calibrated_cpu_peak", lambda: measured.append(1) or 123e9)
    assert peak.peak_flops(cache_dir=tmp_path)[0] == 123e9
    assert peak.peak_flops(cache_dir=tmp_path)[0] == 123e9
    assert measured == [1] and peak.host_key() in (tmp_path / "cpu_peak.json").read_text()
    assert peak.peak_flops()[0] == 123e9 and measured == [1, 1]  # without a cache: measured again


def test_scanned_layers_unrolled_on_cpu_train_like_the_scanned_loop(monkeypatch):
    model = {"n_layers": 3, "d_model": 32, "n_heads": 2, "seq_len": 16}
    cfg = config.from_dict({"model": model, "train": {"batch_size": 4, "tokens": 4 * 16 * 10}})
    mesh = sharding.make_mesh(cfg.mesh)
    runs = []
    for limit in (0, 8):  # 0: the scanned loop; 8: unrolled, the CPU default at this depth
        monkeypatch.setattr(step_fns, "UNROLL_ON_CPU_UP_TO", limit)
        assert step_fns.unrolls(cfg, mesh) == bool(limit)
        steps = step_fns.build(cfg, mesh)
        state, batch = steps.init(0), steps.put_batch(next(make_source(cfg, "train")))
        losses = []
        for _ in range(3):
            state, metrics = steps.train_step(state, batch)
            losses.append(float(metrics["loss"]))
        runs.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the same stacked parameter tree


def test_a_run_without_a_final_checkpoint_saves_only_at_its_interval(tmp_path, tiny_overrides):
    out = tmp_path / "run"
    overrides = [*tiny_overrides, "train.tokens=2304", "checkpoint.every_steps=4", "checkpoint.final=false"]
    assert main(["train", "experiments/tiny.yaml", "--out", str(out), "--no-progress", *overrides]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "8"]


def test_the_cached_cpu_peak_keeps_the_highest_calibration(tmp_path, monkeypatch):
    """A calibration on a busy machine reads low; remeasuring (`lmscale bench`) replaces it with a higher
    one and never with a lower one."""
    readings = iter([100e9, 300e9, 200e9])
    monkeypatch.setattr(peak, "calibrated_cpu_peak", lambda: next(readings))
    assert peak.cached_cpu_peak(tmp_path) == 100e9
    assert peak.cached_cpu_peak(tmp_path) == 100e9  # read from the file, not measured
    assert peak.cached_cpu_peak(tmp_path, remeasure=True) == 300e9
    assert peak.cached_cpu_peak(tmp_path, remeasure=True) == 300e9  # 200e9 measured, 300e9 kept
    assert peak.cached_cpu_peak(tmp_path) == 300e9


def test_a_run_that_saves_nothing_imports_neither_orbax_nor_datasets_nor_pandas(tmp_path, tiny_overrides):
    """Their imports cost ~0.7 s of every start: a run whose token cache exists and that writes no
    checkpoint needs none of them, and makes no checkpoint directory."""
    overrides = [*tiny_overrides, "train.tokens=2304", "checkpoint.every_steps=99", "checkpoint.final=false"]
    args = ["train", "experiments/tiny.yaml", "--no-progress", *overrides]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0  # builds the token cache if it is missing
    code = (
        "import sys; from lmscale.cli import main; "
        f"rc = main({[*args, '--out', str(tmp_path / 'run')]!r}); "
        "print(rc, sorted(m for m in ('orbax.checkpoint', 'datasets', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
