"""cgh_tf.streaming: blocks of stacked full batches cover a sample in order; measure over many
blocks equals measure in one batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import coherence, streaming


def test_blocks_cover_the_sample_in_order_with_bounded_size(monkeypatch):
    monkeypatch.setattr(streaming, "BLOCK_ELEMENTS", 2 * 3 * 4)  # two batches of 3 examples of 4
    x = np.arange(11 * 4).reshape(11, 4)
    y = np.arange(11)
    blocks = list(streaming.blocks(x, y, batch_size=3))
    assert [(b.stacked, b.y.shape) for b in blocks] == [(True, (2, 3)), (True, (1, 3)), (False, (2,))]
    assert np.array_equal(np.concatenate([np.reshape(b.y, [-1]) for b in blocks]), y)
    assert np.array_equal(np.concatenate([np.reshape(b.x, [-1, 4]) for b in blocks]), x)


def test_blocks_of_a_nest_of_inputs_and_of_a_dataset():
    x = {"a": np.zeros((5, 2)), "b": np.ones((5, 3, 1))}
    (block,) = streaming.blocks(x, np.arange(5), batch_size=5)
    assert block.stacked and block.x["a"].shape == (1, 5, 2) and block.x["b"].shape == (1, 5, 3, 1)
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((5, 2)), np.arange(5))).batch(2)
    assert [b.stacked for b in streaming.blocks(dataset, None, None)] == [False] * 3


def test_over_stacked_batches_runs_each_batch_in_order():
    @tf.function
    def run(xs, ys):
        return streaming.over_stacked_batches(
            lambda xb, yb, wb: (tf.reduce_sum(xb) + yb[0], tf.cast(wb is None, tf.int32)),
            (xs, ys, None), (tf.float32, tf.int32))

    sums, no_weights = run(tf.reshape(tf.range(12.0), [3, 2, 2]),
                           tf.constant([[1.0, 0], [2, 0], [3, 0]]))
    np.testing.assert_allclose(sums.numpy(), [0 + 1 + 2 + 3 + 1, 4 + 5 + 6 + 7 + 2, 8 + 9 + 10 + 11 + 3])
    assert no_weights.numpy().tolist() == [1, 1, 1]  # a None entry stays None


def test_measure_over_many_blocks_equals_one_batch(monkeypatch, float64_keras):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"),
                              keras.layers.Dense(3)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(23, 4)), rng.integers(0, 3, 23)
    whole = coherence.measure(model, x, y, batch_size=23, per_layer=True)
    monkeypatch.setattr(streaming, "BLOCK_ELEMENTS", 2 * 4 * 4)  # blocks of 2 batches of 4
    blocked = coherence.measure(model, x, y, batch_size=4, per_layer=True)
    assert blocked.m == 23
    assert blocked.m_coherence == pytest.approx(whole.m_coherence, rel=1e-12)
    for name, layer in whole.per_layer.items():
        assert blocked.per_layer[name].alpha == pytest.approx(layer.alpha, rel=1e-12)
