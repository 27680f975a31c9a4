import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from lmscale import config
from lmscale.data.tokenizer import Tokenizer
from lmscale.fewshot import evaluate
from lmscale.fewshot.decode import Decoder, Score
from lmscale.model import Transformer
from tests.conftest import run_cli, run_python, tiny_model

SEQ_LEN = 160


def _model(**variant):
    return tiny_model(SEQ_LEN, **variant)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def requests():
    return evaluate.build_requests(Tokenizer.byte(), ["add3", "recall", "repeat"], [0, 8], 5, SEQ_LEN)


def _reference_scores(cfg, params, reqs):
    """Each request alone: batch 1, no cache, right-padded to the context length (one compile)."""
    apply = jax.jit(Transformer(cfg).apply)
    out = []
    for r in reqs:
        seq = r.context + r.continuation
        tokens = np.zeros((1, SEQ_LEN), np.int32)
        tokens[0, : len(seq) - 1] = seq[:-1]
        logits = apply({"params": params}, tokens)[0]
        logp = jax.nn.log_softmax(logits, axis=-1)
        pos = np.arange(len(r.context) - 1, len(seq) - 1)
        targets = np.array(seq[1:])[pos]
        out.append((np.asarray(logp[pos, targets]), np.asarray(jnp.argmax(logits[pos], -1) == targets)))
    return out


def test_batched_scores_equal_unbatched_whatever_the_batch_size(model, requests):
    cfg, params = model
    reference = _reference_scores(cfg, params, requests)
    pairs = [(r.context, r.continuation) for r in requests]
    for batch_size in (3, 16):  # full batches, and a last one part empty (30 requests)
        decoder = Decoder(cfg, params, batch_size)
        cached = [s for s, _ in decoder.score_and_generate(pairs, 4, [10])]
        for scores in (decoder.score(pairs), cached):
            for (logp, greedy), s in zip(reference, scores, strict=True):
                np.testing.assert_allclose(s.logprobs, logp, atol=1e-5, rtol=0)
                np.testing.assert_array_equal(s.greedy, greedy)


def test_bfloat16_cached_scores_equal_the_uncached_forward_pass(requests):
    """The cached path's attention scores accumulate in fp32 as the training path's do; weights are
    scaled up so attention is sharp enough for bf16 scores to matter."""
    cfg, params = _model(compute_dtype="bfloat16")
    params = jax.tree.map(lambda w: 4 * w, params)
    pairs = [(r.context, r.continuation) for r in requests]
    decoder = Decoder(cfg, params, batch_size=8)
    for plain, (cached, _) in zip(
        decoder.score(pairs), decoder.score_and_generate(pairs, 4, [10]), strict=True
    ):
        np.testing.assert_allclose(cached.logprobs, plain.logprobs, atol=1e-5, rtol=0)


SHARDED_EVAL = r"""
import json, jax, numpy as np
from lmscale import config, sharding
from lmscale.fewshot import evaluate
from lmscale.fewshot.decode import Decoder
from lmscale.step_fns import build
from lmscale.data.tokenizer import Tokenizer

cfg = config.from_dict({"model": {"n_layers": 2, "d_model": 64, "n_heads": 4, "seq_len": 96},
                        "mesh": {"data": 1, "fsdp": 4, "tensor": 2}})
built = build(cfg, sharding.make_mesh(cfg.mesh))
params = built.init(0).params
reqs = evaluate.build_requests(Tokenizer.byte(), ["add2", "recall"], [0, 4], 6, 96)
pairs = [(r.context, r.continuation) for r in reqs]
replicated = []
device_get = jax.device_get
def recording_get(tree):  # what the host reads back: on a multi-host mesh it must be replicated
    replicated.extend(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(tree))
    return device_get(tree)
jax.device_get = recording_get
sharded = evaluate.new_decoder(built, params, 8)
got = [sharded.score(pairs), sharded.score_and_generate(pairs, 6, [10])]
jax.device_get = device_get
alone = Decoder(cfg.model, jax.device_get(params), 8)
want = [alone.score(pairs), alone.score_and_generate(pairs, 6, [10])]
diff = max(float(np.abs(a.logprobs - b.logprobs).max()) for a, b in zip(got[0], want[0]))
diff = max([diff] + [float(np.abs(a[0].logprobs - b[0].logprobs).max()) for a, b in zip(got[1], want[1])])
same_text = all(a[1] == b[1] for a, b in zip(got[1], want[1]))
print(json.dumps({"replicated": replicated, "diff": diff, "same_generation": same_text}))
"""


