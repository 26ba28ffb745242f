"""cgh_tf.coherence.alignment: per-example a_i and g_i·S against closed-form float64 softmax
regression gradients (tests/reference.py), its identities, its three paths (factored, forward
mode, exact) and its errors; the factored path of pure-Dense MLPs against a brute-force
per-example GradientTape loop and against forward mode.
(Every architecture of the coherence matrix: tests/test_coherence_matrix.py, check "alignment".)"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference
from test_regularization import l1l2
from cgh_tf import alignment as alignment_module
from cgh_tf import coherence

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


@pytest.fixture
def forward_mode(monkeypatch):
    """No factored path (a factor bound of 0 values): g_i·S from the second pass."""
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 0)


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


@pytest.mark.parametrize("factor_values", [alignment_module.FACTOR_VALUES, 0])  # factored; forward
@pytest.mark.parametrize("batch_size", [7, 40])  # stacked blocks + remainder; one batch
def test_alignment_matches_the_gram_matrix(batch_size, factor_values, monkeypatch):
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", factor_values)
    x, y, _, _ = reference.problem(m=29, d=5, c=4, seed=3)
    model, g = softmax_regression(x, y)
    gram = g @ g.T
    got = coherence.alignment(model, x, y, batch_size=batch_size)
    sq_norms = np.diag(gram)
    np.testing.assert_allclose(got.sq_norms, sq_norms, rtol=1e-10)
    np.testing.assert_allclose(got.dot_with_sum, gram.sum(axis=1), rtol=1e-10)
    others = gram.sum(axis=1) - sq_norms  # Σ_{j≠i} g_i·g_j
    np.testing.assert_allclose(got.alignment, others / sq_norms, rtol=1e-9)
    assert got.method == (alignment_module.FACTORED if factor_values else alignment_module.FORWARD_MODE)
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


def test_failed_sum_check_hands_over_to_the_exact_path(monkeypatch, forward_mode):
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


@pytest.mark.parametrize("case", ["all_padded_row", "overflow"])
def test_a_non_finite_example_is_named_in_one_line(case):
    """An example whose ℓ_i or g_i is not finite leaves S, and so every a_i, undefined: one line
    naming it (was: on the two-pass paths the reshuffled-dataset error, blaming the data's order,
    'largest difference nan × the mean loss'; on the factored path NaN everywhere, no word)."""
    x, y, _, _ = reference.problem(m=6, d=4, c=3, seed=3)
    if case == "all_padded_row":  # Keras' masked average over no token is 0/0 (its loss too)
        tokens = keras.Input((4,), dtype="int32")
        hidden = keras.layers.Embedding(7, 3, mask_zero=True)(tokens)
        model = keras.Model(tokens, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(hidden)))
        x = np.array([[1, 2, 0, 0], [3, 1, 4, 0], [0, 0, 0, 0], [5, 6, 1, 2], [2, 0, 0, 0], [4, 4, 0, 0]])
    else:  # a pure-Dense model (the factored path) whose exp overflows on example 2 alone
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(
            5, activation="exponential", kernel_initializer="ones"), keras.layers.Dense(3)])
        x[2] = 800.0
    with pytest.raises(ValueError, match=r"gradient of example 2 \(1 of 6\) is not finite"):
        coherence.alignment(model, x, y, loss=SCCE, batch_size=4)


def test_batch_statistics_in_training_mode_are_refused():
    """alignment(training=True) with a trainable BatchNormalization mixed two readings of g_i: the
    engine's ‖g_i‖² (example i's rows of the batch's backward pass) and forward mode's g_i·S (ℓ_i
    differentiated through the batch statistics); both pass Σ_i g_i·S = ‖S‖², so a_i was silently
    neither. One line instead, before any pass."""
    x, y, _, _ = reference.problem(m=6, d=4, c=3, seed=3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"alignment\(\) with training=True: layers \['bn'\]"):
        coherence.alignment(model, x, y, loss=SCCE, training=True)
    assert np.all(np.isfinite(coherence.alignment(model, x, y, loss=SCCE).alignment))


def test_a_reshuffled_dataset_is_an_error_not_a_wrong_result(forward_mode):
    """(On the two-pass paths; the factored path reads the sample once.)"""
    x, y, _, _ = reference.problem(m=40, d=3, c=3, seed=7)
    model, _ = softmax_regression(x, y, classes=3)
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(40, seed=1).batch(8)
    with pytest.raises(ValueError, match="same batches in the same order"):
        coherence.alignment(model, shuffled)


def test_dropout_in_training_mode_is_an_error(forward_mode):
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


# ----------------------------------------------------------------------------------------------
# The factored path (pure-Dense MLPs): brute force, forward mode, and when it hands over


def mlp(widths, use_bias=True, frozen=None, regularizer=None, seed=0):
    """Dense tanh layers of `widths` (the last linear), inputs of widths[0] features; layer
    `frozen` (an index into the Dense layers) not trainable; weights perturbed off their init."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((widths[0],))]
    for j, width in enumerate(widths[1:]):
        last = j == len(widths) - 2
        layers.append(keras.layers.Dense(width, activation=None if last else "tanh", use_bias=use_bias,
                                         kernel_regularizer=regularizer))
    model = keras.Sequential(layers)
    rng = np.random.default_rng(seed)
    model.set_weights([w + 0.1 * rng.normal(size=w.shape) for w in model.get_weights()])
    if frozen is not None:
        model.layers[frozen].trainable = False
    return model


