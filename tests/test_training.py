"""cgh_tf.Model: in-batch M3, winsorized GD and per-step coherence, against float64 NumPy."""

import warnings

import numpy as np
import pytest
import keras
import tensorflow as tf

import cgh_tf
import reference

D, C = 5, 4
LR = 0.5


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def softmax_regression(model_class, w0, b0):
    """Float64 softmax regression (Dense on [d] inputs) with the given initial weights."""
    inputs = keras.Input((D,), dtype="float64")
    outputs = keras.layers.Dense(C, dtype="float64", name="dense")(inputs)
    model = model_class(inputs, outputs)
    model.get_layer("dense").set_weights([w0, b0])
    return model


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


def reference_m3(x, y, w0, b0, batch, groups, steps, lr=LR):
    """Weights after each M3 step: median of `groups` contiguous group means of a batch."""
    w, b = w0.copy(), b0.copy()
    history = []
    for step in range(steps):
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        means = [reference.mean_gradient(w, b, xg, yg)
                 for xg, yg in zip(np.split(xb, groups), np.split(yb, groups))]
        w = w - lr * np.median(np.stack([g[0] for g in means]), axis=0)
        b = b - lr * np.median(np.stack([g[1] for g in means]), axis=0)
        history.append((w.copy(), b.copy()))
    return history


@pytest.mark.parametrize("groups", [3, 5])
def test_in_batch_m3_matches_reference_and_consecutive_mode(groups):
    x, y, w0, b0 = reference.problem(m=groups * 8 * 3)
    batch = groups * 8
    expected = reference_m3(x, y, w0, b0, batch, groups, steps=3)

    in_batch = softmax_regression(cgh_tf.Model, w0, b0)
    in_batch.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=groups), loss=loss())
    in_batch.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    consecutive = softmax_regression(keras.Model, w0, b0)
    consecutive.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=groups), loss=loss())
    consecutive.fit(x, y, batch_size=batch // groups, epochs=1, shuffle=False, verbose=0)

    w_expected, b_expected = expected[-1]
    for model in (in_batch, consecutive):
        w, b = model.get_layer("dense").get_weights()
        np.testing.assert_allclose(w, w_expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b, b_expected, rtol=1e-12, atol=1e-12)
    assert int(in_batch.optimizer.iterations.numpy()) == 3


@pytest.mark.parametrize("m,batch_size,bad", [(20, 10, 10), (26, 12, 2)])
def test_in_batch_m3_rejects_batches_not_divisible_into_groups(m, batch_size, bad):
    x, y, w0, b0 = reference.problem(m=m)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=3), loss=loss())
    with pytest.raises(ValueError, match=f"groups=3 needs every batch to split into 3 equal "
                                         f"groups, but {m} examples in batches of {batch_size} "
                                         f"give a batch of {bad}"):
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_layer("dense").get_weights()[0], w0)  # untouched


def test_in_batch_m3_rejects_a_dataset_batch_not_divisible_into_groups():
    x, y, w0, b0 = reference.problem(m=20)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=3), loss=loss())
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10, drop_remainder=True)
    with pytest.raises(ValueError, match="groups=3 needs a batch size divisible by 3; got a "
                                         "batch of size 10"):
        model.fit(dataset, epochs=1, verbose=0)


