"""cgh_tf.loss_decomposition against Keras' own batch loss and a float64 brute-force reference.

For every case (masks on ŷ, per-example and per-token sample weights, every reduction, loss_weights,
dict and list outputs): (1/m) Σ_i ℓ_i equals `model.compute_loss` (Keras' value); the mean of the
per-example gradients, each taken on a batch of one example with its slice of the prepared targets,
equals the tape gradient of Keras' batch loss; and ℓ_i equals the hand-derived decomposition:
Keras' own loss with reduction "sum" on example i alone, × m / D, D the divisor of the reduction
computed here in NumPy (docs/design.md §loss decomposition).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import keras_internals, loss_decomposition

M, T, VOCAB, CLASSES = 5, 4, 9, 3
# Built at import time, before any test switches Keras to float64: its dtype stays float32.
IMPORT_TIME_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
REDUCTIONS = ["sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", None]


def _masked_lm(model_cls=keras.Model):
    """Embedding(mask_zero=True) -> Dense logits per token; padded sequences (the mask rides on ŷ)."""
    inputs = keras.Input((T,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 4, mask_zero=True)(inputs)
    model = model_cls(inputs, keras.layers.Dense(CLASSES)(keras.layers.Dense(5, "tanh")(hidden)))
    rng = np.random.default_rng(1)
    x = rng.integers(1, VOCAB, (M, T)).astype("int32")
    x[0, 2:] = 0
    x[3, 1:] = 0
    y = rng.integers(0, CLASSES, (M, T))
    return model, x, y, (x > 0).astype("float64")


def _regression():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4, "tanh")(inputs)))
    rng = np.random.default_rng(2)
    return model, rng.normal(size=(M, 3)), rng.normal(size=(M, 2)), None


def _two_outputs(as_dict):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, "tanh")(inputs)
    a = keras.layers.Dense(CLASSES, name="a")(hidden)
    b = keras.layers.Dense(2, name="b")(hidden)
    model = keras.Model(inputs, {"a": a, "b": b} if as_dict else [a, b])
    rng = np.random.default_rng(3)
    y = {"a": rng.integers(0, CLASSES, M), "b": rng.normal(size=(M, 2))}
    return model, rng.normal(size=(M, 3)), y if as_dict else [y["a"], y["b"]]


def _scce(reduction="sum_over_batch_size"):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)


def _check(model, x, y, sample_weight=None):
    """Σ_i ℓ_i / m = Keras' loss, and mean_i g_i (one example at a time) = Keras' gradient.
    Returns the per-example losses ℓ_i (NumPy)."""
    decomposition = loss_decomposition.for_model(model)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        keras_loss = tf.reduce_sum(model.compute_loss(x=x, y=y, y_pred=model(x),
                                                      sample_weight=sample_weight))
    keras_grads = [tf.convert_to_tensor(g) for g in tape.gradient(keras_loss, variables)]
    targets = decomposition.prepare(y, model(x), sample_weight)
    losses = decomposition(targets, model(x)).numpy()
    np.testing.assert_allclose(losses.mean(), keras_loss.numpy(), rtol=1e-12, atol=1e-14)
    grad_sums = [np.zeros(v.shape) for v in variables]
    for i in range(M):
        one = tf.nest.map_structure(lambda t: t[i:i + 1], (x, targets))
        with tf.GradientTape() as tape:
            loss_i = tf.reduce_sum(decomposition(one[1], model(one[0])))
        for total, g in zip(grad_sums, tape.gradient(loss_i, variables)):
            total += 0 if g is None else tf.convert_to_tensor(g).numpy()
    for mine, theirs in zip(grad_sums, keras_grads):
        np.testing.assert_allclose(mine / M, theirs.numpy(), rtol=1e-10, atol=1e-13)
    return losses


def _summed_single_example_losses(loss, model, x, y, sample_weight):
    """Keras' own loss with reduction "sum" on each example alone (the mask rides on ŷ)."""
    config = dict(loss.get_config(), reduction="sum")
    summed = type(loss).from_config(config)
    out = []
    for i in range(M):
        weight = None if sample_weight is None else sample_weight[i:i + 1]
        out.append(float(summed(y[i:i + 1], model(x[i:i + 1]), weight)))
    return np.array(out)


