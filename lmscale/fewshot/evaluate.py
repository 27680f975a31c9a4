"""Few-shot evaluation of a run: k-shot prompts of every task, per-example metrics, aggregates.

Per example (one task, shot count and example id): `exact_match` of the greedy generation up to the
newline, `logprob_sum` and `logprob_per_token` of the answer, `token_accuracy` (answer tokens that are
the greedy choice under teacher forcing) and `edit_distance` (token edit distance between the answer
and the generation, which stops one token past the answer's length). Multiple-choice tasks add
`prob_correct` (softmax over the choices' log-probs), `brier` and `acc` (whether the likeliest choice is
the answer: lm-evaluation-harness's `acc`). Raw rows go to `fewshot.jsonl`;
means with standard errors to `summary.json`'s `fewshot`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from lmscale import results, tracking
from lmscale.config import ConfigError
from lmscale.fewshot import tasks
from lmscale.fewshot.decode import Decoder
from lmscale.fewshot.requests import Request, build_requests

METRICS = ("exact_match", "logprob_sum", "logprob_per_token", "token_accuracy", "edit_distance")
CHOICE_METRICS = ("prob_correct", "brier", "acc")  # acc: the likeliest choice is the answer (lm-eval's acc)
DEFAULT_EXAMPLES = 100


def parse_list(text: str | None, option: str, kind: type = str) -> list | None:
    """`a,b,c` -> a list; None stays None. Integers must be non-negative."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{option}: expected a comma-separated list, got {text!r}")
    if kind is int:
        bad = [x for x in items if not x.isdigit()]
        if bad:
            raise ConfigError(f"{option}: '{bad[0]}' is not a non-negative integer")
        return [int(x) for x in items]
    return items


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def stop_ids(tok, strings: Sequence[str] = (tasks.SEP,)) -> list[int]:
    """Tokens that end a generation: EOS, and any token whose text holds one of `strings` (by default
    the newline that ends every answer). A stop string spanning tokens is left to the caller's cut."""
    strings = [s for s in strings if s]
    if tok.kind == "byte":  # a byte's text holds a string only if it is that one-byte string
        return [tok.eos_id, *sorted({s.encode()[0] for s in strings if len(s.encode()) == 1})]
    return [i for i in range(tok.vocab_size) if i == tok.eos_id or any(s in tok.decode([i]) for s in strings)]


def _choice_ids(tok, name: str) -> list[int] | None:
    """Single-token ids of a multiple-choice task's answers, or None when a choice spans tokens."""
    ids = [tok.encode(c) for c in tasks.get(name).choices]
    return [i[0] for i in ids] if ids and all(len(i) == 1 for i in ids) else None


def evaluate(decoder: Decoder, tok, requests: Sequence[Request]) -> list[dict]:
    """One row per request: task, shots, example_id and every metric."""
    # A generation longer than the answer and its newline cannot match, so it stops there.
    limits = [len(r.continuation) + 1 for r in requests]
    pairs = [(r.context, r.continuation) for r in requests]
    scored = decoder.score_and_generate(pairs, max(limits), stop_ids(tok), limits)
    choices = {name: _choice_ids(tok, name) for name in {r.task for r in requests}}
    rows = []
    for r, (score, generated) in zip(requests, scored, strict=True):
        text = tok.decode(generated).split(tasks.SEP)[0].split("<|endoftext|>")[0]
        lp = float(score.logprobs.sum())
        row = {
            "task": r.task,
            "version": tasks.get(r.task).version,
            "shots": r.shots,
            "example_id": r.example_id,
            "exact_match": float(text == r.answer),
            "logprob_sum": lp,
            "logprob_per_token": lp / len(r.continuation),
            "token_accuracy": float(score.greedy.mean()),
            "edit_distance": float(edit_distance(tok.encode(text), r.continuation)),
            "answer": r.answer,
            "generated": text,
        }
        ids = choices[r.task]
        if ids is not None:
            logp_C = score.first_logprobs[ids]
            p_C = np.exp(logp_C - logp_C.max())
            p_C /= p_C.sum()
            target_C = np.array([c == r.answer for c in tasks.get(r.task).choices], float)
            row["prob_correct"] = float(p_C @ target_C)
            row["brier"] = float(((p_C - target_C) ** 2).sum())
            row["acc"] = float(target_C[np.argmax(logp_C)])
        rows.append(row)
    return rows


