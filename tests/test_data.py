import numpy as np

from lmscale.data import MarkovSource


def _source(**kw):
    return MarkovSource(vocab_size=64, seq_len=16, batch_size=8, seed=1, **kw)


def test_batches_are_int32_with_one_extra_token_for_the_target():
    batch = next(_source())
    assert batch.shape == (8, 17) and batch.dtype == np.int32
    assert batch.min() >= 0 and batch.max() < 64


def test_restored_source_continues_with_the_next_batch():
    a = _source()
    [next(a) for _ in range(5)]
    saved = a.state()
    expected = [next(a) for _ in range(3)]
    b = _source()
    b.restore(saved)
    for want in expected:
        np.testing.assert_array_equal(next(b), want)


def test_same_seed_same_batches_and_splits_differ():
    np.testing.assert_array_equal(next(_source()), next(_source()))
    assert not np.array_equal(next(_source()), next(_source(split="val")))


def test_process_shards_tile_the_global_batch():
    whole = _source().batch(3)
    parts = [_source(process_index=i, process_count=4).batch(3) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_entropy_rate_matches_an_empirical_estimate():
    src = MarkovSource(vocab_size=32, seq_len=256, batch_size=64, seed=0, branching=4, alpha=1.0)
    tokens = np.concatenate([src.batch(i) for i in range(8)])
    counts = np.zeros((32, 32))
    np.add.at(counts, (tokens[:, :-1].ravel(), tokens[:, 1:].ravel()), 1)
    p_next = counts / counts.sum(1, keepdims=True)
    p_prev = counts.sum(1) / counts.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(p_prev[:, None] * p_next * np.log(p_next))
    assert abs(h - src.entropy_rate) < 0.01