def brute_force(model, x, y, example_loss, coefficients, l2=0.0):
    """float64 per-example gradients [m, P] over `model.trainable_variables`, one tape per
    example: g_i = ∇(c_i · example_loss(y_i, f(x_i)) + R), R = l2 · Σ ‖kernel‖² of the
    regularised kernels (l2 = 0: none)."""
    rows = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = coefficients[i] * example_loss(y[i:i + 1], model(x[i:i + 1], training=False))[0]
            loss = loss + l2 * sum(tf.reduce_sum(tf.square(v)) for v in model.trainable_variables
                                   if "kernel" in v.path)
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([np.reshape(np.asarray(g, np.float64), [-1]) for g in grads]))
    return np.stack(rows)


def assert_matches(got, g, rtol=1e-10):
    """got (an `Alignment`) against the per-example gradients g [m, P]."""
    dots, sq_norms = g @ g.sum(axis=0), np.sum(g ** 2, axis=1)
    scale = np.max(np.abs(dots))
    np.testing.assert_allclose(got.dot_with_sum, dots, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(got.sq_norms, sq_norms, rtol=rtol)
    np.testing.assert_allclose(got.alignment, (dots - sq_norms) / sq_norms, rtol=1e-8, atol=1e-8)


def both_paths(monkeypatch, *args, **kwargs):
    """(factored, forward mode) `coherence.alignment(*args, **kwargs)`; asserts which path each
    took and that they agree to 1e-12 (float64)."""
    factored = coherence.alignment(*args, **kwargs)
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 0)
    forward = coherence.alignment(*args, **kwargs)
    assert factored.method == alignment_module.FACTORED
    assert forward.method == alignment_module.FORWARD_MODE
    scale = np.max(np.abs(forward.dot_with_sum))
    np.testing.assert_allclose(factored.dot_with_sum, forward.dot_with_sum, rtol=1e-12,
                               atol=1e-12 * scale)
    np.testing.assert_allclose(factored.sq_norms, forward.sq_norms, rtol=1e-12)
    return factored


def scce(y, logits):
    return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)