def aggregate(rows: Sequence[dict]) -> dict:
    """{task: {str(shots): {metric: {"value", "stderr", "n"}}}}: means with standard errors."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["shots"]), []).append(row)
    out: dict = {}
    for (task, shots), group in sorted(groups.items()):
        metrics = {}
        for metric in METRICS + CHOICE_METRICS:
            values = np.array([g[metric] for g in group if metric in g], float)
            if len(values):
                stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
                metrics[metric] = {"value": float(values.mean()), "stderr": stderr, "n": len(values)}
        out.setdefault(task, {})[str(shots)] = metrics
    return out


@dataclasses.dataclass
class Run:
    """A run directory's config and tokenizer."""

    path: Path
    cfg: object
    tokenizer: object


def open_run(run_dir: Path) -> Run:
    """Read a run's config and tokenizer; a one-line ConfigError if either is missing or they disagree."""
    from lmscale.config import from_dict, read_yaml
    from lmscale.data import tokenizer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory '{run_dir}' does not exist")
    cfg = from_dict(read_yaml(run_dir / "config.yaml"))
    tok = tokenizer.for_run(run_dir)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"'{run_dir / 'tokenizer.json'}' has {tok.vocab_size} tokens, more than "
            f"model.vocab_size={cfg.model.vocab_size}"
        )
    return Run(run_dir, cfg, tok)


def checkpoint_steps(run: Run) -> list[int]:
    """The steps of the run's retained checkpoints, oldest first; a ConfigError when there is none."""
    from lmscale.checkpoint import Checkpointer

    ckpt_dir = run.path / "checkpoints"
    steps = []
    if ckpt_dir.is_dir():  # checked first: opening a manager would create the directory
        ckpt = Checkpointer(ckpt_dir, run.cfg.checkpoint.keep, async_save=False)
        steps = ckpt.all_steps()
        ckpt.close()
    if not steps:
        raise ConfigError(f"run directory '{run.path}' has no checkpoint in '{ckpt_dir}'")
    return steps


def latest_step(run: Run) -> int:
    """The step of the run's latest checkpoint; a ConfigError when there is none."""
    return checkpoint_steps(run)[-1]


def select_steps(
    run: Run, retained: Sequence[int], steps: str | Sequence[int], option: str = "--steps"
) -> list[int]:
    """Of the run's `retained` checkpoint steps: `latest`, `all`, or the explicit steps, each of which
    must be retained."""
    if steps == "latest":
        return list(retained[-1:])
    if steps == "all":
        return list(retained)
    if isinstance(steps, str):
        raise ConfigError(f"{option}={steps!r}: expected latest, all or comma-separated steps")
    missing = [s for s in steps if s not in retained]
    if missing:
        raise ConfigError(
            f"{option}: '{run.path}' has no checkpoint at step {missing[0]}; retained: "
            f"{', '.join(map(str, retained))}"
        )
    return sorted(set(steps))


def new_decoder(built, params, batch_size: int) -> Decoder:
    """A Decoder on `built`'s mesh and rules (a steps.StepFns), its batch rounded up to a multiple of the
    data-parallel devices so every batch splits evenly."""
    shape = built.cfg.mesh.shape(jax.device_count())
    dp = shape["data"] * shape["fsdp"]
    return Decoder(built.cfg.model, params, -(-batch_size // dp) * dp, built.mesh, built.rules)


def restore_decoder(run: Run, steps: Sequence[int], batch_size: int = 64) -> Iterator[tuple[int, Decoder]]:
    """A Decoder over the params of each checkpoint step in turn, restored onto this process's
    devices: yields (step, decoder), one decoder whose compiled functions serve every step."""
    from lmscale import sharding
    from lmscale.checkpoint import Checkpointer
    from lmscale.step_fns import build

    cfg = run.cfg
    n = jax.device_count()
    if math.prod(cfg.mesh.shape(n).values()) != n:  # trained on another device count: data parallel here
        cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, data=-1, fsdp=1, tensor=1))
    built = build(cfg, sharding.make_mesh(cfg.mesh))
    decoder = None
    ckpt = Checkpointer(run.path / "checkpoints", cfg.checkpoint.keep, async_save=False)
    try:
        for step in steps:
            state, _ = ckpt.restore(step, built.abstract_state)
            if decoder is None:
                decoder = new_decoder(built, state.params, batch_size)
            else:
                decoder.load(state.params)
            yield step, decoder
    finally:
        ckpt.close()


