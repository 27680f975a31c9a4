"""k-shot requests: each example's prompt and answer as token ids, and the check that they fit.

Pure Python (no JAX), so a sweep spec's shot counts are checked against every cell's context before
JAX is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lmscale.config import ConfigError
from lmscale.fewshot import tasks


@dataclasses.dataclass(frozen=True)
class Request:
    """One k-shot prompt of one example, tokenized: EOS (start of document), prompt, then answer."""

    task: str
    shots: int
    example_id: int
    answer: str
    context: list[int]
    continuation: list[int]

    @property
    def length(self) -> int:
        return len(self.context) + len(self.continuation)


def split_continuation(tok, context_text: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of context and answer, split where a joint encoding splits (BPE may merge across)."""
    ctx = tok.encode(context_text)
    whole = tok.encode(context_text + answer)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx) :]
    return ctx, tok.encode(answer)


def build_requests(
    tok,
    names: Sequence[str],
    shots: Sequence[int] | None,
    n_examples: int,
    seq_len: int,
    seed: int = 0,
    option: str = "--shots",
) -> list[Request]:
    """Requests for every task and shot count; `shots=None` keeps the default counts that fit.

    Explicit shot counts that do not fit the context are an error naming `option`, the task and the
    length.
    """
    if shots is not None:
        tasks.check_shots(shots, option)
    requests = []
    for name in names:
        exs = tasks.examples(name, n_examples, seed)
        for k in tasks.SHOTS if shots is None else shots:
            batch = []
            for ex in exs:
                ctx, cont = split_continuation(tok, ex.prompt(k), ex.query.answer)
                batch.append(Request(name, k, ex.example_id, ex.query.answer, [tok.eos_id, *ctx], cont))
            longest = max(r.length for r in batch)
            if longest > seq_len:
                if shots is None:
                    continue  # the default counts are capped by the context length
                raise ConfigError(
                    f"{option}: {k}-shot prompts of task '{name}' need {longest} tokens, more than "
                    f"model.seq_len={seq_len}"
                )
            requests.extend(batch)
    return requests
