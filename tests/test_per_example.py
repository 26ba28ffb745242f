"""Per-example losses, gradients (vectorized_map) and the fast exact squared-norm path.

References: closed-form softmax-regression gradients and a hand-written NumPy backprop of a ReLU MLP
(float64), and tf.vectorized_map per-example gradients for the layers with fast rules.
"""

import itertools

import numpy as np
import pytest
import keras
import tensorflow as tf

from cgh_tf import per_example
from cgh_tf.layer_rules.base import prefer_gram

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
pytestmark = pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def one_hot(y, classes):
    return np.eye(classes)[y]


def fast(model, x, y, loss=None):
    return per_example.gradients_and_sq_norms(model, tf.constant(x), tf.constant(y), loss)


def fallback_layers(model):
    """Classes of the layers whose norms take the exact fallback (`per_example.explain`)."""
    return [p.layer_class for p in per_example.explain(model) if p.rule == per_example.FALLBACK]


def sq_norms_of(per_example_grads):
    return np.stack([np.sum(np.reshape(np.asarray(g), (len(g), -1)) ** 2, axis=1) for g in per_example_grads], 1)


def softmax_regression_reference(x, y, kernel, bias):
    """Closed form: g_i = (x_i ⊗ (p_i − e_{y_i}), p_i − e_{y_i})."""
    delta = softmax(x @ kernel + bias) - one_hot(y, kernel.shape[1])
    return [np.einsum("mi,mo->mio", x, delta), delta]


def mlp_reference(x, y, w1, b1, w2, b2):
    """Hand-written backprop of Dense(relu) -> Dense -> softmax cross-entropy, per example."""
    pre = x @ w1 + b1
    hidden = np.maximum(pre, 0)
    delta2 = softmax(hidden @ w2 + b2) - one_hot(y, w2.shape[1])
    delta1 = (delta2 @ w2.T) * (pre > 0)
    return [np.einsum("mi,mo->mio", x, delta1), delta1, np.einsum("mi,mo->mio", hidden, delta2), delta2]


def softmax_regression(inputs=5, classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(classes)])
    model.layers[0].bias.assign(np.random.default_rng(seed).normal(size=classes))
    model.compile(loss=SCCE)
    return model


def test_softmax_regression_matches_closed_form():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(9, 5)), rng.integers(0, 3, 9)
    model = softmax_regression()
    reference = softmax_regression_reference(x, y, *[v.numpy() for v in model.trainable_variables])
    materialised = per_example.per_example_gradients(model, x, y, chunk_size=4)
    for got, want in zip(materialised, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    sums = fast(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)
    for got, want in zip(sums.grad_sum, reference):
        np.testing.assert_allclose(got.numpy(), want.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sums.losses.numpy(), SCCE.call(y, model(x)).numpy(), rtol=1e-12)


def test_relu_mlp_matches_manual_backprop():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 4)), rng.integers(0, 3, 7)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(6, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(3),
    ])
    model.compile(loss="sparse_categorical_crossentropy")  # probabilities: use a from_logits loss
    reference = mlp_reference(x, y, *[v.numpy() for v in model.trainable_variables])
    materialised = per_example.per_example_gradients(model, x, y, loss=SCCE)
    for got, want in zip(materialised, reference):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)
    sums = fast(model, x, y, SCCE)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-9)
    for got, want in zip(sums.grad_sum, reference):
        np.testing.assert_allclose(got.numpy(), want.sum(0), rtol=1e-9, atol=1e-12)


def sequential(input_shape, layers, input_dtype=None):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(input_shape, dtype=input_dtype), *layers])
    for v in model.trainable_variables:  # non-trivial biases / LayerNorm parameters
        v.assign(v + np.random.default_rng(3).normal(scale=0.3, size=v.shape))
    model.compile(loss=SCCE)
    return model


