"""Coherence statistics: α, α⊥, m-coherence, per layer, streaming and f^p / f^c.

References: the docs/design.md §1 definitions evaluated in float64 NumPy on closed-form softmax-regression
per-example gradients g_i = (x_i ⊗ (p_i − e_{y_i}), p_i − e_{y_i}).
"""

import gc
import math
import weakref

import numpy as np
import pytest
import keras
import tensorflow as tf

from cgh_tf import coherence

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_gradients(x, y, kernel, bias):
    """Per-example gradients as flat blocks: [kernel [m, i*o], bias [m, o]]."""
    delta = softmax(x @ kernel + bias) - np.eye(kernel.shape[1])[y]
    return [np.einsum("mi,mo->mio", x, delta).reshape(len(x), -1), delta]


def reference_stats(blocks):
    """(α, m-coherence, ‖S‖², Q) from per-example gradient blocks [m, n_b] (docs/design.md §1)."""
    g = np.concatenate(blocks, axis=1)
    m = len(g)
    s2, q = np.sum(g.sum(0) ** 2), np.sum(g ** 2)
    return s2 / (m * q), s2 / q, s2, q


def softmax_regression(inputs=4, classes=3, use_bias=True, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(classes, use_bias=use_bias, name="out")])
    if use_bias:
        model.layers[0].bias.assign(np.random.default_rng(seed).normal(size=classes))
    model.compile(loss=SCCE)
    return model


def data(m=10, inputs=4, classes=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, inputs)), rng.integers(0, classes, m)


def test_stats_from_sums_definitions():
    stats = coherence.stats_from_sums(sq_norm_of_sum=6.0, sum_of_sq_norms=4.0, m=3)
    assert stats.m_coherence == pytest.approx(1.5)
    assert stats.alpha == pytest.approx(0.5)
    assert stats.alpha_perp == pytest.approx(1 / 3)
    assert stats.gradient_diversity == pytest.approx(1 / 1.5)
    assert math.isnan(coherence.stats_from_sums(0.0, 0.0, 3).m_coherence)
    with pytest.raises(ValueError, match="Empty"):
        coherence.stats_from_sums(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        coherence.stats_from_sums(-1.0, 1.0, 2)


def test_measure_matches_numpy_reference():
    model = softmax_regression()
    x, y = data()
    alpha, r, s2, q = reference_stats(reference_gradients(x, y, *[v.numpy() for v in model.trainable_variables]))
    stats = coherence.measure(model, x, y)
    assert stats.m == 10
    assert stats.alpha == pytest.approx(alpha, rel=1e-10)
    assert stats.m_coherence == pytest.approx(r, rel=1e-10)
    assert stats.sq_norm_of_sum == pytest.approx(s2, rel=1e-10)
    assert stats.sum_of_sq_norms == pytest.approx(q, rel=1e-10)
    assert stats.alpha_perp == pytest.approx(0.1)
    assert stats.per_layer == {}


def test_identical_examples_give_m_coherence_m():
    model = softmax_regression()
    x, y = data(m=1)
    stats = coherence.measure(model, np.repeat(x, 7, 0), np.repeat(y, 7, 0))
    assert stats.m_coherence == pytest.approx(7, rel=1e-12)
    assert stats.alpha == pytest.approx(1, rel=1e-12)


def test_orthogonal_gradients_give_m_coherence_one():
    # No bias and one-hot inputs: g_i = e_i ⊗ (p_i − e_{y_i}), so ⟨g_i, g_j⟩ = (e_i·e_j)(...) = 0, i ≠ j.
    model = softmax_regression(inputs=5, use_bias=False)
    x, y = np.eye(5), np.array([0, 1, 2, 0, 1])
    stats = coherence.measure(model, x, y)
    assert stats.m_coherence == pytest.approx(1, rel=1e-12)
    assert stats.alpha == pytest.approx(stats.alpha_perp, rel=1e-12)


def test_streamed_equals_one_shot_and_dataset_equals_arrays():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh", name="hidden"),
                              keras.layers.Dense(3, name="out")])
    model.compile(loss=SCCE)
    x, y = data(m=11)
    one_shot = coherence.measure(model, x, y, batch_size=11, per_layer=True)
    streamed = coherence.measure(model, x, y, batch_size=3, per_layer=True)
    dataset = coherence.measure(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4), per_layer=True)
    for other in (streamed, dataset):
        assert other.m == 11
        assert other.m_coherence == pytest.approx(one_shot.m_coherence, rel=1e-10)
        for name in ("hidden", "out"):
            assert other.per_layer[name].alpha == pytest.approx(one_shot.per_layer[name].alpha, rel=1e-10)


