"""cgh_tf.robust against NumPy float64 (np.median, np.percentile(method="nearest"))."""

import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import robust


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_median3_matches_numpy_including_ties():
    rng = _rng(1)
    a, b, c = (rng.integers(-2, 3, size=500).astype(np.float64) for _ in range(3))
    got = robust.median3(tf.constant(a), tf.constant(b), tf.constant(c)).numpy()
    np.testing.assert_array_equal(got, np.median(np.stack([a, b, c]), axis=0))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("ties", [False, True])
def test_median_matches_numpy(k, ties):
    rng = _rng(k)
    if ties:
        values = rng.integers(-2, 3, size=(k, 4, 6)).astype(np.float64)
    else:
        values = rng.normal(size=(k, 4, 6))
    got = robust.median(tf.constant(values)).numpy()
    np.testing.assert_allclose(got, np.median(values, axis=0), rtol=0, atol=1e-15)


@pytest.mark.parametrize("axis", [1, -1])
def test_median_other_axis(axis):
    values = _rng(3).normal(size=(4, 5, 6))
    got = robust.median(tf.constant(values), axis=axis).numpy()
    np.testing.assert_allclose(got, np.median(values, axis=axis), atol=1e-15)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_median_of_and_mean_of_lists(k):
    values = _rng(k).normal(size=(k, 7))
    tensors = [tf.constant(v) for v in values]
    np.testing.assert_allclose(robust.median_of(tensors).numpy(), np.median(values, 0), atol=1e-15)
    np.testing.assert_allclose(robust.mean_of(tensors).numpy(), values.mean(0), atol=1e-15)
    np.testing.assert_allclose(robust.mean(tf.constant(values)).numpy(), values.mean(0), atol=1e-15)


def test_median_requires_static_size():
    fn = tf.function(robust.median, input_signature=[tf.TensorSpec([None, 3], tf.float64)])
    with pytest.raises(ValueError, match="static size"):
        fn.get_concrete_function()


@pytest.mark.parametrize("k", [2, 3, 4, 5, 7, 10, 100])
@pytest.mark.parametrize("q", [0, 1, 10, 12.5, 25, 33, 50, 75, 90, 100])
def test_percentile_nearest_matches_numpy(k, q):
    values = _rng(k).integers(-3, 4, size=(k, 9)).astype(np.float64)
    got = robust.percentile_nearest(tf.constant(values), q).numpy()
    np.testing.assert_array_equal(got, np.percentile(values, q, axis=0, method="nearest"))


def test_percentile_nearest_list_of_q():
    values = _rng(5).normal(size=(11, 3, 2))
    got = robust.percentile_nearest(tf.constant(values), [5, 50, 95]).numpy()
    want = np.percentile(values, [5, 50, 95], axis=0, method="nearest")
    np.testing.assert_array_equal(got, want)


def _winsorized_reference(values, pct):
    lo, hi = np.percentile(values, [pct, 100 - pct], axis=0, method="nearest")
    return np.clip(values, lo, hi).mean(axis=0)


@pytest.mark.parametrize("k", [2, 3, 5, 7, 32])
@pytest.mark.parametrize("pct", [0, 5, 10, 25, 40, 49.9])
def test_winsorized_mean_matches_numpy(k, pct):
    values = _rng(k).normal(size=(k, 5, 4))
    got = robust.winsorized_mean(tf.constant(values), pct).numpy()
    np.testing.assert_allclose(got, _winsorized_reference(values, pct), rtol=1e-13, atol=1e-15)