def conv_models():
    L = keras.layers
    return {
        "dense_sequence_gram": (  # T(i+o) = 2·9 <= 20: Gram form
            sequential((2, 5), [L.Dense(4, activation="tanh"), L.Flatten(), L.Dense(3)]), (2, 5)),
        "dense_sequence_materialised": (  # T(i+o) = 7·9 > 20
            sequential((7, 5), [L.Dense(4, activation="tanh"), L.GlobalAveragePooling1D(), L.Dense(3)]), (7, 5)),
        "conv1d": (
            sequential((7, 3), [L.Conv1D(4, 3, activation="tanh", padding="causal"), L.Conv1D(4, 2, strides=2),
                                L.Flatten(), L.Dense(3)]), (7, 3)),
        "conv2d_materialised": (
            sequential((6, 6, 2), [L.Conv2D(3, 3, activation="relu", padding="same"),
                                   L.Conv2D(4, 3, strides=2, padding="same"), L.Conv2D(2, 2, dilation_rate=2),
                                   L.Flatten(), L.Dense(3)]), (6, 6, 2)),
        "conv_dilated": (  # materialised by one matmul per kernel offset
            sequential((7, 7, 2), [L.Conv2D(4, 2, dilation_rate=2, activation="tanh"), L.Reshape((25, 4)),
                                   L.Conv1D(4, 2, dilation_rate=2, padding="same"), L.Flatten(), L.Dense(3)]),
            (7, 7, 2)),
        "conv2d_gram": (  # L = 4 positions, K = 36, o = 8: 4·44 <= 288
            sequential((3, 3, 4), [L.Conv2D(8, 2, activation="tanh"), L.Flatten(), L.Dense(3)]), (3, 3, 4)),
        "layer_norm": (  # rms_scaling is deprecated in Keras but still supported here
            sequential((4, 5), [L.Dense(6), L.LayerNormalization(), L.LayerNormalization(axis=[1, 2]),
                                L.LayerNormalization(rms_scaling=True), L.Flatten(), L.Dense(3)]), (4, 5)),
    }


RULED_MODELS = ["dense_sequence_gram", "dense_sequence_materialised", "conv1d", "conv2d_materialised",
                "conv_dilated", "conv2d_gram", "layer_norm"]


@pytest.mark.parametrize("name", RULED_MODELS)
def test_fast_path_matches_vectorized_map(name):
    model, shape = conv_models()[name]
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, *shape)), rng.integers(0, 3, 5)
    assert not fallback_layers(model)
    reference = per_example.per_example_gradients(model, x, y)
    sums = fast(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10, atol=1e-14)
    for got, want in zip(sums.grad_sum, reference):
        np.testing.assert_allclose(got.numpy(), want.numpy().sum(0), rtol=1e-10, atol=1e-13)


def test_both_dense_forms_are_exercised():
    assert sorted(conv_models()) == sorted(RULED_MODELS)
    assert prefer_gram(2, 5, 4) and not prefer_gram(7, 5, 4)


def test_embedding_with_repeated_ids_matches_vectorized_map():
    L = keras.layers
    model = sequential((6,), [L.Embedding(4, 3), L.Dense(5, activation="tanh"), L.GlobalAveragePooling1D(),
                              L.Dense(3)], input_dtype="int32")
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 4, size=(5, 6)), rng.integers(0, 3, 5)  # ids repeat within examples
    reference = per_example.per_example_gradients(model, x, y)
    sums = fast(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)
    np.testing.assert_allclose(sums.grad_sum[0].numpy(), reference[0].numpy().sum(0), rtol=1e-10, atol=1e-13)


