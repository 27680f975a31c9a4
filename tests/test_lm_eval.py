"""The real lm-evaluation-harness over lmscale's adapter: a multiple-choice and a generation task, each
defined by a task YAML over a local JSONL of lmscale's own examples, score what `lmscale eval` scores."""

from __future__ import annotations

import json

import pytest

from lmscale import runlog
from lmscale.fewshot import evaluate, tasks
from tests.conftest import TINY, run_cli

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is absent: pip install 'lmscale[harness]'"
)
pytestmark = pytest.mark.slow  # trains a model for a minute

EXAMPLES, SHOTS = 60, 1
TASK_YAML = """task: lmscale_recall_{kind}
dataset_path: json
dataset_kwargs: {{data_files: {{test: "{data}"}}}}
test_split: test
doc_to_text: prompt
target_delimiter: ""
{rest}"""
KINDS = {  # multiple choice (the likeliest digit) and generation (the greedy answer up to the newline)
    "mc": """output_type: multiple_choice
doc_to_choice: choices
doc_to_target: gold
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
""",
    "gen": """output_type: generate_until
doc_to_target: answer
generation_kwargs: {until: ["\\n"], max_gen_toks: 8, do_sample: false}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
""",
}


# A small model trained a little on the recall task: answers it sometimes, so that the two
# evaluators' accuracies are neither 0 nor 1.
TRAIN = [
    *("model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.seq_len=64"),
    *("train.batch_size=32", "train.steps=300", "train.eval_batches=0", "checkpoint.every_steps=1000"),
    *("data.corpus=tasks", "data.tasks.names=[recall]", "data.tasks.documents=3000"),
]


def _task_folder(folder):
    """recall's examples (their k-shot prompts, answers and choices) as a JSONL, and a task YAML over it
    for each of KINDS."""
    folder.mkdir()
    choices = list(tasks.get("recall").choices)
    rows = [
        {"prompt": ex.prompt(SHOTS), "answer": ex.query.answer, "choices": choices}
        | {"gold": choices.index(ex.query.answer)}
        for ex in tasks.examples("recall", EXAMPLES)
    ]
    data = folder / "recall.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for kind, rest in KINDS.items():
        (folder / f"recall_{kind}.yaml").write_text(TASK_YAML.format(kind=kind, data=data, rest=rest))
    return folder


def test_lm_eval_over_the_adapter_scores_what_lmscale_eval_scores(tmp_path):
    from lm_eval.tasks import TaskManager

    from lmscale.fewshot.harness import LmscaleLM

    run = tmp_path / "run"
    assert run_cli("train", TINY, "--out", run, "--no-progress", *TRAIN).returncode == 0
    evaluate.evaluate_run(run, ["recall"], [SHOTS], n_examples=EXAMPLES)
    ours = runlog.read_jsonl(run / "fewshot.jsonl")

    manager = TaskManager(include_path=str(_task_folder(tmp_path / "tasks")), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=LmscaleLM(str(run), batch_size=16),
        tasks=["lmscale_recall_mc", "lmscale_recall_gen"],
        task_manager=manager,
        num_fewshot=0,  # the prompts hold lmscale's own demonstrations
        bootstrap_iters=0,
        log_samples=True,
    )
    mc, gen = (
        sorted(out["samples"][f"lmscale_recall_{k}"], key=lambda s: s["doc_id"]) for k in ("mc", "gen")
    )
    acc = out["results"]["lmscale_recall_mc"]["acc,none"]
    exact = out["results"]["lmscale_recall_gen"]["exact_match,none"]
    our_acc, our_exact = (sum(r[m] for r in ours) / EXAMPLES for m in ("acc", "exact_match"))
    print(f"\nrecall {SHOTS}-shot, {EXAMPLES} examples: acc lm-eval {acc:.4f} lmscale {our_acc:.4f}; "
          f"exact_match lm-eval {exact:.4f} lmscale {our_exact:.4f}")  # fmt: skip
    assert 0 < our_acc < 1 and 0 < our_exact < 1

    # multiple choice: the answer's log-likelihood and the accuracy, example by example
    assert [s["acc"] for s in mc] == [r["acc"] for r in ours]
    for sample, row in zip(mc, ours, strict=True):
        gold = sample["doc"]["gold"]
        assert sample["filtered_resps"][gold][0] == pytest.approx(row["logprob_sum"], abs=1e-3)
    assert acc == pytest.approx(our_acc)
    # generation: the same greedy text (lmscale stops one token past the answer's length, the harness at
    # max_gen_toks), cut at the newline, and the same exact match
    for sample, row in zip(gen, ours, strict=True):
        assert sample["filtered_resps"][0][: len(row["generated"])] == row["generated"]
        assert sample["exact_match"] == row["exact_match"]
    assert exact == pytest.approx(our_exact)
