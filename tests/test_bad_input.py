"""Every command rejects bad input with exit status 2 and one stderr line naming what is wrong, before it
creates or changes a file: a table of cases run in the test process, each failing before any compile."""

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, run_cli

DEMO = ROOT / "experiments" / "cpu_demo.yaml"

# (argv, a substring the one stderr line must hold). Placeholders: {tiny} and {demo} are the shipped
# configs; {tmp} the test's directory; {file} a file there; {empty}, {dup}, {list} bad YAML files; {csv}
# a small results table; {run} a run directory without checkpoints.
CASES = [
    # train: numbers by type and range, finite everywhere
    ("train {tiny} --out {tmp}/r train.lr=nan", "train.lr"),
    ("train {tiny} --out {tmp}/r train.lr=.nan", "train.lr"),
    ("train {tiny} --out {tmp}/r train.lr=.inf", "train.lr"),
    ("train {tiny} --out {tmp}/r train.lr=-.inf", "train.lr"),
    ("train {tiny} --out {tmp}/r train.lr=0", "train.lr=0"),
    ("train {tiny} --out {tmp}/r train.b1=1.5", "train.b1=1.5"),
    ("train {tiny} --out {tmp}/r train.b1=1", "train.b1=1"),
    ("train {tiny} --out {tmp}/r train.b2=-0.5", "train.b2=-0.5"),
    ("train {tiny} --out {tmp}/r train.b2=0", "train.b2=0"),
    ("train {tiny} --out {tmp}/r train.eps=-1", "train.eps=-1"),
    ("train {tiny} --out {tmp}/r train.eps=0", "train.eps=0"),
    ("train {tiny} --out {tmp}/r train.grad_clip=-1", "train.grad_clip=-1"),
    ("train {tiny} --out {tmp}/r train.grad_clip=.inf", "train.grad_clip"),
    ("train {tiny} --out {tmp}/r train.weight_decay=-5", "train.weight_decay=-5"),
    ("train {tiny} --out {tmp}/r train.weight_decay=.nan", "train.weight_decay"),
    ("train {tiny} --out {tmp}/r model.norm_eps=-1", "model.norm_eps=-1"),
    ("train {tiny} --out {tmp}/r model.norm_eps=0", "model.norm_eps=0"),
    ("train {tiny} --out {tmp}/r model.rope_theta=0", "model.rope_theta=0"),
    ("train {tiny} --out {tmp}/r model.rope_theta=-1e4", "model.rope_theta"),
    ("train {tiny} --out {tmp}/r train.warmup_frac=1", "train.warmup_frac=1"),
    ("train {tiny} --out {tmp}/r train.final_lr_frac=2", "train.final_lr_frac=2"),
    ("train {tiny} --out {tmp}/r data.val_fraction=0", "data.val_fraction=0"),
    ("train {tiny} --out {tmp}/r data.synthetic.zipf=.inf", "data.synthetic.zipf"),
    ("train {tiny} --out {tmp}/r train.seed=1.5", "train.seed=1.5"),
    ("train {tiny} --out {tmp}/r train.batch_size=true", "train.batch_size=True"),
    ("train {tiny} --out {tmp}/r model.d_model=1000000", "memory estimate"),
    ("train {tiny} --out {tmp}/r model.n_heads=0", "model.n_heads=0"),
    ("train {tiny} --out {tmp}/r model.pos_emb=alibi", "model.pos_emb='alibi'"),
    ("train {tiny} --out {tmp}/r model.remat=maybe", "model.remat='maybe'"),
    ("train {tiny} --out {tmp}/r checkpoint.keep=0", "checkpoint.keep=0"),
    ("train {tiny} --out {tmp}/r data.corpus=web", "data.corpus='web'"),
    ("train {tiny} --out {tmp}/r data.val_split=middle", "data.val_split='middle'"),
    ("train {tiny} --out {tmp}/r train.steps=10 train.tokens=5000", "train.tokens=5000 and train.steps=10"),
    ("train {tiny} --out {tmp}/r train.warmup_steps=5 train.warmup_frac=0.1", "train.warmup_steps=5"),
    ("train {tiny} --out {tmp}/r train.steps=0", "train.steps=0"),
    ("train {tiny} --out {tmp}/r log.bogus=1", "log.bogus"),
    ("train {tiny} --out {tmp}/r log.tensorboard=maybe", "log.tensorboard='maybe'"),
    ("train {tiny} --out {tmp}/r log.wandb.mode=sideways", "log.wandb.mode='sideways'"),
    ("plan {demo} --no-time train.steps=10 train.tokens=5000", "train.steps=10"),
    ("train {tiny} --out {tmp}/r train", "unrecognized arguments: train"),
    ("train {tiny} --out {tmp}/r train.lr", "unrecognized arguments: train.lr"),
    ("train {tiny} --out {tmp}/r =3", "override '=3'"),
    ("train {tiny} --out {tmp}/r model.d_model.x=3", "model.d_model"),
    # train: the config file itself
    ("train {empty} --out {tmp}/r", "is empty"),
    ("train {dup} --out {tmp}/r", "duplicate key 'd_model'"),
    ("train {list} --out {tmp}/r", "expected a mapping"),
    ("train {tmp}/missing.yaml --out {tmp}/r", "missing.yaml"),
    ("train {tmp} --out {tmp}/r", "is not a file"),
    ("train {tiny} --out {file}", "not a directory"),
    ("train {tiny} --out {tmp}/r --bogus", "--bogus"),
    ("train", "config"),
    # plan and sweep: the spec, its overrides, the workers
    ("plan {empty}", "is empty"),
    ("plan {dup}", "duplicate key"),
    ("plan {tiny}", "no 'sweep:' section"),
    ("plan {demo} --no-time sweep.seeds=[]", "sweep.seeds"),
    ("plan {demo} --no-time sweep.bogus=1", "sweep.bogus"),
    ("plan {demo} --no-time train.lr=.nan", "train.lr"),
    ("plan {demo} --no-time train.b1=2", "train.b1=2"),
    ("plan {tmp}/missing.yaml", "missing.yaml"),
    ("sweep {demo} --out {tmp}/s --worker 3 --num-workers 2", "--worker=3"),
    ("sweep {demo} --out {tmp}/s --num-workers 0", "--num-workers=0"),
    ("sweep {demo} --out {file}", "not a directory"),
    ("sweep {demo} --out {tmp}/s train.eps=-1", "train.eps=-1"),
    ("sweep {demo} --out {tmp}/s model.rope_theta=0", "model.rope_theta=0"),
    ("sweep {dup} --out {tmp}/s", "duplicate key"),
    ("sweep {demo} --out {tmp}/s --worker x", "--worker"),
    # eval: the run directory and the lists
    ("eval {tmp}/nowhere", "nowhere"),
    ("eval {run} --tasks nosuch", "nosuch"),
    ("eval {run} --shots x", "--shots"),
    ("eval {run} --shots -1", "--shots"),
    ("eval {run} --steps soon", "--steps"),
    ("eval {run}", "not an lmscale run directory"),
    # fit, plot and report: the table and its columns
    ("fit {tmp}/missing.csv", "missing.csv"),
    ("fit {csv} --law nosuch", "--law"),
    ("fit {csv} --bootstrap -1", "--bootstrap"),
    ("fit {csv} --loss-col nosuch", "nosuch"),
    ("fit {file}", "file"),
    ("plot {tmp}/missing.csv", "missing.csv"),
    ("plot {csv} --loss-col nosuch", "nosuch"),
    ("report {csv}", "not a sweep directory"),
    ("report {tmp}/missing", "missing"),
    # fit, plot and report: outputs that cannot be written fail before any fit
    ("fit {csv} --json {tmp}", "--json"),
    ("plan {demo} --no-time --csv {tmp}", "--csv"),
    ("bench --json {tmp}", "--json"),
    ("fit {csv} --json {file}/fit.json", "not a directory"),
    ("plot {csv} --out {file}", "--out"),
    ("report {tmp} --out {file}", "--out"),
    ("report {tmp} --out /proc/lmscale-report", "is not writable"),
]


@pytest.fixture
def ground(tmp_path):
    """The files the cases point at."""
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "dup.yaml").write_text("model: {d_model: 64, d_model: 128}\n")
    (tmp_path / "list.yaml").write_text("- model\n- train\n")
    (tmp_path / "results.csv").write_text(
        "params,tokens,flops,loss,status\n1e6,2e7,1.2e14,3.1,completed\n2e6,4e7,4.8e14,2.9,completed\n"
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TINY.read_text())
    return tmp_path


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_changes_no_file(ground, argv, needle):
    names = {
        "tiny": TINY,
        "demo": DEMO,
        "tmp": ground,
        "file": ground / "file",
        "csv": ground / "results.csv",
    }
    names |= {k: ground / f"{k}.yaml" for k in ("empty", "dup", "list")} | {"run": ground / "run"}
    args = [a.format(**names) for a in argv.split()]
    before = _snapshot(ground)
    proc = run_cli(*args, cwd=ground)
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    assert _snapshot(ground) == before
    assert not os.path.exists(ground / "runs")
