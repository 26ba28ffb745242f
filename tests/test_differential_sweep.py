"""A seeded subset of the differential sweep (helper i46): `measure`, `alignment` and
`per_example_gradients` against Keras' own batch loss, example by example.

The reference does not use cgh_tf: g_i = m · ∇_w of example i's share of `model.compute_loss`
on the whole batch (sample weights, masks, reductions, loss_weights: Keras' own code), the share
isolated by a stop-gradient on every other row of ŷ (ŷ_mixed = e_i ⊙ ŷ + (1 − e_i) ⊙ sg(ŷ), equal
to ŷ in value, Keras' mask re-attached: the test reads Keras' `_keras_mask` attribute, tests
only), batch by batch, float64. The full sweep (≈ 560 checks:
every Keras reduction × from_logits × sample weights with zeros × batch sizes; 17 losses; masked
GRU / LSTM / SimpleRNN / Bidirectional / attention / pooling / Masking with ragged and all-padded
rows; conv families with groups, dilation, strides; dict / list inputs and outputs; state changes
between calls) found no disagreement beyond the defects fixed with it; these cases keep guarding
the same ground cheaply.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L

from cgh_tf import coherence, per_example

M = 7


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def _share(tensor, i, m):
    """ŷ with only example i's rows differentiable (same value; Keras' mask kept)."""
    select = tf.reshape(tf.one_hot(i, m, dtype=tensor.dtype), [m] + [1] * (tensor.shape.rank - 1))
    mixed = select * tensor + (1 - select) * tf.stop_gradient(tensor)
    mask = getattr(tensor, "_keras_mask", None)
    if mask is not None:
        mixed._keras_mask = mask
    return mixed


def reference_gradients(model, x, y, sample_weight=None, batch_size=None):
    """[m] of per-variable float64 arrays: g_i = m_b · ∇ (example i's share of Keras' loss of its
    batch of m_b), no regularisation in the model."""
    m = len(tf.nest.flatten(x)[0])
    size = batch_size or m
    part = lambda s, a: None if s is None else tf.nest.map_structure(lambda t: t[a:a + size], s)  # noqa: E731
    gradients = []
    for start in range(0, m, size):
        xb, yb, wb = part(x, start), part(y, start), part(sample_weight, start)
        mb = len(tf.nest.flatten(xb)[0])
        for i in range(mb):
            with tf.GradientTape() as tape:
                y_pred = tf.nest.map_structure(lambda t: _share(t, i, mb),
                                               model(xb, training=False))
                loss = mb * model.compute_loss(x=xb, y=yb, y_pred=y_pred, sample_weight=wb)
            grads = tape.gradient(loss, model.trainable_variables)
            gradients.append([np.zeros(v.shape) if g is None else np.asarray(tf.convert_to_tensor(g))
                              for g, v in zip(grads, model.trainable_variables)])
    return gradients


def assert_agrees(model, x, y, sample_weight=None, batch_size=None, exact=True, align=True):
    """measure (m-coherence, Q), alignment (g_i·S, ‖g_i‖²) and, for one batch,
    per_example_gradients against the reference."""
    g = reference_gradients(model, x, y, sample_weight, batch_size)
    flat = np.stack([np.concatenate([v.ravel() for v in gi]) for gi in g])
    total = flat.sum(axis=0)
    stats = coherence.measure(model, x, y, batch_size=batch_size, sample_weight=sample_weight)
    np.testing.assert_allclose(stats.sum_of_sq_norms, np.sum(flat ** 2), rtol=1e-10)
    np.testing.assert_allclose(stats.m_coherence, total @ total / np.sum(flat ** 2), rtol=1e-10)
    if not align:
        return
    got = coherence.alignment(model, x, y, batch_size=batch_size, sample_weight=sample_weight)
    np.testing.assert_allclose(got.sq_norms, np.sum(flat ** 2, axis=1), rtol=1e-9, atol=1e-14)
    scale = np.max(np.abs(flat @ total))
    np.testing.assert_allclose(got.dot_with_sum, flat @ total, rtol=1e-9, atol=1e-12 * scale)
    if batch_size is None and exact:
        pe = per_example.per_example_gradients(model, x, y, sample_weight=sample_weight)
        got_flat = np.concatenate([np.reshape(t.numpy(), [M, -1]) for t in pe], axis=1)
        np.testing.assert_allclose(got_flat, flat, rtol=1e-9, atol=1e-12 * np.max(np.abs(flat)))


def _mlp(activation):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,))
    hidden = L.Dense(6, activation="tanh")(inputs)
    return keras.Model(inputs, L.Dense(3, activation=activation)(hidden))


@pytest.mark.parametrize("reduction,from_logits,weights,batch_size", [
    ("mean_with_sample_weight", False, "zeros", 3),
    ("none", True, "positive", None),
    ("mean_with_sample_weight", True, "all zero", None),
])
def test_reductions_and_sample_weights(reduction, from_logits, weights, batch_size):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(M, 5)), rng.integers(0, 3, M)
    w = {"zeros": np.r_[0.0, 0.0, rng.uniform(0.5, 2, M - 2)], "positive": rng.uniform(0.5, 2, M),
         "all zero": np.zeros(M)}[weights]
    model = _mlp(None if from_logits else "softmax")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits,
                                                                  reduction=reduction))
    if weights == "all zero":  # every g_i = 0: undefined, NaN (never 0)
        assert np.isnan(coherence.measure(model, x, y, sample_weight=w).m_coherence)
        return
    assert_agrees(model, x, y, w, batch_size)


def test_dict_outputs_with_loss_weights_and_a_custom_loss():
    rng = np.random.default_rng(1)
    keras.utils.set_random_seed(2)
    inputs = keras.Input((5,))
    hidden = L.Dense(6, activation="relu")(inputs)
    model = keras.Model(inputs, {"a": L.Dense(3, activation="softmax", name="a")(hidden),
                                 "b": L.Dense(2, name="b")(hidden)})
    model.compile(loss={"a": "sparse_categorical_crossentropy",
                        "b": lambda t, p: tf.reduce_mean(tf.abs(t - p) ** 1.5, axis=-1)},
                  loss_weights={"a": 0.3, "b": 2.0})
    x, y = rng.normal(size=(M, 5)), {"a": rng.integers(0, 3, M), "b": rng.normal(size=(M, 2))}
    assert_agrees(model, x, y, rng.uniform(0.5, 2, M), batch_size=3)


def test_masked_ragged_sequences_with_an_all_padded_row():
    """Embedding(mask_zero) → Bidirectional(LSTM) per token: ragged lengths, row 2 all padding,
    a per-token loss over the real tokens only (measure and per_example_gradients; the sweep ran
    alignment's exact path on it too, 10 s)."""
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(3)
    x = rng.integers(1, 9, (M, 4)) * (np.arange(4) < rng.integers(1, 5, M)[:, None])
    x[2] = 0
    inputs = keras.Input((None,), dtype="int32")
    hidden = L.Bidirectional(L.LSTM(2, return_sequences=True))(L.Embedding(9, 3, mask_zero=True)(inputs))
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(hidden))
    model.compile(loss="sparse_categorical_crossentropy")
    assert_agrees(model, x, rng.integers(0, 3, (M, 4)), align=False)