def test_winsorized_mean_with_ties():
    values = _rng(8).integers(-1, 2, size=(20, 30)).astype(np.float64)
    got = robust.winsorized_mean(tf.constant(values), 10).numpy()
    np.testing.assert_allclose(got, _winsorized_reference(values, 10), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("pct", [1, 5, 10])
def test_winsorized_mean_batch_100_clips_exactly_pct_values_each_side(pct):
    # 100 distinct values per coordinate: nearest rank of the pct-th percentile is round(0.99 pct),
    # so with values 0..99 (shuffled per coordinate) exactly `pct` values lie below the lower bound
    # only when the rank equals pct; compute the expected number of clipped values by hand.
    rng = _rng(pct)
    columns = [rng.permutation(100).astype(np.float64) for _ in range(6)]
    values = np.stack(columns, axis=1)  # [100, 6]
    lo_rank = int(np.around(pct / 100 * 99))
    hi_rank = int(np.around((100 - pct) / 100 * 99))
    assert lo_rank == pct and hi_rank == 99 - pct  # exactly pct values clipped on each side
    got = robust.winsorized_mean(tf.constant(values), pct).numpy()
    # By hand: values 0..pct-1 become pct, values 100-pct..99 become 99-pct.
    by_hand = (np.arange(pct, 100 - pct).sum() + pct * pct + pct * (99 - pct)) / 100
    np.testing.assert_allclose(got, np.full(6, by_hand), rtol=1e-14)
    np.testing.assert_allclose(got, _winsorized_reference(values, pct), rtol=1e-14)
    assert np.sum(values < lo_rank) == 6 * pct and np.sum(values > hi_rank) == 6 * pct


def test_winsorized_mean_zero_is_mean_and_works_under_xla():
    values = _rng(9).normal(size=(8, 5)).astype(np.float32)
    fn = tf.function(lambda v: robust.winsorized_mean(v, 25), jit_compile=True)
    np.testing.assert_allclose(fn(tf.constant(values)).numpy(), _winsorized_reference(values, 25),
                               rtol=1e-6)
    np.testing.assert_allclose(robust.winsorized_mean(tf.constant(values), 0).numpy(),
                               values.mean(0), rtol=1e-6)


@pytest.mark.parametrize("pct", [-1, 50, 60])
def test_winsorized_mean_rejects_bad_pct(pct):
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        robust.winsorized_mean(tf.zeros([4, 2]), pct)


def test_percentile_rejects_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        robust.percentile_nearest(tf.zeros([4, 2]), 101)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fused_medians_match_numpy_for_every_list(k):
    """One XLA call for several variables of different shapes, as the optimizers use it."""
    a, b = _rng(k).normal(size=(k, 6, 2)), _rng(k + 1).normal(size=(k, 3))
    got = robust.fused_medians([[tf.constant(v) for v in a], [tf.constant(v) for v in b]])
    np.testing.assert_allclose(got[0].numpy(), np.median(a, axis=0), atol=1e-15)
    np.testing.assert_allclose(got[1].numpy(), np.median(b, axis=0), atol=1e-15)
    means = robust.means([[tf.constant(v) for v in a]])
    np.testing.assert_allclose(means[0].numpy(), np.mean(a, axis=0), atol=1e-15)


def test_winsorized_mean_with_batch_size_unknown_while_tracing():
    """A last partial batch: k is only known at run time; ranks must still match NumPy."""
    rng = np.random.default_rng(7)
    f = tf.function(lambda v: robust.winsorized_mean(v, 10.0, axis=0),
                    input_signature=[tf.TensorSpec([None, 4], tf.float64)])
    for k in (5, 21, 37, 100):
        values = rng.normal(size=(k, 4))
        low, high = np.percentile(values, [10.0, 90.0], axis=0, method="nearest")
        np.testing.assert_allclose(f(values).numpy(), np.clip(values, low, high).mean(axis=0),
                                   rtol=1e-12)


@pytest.mark.parametrize("m,pct", [(1, 10), (5, 0), (10, 10), (20, 25), (64, 8), (100, 2), (7, 49)])
def test_winsorized_mean_of_outer_products_matches_numpy(m, pct):
    rng = _rng(m)
    a, b = rng.normal(size=(m, 6)), rng.normal(size=(m, 4))
    got = robust.winsorized_mean_of_outer_products(tf.constant(a), tf.constant(b), pct)
    products = np.einsum("mi,mo->mio", a, b)
    np.testing.assert_allclose(got.numpy(), _winsorized_reference(products, pct),
                               rtol=1e-13, atol=1e-15)


def test_winsorized_mean_of_outer_products_with_ties():
    rng = _rng(3)
    a = rng.integers(-1, 2, size=(12, 3)).astype(np.float64)
    a[6:] = a[:6]  # every product appears at least twice
    b = np.ones((12, 2))
    got = robust.winsorized_mean_of_outer_products(tf.constant(a), tf.constant(b), 20)
    np.testing.assert_allclose(got.numpy(),
                               _winsorized_reference(np.einsum("mi,mo->mio", a, b), 20),
                               rtol=1e-13, atol=1e-15)


def test_winsorized_mean_of_outer_products_declines_when_it_does_not_apply():
    too_large = robust.MAX_NETWORK_SIZE  # m × (values kept per side, both sides) > the limit
    assert robust.winsorized_mean_of_outer_products(
        tf.zeros([too_large, 2]), tf.zeros([too_large, 2]), 10) is None
    results = []  # batch size unknown while tracing

    @tf.function(input_signature=[tf.TensorSpec([None, 2]), tf.TensorSpec([None, 2])])
    def traced(a, b):
        results.append(robust.winsorized_mean_of_outer_products(a, b, 10))
        return a

    traced(tf.zeros([4, 2]), tf.zeros([4, 2]))
    assert results == [None]
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        robust.winsorized_mean_of_outer_products(tf.zeros([4, 2]), tf.zeros([4, 2]), 50)