@pytest.mark.parametrize("replicas", [2, 3])
def test_in_batch_m3_distributed_equals_one_device(replicas):
    groups, batch = 3, 12
    x, y, w0, b0 = reference.problem(m=batch * 3)
    expected = reference_m3(x, y, w0, b0, batch, groups, steps=3)
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(replicas)],
        cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = softmax_regression(cgh_tf.Model, w0, b0)
        model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=groups), loss=loss())
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    model.fit(dataset, epochs=1, verbose=0)
    w, b = model.get_layer("dense").get_weights()
    np.testing.assert_allclose(w, expected[-1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b, expected[-1][1], rtol=1e-12, atol=1e-12)


def reference_batch_coherence(x, y, w0, b0, batch, steps, lr=LR):
    """(m-coherence, alpha) of each batch's per-example gradients along plain SGD."""
    w, b = w0.copy(), b0.copy()
    values = []
    for step in range(steps):
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        gw, gb = reference.per_example_gradients(w, b, xb, yb)
        flat = np.concatenate([gw.reshape(len(xb), -1), gb], axis=1)
        r = reference.m_coherence(flat)
        values.append((r, r / len(xb),
                       reference.m_coherence(gw.reshape(len(xb), -1))))
        w, b = w - lr * gw.mean(0), b - lr * gb.mean(0)
    return values, (w, b)


@pytest.mark.parametrize("every,jit_compile", [(1, False), (2, False), (2, True)])
def test_coherence_metrics_every_n_steps_match_reference(every, jit_compile):
    batch, steps = 10, 4
    x, y, w0, b0 = reference.problem(m=batch * steps)
    values, (w_expected, _) = reference_batch_coherence(x, y, w0, b0, batch, steps)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss(), coherence_every=every,
                  jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    measured = values[::every]
    np.testing.assert_allclose(history.history["m_coherence"][0],
                               np.mean([v[0] for v in measured]), rtol=1e-6)
    np.testing.assert_allclose(history.history["alpha"][0],
                               np.mean([v[1] for v in measured]), rtol=1e-6)
    # The shared backward pass still takes exact SGD steps.
    np.testing.assert_allclose(model.get_layer("dense").get_weights()[0], w_expected,
                               rtol=1e-12, atol=1e-12)
    assert "m_coherence" not in model.evaluate(x, y, verbose=0, return_dict=True)


class _CountingIdentity(keras.layers.Layer):
    """Counts how often the graph of the train step calls the model (traces of `call`)."""

    calls = 0

    def call(self, inputs):
        _CountingIdentity.calls += 1
        return inputs


@pytest.mark.parametrize("middle,passes", [
    (lambda: keras.layers.Dense(4, activation="relu"), 1),  # Dense takes `training`, ignores it
    (lambda: keras.layers.Dropout(0.5), 2),
    (lambda: keras.layers.GaussianNoise(0.1), 2),
    (lambda: keras.layers.BatchNormalization(), 2),
    (lambda: keras.layers.BatchNormalization(trainable=False), 1),  # frozen: inference mode
])
def test_coherence_every_step_shares_the_update_pass_unless_layers_depend_on_mode(middle, passes):
    """coherence_every=1 costs one forward/backward pass when the model computes the same in
    training and inference mode, two otherwise (the update must see dropout / batch statistics)."""
    inputs = keras.Input((5,))
    h = _CountingIdentity()(middle()(inputs))
    model = cgh_tf.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer="sgd", loss=loss(), coherence_every=1)
    x, y = np.random.default_rng(0).normal(size=(8, 5)), np.arange(8) % 3
    assert _passes_per_step(model, x, y) == passes


def _passes_per_step(model, x, y):
    """Calls of the model in ONE trace of its train step (after a real `fit`, which builds the
    optimizer; Keras may trace its train function more than once, e.g. 3.13 with a seeded layer)."""
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    _CountingIdentity.calls = 0
    tf.function(model.train_step).get_concrete_function((tf.constant(x), tf.constant(y)))
    return _CountingIdentity.calls


L = keras.layers


@pytest.mark.parametrize("shape,middle,passes", [
    ((3, 5, 5, 2), lambda: L.TimeDistributed(L.Conv2D(2, 3)), 1),
    ((3, 5, 5, 2), lambda: L.TimeDistributed(L.Dropout(0.5)), 2),  # dropout inside a wrapper
    ((4, 3), lambda: L.Bidirectional(L.LSTM(2, return_sequences=True)), 1),
    ((4, 3), lambda: L.Bidirectional(L.LSTM(2, return_sequences=True, dropout=0.3)), 2),
    ((4, 3), lambda: L.LSTM(2, return_sequences=True, dropout=0.0, recurrent_dropout=0.0), 1),
    ((4, 3), lambda: L.GRU(2, return_sequences=True), 1),
    ((4, 3), lambda: L.GRU(2, return_sequences=True, recurrent_dropout=0.2), 2),
    ((4, 3), lambda: L.SimpleRNN(2, return_sequences=True), 1),
])
def test_wrappers_and_rnns_take_a_second_pass_only_for_what_is_inside(shape, middle, passes,
                                                                     monkeypatch):
    """Mode dependence by evidence: a wrapper or an RNN costs a second pass only when something
    inside it (a Dropout, a cell with dropout) computes differently in training mode. (The exact
    fallback, which runs the model once more per example for the RNN cells, is replaced by zeros:
    only the batch passes are counted here; its values are tested in test_exact_fallback.py.)"""
    monkeypatch.setattr(cgh_tf.exact_fallback, "per_example_gradients",
                        lambda model, x, y, loss_fn, variables, training=False, **kw: [
                            tf.zeros([tf.shape(tf.nest.flatten(x)[0])[0], *v.shape], v.dtype)
                            for v in variables])
    inputs = keras.Input(shape)
    h = _CountingIdentity()(middle()(inputs))
    model = cgh_tf.Model(inputs, L.Dense(3)(L.Flatten()(h)))
    model.compile(optimizer="sgd", loss=loss(), coherence_every=1)
    x, y = np.random.default_rng(0).normal(size=(8, *shape)), np.arange(8) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RNN cells' exact-fallback notice
        assert _passes_per_step(model, x, y) == passes


