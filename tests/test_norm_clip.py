"""cgh_tf.aggregators.NormClip (per-example norm clipping of a fixed share of the batch) and
Winsorize.changed_share, against float64 NumPy references (closed-form softmax regression)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf
from cgh_tf import aggregators

from tests import reference

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _float64_regression(w0, b0):
    inputs = keras.Input((w0.shape[0],), dtype="float64")
    layer = keras.layers.Dense(w0.shape[1], dtype="float64")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([w0, b0])
    return model


def _clipped_mean_reference(w, b, x, y, clip_pct):
    """(1/m) Σ min(1, τ/‖g_i‖) g_i with τ the (k+1)-th largest norm, k = round(m·pct/100)."""
    gw, gb = reference.per_example_gradients(w, b, x, y)
    flat = np.concatenate([gw.reshape(len(x), -1), gb], axis=1)
    norms = np.linalg.norm(flat, axis=1)
    k = int(np.round(len(x) * clip_pct / 100))
    tau = np.sort(norms)[::-1][k]
    scale = np.minimum(1.0, tau / norms)
    assert (scale < 1).sum() == k  # no ties among random norms: exactly k examples clipped
    return np.einsum("m,mdc->dc", scale, gw) / len(x), scale @ gb / len(x)


@pytest.mark.parametrize("clip_pct", [0.0, 10.0, 25.0])
def test_norm_clip_is_the_clipped_mean_of_the_float64_reference(clip_pct):
    x, y, w0, b0 = reference.problem(m=20, d=5, c=4, seed=3)
    model = _float64_regression(w0, b0)
    grads = aggregators.NormClip(clip_pct).gradients(model, tf.constant(x), tf.constant(y), LOSS)
    want_w, want_b = _clipped_mean_reference(w0, b0, x, y, clip_pct)
    np.testing.assert_allclose(grads[0].numpy(), want_w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grads[1].numpy(), want_b, rtol=1e-10, atol=1e-13)
    if clip_pct == 0.0:  # k = 0: the plain mean gradient
        np.testing.assert_allclose(grads[0].numpy(), reference.mean_gradient(w0, b0, x, y)[0],
                                   rtol=1e-10, atol=1e-13)


def test_norm_clip_works_in_a_compiled_function_and_refuses_bad_input():
    x, y, w0, b0 = reference.problem(m=12, d=3, c=3, seed=1)
    model = _float64_regression(w0, b0)
    clip = aggregators.NormClip(25.0)
    compiled = tf.function(lambda xs, ys: clip.gradients(model, xs, ys, LOSS, training=True))
    np.testing.assert_allclose(compiled(tf.constant(x), tf.constant(y))[1].numpy(),
                               _clipped_mean_reference(w0, b0, x, y, 25.0)[1], rtol=1e-10)
    for bad in (-1.0, 100.0, True, "5"):
        with pytest.raises(ValueError, match="clip_pct must be in"):
            aggregators.NormClip(bad)
    noisy = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="random layers"):
        clip.gradients(noisy, tf.constant(x, tf.float32), tf.constant(y), LOSS, training=True)
    with pytest.raises(ValueError, match="Unknown aggregation"):  # not a cgh_tf.Model aggregation
        cgh_tf.Model(noisy.inputs, noisy.outputs).compile(optimizer="sgd", loss=LOSS,
                                                          aggregation=clip)


def test_norm_matched_mean_is_the_mean_at_the_winsorized_norm(float64_keras):
    x, y, w0, b0 = reference.problem(m=20, d=5, c=4, seed=4)
    model = _float64_regression(w0, b0)
    grads = aggregators.NormMatchedMean(10.0).gradients(model, tf.constant(x), tf.constant(y),
                                                        LOSS)
    gw, gb = reference.per_example_gradients(w0, b0, x, y)
    flat = np.concatenate([gw.reshape(20, -1), gb], axis=1)
    low, high = np.percentile(flat, [10, 90], axis=0, method="nearest")
    mean = flat.mean(0)
    want = mean * np.linalg.norm(np.clip(flat, low, high).mean(0)) / np.linalg.norm(mean)
    np.testing.assert_allclose(np.concatenate([g.numpy().ravel() for g in grads]), want,
                               rtol=1e-9, atol=1e-13)


def test_winsorize_changed_share_counts_the_values_outside_the_percentiles():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(64, 7, 5))
    values[:, 0, :] = 0.0  # ties (a dead ReLU unit): clipping changes nothing in these coordinates
    for pct in (2.0, 4.0):
        low, high = np.percentile(values, [pct, 100 - pct], axis=0, method="nearest")
        want = np.mean((values < low) | (values > high))
        got = float(aggregators.Winsorize(pct).changed_share(tf.constant(values)))
        assert got == pytest.approx(want, abs=1e-12)
        per_side = int(np.round(63 * pct / 100))
        assert want < 2 * per_side / 64  # ties make it less than the nominal share
    assert float(aggregators.Winsorize(0.0).changed_share(tf.constant(values))) == 0.0
