"""Experiment trackers mirror metrics.jsonl: TensorBoard event files read back with TensorBoard's own
reader, W&B offline runs read back with W&B's own record reader, and a resumed run continuing both."""

from __future__ import annotations

import json
import sys

import pytest

from lmscale import config, results, runlog, tracking
from lmscale.preempt import StopRequested
from tests.conftest import TINY, run_cli

STEPS = 12
TINY_RUN = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.seq_len=32",
    "train.batch_size=8",
    f"train.steps={STEPS}",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.eval_every=4",
    "train.eval_batches=1",
    "checkpoint.every_steps=100",  # only the stop saves: the resume starts from it
    "checkpoint.final=false",
    "checkpoint.async_save=false",
    "data.synthetic.documents=300",  # a small corpus of its own: tokenized in a fraction of a second
]


FEWSHOT = {"recall": {"2": {"exact_match": {"value": 0.75, "stderr": 0.1, "n": 20}}}}


def config_of(run):
    return config.from_dict(config.read_yaml(run / "config.yaml"))


def _rows(run, split="train"):
    return [r for r in runlog.read_jsonl(run / "metrics.jsonl") if r.get("split", "train") == split]


def _train_interrupted(run, stop_at, monkeypatch, *overrides):
    """Train, stopping (as SIGTERM would) after `stop_at`, then resume to the end with the same command."""
    args = ["train", TINY, "--out", run, "--no-progress", *TINY_RUN, *overrides]
    with monkeypatch.context() as m:
        m.setattr(StopRequested, "now", lambda self, step: step == stop_at)
        first = run_cli(*args)
    assert first.returncode == 0 and json.loads((run / "summary.json").read_text())["status"] == "running"
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def _events(run):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="the tensorboard extra is not installed: pip install '.[dev]' or 'lmscale[tensorboard]'",
    )
    events = accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_tensorboard_event_files_hold_every_logged_step_and_the_few_shot_results(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install '.[dev]'")
    run = tmp_path / "run"
    proc = run_cli("train", TINY, "--out", run, "--no-progress", *TINY_RUN, "log.tensorboard=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = _events(run)
    train = {e.step: e.value for e in events.Scalars("train/loss")}
    assert sorted(train) == list(range(1, STEPS + 1))
    assert train == pytest.approx({r["step"]: r["loss"] for r in _rows(run)}, rel=1e-6)
    val = {e.step: e.value for e in events.Scalars("val/loss")}
    assert sorted(val) == [4, 8, 12]
    assert val == pytest.approx({r["step"]: r["loss"] for r in _rows(run, "val")}, rel=1e-6)
    for field in ("lr", "grad_norm", "tokens", "flops", "step_time_s", "tokens_per_s"):
        assert len(events.Scalars(f"train/{field}")) == STEPS
    (config_text,) = events.Tensors("config")
    assert "tensorboard: true" in config_text.tensor_proto.string_val[0].decode()

    tracking.log_fewshot(config_of(run), run, STEPS, FEWSHOT)  # as `lmscale eval` does after writing
    (acc,) = _events(run).Scalars("fewshot/recall/2shot/exact_match")
    assert (acc.step, acc.value) == (STEPS, pytest.approx(0.75))


@pytest.mark.slow  # two trainings
def test_tensorboard_keeps_each_step_once_when_a_resume_replays_steps(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install '.[dev]'")
    run = tmp_path / "run"
    args = ["train", TINY, "--out", run, "--no-progress", *TINY_RUN, "log.tensorboard=true"]
    args += ["checkpoint.every_steps=4"]

    def crash(self, step):
        if step == 6:  # step 5 is logged by now; the resume starts at the checkpoint of step 4
            raise RuntimeError("the host went away")
        return False

    with monkeypatch.context() as m:
        m.setattr(StopRequested, "now", crash)
        assert run_cli(*args).returncode == 1
    assert max(r["step"] for r in _rows(run)) == 5
    assert run_cli(*args).returncode == 0
    train = [(e.step, e.value) for e in _events(run).Scalars("train/loss")]
    assert [s for s, _ in train] == list(range(1, STEPS + 1))  # step 5's first copy is dropped
    assert dict(train) == pytest.approx({r["step"]: r["loss"] for r in _rows(run)}, rel=1e-6)


def _wandb_records(path):
    """The protobuf records of a `.wandb` file: W&B's 7-byte header, then LevelDB log blocks of 32 KiB
    whose chunks (4-byte checksum, 2-byte length, 1-byte type: 1 whole, 2 first, 3 middle, 4 last) hold
    the records. W&B reads these in its Go core; its Python reader is gone."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _wandb_history(run):
    """Every history row of every offline W&B run under `run`, as {run id: [row, ...]}, and under "runs"
    each run record's id, group and name."""
    out = {}
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in _wandb_records(path):
            if record.WhichOneof("record_type") == "run":
                run_id = record.run.run_id
                out.setdefault("runs", []).append((run_id, record.run.run_group, record.run.display_name))
            if record.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                out.setdefault(run_id, []).append(row)
    return out


@pytest.mark.slow  # W&B starts its own service process: ~10 s
def test_wandb_offline_run_holds_every_steps_loss_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed: pip install 'lmscale[wandb]'")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # auto mode: offline, no network
    run = tmp_path / "my_sweep" / "L1-D32-s0"
    run.mkdir(parents=True)
    (run / results.CELL).write_text("{}")  # a sweep's run directory: grouped by the sweep, named by the run
    _train_interrupted(run, 6, monkeypatch, "log.wandb={project: habits}")
    tracking.log_fewshot(config_of(run), run, STEPS, FEWSHOT)  # as `lmscale eval` does after writing
    history = _wandb_history(run)
    run_id = (run / "wandb_id").read_text().strip()
    # one W&B run, continued by the resume and by the evaluation
    assert history.pop("runs") == [(run_id, "my_sweep", "L1-D32-s0")] * 3
    assert list(history) == [run_id]
    (rows,) = history.values()
    logged = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert logged == pytest.approx({r["step"]: r["loss"] for r in _rows(run)}, rel=1e-6)
    assert [
        r["fewshot/recall/2shot/exact_match"] for r in rows if "fewshot/recall/2shot/exact_match" in r
    ] == [0.75]
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    assert val == pytest.approx({r["step"]: r["loss"] for r in _rows(run, "val")}, rel=1e-6)


def test_a_tracker_whose_package_is_missing_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    for module, key, extra in (
        ("wandb", "log.wandb={}", "wandb"),
        ("tensorboard", "log.tensorboard=true", "tensorboard"),
    ):
        monkeypatch.setitem(sys.modules, module, None)  # `import wandb` raises ImportError
        out = tmp_path / module
        proc = run_cli("train", TINY, "--out", out, *TINY_RUN, key)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"lmscale train: error: log.{extra}: the {module} package is not installed; "
            f"pip install 'lmscale[{extra}]'"
        ]
        assert not out.exists()