def test_a_decoder_on_an_fsdp_and_tensor_mesh_returns_replicated_results_equal_to_one_device():
    out = run_python(SHARDED_EVAL, devices=8)
    assert out["replicated"] and all(out["replicated"])  # every process can read every row
    assert out["diff"] < 1e-4 and out["same_generation"]


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"pos_emb": "learned", "tie_embeddings": False, "scan_layers": False},
        # the sinusoidal cache is test_model's; its generation here only in the slow run
        pytest.param({"pos_emb": "sinusoidal"}, marks=pytest.mark.slow),
    ],
    ids=["rope-scan", "learned-loop", "sinusoidal"],
)
def test_cached_generation_equals_uncached(variant):
    cfg, params = _model(**variant)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 256, rng.integers(1, 60))) for _ in range(6)] + [[1] * (SEQ_LEN - 3)]
    generated = Decoder(cfg, params, batch_size=4).generate(prompts, 24, [10])
    forward = jax.jit(lambda t: Transformer(cfg).apply({"params": params}, t))
    for prompt, got in zip(prompts, generated, strict=True):
        seq, want = list(prompt), []
        while len(want) < 24 and len(seq) < SEQ_LEN:  # full forward over the whole sequence each step
            padded = np.zeros((1, SEQ_LEN), np.int32)
            padded[0, : len(seq)] = seq
            token = int(jnp.argmax(forward(padded)[0, len(seq) - 1]))
            want.append(token)
            seq.append(token)
            if token == 10:
                break
        assert got == want
    assert len(generated[-1]) == 3  # stops at the context length


def test_a_prompt_longer_than_the_context_is_a_clear_error(model):
    cfg, params = model
    decoder = Decoder(cfg, params, batch_size=2)
    with pytest.raises(ValueError, match=f"fit {SEQ_LEN} tokens"):
        decoder.generate([[1] * (SEQ_LEN + 1)], 4, [10])
    assert decoder.generate([[1] * SEQ_LEN], 4, [10]) == [[]]  # a full context: nothing to generate


def _uncached_greedy(forward, prompt, max_new, stop):
    seq, out = list(prompt), []
    while len(out) < max_new and len(seq) < SEQ_LEN:
        padded = np.zeros((1, SEQ_LEN), np.int32)
        padded[0, : len(seq)] = seq
        out.append(int(jnp.argmax(forward(padded)[0, len(seq) - 1])))
        seq.append(out[-1])
        if out[-1] in stop:
            break
    return out


def test_generation_after_a_continuation_the_model_partly_agrees_with_equals_uncached(model):
    """Generation copies the teacher-forced tokens the model agrees with and decodes from the first it
    does not: continuations that follow the greedy path for 0, 2, 5 or all of their tokens, with and
    without a stop token inside, under limits shorter and longer than them."""
    cfg, params = model
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(0, 256, rng.integers(1, 40))) for _ in range(5)]
    forward = jax.jit(lambda t: Transformer(cfg).apply({"params": params}, t))
    greedy = [_uncached_greedy(forward, p, 12, set()) for p in prompts]
    stop = {int(greedy[0][3])}  # a token the first prompt's greedy path emits at step 3
    want = {tuple(p): _uncached_greedy(forward, p, 12, stop) for p in prompts}
    pairs, limits = [], []
    for prompt, path in zip(prompts, greedy, strict=True):
        for agree in (0, 2, 5, 8):
            wrong = (path[agree] + 1) % 256 if agree < 8 else None
            cont = path[:agree] + ([wrong, 7] if wrong is not None else [])
            for limit in (3, len(cont) + 1, 12):
                pairs.append((prompt, cont))
                limits.append(limit)
    results = Decoder(cfg, params, batch_size=8).score_and_generate(pairs, 12, sorted(stop), limits)
    for (prompt, _), limit, (_, got) in zip(pairs, limits, results, strict=True):
        assert got == want[tuple(prompt)][:limit]