def _divisor(reduction, values_shape, mask, sample_weight):
    """Keras' divisor, derived by hand (the table of cgh_tf.loss_decomposition)."""
    if reduction in (None, "sum"):
        return 1.0
    merged = np.ones(values_shape) if mask is None else mask
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        return float(np.sum(np.broadcast_to(sample_weight, values_shape) * merged))
    return float(np.sum(merged))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weights", [None, "per_token"])
def test_masked_per_token_lm(float64_keras, reduction, weights):
    model, x, y, mask = _masked_lm()
    loss = _scce(reduction)
    model.compile(loss=loss)
    sample_weight = None if weights is None else np.random.default_rng(4).uniform(0.5, 2, (M, T))
    losses = _check(model, x, y, sample_weight)
    divisor = _divisor(reduction, (M, T), mask, sample_weight)
    reference = _summed_single_example_losses(loss, model, x, y, sample_weight) * M / divisor
    # Keras' own batch loss (matched to 1e-12 in _check) applies the mask in float32 on Keras 3.12
    # (6.7e-9 from the float64 hand reference there; 0 from 3.13 on): the reference is held to that.
    np.testing.assert_allclose(losses, reference, rtol=1e-7)
    assert losses[3] != pytest.approx(losses[1])  # the padded example is weighted by its tokens


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weights", [None, "per_example"])
def test_per_example_values_and_weights(float64_keras, reduction, weights):
    model, x, y, _ = _regression()
    loss = keras.losses.MeanSquaredError(reduction=reduction)
    model.compile(loss=loss)
    sample_weight = None if weights is None else np.random.default_rng(5).uniform(0.5, 2, M)
    losses = _check(model, x, y, sample_weight)
    divisor = _divisor(reduction, (M,), None, sample_weight)
    reference = _summed_single_example_losses(loss, model, x, y, sample_weight) * M / divisor
    np.testing.assert_allclose(losses, reference, rtol=1e-12)


def test_class_weights_arrive_as_per_example_weights(float64_keras):
    """Keras turns class_weight into per-example sample weights before the train step."""
    model, x, _, _ = _regression()
    model = keras.Model(model.inputs[0], keras.layers.Dense(CLASSES)(model.outputs[0]))
    model.compile(loss=_scce())
    y = np.array([0, 1, 2, 1, 0])
    class_weight = {0: 1.0, 1: 3.0, 2: 0.5}
    _check(model, x, y, np.array([class_weight[c] for c in y]))


@pytest.mark.parametrize("as_dict", [True, False])
def test_several_outputs_with_loss_weights(float64_keras, as_dict):
    model, x, y = _two_outputs(as_dict)
    losses = {"a": _scce(), "b": keras.losses.MeanSquaredError(reduction="sum")}
    weights = {"a": 0.7, "b": 2.5}
    if not as_dict:
        losses, weights = [losses["a"], losses["b"]], [weights["a"], weights["b"]]
    model.compile(loss=losses, loss_weights=weights)
    _check(model, x, y)


def test_several_outputs_with_per_output_sample_weights(float64_keras):
    model, x, y = _two_outputs(as_dict=True)
    model.compile(loss={"a": _scce(), "b": "mse"}, loss_weights={"a": 1.0, "b": 0.3})
    rng = np.random.default_rng(6)
    _check(model, x, y, {"a": rng.uniform(0.5, 2, M), "b": rng.uniform(0.5, 2, M)})


