"""`cgh_tf.callbacks.SubsetAccuracy` against a float64 NumPy forward pass of the same weights."""

import keras
import numpy as np
import pytest

from cgh_tf.callbacks import SubsetAccuracy

NUM_FEATURES, NUM_CLASSES = 6, 4


def _model():
    """Dense -> BatchNorm -> Dropout: inference mode must use moving statistics and no dropout."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(NUM_CLASSES),
        keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.9),
    ])
    rng = np.random.default_rng(1)
    batch_norm = model.layers[1]
    batch_norm.moving_mean.assign(rng.normal(size=NUM_CLASSES).astype(np.float32))
    batch_norm.moving_variance.assign(rng.uniform(0.5, 2.0, NUM_CLASSES).astype(np.float32))
    batch_norm.gamma.assign(rng.uniform(0.5, 2.0, NUM_CLASSES).astype(np.float32))
    batch_norm.beta.assign(rng.normal(size=NUM_CLASSES).astype(np.float32))
    return model


def _numpy_accuracy(model, x, y):
    """Accuracy of the inference-mode forward pass, recomputed in float64 NumPy."""
    kernel, bias = (np.asarray(w, np.float64) for w in model.layers[0].get_weights())
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in model.layers[1].get_weights())
    epsilon = model.layers[1].epsilon
    pre_activation = x.astype(np.float64) @ kernel + bias
    logits = (pre_activation - mean) / np.sqrt(variance + epsilon) * gamma + beta
    return np.mean(np.argmax(logits, axis=1) == y)


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, NUM_FEATURES)).astype(np.float32),
            rng.integers(0, NUM_CLASSES, n).astype(np.int32))


def test_accuracies_match_numpy_for_batch_sizes_that_do_not_divide_n():
    model = _model()
    subsets = {"pristine": _data(103, seed=2), "corrupted": _data(37, seed=3)}
    callback = SubsetAccuracy(subsets, batch_size=16)
    callback.set_model(model)
    logs = {"loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert set(logs) == {"loss", "pristine_accuracy", "corrupted_accuracy"}
    for name, (x, y) in subsets.items():
        expected = _numpy_accuracy(model, x, y)
        assert 0.0 < expected < 1.0
        assert logs[f"{name}_accuracy"] == pytest.approx(expected, abs=1e-12)


def test_accuracy_does_not_depend_on_batch_size():
    model = _model()
    subsets = {"all": _data(50, seed=4)}
    values = set()
    for batch_size in (1, 7, 50, 1000):
        callback = SubsetAccuracy(subsets, batch_size=batch_size)
        callback.set_model(model)
        values.add(callback.evaluate()["all_accuracy"])
    assert len(values) == 1


def test_values_reach_history_in_fit_and_empty_subsets_are_skipped():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.
                  SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(64, seed=5)
    empty = (np.zeros((0, NUM_FEATURES), np.float32), np.zeros((0,), np.int32))
    callback = SubsetAccuracy({"train": (x, y), "nothing": empty}, batch_size=10)
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    assert "nothing_accuracy" not in history.history
    assert len(history.history["train_accuracy"]) == 2
    assert history.history["train_accuracy"][-1] == pytest.approx(_numpy_accuracy(model, x, y),
                                                                  abs=1e-12)


def test_every_skips_epochs():
    model = _model()
    callback = SubsetAccuracy({"a": _data(8, seed=6)}, every=2)
    callback.set_model(model)
    logged = []
    for epoch in range(4):
        logs = {}
        callback.on_epoch_end(epoch, logs)
        logged.append("a_accuracy" in logs)
    assert logged == [False, True, False, True]


@pytest.mark.parametrize("subsets, kwargs, message", [
    ([("a", None)], {}, "mapping"),
    ({"a": _data(4, 0)}, {"batch_size": 0}, "batch_size"),
    ({"a": _data(4, 0)}, {"every": 0}, "every"),
    ({"a": (np.zeros((3, 2)),)}, {}, "pair"),
    ({"a": (np.zeros((3, 2)), np.zeros(4, np.int32))}, {}, "3 examples but y has 4"),
    ({"a": (np.zeros((3, 2)), np.zeros(3, np.float32))}, {}, "integer"),
])
def test_bad_arguments_are_rejected(subsets, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SubsetAccuracy(subsets, **kwargs)