def test_metrics_of_a_model_that_always_answers_right():
    class Oracle:  # scores every answer token as certain and generates the answer, then a newline
        def score_and_generate(self, pairs, max_new, stop, limits=None):
            out = []
            for _ctx, cont in pairs:
                first = np.full(320, -np.inf)
                first[cont[0]] = 0.0
                gen = [*cont, 10]
                out.append((Score(np.zeros(len(cont)), np.ones(len(cont), bool), first), gen))
            return out

    tok = Tokenizer.byte()
    reqs = evaluate.build_requests(tok, ["add2", "modlin"], [0, 1], 4, SEQ_LEN)
    rows = evaluate.evaluate(Oracle(), tok, reqs)
    assert all(r["exact_match"] == 1 and r["edit_distance"] == 0 and r["token_accuracy"] == 1 for r in rows)
    assert all(r["prob_correct"] == 1 and r["brier"] == 0 for r in rows if r["task"] == "modlin")
    assert not any("prob_correct" in r for r in rows if r["task"] == "add2")


def test_edit_distance_and_aggregates():
    assert evaluate.edit_distance([1, 2, 3], [1, 3]) == 1
    assert evaluate.edit_distance([], [4, 5]) == 2
    assert evaluate.edit_distance([1, 2], [2, 1]) == 2
    rows = [
        {"task": "t", "shots": 2, "example_id": i, **dict.fromkeys(evaluate.METRICS, float(i))}
        for i in range(4)
    ]
    agg = evaluate.aggregate(rows)["t"]["2"]
    assert agg["exact_match"] == {
        "value": 1.5,
        "stderr": pytest.approx(np.std([0, 1, 2, 3], ddof=1) / 2),
        "n": 4,
    }
    assert set(agg) == set(evaluate.METRICS)


def test_explicit_shots_that_do_not_fit_are_an_error_and_defaults_are_capped():
    tok = Tokenizer.byte()
    with pytest.raises(config.ConfigError, match="8-shot prompts of task 'add4' need .* model.seq_len=96"):
        evaluate.build_requests(tok, ["add4"], [0, 8], 3, 96)
    shots = {r.shots for r in evaluate.build_requests(tok, ["add4"], None, 3, 96)}
    assert shots == {0, 1, 2, 4}


def _make_run(path, with_checkpoint=True, seq_len=SEQ_LEN, steps=(7,)):
    from lmscale import runlog, sharding
    from lmscale.checkpoint import Checkpointer
    from lmscale.step_fns import build

    model = {"n_layers": 1, "d_model": 32, "n_heads": 2, "vocab_size": 320, "seq_len": seq_len}
    cfg = config.from_dict({"model": model, "train": {"batch_size": 4, "tokens": 4 * seq_len * 10}})
    path.mkdir(parents=True)
    runlog.write_yaml(path / "config.yaml", cfg.to_dict())
    Tokenizer.byte().save(path / "tokenizer.json")
    runlog.write_json(path / "summary.json", {"status": "completed", "params": 123, "fewshot": {}})
    if with_checkpoint:
        built = build(cfg, sharding.make_mesh(cfg.mesh))
        ckpt = Checkpointer(path / "checkpoints", len(steps), async_save=False)
        for seed, step in enumerate(steps):  # each checkpoint holds different params
            ckpt.save(step, built.init(seed), {})
        ckpt.close()
    return path