@pytest.mark.parametrize("widths, use_bias, frozen", [
    ((5, 3), True, None),  # softmax regression, i ≠ o
    ((6, 9, 4), True, None),  # i < o then i > o
    ((4, 7, 5, 3), False, None),  # no biases, three layers
    ((4, 7, 5, 3), True, 1),  # the middle layer frozen
])
def test_factored_matches_brute_force_and_forward_mode(monkeypatch, widths, use_bias, frozen):
    x, y, _, _ = reference.problem(m=11, d=widths[0], c=widths[-1], seed=len(widths))
    model = mlp(widths, use_bias, frozen)
    model.compile(loss=SCCE)
    got = both_paths(monkeypatch, model, x, y, batch_size=4)  # two stacked batches + 3
    assert_matches(got, brute_force(model, x, y, scce, np.ones(11)))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum"])
def test_factored_with_sample_weights_and_a_loss_reduction(monkeypatch, reduction):
    """ℓ_i = c_i · w_i · loss_i with c_i = 1 ("mean") or the size of i's batch ("sum": the mean of
    the batch's ℓ_i is Keras' summed loss); m = 10 in batches of 4: sizes 4, 4, 2."""
    x, y, _, _ = reference.problem(m=10, d=4, c=3, seed=2)
    w = np.random.default_rng(3).uniform(0.2, 2.0, 10)
    model = mlp((4, 6, 3))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    got = both_paths(monkeypatch, model, x, y, loss=loss, batch_size=4, sample_weight=w)
    batch_sizes = np.array([4] * 8 + [2] * 2) if reduction == "sum" else np.ones(10)
    assert_matches(got, brute_force(model, x, y, scce, w * batch_sizes))


def test_factored_with_an_l2_kernel_regularizer(monkeypatch):
    """include_regularization=True: g_i = ∇ℓ_i + ∇R, R = 0.01 Σ ‖W‖² (g_i·r factored too; Keras
    rounds the factor 0.01 to float32)."""
    x, y, _, _ = reference.problem(m=9, d=3, c=3, seed=4)
    model = mlp((3, 5, 3), regularizer=l1l2(l2=0.01))
    model.compile(loss=SCCE)
    got = both_paths(monkeypatch, model, x, y, batch_size=4, include_regularization=True)
    assert_matches(got, brute_force(model, x, y, scce, np.ones(9), l2=float(np.float32(0.01))))


def test_factored_on_a_dataset_of_several_batches(monkeypatch):
    x, y, _, _ = reference.problem(m=13, d=4, c=3, seed=5)
    model = mlp((4, 6, 3))
    model.compile(loss=SCCE)
    got = both_paths(monkeypatch, model, tf.data.Dataset.from_tensor_slices((x, y)).batch(5))
    assert_matches(got, brute_force(model, x, y, scce, np.ones(13)))


def test_factored_in_float32_agrees_with_forward_mode(monkeypatch):
    """float32 variables: the factors and their products in float32 (forward mode as well)."""
    x, y, _, _ = reference.problem(m=12, d=5, c=3, seed=6)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="float32"),
                              keras.layers.Dense(8, activation="tanh", dtype="float32"),
                              keras.layers.Dense(3, dtype="float32")])
    model.compile(loss=SCCE)
    factored = coherence.alignment(model, x.astype(np.float32), y, batch_size=5)
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 0)
    forward = coherence.alignment(model, x.astype(np.float32), y, batch_size=5)
    assert (factored.method, forward.method) == (alignment_module.FACTORED, alignment_module.FORWARD_MODE)
    scale = np.max(np.abs(forward.dot_with_sum))
    np.testing.assert_allclose(factored.dot_with_sum, forward.dot_with_sum, atol=1e-5 * scale)


