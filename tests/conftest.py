"""Test set-up: quiet TensorFlow and three virtual CPU devices for tf.distribute tests.

The logical devices must be configured before TensorFlow initialises its runtime, so this runs at
collection time, before any test imports a model.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tensorflow as tf  # noqa: E402

NUM_VIRTUAL_CPUS = 3

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_VIRTUAL_CPUS)]
)