class Scale(keras.layers.Layer):
    """A custom layer with a weight and no fast rule."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.scale


def test_layers_without_rule_fall_back_to_vectorized_map():
    L = keras.layers
    model = sequential((5,), [L.Dense(6), Scale(), L.Activation("tanh"), L.Dense(3)])
    assert fallback_layers(model) == ["Scale"]
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    reference = per_example.per_example_gradients(model, x, y)
    sums = fast(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)
    for got, want in zip(sums.grad_sum, reference):
        np.testing.assert_allclose(got.numpy(), want.numpy().sum(0), rtol=1e-10, atol=1e-13)


def test_shared_layer_and_nested_model():
    keras.utils.set_random_seed(7)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="tanh", name="d")], name="inner")
    shared = keras.layers.Dense(4, activation="tanh", name="shared")
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, name="head")(shared(shared(inner(inputs))))
    model = keras.Model(inputs, outputs)
    model.compile(loss=SCCE)
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    reference = per_example.per_example_gradients(model, x, y)
    sums = fast(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)
    assert per_example.variable_layer_names(model) == [
        "inner/d", "inner/d", "shared", "shared", "head", "head"
    ]
    assert "call" not in shared.__dict__  # instrumentation removed


def test_variable_layer_names_follow_nesting():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d1")], name="inner")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="d2")])
    assert per_example.variable_layer_names(model) == ["inner/d1", "inner/d1", "d2", "d2"]


def test_jit_compiled_train_step_uses_fast_path():
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    L = keras.layers
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((6, 6, 1)), L.Conv2D(3, 3, activation="relu"), L.Flatten(),
                              L.Dense(5, activation="relu"), L.BatchNormalization(), L.Dense(3)])
    model.compile(loss=SCCE)
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(8, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 8)

    @tf.function(jit_compile=True)
    def step(xb, yb):
        return per_example.gradients_and_sq_norms(model, xb, yb)

    sums = step(tf.constant(x), tf.constant(y))
    reference = per_example.per_example_gradients(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=2e-4, atol=1e-6)
    assert sums.sq_norms.dtype == tf.float32


def test_per_example_loss_fn_forms():
    rng = np.random.default_rng(9)
    y_true, y_pred = rng.integers(0, 3, 4), rng.normal(size=(4, 3))
    model = softmax_regression()
    want = SCCE.call(y_true, y_pred).numpy()
    from_object = per_example.per_example_loss_fn(model, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum"))  # Keras' loss is Σ_i: its decomposition is m × value
    np.testing.assert_allclose(from_object(y_true, y_pred).numpy(), 4 * want, rtol=1e-6)
    np.testing.assert_allclose(per_example.per_example_loss_fn(model)(y_true, y_pred).numpy(), want)
    seq = per_example.per_example_loss_fn(model, "mse")
    targets, outputs = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 3))
    np.testing.assert_allclose(seq(targets, outputs).numpy(), ((targets - outputs) ** 2).mean(axis=(1, 2)))


def test_errors():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x, y = np.zeros((4, 3)), np.zeros(4, int)
    with pytest.raises(ValueError, match="not compiled"):
        per_example.per_example_loss_fn(model)
    with pytest.raises(ValueError, match="per example"):
        per_example.per_example_gradients(model, x, y, loss=lambda t, p: tf.reduce_mean(p))
    with pytest.raises(ValueError, match="must match"):
        per_example.per_example_gradients(model, x, y[:3], loss=SCCE)
    with pytest.raises(ValueError, match="Empty"):
        per_example.per_example_gradients(model, x[:0], y[:0], loss=SCCE)
    with pytest.raises(TypeError, match="must be a keras.losses.Loss"):
        per_example.per_example_loss_fn(model, 3)


@pytest.mark.parametrize("kind", ["mixed", "shared_sequence"])
def test_reduced_per_example_gradients_equal_vectorized_map(kind):
    """Block-at-a-time materialisation (Dense kernels column by column from a ⊗ b, the rest by
    vectorized_map) gives the same per-example gradients: checked through coordinate-wise
    reductions that select single examples (max, min)."""
    L = keras.layers
    rng = np.random.default_rng(11)
    if kind == "mixed":
        model = sequential((6, 2), [L.Conv1D(3, 3), L.LayerNormalization(), L.Flatten(),
                                    L.Dense(5, activation="tanh"), L.Dense(3)])
        x = rng.normal(size=(7, 6, 2))
    else:  # a Dense applied to a sequence, and a Dense layer used twice
        shared = L.Dense(4, activation="tanh")
        inputs = keras.Input((3, 4))
        h = shared(shared(L.Dense(4)(inputs)))
        model = keras.Model(inputs, L.Dense(3)(L.Flatten()(h)))
        model.compile(loss=SCCE)
        x = rng.normal(size=(7, 3, 4))
    y = rng.integers(0, 3, 7)
    reference = per_example.per_example_gradients(model, x, y)
    for (reduce, np_reduce), block in itertools.product(
            ((tf.reduce_max, np.max), (tf.reduce_min, np.min)),
            (1, 7 * 12 * 2, per_example.REDUCE_BLOCK_ELEMENTS, "outer")):  # 1, ≤ 2 columns, all
        outer = None
        if block == "outer":  # kernels of Dense layers applied once per example via reduce_outer
            block, outer = 1, lambda a, b, r=reduce: r(tf.einsum("mi,mo->mio", a, b), 0)
        got = per_example.reduced_per_example_gradients(model, x, y, reduce, block_elements=block,
                                                        reduce_outer=outer)
        for g, want in zip(got, reference):
            np.testing.assert_allclose(g.numpy(), np_reduce(want.numpy(), axis=0),
                                       rtol=1e-10, atol=1e-13)


class TiedOutput(keras.layers.Layer):
    """logits = h Eᵀ with E the embedding matrix of another layer (tied input / output weights)."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, h):
        return keras.ops.matmul(h, keras.ops.transpose(self.embedding.embeddings))