def test_per_layer_values_match_reference_and_combine_to_whole():
    model = softmax_regression()
    x, y = data()
    kernel_block, bias_block = reference_gradients(x, y, *[v.numpy() for v in model.trainable_variables])
    # Partition into two blocks by hand: kernel and bias, via an accumulator with explicit names.
    accumulator = coherence.StreamingCoherence(model.trainable_variables, ["kernel", "bias"])
    sums = coherence.per_example.gradients_and_sq_norms(model, tf.constant(x), tf.constant(y))
    accumulator.update(sums.grad_sum, sums.sq_norms)
    stats = accumulator.result(per_layer=True)
    for name, block in (("kernel", kernel_block), ("bias", bias_block)):
        alpha, r, _, _ = reference_stats([block])
        assert stats.per_layer[name].alpha == pytest.approx(alpha, rel=1e-10)
        assert stats.per_layer[name].m_coherence == pytest.approx(r, rel=1e-10)
    combined = sum(b.sum_of_sq_norms / stats.sum_of_sq_norms * b.alpha for b in stats.per_layer.values())
    assert combined == pytest.approx(stats.alpha, rel=1e-12)
    assert stats.alpha == pytest.approx(reference_stats([kernel_block, bias_block])[0], rel=1e-10)


def brute_force_pairwise(blocks):
    """Σ_{i≠j} g_i·g_j / ((m − 1) Σ_i ‖g_i‖²) from the Gram matrix of the gradients (float64)."""
    g = np.concatenate(blocks, axis=1)
    gram = g @ g.T
    return (gram.sum() - np.trace(gram)) / ((len(g) - 1) * np.trace(gram))


def test_pairwise_coherence_matches_brute_force_whole_and_per_layer():
    model = softmax_regression()
    x, y = data(m=13)
    blocks = reference_gradients(x, y, *[v.numpy() for v in model.trainable_variables])
    accumulator = coherence.StreamingCoherence(model.trainable_variables, ["kernel", "bias"])
    sums = coherence.per_example.gradients_and_sq_norms(model, tf.constant(x), tf.constant(y))
    accumulator.update(sums.grad_sum, sums.sq_norms)
    stats = accumulator.result(per_layer=True)
    assert stats.pairwise_coherence == pytest.approx(brute_force_pairwise(blocks), rel=1e-10)
    for name, block in zip(("kernel", "bias"), blocks):
        assert stats.per_layer[name].pairwise_coherence == pytest.approx(
            brute_force_pairwise([block]), rel=1e-10)
    assert coherence.measure(model, x, y).pairwise_coherence == pytest.approx(
        brute_force_pairwise(blocks), rel=1e-10)


def test_pairwise_coherence_does_not_grow_with_m_but_r_does():
    """Identical gradients: r = m but (r − 1)/(m − 1) = 1 at every m; one example: undefined."""
    model = softmax_regression()
    x, y = data(m=1)
    for m in (2, 5, 9):
        stats = coherence.measure(model, np.repeat(x, m, 0), np.repeat(y, m, 0))
        assert stats.m_coherence == pytest.approx(m, rel=1e-12)
        assert stats.pairwise_coherence == pytest.approx(1.0, rel=1e-12)
    assert math.isnan(coherence.measure(model, x, y).pairwise_coherence)


def test_per_layer_names_from_model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu", name="hidden"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3, name="out")])
    model.compile(loss=SCCE)
    stats = coherence.measure(model, *data(), per_layer=True)
    assert set(stats.per_layer) == {"hidden", "bn", "out"}
    assert sum(b.sq_norm_of_sum for b in stats.per_layer.values()) == pytest.approx(stats.sq_norm_of_sum, rel=1e-10)
    assert sum(b.sum_of_sq_norms for b in stats.per_layer.values()) == pytest.approx(stats.sum_of_sq_norms, rel=1e-10)


