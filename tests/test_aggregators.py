"""cgh_tf.aggregators and the one train step of cgh_tf.Model: interface, shared pass, input checks,
subclassing, mixed precision through the public LossScaleOptimizer API."""


import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf
from cgh_tf import aggregators


def test_median_of_means_propagates_a_nonfinite_row():
    rows = [tf.constant([[1.0, 2.0], [np.inf, 2.0], [3.0, 2.0]]), None]
    out = aggregators.MedianOfMeans(3)(rows)
    assert out[1] is None and not np.isfinite(out[0].numpy()).any()
    finite = aggregators.MedianOfMeans(3)([tf.constant([[1.0], [5.0], [3.0]])])
    np.testing.assert_array_equal(finite[0].numpy(), [3.0])


def test_get_and_validation():
    assert aggregators.get("mean") == aggregators.Mean()
    assert aggregators.get("winsorize", 2.0) == aggregators.Winsorize(2.0)
    assert aggregators.MedianOfMeans(np.int64(5)).groups == 5
    with pytest.warns(UserWarning, match="median of 2 values is their mean"):
        aggregators.MedianOfMeans(2)
    with pytest.raises(ValueError, match="winsorize_pct=2.0 only applies"):
        aggregators.get("mean", 2.0)
    # No default c: an implicit 0 was silently a plain mean at the cost of the per-example pass.
    with pytest.raises(ValueError) as error:
        aggregators.get("winsorize")
    assert str(error.value) == ("aggregation='winsorize' needs winsorize_pct, the percent clipped "
                                "on each side, in [0, 50) (e.g. winsorize_pct=2.0; 0 is a plain "
                                "mean computed per example).")
    with pytest.raises(ValueError, match="needs winsorize_pct"):
        _model().compile(optimizer="sgd", loss=LOSS, aggregation="winsorize")
    assert aggregators.get("winsorize", 0.0) == aggregators.Winsorize(0.0)
    config = keras.saving.serialize_keras_object(aggregators.MedianOfMeans(5, l2=0.1))
    assert aggregators.get(config) == aggregators.MedianOfMeans(5, l2=0.1)


def _model(model_class=cgh_tf.Model, seed=0, middle=None):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    if middle is not None:
        h = middle(h)
    return model_class(inputs, keras.layers.Dense(3)(h))


def _data(n=48):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


LOSS = "sparse_categorical_crossentropy"


def _fit(aggregation=None, optimizer=None, every=0, **fit_kwargs):
    x, y = _data()
    model = _model()
    options = {} if aggregation is None else {"aggregation": aggregation}
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1), loss=LOSS,
                  coherence_every=every, **options)
    history = model.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0, **fit_kwargs)
    return model, history


