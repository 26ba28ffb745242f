"""include_regularization=True: g_i is the gradient of ℓ_i + R (cgh_tf/regularization.py).

Reference: a float64 brute-force loop, one GradientTape per example of Keras' own objective on
that example alone (`model.compute_loss`, which adds the weight regularisers' `model.losses`),
and the regularisers' gradients derived by hand.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import coherence, per_example, regularization


def scce():
    """Built inside the float64 fixture: a Loss keeps the floatx of its construction as its dtype
    (one made at import computes Keras' loss in float32)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _builtin_regularizers_take_float64():
    """False on Keras versions (3.12) whose built-in regularisers multiply a float32 factor with
    a float64 weight, so Keras itself cannot train a float64 model that has them."""
    try:
        keras.regularizers.L1(0.02)(tf.Variable(np.zeros(2), dtype=tf.float64))
    except (TypeError, tf.errors.InvalidArgumentError):
        return False
    return True


class InWeightDtype(keras.regularizers.Regularizer):
    """l1 Σ|w| + l2 Σw² in the weight's dtype, the factors rounded to float32 as Keras' built-ins
    round them: the built-ins' penalty on Keras versions whose own cannot take float64 weights."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1, self.l2 = float(np.float32(l1)), float(np.float32(l2))

    def __call__(self, w):
        return self.l1 * tf.reduce_sum(tf.abs(w)) + self.l2 * tf.reduce_sum(tf.square(w))


def l1l2(l1=0.0, l2=0.0):
    """Keras' L1 / L2 / L1L2 regulariser, or `InWeightDtype` where those cannot take float64."""
    if not _builtin_regularizers_take_float64():
        return InWeightDtype(l1, l2)
    if not l2:
        return keras.regularizers.L1(l1)
    return keras.regularizers.L2(l2) if not l1 else keras.regularizers.L1L2(l1, l2)


pytestmark = pytest.mark.usefixtures("float64_keras")  # every test in float64 Keras (conftest)


class Quartic(keras.regularizers.Regularizer):
    """A custom weight regulariser: c Σ w⁴ (gradient 4c w³)."""

    def __init__(self, c):
        self.c = c

    def __call__(self, w):
        return self.c * tf.reduce_sum(tf.pow(w, 4))


def regularized_model(seed=0):
    """Dense(tanh) → Dense(tanh) → Dense logits, with L2 / L1 / L1L2 / a custom regulariser on
    kernels and biases, and a middle layer without any."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(5, "tanh", name="first", kernel_regularizer=l1l2(l2=0.03),
                           bias_regularizer=l1l2(l1=0.02)),
        keras.layers.Dense(4, "tanh", name="plain"),
        keras.layers.Dense(3, name="out", kernel_regularizer=l1l2(0.01, 0.02),
                           bias_regularizer=Quartic(0.05)),
    ])
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.7, size=w.shape) for w in model.get_weights()])
    model.compile(loss=scce())
    return model


def data(m=17, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, 4)), rng.integers(0, 3, m)


def brute_force(model, x, y, sample_weight=None):
    """[m, P] per-example gradients of Keras' objective on each single example (ℓ_i + R), flat,
    with the [P] layer name of each coordinate."""
    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            y_pred = model(x[i:i + 1], training=False)
            w = None if sample_weight is None else sample_weight[i:i + 1]
            objective = model.compute_loss(x=x[i:i + 1], y=y[i:i + 1], y_pred=y_pred,
                                           sample_weight=w, training=False)
        grads = tape.gradient(objective, model.trainable_variables)
        rows.append(np.concatenate([np.ravel(g) for g in grads]))
    owners = np.concatenate([[layer.name] * int(np.prod(v.shape))
                             for layer in model.layers for v in layer.trainable_weights])
    return np.asarray(rows), owners


def stats_of(g):
    """(‖S‖², Q) of [m, P] per-example gradients."""
    return float(np.sum(g.sum(0) ** 2)), float(np.sum(g ** 2))


def test_regularizer_gradient_is_the_hand_derived_one():
    model = regularized_model()
    k1, b1, _, _, k3, b3 = [v.numpy() for v in model.trainable_variables]
    def f32(factor):  # Keras' built-in regularisers round their factors to float32
        return float(np.float32(factor))

    expected = [2 * f32(0.03) * k1, f32(0.02) * np.sign(b1), None, None,
                f32(0.01) * np.sign(k3) + 2 * f32(0.02) * k3, 4 * 0.05 * b3 ** 3]
    got = regularization.gradient(model)
    for want, have, v in zip(expected, got, model.trainable_variables):
        np.testing.assert_allclose(have, np.zeros(v.shape) if want is None else want, rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_measure_matches_brute_force_of_loss_plus_regularizers(weighted):
    model = regularized_model()
    x, y = data()
    w = np.random.default_rng(2).uniform(0.3, 2.0, len(x)) if weighted else None
    g, owners = brute_force(model, x, y, w)
    got = coherence.measure(model, x, y, batch_size=7, per_layer=True, sample_weight=w,
                            include_regularization=True)  # 2 stacked batches + a remainder
    s2, q = stats_of(g)
    assert got.sq_norm_of_sum == pytest.approx(s2, rel=1e-10)
    assert got.sum_of_sq_norms == pytest.approx(q, rel=1e-10)
    assert got.m == len(x)
    for name in ("first", "plain", "out"):
        layer_s2, layer_q = stats_of(g[:, owners == name])
        assert got.per_layer[name].sq_norm_of_sum == pytest.approx(layer_s2, rel=1e-10)
        assert got.per_layer[name].sum_of_sq_norms == pytest.approx(layer_q, rel=1e-10)
    plain = coherence.measure(model, x, y, batch_size=7, sample_weight=w)
    assert abs(plain.sum_of_sq_norms - q) > 1e-3 * q  # the regularisers matter on this model


def test_model_without_regularizers_gives_the_same_as_off():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, "tanh"), keras.layers.Dense(3)])
    model.compile(loss=scce())
    x, y = data(m=9)
    off = coherence.measure(model, x, y, batch_size=4, per_layer=True)
    on = coherence.measure(model, x, y, batch_size=4, per_layer=True, include_regularization=True)
    assert on == off
    aligned_off = coherence.alignment(model, x, y, batch_size=4)
    aligned_on = coherence.alignment(model, x, y, batch_size=4, include_regularization=True)
    np.testing.assert_array_equal(aligned_on.dot_with_sum, aligned_off.dot_with_sum)
    np.testing.assert_array_equal(aligned_on.sq_norms, aligned_off.sq_norms)


def test_alignment_matches_the_gram_matrix_of_loss_plus_regularizers():
    model = regularized_model(seed=4)
    x, y = data(m=11, seed=5)
    g, _ = brute_force(model, x, y)
    gram = g @ g.T
    got = coherence.alignment(model, x, y, batch_size=4, include_regularization=True)
    np.testing.assert_allclose(got.sq_norms, np.diag(gram), rtol=1e-9)
    np.testing.assert_allclose(got.dot_with_sum, gram.sum(axis=1), rtol=1e-9)
    s2, q = stats_of(g)
    assert got.stats.m_coherence == pytest.approx(s2 / q, rel=1e-10)


def test_translate_adds_one_vector_to_every_gradient():
    rng = np.random.default_rng(6)
    g = [rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 3))]  # 5 examples, two variables
    r = [rng.normal(size=(2, 3)), None]
    acc = coherence.StreamingCoherence([(2, 3), (3,)])
    acc.update([gv.sum(0) for gv in g], np.stack([np.sum(gv ** 2, axis=tuple(range(1, gv.ndim)))
                                                  for gv in g], axis=1))
    acc.translate(r)
    shifted = np.concatenate([(g[0] + r[0]).reshape(5, -1), g[1]], axis=1)
    s2, q = stats_of(shifted)
    got = acc.result()
    assert got.sq_norm_of_sum == pytest.approx(s2, rel=1e-12)
    assert got.sum_of_sq_norms == pytest.approx(q, rel=1e-12)


class AddsLoss(keras.layers.Layer):
    """A layer adding a data-dependent penalty with add_loss."""

    def call(self, inputs):
        self.add_loss(0.1 * tf.reduce_mean(tf.square(inputs)))
        return inputs


@pytest.mark.parametrize("layer, words", [
    (lambda: keras.layers.Dense(3, activity_regularizer="l2"), "activity_regularizer"),
    (AddsLoss, "add_loss"),
])
def test_example_dependent_penalties_are_refused_before_any_pass(layer, words):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), layer()])
    model.compile(loss=scce())
    x, y = data(m=6)
    for call in (coherence.measure, coherence.alignment):
        with pytest.raises(ValueError, match=words) as error:
            call(model, x, y, include_regularization=True)
        assert "\n" not in str(error.value)
    assert not coherence._COMPILED.get(model)  # pylint: disable=protected-access (no pass built)
    assert np.isfinite(coherence.measure(model, x, y).m_coherence)  # off: the documented g_i


def test_include_regularization_must_be_a_bool():
    model = regularized_model()
    x, y = data(m=4)
    for call in (coherence.measure, per_example.per_example_gradients):
        with pytest.raises(ValueError, match="include_regularization must be True or False"):
            call(model, x, y, include_regularization="yes")


@pytest.mark.parametrize("weighted", [False, True])
def test_per_example_gradients_are_those_of_loss_plus_regularizers(weighted):
    model = regularized_model(seed=6)
    x, y = data(m=9, seed=7)
    w = np.random.default_rng(8).uniform(0.3, 2.0, len(x)) if weighted else None
    g, _ = brute_force(model, x, y, w)
    got = per_example.per_example_gradients(model, x, y, sample_weight=w, chunk_size=4,
                                            include_regularization=True)
    flat = np.concatenate([np.reshape(t, (len(x), -1)) for t in got], axis=1)
    np.testing.assert_allclose(flat, g, rtol=1e-9, atol=1e-12)
    off = per_example.per_example_gradients(model, x, y, sample_weight=w)
    r = np.concatenate([np.ravel(t) for t in regularization.gradient(model)])
    assert np.max(np.abs(r)) > 1e-3  # the regularisers matter on this model
    np.testing.assert_allclose(flat - np.concatenate(
        [np.reshape(t, (len(x), -1)) for t in off], axis=1), np.tile(r, (len(x), 1)), atol=1e-12)


def test_per_example_gradients_refuse_example_dependent_penalties():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activity_regularizer="l2")])
    model.compile(loss=scce())
    x, y = data(m=5)
    with pytest.raises(ValueError, match="activity_regularizer"):
        per_example.per_example_gradients(model, x, y, include_regularization=True)


# ---------------------------------------------------------------------------------------------
# The trainer's metric: cgh_tf.Model.compile(coherence_include_regularization=True)


def regularized_trainer(middle, seed=7):
    """cgh_tf.Model with the regularisers of `regularized_model`; `middle` = "dropout" puts a
    Dropout between the layers, which makes the metric take its own (inference-mode) pass."""
    from cgh_tf import Model  # pylint: disable=import-outside-toplevel
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, "tanh", name="first", kernel_regularizer=l1l2(l2=0.03),
                           bias_regularizer=l1l2(l1=0.02))(inputs)
    if middle == "dropout":
        h = keras.layers.Dropout(0.5)(h)
    outputs = keras.layers.Dense(3, name="out", bias_regularizer=Quartic(0.05),
                                 kernel_regularizer=l1l2(0.01, 0.02))(h)
    model = Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.7, size=w.shape) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("middle", ["none", "dropout"])  # the update's pass shared, or its own
def test_trainer_metric_includes_the_regularizers(middle):
    model = regularized_trainer(middle)
    x, y = data(m=12, seed=8)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=scce(), coherence_every=1,
                  coherence_per_layer=True, coherence_include_regularization=True)
    g, owners = brute_force(model, x, y)  # at the weights of the first (only) step
    with pytest.warns(UserWarning) if middle == "dropout" else _no_warning():
        history = model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    s2, q = stats_of(g)  # the metrics are float32 sums (cgh_tf.training)
    assert history["m_coherence"][0] == pytest.approx(s2 / q, rel=1e-6)
    assert history["alpha"][0] == pytest.approx(s2 / (q * len(x)), rel=1e-6)
    for name in ("first", "out"):
        layer_s2, layer_q = stats_of(g[:, owners == name])
        assert history[f"m_coherence/{name}"][0] == pytest.approx(layer_s2 / layer_q, rel=1e-6)


def _no_warning():
    import contextlib  # pylint: disable=import-outside-toplevel
    return contextlib.nullcontext()


def test_trainer_option_is_checked():
    model = regularized_trainer("none")
    with pytest.raises(ValueError, match="has no effect without coherence_every"):
        model.compile(loss=scce(), coherence_include_regularization=True)
    with pytest.raises(ValueError, match="must be True or False"):
        model.compile(loss=scce(), coherence_every=1, coherence_include_regularization=1)
    from cgh_tf import Model  # pylint: disable=import-outside-toplevel
    inputs = keras.Input((4,))
    refused = Model(inputs, keras.layers.Dense(3, activity_regularizer="l2")(inputs))
    refused.compile(loss=scce(), coherence_every=1, coherence_include_regularization=True)
    x, y = data(m=6)
    with pytest.raises(ValueError, match="coherence_include_regularization=True: .*activity_reg") as error:
        refused.fit(x, y, verbose=0)
    assert "\n" not in str(error.value)


def test_trainer_metric_under_distribution_equals_the_brute_force_of_the_global_batch():
    """Two replicas (the metric's own pass on each, sums all-reduced): the global batch's values."""
    x, y = data(m=12, seed=9)
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = regularized_trainer("none")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=scce(), coherence_every=1,
                      coherence_include_regularization=True)
    g, _ = brute_force(model, x, y)
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(12), epochs=1,
                        shuffle=False, verbose=0).history
    s2, q = stats_of(g)
    assert history["m_coherence"][0] == pytest.approx(s2 / q, rel=1e-6)


def test_trainer_metric_under_loss_scaling_translates_by_the_scaled_r():
    """mixed_float16 (LossScaleOptimizer): the shared pass's g_i carry the loss scale, and so must
    r. The metric is within float16's error of the float64 brute force of ℓ_i + R, which is far
    from the brute force without R (where an unscaled r would leave it)."""
    x, y = data(m=12, seed=10)
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("mixed_float16")
    try:  # (the float64 fixture restores floatx and the policy afterwards)
        model = regularized_trainer("none", seed=11)
        model.get_layer("first").kernel.regularizer = l1l2(l2=0.5)  # R's share large: a clear test
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=scce(), coherence_every=1,
                      coherence_include_regularization=True)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        with pytest.warns(UserWarning, match="16"):  # the precision warning
            history = model.fit(x, y, batch_size=len(x), epochs=6, shuffle=False, verbose=0).history
    finally:
        keras.config.set_dtype_policy("float32")
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    reference = regularized_trainer("none", seed=11)  # float64, the same initial weights
    reference.get_layer("first").kernel.regularizer = l1l2(l2=0.5)
    reference.compile(loss=scce())
    with_r, _ = brute_force(reference, x, y)
    for layer in reference.layers:
        for v in layer.trainable_weights:
            v.regularizer = None
    without_r, _ = brute_force(reference, x, y)
    want, unregularized = (stats_of(g)[0] / stats_of(g)[1] for g in (with_r, without_r))
    assert abs(want - unregularized) > 0.2 * want
    # the first steps overflow at scale 2^15 and are skipped (no update, no measurement): the
    # first measured step is at the initial weights
    first = next(value for value in history["m_coherence"] if np.isfinite(value))
    assert first == pytest.approx(want, rel=2e-2)