def test_mode_dependence_of_keras_layers():
    from cgh_tf.mode_dependence import depends_on_training, mode_dependent_layers
    assert not any(depends_on_training(layer) for layer in (
        L.Dense(2), L.EinsumDense("ab,bc->ac", 2), L.Conv2D(2, 3), L.LayerNormalization(),
        L.Dropout(0.0), L.LSTMCell(2), L.GRUCell(2), L.SimpleRNNCell(2), L.LSTM(2),
        L.Bidirectional(L.GRU(2)), L.TimeDistributed(L.Dense(2)), L.ConvLSTM1D(2, 3).cell))
    assert all(depends_on_training(layer) for layer in (
        L.Dropout(0.1), L.BatchNormalization(), L.GaussianNoise(0.1), L.LSTMCell(2, dropout=0.1),
        L.GRUCell(2, recurrent_dropout=0.1), L.ConvLSTM1D(2, 3, dropout=0.5).cell))
    assert not depends_on_training(L.BatchNormalization(trainable=False))

    class NoisyDense(L.Dense):  # a subclass that overrides call is not trusted
        def call(self, inputs, training=None):
            return super().call(inputs) + (1.0 if training else 0.0)

    class MyLSTM(L.LSTM):  # nor an RNN whose loop is overridden
        def inner_loop(self, sequences, initial_state, mask, training=False):
            return super().inner_loop(sequences, initial_state, mask, training)

    assert depends_on_training(NoisyDense(2))
    assert depends_on_training(MyLSTM(2))
    inputs = keras.Input((4, 3))
    h = L.Bidirectional(L.LSTM(2, dropout=0.5, name="lstm"), name="bi")(inputs)
    names = mode_dependent_layers(keras.Model(inputs, L.Dense(1)(h)))
    assert names == ["lstm_cell", "lstm_cell"]  # the cells of both directions, nothing else


@pytest.mark.parametrize("trainable,options,warned", [
    (True, {}, 1),
    (True, {"coherence_training": True}, 0),  # the metric is taken on the update's pass
    (False, {}, 0),  # frozen: one pass
])
def test_a_second_pass_for_the_metric_is_announced_once(trainable, options, warned):
    inputs = keras.Input((5,))
    h = keras.layers.BatchNormalization(trainable=trainable, name="bn")(inputs)
    model = cgh_tf.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(optimizer="sgd", loss=loss(), coherence_every=1, **options)
    x, y = np.random.default_rng(0).normal(size=(8, 5)), np.arange(8) % 3
    with pytest.warns() if warned else warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=3, epochs=2, verbose=0)  # a partial last batch, two epochs
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    second_pass = [w for w in caught if "second forward/backward pass" in str(w.message)]
    assert len(second_pass) == warned
    if warned:
        assert "layers ['bn'] compute differently in training mode" in str(second_pass[0].message)


def test_frozen_batchnorm_computes_the_same_in_both_modes():
    """Pins the Keras 3 behaviour `_depends_on_training` relies on: a BatchNormalization with
    `trainable=False` uses its moving statistics even when called with `training=True`."""
    layer = keras.layers.BatchNormalization(trainable=False)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 4)).astype("float32")
    inference, training = (layer(x, training=mode).numpy() for mode in (False, True))
    np.testing.assert_array_equal(training, inference)
    assert np.max(np.abs(keras.layers.BatchNormalization()(x, training=True) - inference)) > 0.5