def test_loss_reduction_fractions_match_reference():
    model = softmax_regression()
    x, y = data(m=12)
    pristine = np.arange(12) % 3 != 0
    blocks = reference_gradients(x, y, *[v.numpy() for v in model.trainable_variables])
    g_all = np.concatenate(blocks, axis=1)
    g, g_p = g_all.sum(0), g_all[pristine].sum(0)
    f_p, f_c = coherence.loss_reduction_fractions(model, x, y, pristine, batch_size=5)
    assert f_p == pytest.approx(g @ g_p / (g @ g), rel=1e-10)
    assert f_p + f_c == pytest.approx(1.0, abs=1e-12)
    assert coherence.loss_reduction_fractions(model, x, y, np.ones(12, bool))[0] == pytest.approx(1.0)


def test_loss_reduction_fractions_reuse_one_compiled_function():
    """Measured every few steps, f^p must not rebuild its tf.function on every call."""
    model = softmax_regression()
    x, y = data(m=12)
    pristine = np.arange(12) % 3 != 0
    for _ in range(3):
        coherence.loss_reduction_fractions(model, x, y, pristine, batch_size=6)
    compiled = coherence.compiled_for(model, "fractions", None, False, None)
    assert compiled.experimental_get_tracing_count() == 1


def test_measure_compiles_once_per_model_and_batch_shape():
    """`measure` reuses one tf.function across calls; a smaller last batch retraces once."""
    model = softmax_regression()
    x, y = data(m=12)
    first = coherence.measure(model, x, y, batch_size=6)
    for _ in range(3):
        again = coherence.measure(model, x, y, batch_size=5)  # batches of 5, 5 and 2
    sums = coherence.compiled_for(model, "measure", None, False, None, coherence_dtype=None)
    # blocks of stacked full batches: [1, 6] then [2, 5]; single remainder batch: [2]
    assert sums.stacked.experimental_get_tracing_count() <= 2
    assert sums.single.experimental_get_tracing_count() == 1
    assert again.m_coherence == pytest.approx(first.m_coherence, rel=1e-12)



def test_builds_per_model_are_bounded_when_every_call_brings_a_fresh_loss():
    """A new Loss object per call rebuilds (the key holds the loss), but the builds of earlier
    calls (parameter-sized float64 accumulators, traced graphs) are dropped beyond
    MAX_BUILDS_PER_MODEL, least recently used first: before, every call's build lived as long as
    the model (12 calls on a 545 K-parameter MLP: 12 builds, +6.5 MB each)."""
    model = softmax_regression()
    x, y = data(m=6)
    coherence.measure(model, x, y)
    kept = coherence.compiled_for(model, "measure", None, False, None, coherence_dtype=None)
    bound, losses = coherence.MAX_BUILDS_PER_MODEL, []
    for _ in range(bound + 3):
        losses.append(weakref.ref(loss := keras.losses.SparseCategoricalCrossentropy(from_logits=True)))
        got = coherence.measure(model, x, y, loss=loss)
        assert coherence.measure(model, x, y).m_coherence == pytest.approx(got.m_coherence, rel=1e-12)
        del loss
    gc.collect()
    alive = [ref() is not None for ref in losses]
    # the compiled loss's build, used every round, stays with the bound − 1 latest
    assert alive == [False] * 4 + [True] * (bound - 1)
    assert coherence.compiled_for(model, "measure", None, False, None, coherence_dtype=None) is kept


def test_labels_of_another_rank_on_the_same_model():
    """Labels [m] in one call and [m, 1] in the next (Keras' sparse cross-entropy takes both):
    the compiled functions relaxed the labels' spec to an unknown rank, and Keras' loss then
    failed with "Cannot take the length of shape with unknown rank" (measure, alignment and
    loss_reduction_fractions alike). One function per rank signature now: the same numbers."""
    model = softmax_regression()
    x, y = data(m=12)
    pristine = np.arange(12) % 3 != 0
    for labels in (y, y[:, None], y):
        got = coherence.measure(model, x, labels, batch_size=5)
        aligned = coherence.alignment(model, x, labels, batch_size=5)
        f_p, _ = coherence.loss_reduction_fractions(model, x, labels, pristine, batch_size=5)
        if labels is y:
            want = (got.m_coherence, aligned.alignment, f_p)
        assert got.m_coherence == pytest.approx(want[0], rel=1e-12)
        np.testing.assert_allclose(aligned.alignment, want[1], rtol=1e-10)
        assert f_p == pytest.approx(want[2], rel=1e-12)


def _two_layer_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, "tanh", name="first"),
                              keras.layers.Dense(4, "tanh", name="second"),
                              keras.layers.Dense(3, name="out")])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize("kind", ["measure", "alignment"])