def tied_language_model(vocabulary=7, width=4, positions=3):
    keras.utils.set_random_seed(9)
    ids = keras.Input((positions,), dtype="int32")
    embedding = keras.layers.Embedding(vocabulary, width, name="embedding")
    hidden = keras.layers.Dense(width, activation="tanh", name="mix")(embedding(ids))
    model = keras.Model(ids, TiedOutput(embedding, name="tied")(hidden))
    model.compile(loss=SCCE)
    return model


def test_tied_embedding_is_found_while_tracing_and_takes_the_exact_fallback():
    """The Embedding rule would see only the input use of E; the tape proves the second use."""
    model = tied_language_model()
    rng = np.random.default_rng(10)
    x, y = rng.integers(0, 7, size=(5, 3)), rng.integers(0, 7, size=(5, 3))
    assert [p.rule for p in per_example.explain(model)] == ["embedding", "dense"]  # before a trace
    with pytest.warns(UserWarning, match="'embedding' .*tied or shared weights"):
        sums = fast(model, x, y)
    reference = per_example.per_example_gradients(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)
    for got, want in zip(sums.grad_sum, reference):
        np.testing.assert_allclose(np.asarray(got), want.numpy().sum(0), rtol=1e-10, atol=1e-13)
    plans = per_example.explain(model, x, y)
    assert [(p.path, p.rule) for p in plans] == [("embedding", per_example.FALLBACK), ("mix", "dense")]
    assert "tied" in str(plans) and "per-example norms" in str(plans)


def test_kernel_read_by_another_layer_is_rerouted():
    """A Dense kernel reused in a closure: its rule is not trusted, the other Dense keeps its rule."""
    keras.utils.set_random_seed(11)
    inputs = keras.Input((4,))
    first = keras.layers.Dense(4, activation="tanh", name="first")
    hidden = first(inputs)
    reused = keras.layers.Lambda(lambda h: keras.ops.matmul(h, first.kernel), name="reuse")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(reused))
    model.compile(loss=SCCE)
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    with pytest.warns(UserWarning, match="'first'"):
        sums = fast(model, x, y)
    reference = per_example.per_example_gradients(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)
    assert [p.rule for p in per_example.explain(model, x, y)] == [per_example.FALLBACK, "dense"]


def test_fallback_warns_once_per_layer():
    L = keras.layers
    model = sequential((5,), [L.Dense(6), Scale(name="scale"), L.Dense(3)])
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(4, 5)), rng.integers(0, 3, 4)
    with pytest.warns(UserWarning, match="'scale' \\(Scale\\).*no fast rule") as caught:
        fast(model, x, y)
        fast(model, x[:3], y[:3])
    assert len([w for w in caught if "cgh_tf" in str(w.message)]) == 1


