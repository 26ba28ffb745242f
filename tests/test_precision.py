"""Coherence under 16-bit policies (cgh_tf.precision): the one-time warning, and
coherence_dtype="float32" in `coherence.measure` and `cgh_tf.Model` against a float64 brute-force
loop of a twin model with the same weights."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf
from cgh_tf import coherence, precision
from matrix_models import dtype_policy

L = keras.layers
M = 16
SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build(seed=0):
    """Dense -> LayerNorm -> Dense(3) logits, in the current policy, with M examples."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = L.LayerNormalization()(L.Dense(8, activation="tanh")(inputs))
    model = keras.Model(inputs, L.Dense(3)(h))
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(v + rng.normal(scale=0.3, size=v.shape).astype(v.dtype))
    return model, rng.normal(size=(M, 6)).astype("float32"), rng.integers(0, 3, M)


def float64_m_coherence(model, x, y):
    """m-coherence from one tape per example of a float64 twin with `model`'s weights."""
    with dtype_policy("float64", "float64"):
        twin, _, _ = build()
    twin.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    grads = []
    for i in range(M):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(SCCE.call(y[i:i + 1], twin(x[i:i + 1].astype(np.float64))))
        grads.append(np.concatenate([np.ravel(g) for g in tape.gradient(
            loss, twin.trainable_variables)]))
    grads = np.stack(grads)
    return float(np.sum(grads.sum(0) ** 2) / np.sum(grads ** 2))


def sixteen_bit_warnings(caught):
    return [w for w in caught if "coherence_dtype='float32'" in str(w.message)]


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_measure_warns_once_in_16_bits_and_float32_matches_float64(policy):
    with dtype_policy(policy, "float32"):
        model, x, y = build()
    want = float64_m_coherence(model, x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = coherence.measure(model, x, y, loss=SCCE).m_coherence
        coherence.measure(model, x, y, loss=SCCE)
        in_float32 = coherence.measure(model, x, y, loss=SCCE, coherence_dtype="float32")
    told = sixteen_bit_warnings(caught)
    assert len(told) == 1
    dtype = policy.split("_")[1]
    assert f"computed in {dtype}" in str(told[0].message)
    assert precision.EXPECTED_RELATIVE_ERROR[dtype] in str(told[0].message)
    assert abs(in_float32.m_coherence - want) <= 1e-5 * want
    assert abs(default - want) > 1e-5 * want  # 16-bit rounding is visible without the option
    assert abs(default - want) <= 0.05 * want
    assert all(layer.compute_dtype == dtype for layer in model.layers[1:-1])  # restored


def test_no_warning_in_float32():
    model, x, y = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coherence.measure(model, x, y, loss=SCCE)
    assert sixteen_bit_warnings(caught) == []


def test_trainer_metric_in_float32_under_mixed_bfloat16():
    """coherence_dtype="float32": the metric of the first step (SGD(0): the weights stay) equals
    the float64 loop; the update still runs in the model's policy (no second warning)."""
    with dtype_policy("mixed_bfloat16", "float32"):
        keras.utils.set_random_seed(0)
        model, x, y = build()
        net = cgh_tf.Model(model.inputs, model.outputs)
    net.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCCE, coherence_every=1,
                coherence_dtype="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = net.fit(x, y, batch_size=M, epochs=1, shuffle=False, verbose=0)
    assert sixteen_bit_warnings(caught) == []
    want = float64_m_coherence(model, x, y)
    assert abs(history.history["m_coherence"][0] - want) <= 1e-5 * want
    assert net.layers[1].compute_dtype == "bfloat16"


def test_bad_coherence_dtype_is_one_line_before_work():
    model, x, y = build()
    with pytest.raises(ValueError, match="coherence_dtype must be None .* or 'float32'; got 'float16'"):
        coherence.measure(model, x, y, loss=SCCE, coherence_dtype="float16")
    net = cgh_tf.Model(model.inputs, model.outputs)
    with pytest.raises(ValueError, match="coherence_dtype='float32' has no effect without"):
        net.compile(optimizer="sgd", loss=SCCE, coherence_dtype="float32")
    with pytest.raises(ValueError, match="coherence_dtype must be"):
        net.compile(optimizer="sgd", loss=SCCE, coherence_every=1, coherence_dtype=np.float32)


def test_float32_needs_float32_variables():
    with dtype_policy("bfloat16", "float32"):
        model, x, y = build()
    with pytest.raises(ValueError, match="needs float32 variables"):
        coherence.measure(model, x, y, loss=SCCE, coherence_dtype="float32")
