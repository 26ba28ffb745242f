"""Test set-up: quiet TensorFlow and six virtual CPU devices for tf.distribute tests.

The logical devices must be configured before TensorFlow initialises its runtime, so this runs at
collection time, before any test imports a model.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

NUM_VIRTUAL_CPUS = 6  # up to 6 replicas (tests/test_replica_groups.py)

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_VIRTUAL_CPUS)]
)


import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def float64_keras():
    """Float64 Keras (floatx and dtype policy) for the test, so 1e-10 comparisons are meaningful.

    Keras casts compiled losses to floatx and layers compute in the dtype policy.
    """
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(previous[0])
    keras.config.set_dtype_policy(previous[1])