def test_eval_writes_rows_and_merges_summary(tmp_path):
    run = _make_run(tmp_path / "run")
    proc = run_cli("eval", run, "--tasks", "add2,recall", "--shots", "0,2", "--examples", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recall" in proc.stdout
    evaluate.evaluate_run(run, ["add2"], [1], n_examples=3)  # a second call replaces only what it evaluates
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["params"] == 123
    assert set(summary["fewshot"]) == {"add2", "recall"}
    assert set(summary["fewshot"]["add2"]) == {"0", "1", "2"}
    for metric in (*evaluate.METRICS, *evaluate.CHOICE_METRICS):
        assert set(summary["fewshot"]["recall"]["2"][metric]) == {"value", "stderr", "n"}
    rows = [json.loads(line) for line in (run / "fewshot.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 6 + 3
    assert {(r["task"], r["shots"]) for r in rows} == {
        ("add2", 0),
        ("add2", 2),
        ("recall", 0),
        ("recall", 2),
        ("add2", 1),
    }
    assert all(r["step"] == 7 for r in rows)


def test_eval_of_every_kept_checkpoint_writes_each_steps_rows_and_summarises_the_last(tmp_path):
    run = _make_run(tmp_path / "run", steps=(3, 7))
    evaluate.evaluate_run(run, ["add2", "recall"], [0, 2], n_examples=4, steps="all")
    rows = [json.loads(line) for line in (run / "fewshot.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [3, 7] and len(rows) == 2 * 2 * 2 * 4
    at = {s: evaluate.aggregate([r for r in rows if r["step"] == s]) for s in (3, 7)}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fewshot"] == at[7] and summary["fewshot_steps"] == {"3": at[3]}
    assert at[3] != at[7]  # two checkpoints, two sets of params

    # One step alone, on a fresh decoder, gives the same rows as the loop that swapped params in.
    alone = _make_run(tmp_path / "alone", steps=(3, 7))
    evaluate.evaluate_run(alone, ["add2", "recall"], [0, 2], n_examples=4, steps=[3])
    rows_alone = [json.loads(line) for line in (alone / "fewshot.jsonl").read_text().splitlines()]
    assert rows_alone == [r for r in rows if r["step"] == 3]
    summary = json.loads((alone / "summary.json").read_text())
    assert summary["fewshot"] == {} and summary["fewshot_steps"] == {"3": at[3]}  # 3 is not the final step

    proc = run_cli("eval", run, "--tasks", "add2", "--shots", "0", "--examples", "4", "--steps", "5")
    assert proc.returncode == 2 and "no checkpoint at step 5; retained: 3, 7" in proc.stderr, proc.stderr


def test_eval_bad_inputs_exit_2_with_one_line(tmp_path):
    no_ckpt = _make_run(tmp_path / "no_ckpt", with_checkpoint=False)
    short = _make_run(tmp_path / "short", with_checkpoint=False, seq_len=64)
    cases = [
        (["--tasks", "add2,nope"], no_ckpt, "unknown task 'nope'"),
        (["--shots", "0,8", "--tasks", "add4"], short, "8-shot prompts of task 'add4' need"),
        (["--shots", "0,x"], no_ckpt, "'x' is not a non-negative integer"),
        ([], no_ckpt, "has no checkpoint"),
        ([], tmp_path / "missing", "does not exist"),
    ]
    for args, run, message in cases:
        proc = run_cli("eval", run, *args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (no_ckpt / "checkpoints").exists() and not (no_ckpt / "fewshot.jsonl").exists()
    assert yaml.safe_load((no_ckpt / "config.yaml").read_text())["model"]["seq_len"] == SEQ_LEN


@pytest.mark.slow
def test_eval_bench_times_batched_against_one_by_one():
    from lmscale.bench import EVAL_TASKS, bench_eval

    row = bench_eval(examples=10)
    assert row["requests"] == len(EVAL_TASKS) * 3 * 10 and row["one_by_one_timed_requests"] == 18
    assert row["speedup_vs_one_by_one"] == pytest.approx(row["one_by_one_s_estimated"] / row["batched_s"])
    assert row["speedup_vs_one_by_one"] > 1