def test_explicit_loss_function_and_name(float64_keras):
    model, x, y, _ = _regression()
    model.compile(loss="mse")
    for loss in ("mse", lambda t, p: tf.reduce_mean(tf.abs(t - p), axis=-1)):
        decomposition = loss_decomposition.for_model(model, loss)
        values = decomposition(y, model(x)).numpy()
        keras_value = keras.losses.get(loss)(y, model(x)) if isinstance(loss, str) else None
        if keras_value is not None:
            np.testing.assert_allclose(values, keras_value.numpy(), rtol=1e-12)
        else:
            np.testing.assert_allclose(values, np.mean(np.abs(y - model(x).numpy()), -1), rtol=1e-12)


def _one_line_error(match, fn, *args):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)


def test_not_decomposable_cases_raise_one_line():
    model, x, y, _ = _regression()

    class OwnReduction(keras.losses.MeanSquaredError):
        def __call__(self, y_true, y_pred, sample_weight=None):
            return super().__call__(y_true, y_pred, sample_weight) * 2.0

    _one_line_error("overrides Loss.__call__", loss_decomposition.for_model, model, OwnReduction())
    scalar = loss_decomposition.for_model(model, lambda t, p: tf.reduce_mean(tf.square(t - p)))
    _one_line_error("returned a scalar", scalar, tf.constant(y, tf.float32), model(x))

    class OwnComputeLoss(keras.Model):
        def compute_loss(self, *args, **kwargs):
            return super().compute_loss(*args, **kwargs)

    custom = OwnComputeLoss(model.inputs, model.outputs)
    custom.compile(loss="mse")
    _one_line_error("overrides compute_loss", loss_decomposition.for_model, custom)
    _one_line_error("No loss", loss_decomposition.for_model, keras.Model(model.inputs, model.outputs))


