"""An lm-evaluation-harness model over an lmscale run: `LmscaleLM(RUN_DIR)`.

The harness asks a model three things, each for a list of requests whose `args` hold strings:

- `loglikelihood`: (context, continuation) -> (sum of the continuation's log-probs, whether every
  token of it is the greedy choice)
- `loglikelihood_rolling`: (text,) -> the whole text's log-likelihood, scored in disjoint windows of
  `model.seq_len` predictions (the harness's convention for perplexity tasks)
- `generate_until`: (context, {"until": [...], "max_gen_toks": n}) -> the greedy continuation,
  cut before the first stop string

All three run on the batched `Decoder` of `lmscale eval`, on the run's latest checkpoint. Every text
starts after EOS, as every training document does. When `lm_eval` is installed the class subclasses
its `LM` and is registered as the model "lmscale":

    import lm_eval
    from lmscale.fewshot.harness import LmscaleLM

    lm = LmscaleLM("runs/cpu_demo/L4-D128-T3.31M-s0", batch_size=64)
    lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai"])

Without it the class still answers any object with an `args` tuple, which is how it is tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmscale.fewshot import evaluate
from lmscale.fewshot.requests import split_continuation

try:  # the harness is optional: the adapter is the same class with or without it
    from lm_eval.api.model import LM as _Base
    from lm_eval.api.registry import register_model as _register
except ImportError:  # pragma: no cover - depends on the environment
    _Base, _register = object, None

DEFAULT_MAX_GEN_TOKS = 256  # the harness's own default for generate_until


def windows(context: Sequence[int], continuation: Sequence[int], seq_len: int) -> list[tuple[list, list]]:
    """(context, targets) pieces that score `continuation` after a non-empty `context` in `seq_len` tokens.

    The first piece keeps as much of the context as fits (cut from the left); a continuation longer
    than the model's window goes on in disjoint pieces of `seq_len` targets, each fed the tokens just
    before it. Every piece satisfies len(context) + len(targets) - 1 <= seq_len.
    """
    full = [*context, *continuation]
    pieces = []
    start = len(context)
    while start < len(full):
        end = min(start + seq_len, len(full))
        pieces.append((full[max(0, end - 1 - seq_len) : start], full[start:end]))
        start = end
    return pieces


class LmscaleLM(_Base):
    """The harness's `LM` interface over the latest checkpoint of an lmscale run directory."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        batch_size: int | str = 64,
        *,
        decoder: Any = None,
        tokenizer: Any = None,
        **_ignored: Any,  # the harness passes device and max_batch_size too; JAX places the model itself
    ):
        super().__init__()
        if decoder is None:
            run = evaluate.open_run(Path(run_dir))
            size = 64 if str(batch_size).startswith("auto") else int(batch_size)
            restored = evaluate.restore_decoder(run, [evaluate.latest_step(run)], size)
            decoder = [d for _, d in restored][0]  # running the generator out closes the checkpoint
            tokenizer = run.tokenizer
        self.decoder, self.tok = decoder, tokenizer
        self.seq_len = decoder.cfg.seq_len

    def _encode(self, text: str) -> list[int]:
        return [self.tok.eos_id, *self.tok.encode(text)]

    def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Summed log-prob and all-greedy flag of each (context, continuation), windowed to fit."""
        owner, pieces = [], []
        for i, (ctx, cont) in enumerate(pairs):
            for piece in windows(ctx, cont, self.seq_len):
                owner.append(i)
                pieces.append(piece)
        total = [0.0] * len(pairs)
        greedy = [True] * len(pairs)
        for i, score in zip(owner, self.decoder.score(pieces), strict=True):
            total[i] += float(score.logprobs.sum())
            greedy[i] = greedy[i] and bool(score.greedy.all())
        return list(zip(total, greedy, strict=True))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for req in requests:
            context, continuation = req.args
            ctx, cont = split_continuation(self.tok, context, continuation)
            pairs.append(([self.tok.eos_id, *ctx], cont))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        scores = self._score([([self.tok.eos_id], self.tok.encode(req.args[0])) for req in requests])
        return [total for total, _ in scores]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple[str, ...], list[tuple[int, list[int], int]]] = {}
        for i, req in enumerate(requests):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise ValueError(f"generate_until: only greedy decoding is supported, got {kwargs}")
            until = kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            max_new = max(1, int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)))
            # Room for the answer, but never less than half the window for the context.
            keep = self.seq_len - min(max_new, self.seq_len // 2)
            groups.setdefault(until, []).append((i, self._encode(context)[-keep:], max_new))
        for until, items in groups.items():
            stops = evaluate.stop_ids(self.tok, until)
            limits = [n for _, _, n in items]
            generated = self.decoder.score_and_generate(
                [(ctx, []) for _, ctx, _ in items], max(limits), stops, limits
            )
            for (i, _, _), (_, ids) in zip(items, generated, strict=True):
                text = self.tok.decode([t for t in ids if t != self.tok.eos_id])
                for s in until:
                    if s:
                        text = text.split(s)[0]
                out[i] = text
        return out


if _register is not None:  # pragma: no cover - depends on the environment
    LmscaleLM = _register("lmscale")(LmscaleLM)