def test_coherence_per_layer_and_with_m3():
    batch = 12
    x, y, w0, b0 = reference.problem(m=batch)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=3), loss=loss(),
                  coherence_every=1, coherence_per_layer=True)
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    gw, gb = reference.per_example_gradients(w0, b0, x, y)
    flat = np.concatenate([gw.reshape(batch, -1), gb], axis=1)
    np.testing.assert_allclose(history.history["m_coherence"][0],
                               reference.m_coherence(flat), rtol=1e-6)
    np.testing.assert_allclose(history.history["m_coherence/dense"][0],
                               reference.m_coherence(flat), rtol=1e-6)


@pytest.mark.parametrize("pct", [0.0, 10.0])
@pytest.mark.parametrize("kernel_path", ["xla_network", "blocks"])
def test_winsorized_gradient_descent_matches_numpy(pct, kernel_path, monkeypatch):
    if kernel_path == "blocks":  # no sorting network: top_k on materialised column blocks
        monkeypatch.setattr(cgh_tf.robust, "MAX_NETWORK_SIZE", 0)
    batch, steps = 20, 2
    x, y, w0, b0 = reference.problem(m=batch * steps)
    w, b = w0.copy(), b0.copy()
    for step in range(steps):
        gw, gb = reference.per_example_gradients(w, b, x[step * batch:(step + 1) * batch],
                                                 y[step * batch:(step + 1) * batch])
        w = w - LR * winsorized_mean(gw, pct)
        b = b - LR * winsorized_mean(gb, pct)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss(), aggregation="winsorize",
                  winsorize_pct=pct)
    network_calls = []  # counted when the train step is traced (a tracing count would miss
    network = cgh_tf.robust._outer_products_network  # a trace cached by an earlier test)
    monkeypatch.setattr(cgh_tf.robust, "_outer_products_network",
                        lambda *args: network_calls.append(args) or network(*args))
    # drop_remainder: a batch size known while tracing, which the XLA network needs
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True),
              epochs=1, shuffle=False, verbose=0)
    assert bool(network_calls) == (kernel_path == "xla_network" and pct > 0)
    np.testing.assert_allclose(model.get_layer("dense").get_weights()[0], w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.get_layer("dense").get_weights()[1], b, rtol=1e-10, atol=1e-12)


def _dense_bn_model(model_cls, bn_trainable):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    norm = keras.layers.BatchNormalization(name="bn")
    norm.trainable = bn_trainable
    hidden = keras.layers.Activation("tanh")(norm(keras.layers.Dense(5, name="hidden")(inputs)))
    return model_cls(inputs, keras.layers.Dense(3, name="out")(hidden))


def test_winsorize_refuses_batch_statistics_and_follows_keras_with_frozen_ones():
    """Winsorized GD takes every non-Dense variable's per-example gradients one example at a time,
    in training mode: a trainable BatchNormalization then normalised each example by its own
    statistics, so with nothing clipped (pct 1e-9) γ and β moved differently from keras.Model's
    update (β by 0.092, the Dense kernels exactly), silently. Now one line before training; with
    the BatchNormalization frozen (moving statistics, examples independent) the update is Keras'."""
    x, y, _, _ = reference.problem(m=8, d=4, c=3, seed=5)
    model = _dense_bn_model(cgh_tf.Model, bn_trainable=True)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss(), aggregation="winsorize",
                  winsorize_pct=1e-9)
    with pytest.raises(ValueError, match=r"training=True: layers \['bn'\] .*examples interact"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    models = [_dense_bn_model(cls, bn_trainable=False) for cls in (cgh_tf.Model, keras.Model)]
    models[0].compile(optimizer=keras.optimizers.SGD(LR), loss=loss(), aggregation="winsorize",
                      winsorize_pct=1e-9)
    models[1].compile(optimizer=keras.optimizers.SGD(LR), loss=loss())
    for m in models:
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, want in zip(*(m.trainable_variables for m in models)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-14)


def winsorized_mean(values, pct):
    low, high = np.percentile(values, [pct, 100 - pct], axis=0, method="nearest")
    return np.clip(values, low, high).mean(axis=0)


def test_compile_options_are_validated():
    x, y, w0, b0 = reference.problem(m=10)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    with pytest.raises(ValueError, match="Unknown aggregation 'median'"):
        model.compile(optimizer="sgd", loss=loss(), aggregation="median")
    with pytest.raises(ValueError, match="coherence_every"):
        model.compile(optimizer="sgd", loss=loss(), coherence_every=-1)
    with pytest.raises(ValueError, match="winsorize"):
        model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR)), loss=loss(),
                      aggregation="winsorize", winsorize_pct=2)