def test_compiled_loss_leaves_pins_keras_container():
    """keras_internals.compiled_loss_leaves: Keras' resolved (path, Loss, weight) per output."""
    model, x, y = _two_outputs(as_dict=True)
    model.compile(loss={"a": "sparse_categorical_crossentropy", "b": "mse"},
                  loss_weights={"a": 0.5, "b": 2.0})
    leaves = keras_internals.compiled_loss_leaves(model, y, model(x))
    assert [(path, weight) for path, _, weight in leaves] == [(("a",), 0.5), (("b",), 2.0)]
    assert all(isinstance(loss, keras.losses.Loss) for _, loss, _ in leaves)
    bare = keras.Model(model.inputs, model.outputs)
    bare.compile(loss="mse")
    with pytest.raises(ValueError, match="not built yet"):
        keras_internals.compiled_loss_leaves(bare)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_engine_sum_and_per_example_update_equal_keras(float64_keras, reduction):
    """Σ_i g_i of the fast engine (`gradients_and_sq_norms`, one example's norms checked against
    the brute-force loop) is m × Keras' tape gradient, and a Winsorize(0) step of cgh_tf.Model is
    keras.Model's step, for every reduction, on the masked LM with per-token weights."""
    import cgh_tf
    from cgh_tf import aggregators, per_example
    model, x, y, _ = _masked_lm()
    weights = np.random.default_rng(7).uniform(0.5, 2, (M, T))
    model.compile(loss=_scce(reduction))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        keras_loss = tf.reduce_sum(model.compute_loss(y=y, y_pred=model(x), sample_weight=weights))
    keras_grads = tape.gradient(keras_loss, variables)
    sums = per_example.gradients_and_sq_norms(model, x, y, sample_weight=weights)
    for mine, theirs in zip(sums.grad_sum, keras_grads):
        np.testing.assert_allclose(np.asarray(mine) / M, tf.convert_to_tensor(theirs).numpy(),
                                   rtol=1e-10, atol=1e-13)
    decomposition = loss_decomposition.for_model(model)
    targets = decomposition.prepare(y, model(x), weights)
    with tf.GradientTape() as tape:
        loss_0 = tf.reduce_sum(decomposition(tf.nest.map_structure(lambda t: t[:1], targets),
                                             model(x[:1])))
    sq_norm_0 = [float(np.sum(np.square(tf.convert_to_tensor(g).numpy())))
                 for g in tape.gradient(loss_0, variables)]
    np.testing.assert_allclose(sums.sq_norms.numpy()[0], sq_norm_0, rtol=1e-10, atol=1e-16)

    trained, start = [], model.get_weights()
    for cls, options in ((keras.Model, {}), (cgh_tf.Model, {"aggregation": aggregators.Winsorize(0.0)})):
        twin = _masked_lm(cls)[0]
        twin.set_weights(start)
        twin.compile(optimizer=keras.optimizers.SGD(0.1), loss=_scce(reduction), **options)
        twin.fit(x, y, sample_weight=weights, batch_size=M, epochs=1, shuffle=False, verbose=0)
        trained.append(twin.get_weights())
    for got, want in zip(trained[1], trained[0]):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_several_outputs_through_explain_measure_and_per_example_gradients(float64_keras):
    """The calls that failed on a dict of outputs (issue 21): explain, measure with the compiled
    loss or a dict of losses, per_example_gradients with per-output sample weights."""
    from cgh_tf import coherence, per_example
    model, x, y = _two_outputs(as_dict=True)
    model.compile(loss={"a": _scce(), "b": "mse"}, loss_weights={"a": 0.7, "b": 2.5})
    assert [plan.rule for plan in per_example.explain(model, x, y)] == ["dense"] * 3
    weights = {"a": np.linspace(0.5, 2, M), "b": np.ones(M)}
    grads = per_example.per_example_gradients(model, x, y, sample_weight=weights)
    with tf.GradientTape() as tape:
        keras_loss = model.compute_loss(y=y, y_pred=model(x), sample_weight=weights)
    for mine, theirs in zip(grads, tape.gradient(keras_loss, model.trainable_variables)):
        np.testing.assert_allclose(mine.numpy().mean(0), theirs.numpy(), rtol=1e-10, atol=1e-13)
    flat = np.concatenate([g.numpy().reshape(M, -1) for g in grads], axis=1)
    want = float(np.sum(flat.sum(0) ** 2) / np.sum(flat ** 2))
    stats = coherence.measure(model, x, y, sample_weight=weights)
    assert stats.m_coherence == pytest.approx(want, rel=1e-9)
    unweighted = coherence.measure(model, x, y, loss={"a": _scce(), "b": "mse"})
    assert np.isfinite(unweighted.m_coherence) and unweighted.m_coherence != pytest.approx(want)


def test_loss_built_before_float64_still_gives_float64_values(float64_keras):
    """A Loss object built under float32 (e.g. a module-level constant) keeps dtype float32 after
    `set_floatx("float64")`, and Keras' own `evaluate` then rounds the loss to float32 (about 1e-8
    relative). cgh_tf's per-example values, the engine's, and alignment's are computed in float64
    whenever ŷ is float64 (`loss_decomposition._compute_dtype`): equal to a NumPy float64 reference
    and to a loss built under float64, to 1e-14."""
    from cgh_tf import coherence, per_example  # pylint: disable=import-outside-toplevel
    assert IMPORT_TIME_LOSS.dtype == "float32"
    model, x, _, _ = _regression()
    y = np.random.default_rng(4).integers(0, 2, M)
    logits = model(x).numpy()
    reference = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(M), y]
    for loss in (IMPORT_TIME_LOSS, _scce()):
        sums = per_example.gradients_and_sq_norms(model, x, y, per_example.per_example_loss_fn(model, loss))
        assert sums.losses.dtype == tf.float64
        np.testing.assert_allclose(sums.losses.numpy(), reference, rtol=1e-14)
        np.testing.assert_allclose(coherence.alignment(model, x, y, loss=loss).losses, reference,
                                   rtol=1e-14)