def test_freezing_layers_between_calls_measures_the_new_trainable_set(kind):
    """The compiled functions are rebuilt when the trainable variables change: freezing a layer,
    or swapping which of two same-shaped layers is frozen (the same number of variables, so a
    stale build would silently differentiate the old ones), gives what a fresh model with that
    trainable set gives."""
    x, y = data(m=12, inputs=4, classes=3)
    def call(model):
        if kind == "measure":
            return coherence.measure(model, x, y, batch_size=5, per_layer=True)
        return coherence.alignment(model, x, y, batch_size=5)

    model = _two_layer_model()
    call(model)
    for frozen in ([0], [1], [0, 1]):
        for j, layer in enumerate(model.layers):
            layer.trainable = j not in frozen
        fresh = _two_layer_model()
        for j, layer in enumerate(fresh.layers):
            layer.trainable = j not in frozen
        got, want = call(model), call(fresh)
        if kind == "measure":
            assert got.m_coherence == pytest.approx(want.m_coherence, rel=1e-12)
            assert {name: stats.m_coherence for name, stats in got.per_layer.items()} == (
                pytest.approx({name: stats.m_coherence for name, stats in want.per_layer.items()},
                              rel=1e-12))
        else:
            np.testing.assert_allclose(got.alignment, want.alignment, rtol=1e-10)

def test_errors():
    model = softmax_regression()
    x, y = data()
    with pytest.raises(ValueError, match="Empty"):
        coherence.measure(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="must match"):
        coherence.measure(model, x, y[:4])
    with pytest.raises(ValueError, match="per example"):
        coherence.measure(model, x, y, loss=lambda t, p: tf.reduce_mean(p))
    with pytest.raises(ValueError, match="not compiled"):
        coherence.measure(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), x, y)
    with pytest.raises(ValueError, match="pristine_mask"):
        coherence.loss_reduction_fractions(model, x, y, np.arange(10))
    with pytest.raises(ValueError, match="must match"):
        coherence.loss_reduction_fractions(model, x, y, np.ones(4, bool))
    with pytest.raises(ValueError, match="Empty"):
        coherence.StreamingCoherence.for_model(model).result()


def test_streaming_first_batch_replaces_earlier_sums_even_non_finite():
    """`update(..., first=True)` is a reset and an update in one pass (what `measure` does on
    its first batch): nothing from before survives, not even a NaN or an Inf."""
    acc = coherence.StreamingCoherence([(2,), (1,)])
    acc.update([tf.constant([np.nan, 1.0]), None], tf.constant([[np.inf, 1.0]]))
    g = [tf.constant([1.0, 2.0]), tf.constant([3.0])]
    sq_norms = tf.constant([[1.0, 4.0], [2.0, 5.0]])
    acc.update(g, sq_norms, first=tf.constant(True))
    acc.update(g, sq_norms)  # accumulates
    expected = coherence.stats_from_sums(4 * (1 + 4 + 9), 2 * (1 + 4 + 2 + 5), 4)
    got = acc.result()
    assert acc.count == 4
    assert got.m_coherence == pytest.approx(expected.m_coherence, rel=1e-12)
    assert got.alpha == pytest.approx(expected.alpha, rel=1e-12)


@pytest.mark.parametrize("compiled", [False, True])
def test_streaming_reset_if_then_in_place_adds(compiled):
    """`reset_if(first)` then `update(..., first=False)` (what `measure` does per block of
    stacked batches): reset_if(False) keeps the sums, reset_if(True) drops them, NaN included;
    the in-place adds then sum in float64, in a tf.function too."""
    acc = coherence.StreamingCoherence([(2,), (1,)])
    g = [tf.constant([1.0, 2.0]), tf.constant([3.0])]
    sq_norms = tf.constant([[1.0, 4.0], [2.0, 5.0]])

    def block(first):
        acc.reset_if(first)
        acc.update(g, sq_norms, first=False)
        acc.update(g, sq_norms, first=False)

    run = tf.function(block, autograph=False) if compiled else block
    acc.update([tf.constant([np.nan, 1.0]), None], tf.constant([[np.inf, 1.0]]))
    run(tf.constant(True))
    run(tf.constant(False))
    expected = coherence.stats_from_sums(16 * (1 + 4 + 9), 4 * (1 + 4 + 2 + 5), 8)
    got = acc.result()
    assert acc.count == 8
    assert (got.sq_norm_of_sum, got.sum_of_sq_norms) == (expected.sq_norm_of_sum,
                                                         expected.sum_of_sq_norms)
