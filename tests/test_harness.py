"""The lm-evaluation-harness adapter, checked against plain uncached forwards of the same model."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmscale import config
from lmscale.data.tokenizer import Tokenizer
from lmscale.fewshot.decode import Decoder
from lmscale.fewshot.harness import LmscaleLM, windows
from lmscale.model import Transformer
from tests.conftest import tiny_model

SEQ_LEN = 48
EOS = Tokenizer.byte().eos_id


@pytest.fixture(scope="module")
def lm():
    cfg, params = tiny_model(SEQ_LEN, seed=3)
    forward = jax.jit(lambda t: Transformer(cfg).apply({"params": params}, t))
    return LmscaleLM(decoder=Decoder(cfg, params, batch_size=4), tokenizer=Tokenizer.byte()), forward


def _req(*args):
    return SimpleNamespace(args=args)


def _reference(forward, inputs, targets):
    """Log-probs and greedy flags of `targets` after each prefix of `inputs`: one padded forward."""
    padded = np.zeros((1, SEQ_LEN), np.int32)
    padded[0, : len(inputs)] = inputs
    logits = forward(padded)[0, len(inputs) - len(targets) : len(inputs)]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return float(logp[np.arange(len(targets)), targets].sum()), bool(
        (jnp.argmax(logits, -1) == targets).all()
    )


@pytest.mark.parametrize(
    "n_ctx,n_cont", [(1, 5), (1, 1), (7, 3), (30, 100), (100, 1), (3, 48), (1, 49), (1, 96)]
)
def test_windows_cover_the_continuation_once_and_fit_the_model(n_ctx, n_cont):
    ctx, cont = list(range(1, n_ctx + 1)), list(range(1000, 1000 + n_cont))
    full = ctx + cont
    pieces = windows(ctx, cont, SEQ_LEN)
    assert [t for _, piece in pieces for t in piece] == cont
    start = n_ctx
    for piece_ctx, piece in pieces:
        assert len(piece_ctx) + len(piece) - 1 <= SEQ_LEN
        assert piece_ctx == full[start - len(piece_ctx) : start] and piece_ctx  # what precedes it
        start += len(piece)
    assert len(pieces[0][0]) == min(n_ctx, SEQ_LEN + 1 - len(pieces[0][1]))  # as much context as fits


def test_loglikelihood_equals_one_uncached_forward(lm):
    model, forward = lm
    tok = Tokenizer.byte()
    cases = [("12+30=", "42"), ("", "hello"), ("x" * 80, " tail")]  # the last is cut from the left
    got = model.loglikelihood([_req(c, a) for c, a in cases])
    for (context, answer), (logp, greedy) in zip(cases, got, strict=True):
        seq = [EOS, *tok.encode(context + answer)][-(SEQ_LEN + 1) :]
        want = _reference(forward, seq[:-1], np.array(seq[-len(answer) :]))
        assert logp == pytest.approx(want[0], abs=1e-4)
        assert greedy == want[1]


def test_rolling_loglikelihood_scores_every_token_once_in_disjoint_windows(lm):
    model, forward = lm
    tok = Tokenizer.byte()
    text = "".join(chr(97 + (i * 7) % 26) for i in range(130))  # 130 tokens: windows of 48, 48, 34
    ids = [EOS, *tok.encode(text)]
    want = 0.0
    for start in range(1, len(ids), SEQ_LEN):  # window j predicts ids[start:start+48], fed a full window:
        end = min(start + SEQ_LEN, len(ids))  # the last, shorter one sees more than the token before it
        want += _reference(forward, ids[max(0, end - 1 - SEQ_LEN) : end - 1], np.array(ids[start:end]))[0]
    short = "abc def"
    got = model.loglikelihood_rolling([_req(text), _req(short)])
    assert got[0] == pytest.approx(want, abs=1e-3)
    assert got[1] == pytest.approx(model.loglikelihood([_req("", short)])[0][0], abs=1e-5)


def test_generate_until_is_greedy_and_stops_at_each_requests_strings(lm):
    model, forward = lm
    tok = Tokenizer.byte()

    def greedy(context, n):
        seq = [EOS, *tok.encode(context)]
        for _ in range(n):
            padded = np.zeros((1, SEQ_LEN), np.int32)
            padded[0, : len(seq)] = seq
            seq.append(int(jnp.argmax(forward(padded)[0, len(seq) - 1])))
        return tok.decode(seq[len(tok.encode(context)) + 1 :])

    free = greedy("ab", 10)
    stop = free[4]  # a character the greedy path emits fifth
    got = model.generate_until(
        [
            _req("ab", {"until": [stop], "max_gen_toks": 10}),
            _req("ab", {"until": "never", "max_gen_toks": 6}),
            _req("ab", {"until": ["zz", stop], "max_gen_toks": 10, "do_sample": False}),
        ]
    )
    assert got == [free.split(stop)[0], free[:6], free.split(stop)[0]]
    with pytest.raises(ValueError, match="only greedy"):
        model.generate_until([_req("ab", {"do_sample": True})])


def test_adapter_opens_a_run_directory(tmp_path):
    from tests.test_evaluate import _make_run

    run = _make_run(tmp_path / "run")
    model = LmscaleLM(str(run), batch_size="auto")
    ((logp, _),) = model.loglikelihood([_req("1+1=", "2")])
    assert np.isfinite(logp) and logp < 0
    with pytest.raises(config.ConfigError, match="no checkpoint"):
        LmscaleLM(str(_make_run(tmp_path / "bare", with_checkpoint=False)))