def test_save_and_load_keeps_compile_options(tmp_path):
    x, y, w0, b0 = reference.problem(m=24)
    model = softmax_regression(cgh_tf.Model, w0, b0)
    model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=3), loss=loss(),
                  coherence_every=3)
    model.fit(x[:12], y[:12], batch_size=12, epochs=1, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, cgh_tf.Model)
    assert loaded._cgh_options.coherence_every == 3
    for m in (model, loaded):
        m.fit(x[12:], y[12:], batch_size=12, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_coherence_metric_under_distribution_equals_one_device():
    batch = 12
    x, y, w0, b0 = reference.problem(m=batch * 2)
    values, _ = reference_batch_coherence(x, y, w0, b0, batch, steps=2)
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = softmax_regression(cgh_tf.Model, w0, b0)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss=loss(), coherence_every=1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    history = model.fit(dataset, epochs=1, verbose=0)
    np.testing.assert_allclose(history.history["m_coherence"][0],
                               np.mean([v[0] for v in values]), rtol=1e-6)
    np.testing.assert_allclose(history.history["alpha"][0],
                               np.mean([v[1] for v in values]), rtol=1e-6)


def test_in_batch_m3_under_mixed_precision_matches_consecutive_mode():
    groups, batch = 3, 24
    x, y, w0, b0 = reference.problem(m=batch * 2)
    x, w0, b0 = x.astype("float32"), w0.astype("float32"), b0.astype("float32")
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("mixed_float16")
    try:  # (the float64 fixture restores floatx and the policy afterwards)
        models = []
        for model_class, batch_size in ((cgh_tf.Model, batch), (keras.Model, batch // groups)):
            inputs = keras.Input((D,))
            model = model_class(inputs, keras.layers.Dense(C, name="dense")(inputs))
            model.get_layer("dense").set_weights([w0, b0])
            model.compile(optimizer=cgh_tf.M3(keras.optimizers.SGD(LR), groups=groups),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
            models.append(model)
    finally:
        keras.config.set_dtype_policy("float32")
    expected = reference_m3(x.astype("float64"), y, w0.astype("float64"), b0.astype("float64"),
                            batch, groups, steps=2)[-1][0]
    in_batch, consecutive = (m.get_layer("dense").get_weights()[0] for m in models)
    np.testing.assert_allclose(in_batch, consecutive, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(in_batch, expected, rtol=1e-2, atol=1e-3)  # float16 forward pass


def test_steps_trained_counts_train_steps_and_survives_a_checkpoint(tmp_path):
    """The public step counter: None before compile, one per train step, restored by a
    `tf.train.Checkpoint` of it (what the trainer's resume state saves)."""
    def build():
        inputs = keras.Input((3,))
        model = cgh_tf.Model(inputs, keras.layers.Dense(2)(inputs))
        return model

    model = build()
    assert model.steps_trained is None
    model.compile(optimizer=keras.optimizers.SGD(0.1), coherence_every=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    model.fit(x, np.arange(20) % 2, batch_size=4, epochs=1, verbose=0)
    assert int(model.steps_trained.numpy()) == 5
    path = tf.train.Checkpoint(steps=model.steps_trained).save(str(tmp_path / "ckpt"))
    other = build()
    other.compile(optimizer=keras.optimizers.SGD(0.1), coherence_every=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert int(other.steps_trained.numpy()) == 0
    tf.train.Checkpoint(steps=other.steps_trained).restore(path).assert_consumed()
    assert int(other.steps_trained.numpy()) == 5