def test_unbuilt_sequential_is_built_on_the_first_batch():
    keras.utils.set_random_seed(13)
    model = keras.Sequential([keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)])
    model.compile(loss=SCCE)
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(5, 6)), rng.integers(0, 3, 5)
    sums = fast(model, x, y)
    assert model.built
    reference = per_example.per_example_gradients(model, x, y)
    np.testing.assert_allclose(sums.sq_norms.numpy(), sq_norms_of(reference), rtol=1e-10)


def outer_products(factors):
    """The per-example gradients [m, *var.shape] a `layer_rules.Factors` stands for."""
    b = factors.b.numpy()
    return b if factors.a is None else np.einsum("mi,mo->mio", factors.a.numpy(), b)


def test_factors_are_the_rank_one_per_example_gradients():
    """with_factors=True: a Dense layer applied once per example gives (a_i, b_i) with g_i = a_i ⊗
    b_i (kernel) and b_i (bias), against the hand-written backprop, with sample weights; without
    the option, no factors."""
    rng = np.random.default_rng(2)
    x, y, w = rng.normal(size=(7, 4)), rng.integers(0, 3, 7), rng.uniform(0.5, 2.0, 7)
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(6, activation="relu", bias_initializer="random_normal"),
        keras.layers.Dense(3)])
    reference = mlp_reference(x, y, *[v.numpy() for v in model.trainable_variables])
    sums = per_example.gradients_and_sq_norms(model, tf.constant(x), tf.constant(y), SCCE,
                                              sample_weight=tf.constant(w), with_factors=True)
    for factors, want in zip(sums.factors, reference):
        np.testing.assert_allclose(outer_products(factors), want * w.reshape((-1,) + (1,) * (want.ndim - 1)),
                                   rtol=1e-9, atol=1e-12)
    assert fast(model, x, y, SCCE).factors is None


def test_factors_only_where_the_rule_proves_rank_one():
    """A Dense layer called twice (two terms per example) or read through a nested model: the
    shared layer has no factors, the others do, equal to the materialised gradients."""
    keras.utils.set_random_seed(7)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="tanh", name="d")], name="inner")
    shared = keras.layers.Dense(4, activation="tanh", name="shared")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(shared(shared(inner(inputs)))))
    model.compile(loss=SCCE)
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    reference = per_example.per_example_gradients(model, x, y)
    sums = per_example.gradients_and_sq_norms(model, tf.constant(x), tf.constant(y), with_factors=True)
    names = per_example.variable_layer_names(model)
    assert [name for name, f in zip(names, sums.factors) if f is None] == ["shared", "shared"]
    for factors, want in zip(sums.factors, reference):
        if factors is not None:
            np.testing.assert_allclose(outer_products(factors), want.numpy(), rtol=1e-10, atol=1e-13)


def test_training_mode_batch_statistics_are_refused_one_example_at_a_time():
    """With training=True a trainable BatchNormalization couples the examples; the exact fallback
    (and `per_example_gradients`) ran each example as a batch of one, normalised by its own
    statistics: gradients off by 1.85 (max abs) against each ℓ_i's gradient within the batch,
    silently. Now one line before any work; a frozen BatchNormalization (moving statistics) and
    training=False stay exact."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((4,))
    norm = keras.layers.BatchNormalization(name="bn")
    hidden = norm(Scale()(keras.layers.Dense(5)(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    x, y = np.random.default_rng(0).normal(size=(6, 4)), np.arange(6) % 3
    with pytest.raises(ValueError, match=r"per_example_gradients\(\) with training=True: layers \['bn'\]"):
        per_example.per_example_gradients(model, x, y, SCCE, training=True)
    with pytest.raises(ValueError, match=r"exact fallback.*training=True: layers \['bn'\]"):
        tf.function(lambda a, b: per_example.gradients_and_sq_norms(model, a, b, SCCE, training=True)
                    .sq_norms)(x, y)
    norm.trainable = False
    frozen = per_example.per_example_gradients(model, x, y, SCCE, training=True)
    inference = per_example.per_example_gradients(model, x, y, SCCE)
    for a, b in zip(frozen, inference):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-15)