def evaluate_run(
    run_dir: Path,
    task_names: Sequence[str] | None = None,
    shots: Sequence[int] | None = None,
    n_examples: int = DEFAULT_EXAMPLES,
    seed: int = 0,
    batch_size: int = 64,
    steps: str | Sequence[int] = "latest",
    per_step: bool = False,
) -> dict:
    """Evaluate a run's checkpoints (`latest`, `all` or a list of steps) and write their few-shot rows.

    Returns the aggregates of the tasks evaluated, of the last step ({step: aggregates} for every
    step with `per_step`).
    """
    names = list(tasks.TASKS) if task_names is None else list(task_names)
    for name in names:
        tasks.get(name)
    if n_examples < 1:
        raise ConfigError(f"--examples={n_examples}: must be positive")
    if batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size}: must be positive")
    run = open_run(run_dir)
    requests = build_requests(run.tokenizer, names, shots, n_examples, run.cfg.model.seq_len, seed)
    if not requests:
        raise ConfigError(f"no shot count of {names} fits model.seq_len={run.cfg.model.seq_len}")
    retained = checkpoint_steps(run)
    chosen = select_steps(run, retained, steps)
    result = {}
    for step, decoder in restore_decoder(run, chosen, batch_size):
        rows = evaluate(decoder, run.tokenizer, requests)
        result[step] = aggregate(rows)
        if jax.process_index() == 0:  # every host runs the model; one writes the results
            results.write_fewshot(run.path, rows, result[step], step, final=step == retained[-1])
            tracking.log_fewshot(run.cfg, run.path, step, result[step])
    return result if per_step else result[chosen[-1]]


def after_train(spec, run_ids: set[str] | None = None) -> Callable[[object, Path, dict], dict]:
    """The sweep's hook for `sweep.eval` (a grid.EvalSpec): evaluate each completed run once (only the
    cells in `run_ids` when given; the others are left as they are).

    A run whose summary already holds every requested task (and shot count) is left as it is, so a
    rerun sweep, or one killed between training and evaluation, evaluates only what is missing.
    """

    def missing(done: dict) -> list[str]:
        return [
            name
            for name in spec.tasks or tasks.TASKS
            if name not in done or any(str(k) not in done[name] for k in spec.shots or ())
        ]

    def hook(cell, run_dir: Path, summary: dict) -> dict:
        if run_ids is not None and cell.run_id not in run_ids:
            return summary
        summary, t0 = dict(summary), time.perf_counter()
        names = missing(summary.get("fewshot") or {})
        if spec.steps != "all":
            if not names:
                return summary
            fewshot = evaluate_run(run_dir, names, spec.shots, spec.examples, batch_size=spec.batch_size)
            summary["fewshot"] = results.merge(summary.get("fewshot"), fewshot)
        else:  # every kept checkpoint, grouped by what each lacks: one restore loop (one compile) a group
            by_step = dict(summary.get("fewshot_steps") or {})
            *earlier, final = checkpoint_steps(open_run(run_dir))
            todo: dict[tuple[str, ...], list[int]] = {}
            lacking = {step: missing(by_step.get(str(step)) or {}) for step in earlier} | {final: names}
            for step, group in lacking.items():
                if group:
                    todo.setdefault(tuple(group), []).append(step)
            if not todo:
                return summary
            for group, steps in todo.items():
                for step, fewshot in evaluate_run(
                    run_dir, group, spec.shots, spec.examples, batch_size=spec.batch_size, steps=steps,
                    per_step=True,
                ).items():  # fmt: skip
                    if step == final:
                        summary["fewshot"] = results.merge(summary.get("fewshot"), fewshot)
                    else:
                        by_step = results.with_step(by_step, step, fewshot)
            summary["fewshot_steps"] = by_step
        # the sweep's evaluation of this run, over every process that added to it
        summary["eval_time_s"] = summary.get("eval_time_s", 0.0) + time.perf_counter() - t0
        return summary

    return hook