@pytest.mark.parametrize("case", ["layer_norm", "dense_over_positions", "dense_called_twice"])
def test_a_model_the_factors_do_not_cover_takes_forward_mode(case):
    """Any trainable variable without rank-one factors (a non-Dense layer, a Dense applied at T > 1
    positions or called twice): forward mode, equal to brute force."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    if case == "layer_norm":
        h = keras.layers.LayerNormalization()(keras.layers.Dense(6, activation="tanh")(inputs))
    elif case == "dense_over_positions":
        h = keras.layers.Flatten()(keras.layers.Dense(3, activation="tanh")(keras.layers.Reshape((2, 2))(inputs)))
    else:
        shared = keras.layers.Dense(4, activation="tanh")
        h = shared(shared(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(loss=SCCE)
    x, y, _, _ = reference.problem(m=8, d=4, c=3, seed=7)
    got = coherence.alignment(model, x, y, batch_size=3)
    assert got.method == alignment_module.FORWARD_MODE
    assert_matches(got, brute_force(model, x, y, scce, np.ones(8)))


def test_the_factor_bound_hands_over_to_forward_mode(monkeypatch):
    """More factor values than `FACTOR_VALUES` (here: crossed in the second block): forward mode,
    still exact."""
    x, y, _, _ = reference.problem(m=10, d=4, c=3, seed=8)
    model = mlp((4, 6, 3))  # per example a, b: (4 + 6) + (6 + 3) = 19 values
    model.compile(loss=SCCE)
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 19 * 9)
    got = coherence.alignment(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(3))
    assert got.method == alignment_module.FORWARD_MODE
    assert_matches(got, brute_force(model, x, y, scce, np.ones(10)))
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 19 * 10)  # exactly enough
    assert coherence.alignment(model, x, y, batch_size=3).method == alignment_module.FACTORED


def test_a_sample_of_known_size_over_the_factor_bound_keeps_no_factors(monkeypatch):
    """Arrays whose factors would exceed `FACTOR_VALUES` (m · 19 values here) ask the first pass
    for none: forward mode from the start, still exact; a frozen kernel keeps only b_i (o = 6, 3)."""
    x, y, _, _ = reference.problem(m=10, d=4, c=3, seed=8)
    model = mlp((4, 6, 3))  # per example a, b: (4 + 6) + (6 + 3) = 19 values
    model.compile(loss=SCCE)
    asked = []
    streamed_sums = coherence.streamed_sums
    monkeypatch.setattr(coherence, "streamed_sums",
                        lambda *a, **k: asked.append(k["factor_values"]) or streamed_sums(*a, **k))
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 19 * 10 - 1)
    got = coherence.alignment(model, x, y, batch_size=3)
    assert asked == [None] and got.method == alignment_module.FORWARD_MODE
    assert_matches(got, brute_force(model, x, y, scce, np.ones(10)))
    model.layers[0].kernel.trainable = False  # now (6) + (6 + 3) = 15 values per example
    monkeypatch.setattr(alignment_module, "FACTOR_VALUES", 15 * 10)
    got = coherence.alignment(model, x, y, batch_size=3)
    assert got.method == alignment_module.FACTORED and asked[-1] == 15 * 10
    assert_matches(got, brute_force(model, x, y, scce, np.ones(10)))


def test_failed_factored_check_hands_over_to_forward_mode(monkeypatch):
    """Factored products that fail Σ_i g_i·S = ‖S‖² (here: doubled) warn and are recomputed in
    forward mode."""
    x, y, _, _ = reference.problem(m=9, d=4, c=3, seed=6)
    model, g = softmax_regression(x, y, classes=3)
    graph = alignment_module._factored_dots_graph
    monkeypatch.setattr(alignment_module, "_factored_dots_graph", lambda f, d: 2 * graph(f, d))
    with pytest.warns(UserWarning, match="factored g_i·d .* fail the check"):
        got = coherence.alignment(model, x, y, batch_size=4)
    assert got.method == alignment_module.FORWARD_MODE
    np.testing.assert_allclose(got.dot_with_sum, (g @ g.T).sum(axis=1), rtol=1e-10)


def test_16_bit_dtypes_keep_forward_mode():
    """Factors of a 16-bit compute or variable dtype are not proven exact: no factored path."""
    def model_with(dtype):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, dtype=dtype)])

    assert alignment_module._may_factor(model_with("float32"), None)
    assert alignment_module._may_factor(model_with("float64"), None)
    assert not alignment_module._may_factor(model_with("mixed_float16"), None)
    assert not alignment_module._may_factor(model_with("bfloat16"), None)
