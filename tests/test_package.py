"""The package itself: what `import cgh_tf` costs and exposes, and the quick-start files."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300, check=True)


def test_import_is_light_and_registers_the_keras_serializables():
    """`import cgh_tf` loads neither tensorflow-datasets nor mnist1d and prints nothing of its own."""
    out = run_python(
        "import sys, keras, cgh_tf\n"
        "print(sorted(m for m in ('tensorflow_datasets', 'mnist1d') if m in sys.modules))\n"
        "print([keras.saving.get_registered_object(n) is not None\n"
        "       for n in ('cgh_tf>M3', 'cgh_tf>RM3', 'cgh_tf>RA3', 'cgh_tf>Model')])\n"
        "print(cgh_tf.M3.__name__, cgh_tf.Model.__name__, cgh_tf.coherence.measure.__name__)\n")
    lines = out.stdout.splitlines()
    assert lines == ["[]", "[True, True, True, True]", "M3 Model measure"]
    # Only TensorFlow's own start-up lines (if any) may appear on stderr.
    ours = [line for line in out.stderr.splitlines() if "cgh_tf" in line]
    assert ours == []


@pytest.mark.slow  # a subprocess
def test_import_leaves_the_tf_runtime_unstarted():
    """Importing the package and the trainer starts no TF eager runtime, so a program can still
    configure it afterwards (MultiWorkerMirroredStrategy's collective ops, logical devices): a
    Keras layer built at import time once broke every multi-worker run."""
    out = run_python(
        "import tensorflow as tf, cgh_tf, trainers.train\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "print(len(tf.config.list_logical_devices('CPU')))\n")
    assert out.stdout.splitlines() == ["2"]


def test_unknown_attribute_gives_a_clear_error():
    import cgh_tf

    with pytest.raises(AttributeError, match="no attribute 'M4'"):
        cgh_tf.M4  # noqa: B018
