"""cgh_tf.coherence.alignment: per-example a_i and g_i·S against closed-form float64 softmax
regression gradients (tests/reference.py), its identities, its exact path and its errors.
(Every architecture of the coherence matrix: tests/test_coherence_matrix.py, check "alignment".)"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from cgh_tf import alignment as alignment_module
from cgh_tf import coherence

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def softmax_regression(x, y, classes=4, seed=0):
    """A Dense softmax regression with the weights of `reference.problem`, and its per-example
    gradients flattened [m, d·c + c] (closed form, float64)."""
    rng = np.random.default_rng(seed)
    w, b = 0.3 * rng.normal(size=(x.shape[1], classes)), 0.1 * rng.normal(size=classes)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(classes)])
    model.set_weights([w, b])
    model.compile(loss=SCCE)
    gw, gb = reference.per_example_gradients(w, b, x, y)
    return model, np.concatenate([gw.reshape(len(x), -1), gb], axis=1)


@pytest.mark.parametrize("batch_size", [7, 40])  # stacked blocks + remainder; one batch
def test_alignment_matches_the_gram_matrix(batch_size):
    x, y, _, _ = reference.problem(m=29, d=5, c=4, seed=3)
    model, g = softmax_regression(x, y)
    gram = g @ g.T
    got = coherence.alignment(model, x, y, batch_size=batch_size)
    sq_norms = np.diag(gram)
    np.testing.assert_allclose(got.sq_norms, sq_norms, rtol=1e-10)
    np.testing.assert_allclose(got.dot_with_sum, gram.sum(axis=1), rtol=1e-10)
    others = gram.sum(axis=1) - sq_norms  # Σ_{j≠i} g_i·g_j
    np.testing.assert_allclose(got.alignment, others / sq_norms, rtol=1e-9)
    assert got.method == alignment_module.FORWARD_MODE
    assert got.stats.m == 29
    assert got.stats.m_coherence == pytest.approx(reference.m_coherence(g), rel=1e-10)
    # the sample's statistic is the ‖g_i‖²-weighted mean of a_i: r − 1 = (m − 1) × pairwise
    weighted = np.sum(sq_norms * got.alignment) / np.sum(sq_norms)
    assert weighted == pytest.approx(got.stats.m_coherence - 1, rel=1e-9)
    assert weighted == pytest.approx(28 * got.stats.pairwise_coherence, rel=1e-9)


def test_sample_weights_scale_each_gradient():
    """With weights w_i (as measure): g_i = w_i ∇ℓ_i, so g_i·S = w_i ∇ℓ_i · Σ_j w_j ∇ℓ_j."""
    x, y, _, _ = reference.problem(m=10, d=3, c=3, seed=9)
    model, g = softmax_regression(x, y, classes=3)
    w = np.random.default_rng(1).uniform(0.2, 2.0, 10)
    weighted = g * w[:, None]
    got = coherence.alignment(model, x, y, batch_size=4, sample_weight=w)
    np.testing.assert_allclose(got.dot_with_sum, weighted @ weighted.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(got.sq_norms, np.sum(weighted ** 2, axis=1), rtol=1e-10)


def test_dataset_input_equals_arrays():
    x, y, _, _ = reference.problem(m=13, d=3, c=3, seed=4)
    model, _ = softmax_regression(x, y, classes=3)
    arrays = coherence.alignment(model, x, y, batch_size=5)
    dataset = coherence.alignment(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(5))
    np.testing.assert_allclose(dataset.alignment, arrays.alignment, rtol=1e-12)


def test_exact_path_equals_forward_mode():
    x, y, _, _ = reference.problem(m=11, d=4, c=3, seed=5)
    model, g = softmax_regression(x, y, classes=3)
    first = coherence.streamed_sums(model, x, y, None, 4, False)
    norm = np.sqrt(first.stats().sq_norm_of_sum)
    tangent = alignment_module._unit_tangent(model, first.accumulator.grad_sums, norm)
    dots, losses = alignment_module._exact_dots(alignment_module._Sample(model, x, y, None, 4, False, None), tangent)
    np.testing.assert_allclose(dots * norm, (g @ g.T).sum(axis=1), rtol=1e-10)
    np.testing.assert_allclose(losses, first.losses, rtol=1e-12)


def test_failed_sum_check_hands_over_to_the_exact_path(monkeypatch):
    """A forward-mode pass that returns wrong derivatives (here: doubled) fails the check
    Σ_i g_i·S = ‖S‖², warns, and the result comes from the exact path."""
    x, y, _, _ = reference.problem(m=9, d=4, c=3, seed=6)
    model, g = softmax_regression(x, y, classes=3)
    build = alignment_module._build_forward

    def doubled(*args):
        compiled = build(*args)
        per_batch = compiled.per_batch
        return alignment_module._Compiled(lambda xb, yb, wb, t: (2 * per_batch(xb, yb, wb, t)[0],
                                                                 per_batch(xb, yb, wb, t)[1]))

    monkeypatch.setattr(alignment_module, "_build_forward", doubled)
    with pytest.warns(UserWarning, match="fail the check"):
        got = coherence.alignment(model, x, y, batch_size=4)
    assert got.method == alignment_module.EXACT
    np.testing.assert_allclose(got.dot_with_sum, (g @ g.T).sum(axis=1), rtol=1e-10)


def test_zero_gradient_example_has_undefined_alignment():
    """MSE of a linear model; example 0 is fitted exactly, so g_0 = 0 and a_0 is NaN."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.set_weights([np.array([[1.0], [2.0]]), np.array([0.5])])
    x = np.array([[1.0, 1.0], [0.0, 1.0], [2.0, -1.0], [1.0, 3.0]])
    y = x @ np.array([1.0, 2.0]) + 0.5 + np.array([0.0, 1.0, -0.5, 2.0])
    got = coherence.alignment(model, x, y, loss="mse", batch_size=3)
    assert np.isnan(got.alignment[0]) and got.sq_norms[0] == 0
    assert np.all(np.isfinite(got.alignment[1:]))
    # by hand: g_i = 2 r_i (x_i, 1) with residual r_i = prediction − target
    r = -np.array([0.0, 1.0, -0.5, 2.0])
    g = 2 * r[:, None] * np.concatenate([x, np.ones((4, 1))], axis=1)
    np.testing.assert_allclose(got.dot_with_sum, g @ g.sum(axis=0), rtol=1e-10, atol=1e-12)


def test_a_reshuffled_dataset_is_an_error_not_a_wrong_result():
    x, y, _, _ = reference.problem(m=40, d=3, c=3, seed=7)
    model, _ = softmax_regression(x, y, classes=3)
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(40, seed=1).batch(8)
    with pytest.raises(ValueError, match="same batches in the same order"):
        coherence.alignment(model, shuffled)


def test_dropout_in_training_mode_is_an_error():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3)])
    model.compile(loss=SCCE)
    x, y, _, _ = reference.problem(m=16, d=4, c=3, seed=8)
    with pytest.raises(ValueError, match="deterministic"):
        coherence.alignment(model, x, y, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inference mode: no Dropout, forward mode, no warning
        assert coherence.alignment(model, x, y).method == alignment_module.FORWARD_MODE


def test_bad_input_fails_before_any_work():
    x, y, _, _ = reference.problem(m=6, d=3, c=3)
    model, _ = softmax_regression(x, y, classes=3)
    with pytest.raises(ValueError, match="must match"):
        coherence.alignment(model, x, y[:4])
    with pytest.raises(ValueError, match="Empty"):
        coherence.alignment(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="per example"):
        coherence.alignment(model, x, y, loss=lambda t, p: tf.reduce_mean(p))