@pytest.mark.parametrize("make", [
    lambda: dict(optimizer=cgh_tf.M3(keras.optimizers.SGD(0.1), groups=3)),
    lambda: dict(aggregation=aggregators.get("winsorize", 0.0)),  # c = 0 asked for explicitly
    lambda: dict(aggregation=aggregators.Winsorize(10.0)),
])
def test_coherence_every_step_does_not_change_the_update(make):
    """The shared pass (coherence_every=1) gives the same weights as the aggregator alone."""
    alone, _ = _fit(**make())
    shared, history = _fit(every=1, **make())
    for a, b in zip(alone.get_weights(), shared.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.isfinite(history.history["m_coherence"][0])


def test_in_batch_m3_is_median_of_means_over_the_inner_optimizer():
    model, _ = _fit(optimizer=cgh_tf.M3(keras.optimizers.SGD(0.1), groups=3, l2=0.01))
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model._cgh_options.aggregator == aggregators.MedianOfMeans(3, l2=0.01)
    explicit, _ = _fit(aggregation=aggregators.MedianOfMeans(3, l2=0.01))
    for a, b in zip(model.get_weights(), explicit.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_in_batch_m3_allocates_no_history_buffers():
    model, _ = _fit(optimizer=cgh_tf.M3(keras.optimizers.SGD(0.1, momentum=0.9), groups=3))
    sizes = sum(int(np.prod(v.shape)) for v in model.optimizer.variables)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert sizes <= params + 10  # momentum only (plus counters)


def test_options_that_would_be_ignored_raise():
    model = _model()
    with pytest.raises(ValueError, match="coherence_per_layer=True has no effect"):
        model.compile(optimizer="sgd", loss=LOSS, coherence_per_layer=True)
    with pytest.raises(ValueError, match="coherence_training=True has no effect"):
        model.compile(optimizer="sgd", loss=LOSS, coherence_training=True)
    with pytest.raises(ValueError, match="winsorize_pct=3.0 only applies"):
        model.compile(optimizer="sgd", loss=LOSS, winsorize_pct=3.0)
    model.compile(optimizer="sgd", loss=LOSS, coherence_every=np.int64(2))
    assert model._cgh_options.coherence_every == 2


@pytest.mark.parametrize("kind", ["validation_split", "dataset_dynamic"])
def test_batches_not_splitting_into_groups_fail_before_training_in_one_line(kind):
    x, y = _data(48)
    model = _model()
    model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(0.1), groups=3), loss=LOSS)
    before = [w.copy() for w in model.get_weights()]
    if kind == "validation_split":  # 40 training examples in batches of 12: a last batch of 4
        args, kwargs = (x, y), dict(batch_size=12, validation_split=1 / 6)
        match = r"40 examples \(after validation_split=.*\) in batches of 12 give a batch of 4"
    else:  # batch dimension unknown in the element spec: the first element says 10
        args = (tf.data.Dataset.from_tensor_slices((x, y)).batch(10),)
        kwargs = {}
        match = "groups=3 needs a batch size divisible by 3; got a batch of size 10"
    with pytest.raises(ValueError, match=match) as error:
        model.fit(*args, epochs=1, verbose=0, **kwargs)
    assert "\n" not in str(error.value)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_a_partial_last_batch_known_only_at_run_time_is_split_by_the_rule():
    """48 examples, tf.data batches of 9 (no drop_remainder): the last batch of 3 is split into
    groups of 1 (example i of n goes to group ⌊i·k/n⌋); no graph error."""
    x, y = _data(48)
    model = _model()
    model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(0.1), groups=3), loss=LOSS)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(9), epochs=1, verbose=0)
    from cgh_tf.gradient_sources import group_sizes
    assert group_sizes(10, 3) == [4, 3, 3] and group_sizes(12, 3) == [4, 4, 4]
    np.testing.assert_array_equal(group_sizes(tf.constant(10), 3).numpy(), [4, 3, 3])


def test_subclassing_works_before_and_after_the_functional_form():
    class Net(cgh_tf.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(3)

        def call(self, inputs):
            return self.dense(inputs)

    x, y = _data(12)
    for _ in range(2):
        net = Net()
        net.compile(optimizer="sgd", loss=LOSS, coherence_every=1)
        net.fit(x, y, batch_size=12, verbose=0)
        functional = _model()
        assert isinstance(functional, cgh_tf.Model)
    assert cgh_tf.Model.__bases__ == (keras.Model,)


def test_mixed_precision_shared_pass_uses_the_public_loss_scale_api():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, history = _fit(optimizer=cgh_tf.M3(keras.optimizers.SGD(0.1), groups=3), every=1)
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history.history["m_coherence"][0])
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_save_and_load_keeps_the_aggregator(tmp_path):
    model, _ = _fit(aggregation=aggregators.Winsorize(10.0))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded._cgh_options.aggregator == aggregators.Winsorize(10.0)


def test_winsorize_says_when_dense_kernels_leave_the_fused_network():
    """A fast path that cannot cover a case says so: a dynamic batch, or a network too large."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 2)).astype(np.float32)
    aggregator = aggregators.Winsorize(20.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 3]), tf.TensorSpec([None, 2])])
    def dynamic(a, b):
        return aggregator.reduce_outer(a, b)

    with pytest.warns(UserWarning, match="batch size is not known while tracing.*drop_remainder"):
        assert dynamic.get_concrete_function() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a static batch that fits: no warning, the fused network
        fused = aggregator.reduce_outer(tf.constant(a), tf.constant(b))
    expected = np.mean(np.clip(np.einsum("mi,mo->mio", a, b),
                               *np.percentile(np.einsum("mi,mo->mio", a, b), [20, 80], axis=0,
                                              method="nearest")), axis=0)
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-5, atol=1e-6)
    big = np.ones((200, 3), np.float32), np.ones((200, 2), np.float32)
    with pytest.warns(UserWarning, match="larger than robust.MAX_NETWORK_SIZE=1024"):
        assert aggregator.reduce_outer(*map(tf.constant, big)) is None