@pytest.mark.parametrize("layer", [
    lambda: L.Conv1D(4, 3, strides=2, dilation_rate=1, padding="causal"),
    lambda: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2),
])
def test_conv_variants(layer):
    rng = np.random.default_rng(3)
    keras.utils.set_random_seed(4)
    conv = layer()
    shape = (7, 4) if isinstance(conv, L.Conv1D) else (7, 7, 4)
    inputs = keras.Input(shape)
    model = keras.Model(inputs, L.Dense(3, activation="softmax")(L.Flatten()(conv(inputs))))
    model.compile(loss="sparse_categorical_crossentropy")
    assert_agrees(model, rng.normal(size=(M,) + shape), rng.integers(0, 3, M))


def test_state_between_calls():
    """The same model measured, then frozen inside a nested model, recompiled with another loss,
    given new weights, and measured on one example: every call agrees with the reference."""
    rng = np.random.default_rng(5)
    keras.utils.set_random_seed(5)
    inner = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="tanh"),
                              L.Dense(4, activation="tanh")])
    inputs = keras.Input((5,))
    model = keras.Model(inputs, L.Dense(3)(inner(inputs)))
    x, y = rng.normal(size=(M, 5)), rng.integers(0, 3, M)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert_agrees(model, x, y, batch_size=3, align=False)
    inner.layers[0].trainable = False
    assert_agrees(model, x, y, batch_size=3)
    model.compile(loss="mse")
    model.set_weights([1.5 * w for w in model.get_weights()])
    assert_agrees(model, x, np.eye(3)[y], batch_size=3)
    assert_agrees(model, x[:1], np.eye(3)[y[:1]], exact=False)
