"""M3 / RM3 under tf.distribute.MirroredStrategy on 2 and 3 virtual CPUs equal one device.

tests/conftest.py creates 6 logical CPU devices before TensorFlow starts. The single-device run
is the reference; it is itself checked against NumPy in tests/test_optimizers.py. float64
everywhere, so "equal" means equal up to the summation order of the all-reduce (~1e-15).
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from cgh_tf import distribute
from cgh_tf.optimizers import M3, RM3

DIM, CLASSES, LR = 4, 3, 0.5
GLOBAL_BATCH = 12  # divisible by 2 and 3 replicas: equal shards, so SUM of replica means = mean
NUM_BATCHES = 7


@pytest.fixture(autouse=True)
def float64():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(NUM_BATCHES * GLOBAL_BATCH, DIM))
    y = rng.integers(0, CLASSES, size=len(x))
    return x, y


def initial_weights():
    rng = np.random.default_rng(4)
    return [rng.normal(size=(DIM, CLASSES)) * 0.5, rng.normal(size=CLASSES) * 0.1]


def make_model():
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(CLASSES)])
    model.set_weights(initial_weights())
    return model


def make_optimizer(cls, size):
    return cls(keras.optimizers.SGD(LR, momentum=0.75), size)


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.trajectory = []

    def on_train_batch_end(self, batch, logs=None):
        self.trajectory.append([np.array(w) for w in self.model.get_weights()])


def fit(cls, size, strategy=None):
    x, y = data()
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        model = make_model()
        model.compile(optimizer=make_optimizer(cls, size), loss=loss_fn(), jit_compile=False)
    recorder = Recorder()
    model.fit(x, y, batch_size=GLOBAL_BATCH, shuffle=False, verbose=0, callbacks=[recorder])
    return recorder.trajectory, model


_strategies = {}


def mirrored(replicas):
    """One MirroredStrategy per replica count. Reduction goes through one device: CPU collectives
    of strategies with different device counts in one process collide on their group keys."""
    if replicas not in _strategies:
        _strategies[replicas] = tf.distribute.MirroredStrategy(
            [f"/cpu:{i}" for i in range(replicas)],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    return _strategies[replicas]


def assert_replicas_agree(strategy, model, optimizer=None):
    optimizer = optimizer or model.optimizer
    for variable in model.weights + optimizer.variables:
        copies = strategy.experimental_local_results(variable.value)
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy.numpy(), copies[0].numpy(), err_msg=variable.path)


_single_device = {}


def single_device(cls, size):
    if (cls, size) not in _single_device:
        _single_device[(cls, size)] = fit(cls, size)[0]
    return _single_device[(cls, size)]


# R = 3 is a multiple of groups = 3, R = 2 is not.
@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("cls", [M3, RM3])
def test_mirrored_fit_equals_single_device(cls, replicas):
    strategy = mirrored(replicas)
    got, model = fit(cls, 3, strategy)
    want = single_device(cls, 3)
    # Keras scales each replica's loss by ops.cast(1 / R, float64), which rounds 1 / R through
    # float32: exact for R = 2, off by ~3e-8 relative per step for R = 3 (plain SGD has the same offset).
    rtol = 1e-12 if replicas == 2 else 1e-6
    assert len(got) == len(want) == NUM_BATCHES
    for step, (g, w) in enumerate(zip(got, want)):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol / 100, err_msg=f"step {step}")
    assert int(model.optimizer.iterations.numpy()) == (2 if cls is M3 else NUM_BATCHES - 2)
    assert_replicas_agree(strategy, model)


def test_all_reduce_stacked_sum_is_one_collective_sum():
    strategy = mirrored(3)

    @tf.function
    def run():
        def replica_fn():
            r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float64)
            return distribute.all_reduce_stacked_sum([tf.fill([2, 3], r), None, tf.fill([2], 10 * r)])

        return strategy.run(replica_fn)

    a, none, b = run()
    assert none is None
    for local in strategy.experimental_local_results(a):
        np.testing.assert_array_equal(local.numpy(), np.full([2, 3], 3.0))
    for local in strategy.experimental_local_results(b):
        np.testing.assert_array_equal(local.numpy(), np.full([2], 30.0))
