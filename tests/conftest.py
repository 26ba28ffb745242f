"""Test set-up: quiet TensorFlow and six virtual CPU devices for tf.distribute tests.

The logical devices must be configured before TensorFlow initialises its runtime, so this runs at
collection time, before any test imports a model.
"""

import os
import re

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


# ------------------------------------------------------------------------------ test tiers
# `slow`: subprocess and end-to-end tests (`make test-fast` = `-m "not slow"`; `make test` runs
# everything). Marked here, in one place, by file, by test-name pattern and by fixture, so the
# files other issues are editing need no decorators; a test may also carry `@pytest.mark.slow`.
SLOW_FILES = {
    "test_accelerator_check.py", "test_coherence_matrix.py", "test_memory_benchmark.py",
    "test_multi_worker_trainer.py", "test_trainer.py", "test_trainer_features.py",
    "test_reproduce.py", "test_hparams_board.py",
    # in-process but end-to-end: fit under MirroredStrategy against one device, ~10-60 s each
    "test_replica_groups.py", "test_optimizers_distribute.py",
}
SLOW_NAMES = re.compile(r"end_to_end|tiny|subprocess|_cli_|resume|demo_runs|import_is_light")
SLOW_FIXTURES = re.compile(r"^tiny|runs$|subprocesses$")  # whole experiments run by a fixture


def is_slow(item) -> bool:
    """Whether a collected test is a subprocess or end-to-end test (see SLOW_* above)."""
    return (os.path.basename(str(item.fspath)) in SLOW_FILES or bool(SLOW_NAMES.search(item.name))
            or any(SLOW_FIXTURES.search(name) for name in getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)
