"""cgh_tf: Coherent Gradients for TensorFlow / Keras 3.

| name                         | what                                                        |
|------------------------------|-------------------------------------------------------------|
| `cgh_tf.M3`, `RM3`, `RA3`    | optimizers wrapping any Keras optimizer (robust averages)    |
| `cgh_tf.Model`               | `keras.Model` with group splitting, winsorized GD, coherence |
| `cgh_tf.coherence`           | alpha, m-coherence, per layer, streaming, f^p / f^c          |
| `cgh_tf.data`                | embedded MNIST-1D, tfds datasets, label / input corruptions  |
| `cgh_tf.models`              | MLP, small CNN, CIFAR ResNet-18, ImageNet ResNet-50          |
| `cgh_tf.callbacks`           | coherence monitor, subset accuracies, learning times         |

`import cgh_tf` imports TensorFlow and the optimizer / model classes (so that
`keras.models.load_model` finds `cgh_tf>M3`, `cgh_tf>Model`, ... after a plain `import cgh_tf`);
`data`, `models` and `callbacks` (and with them tensorflow-datasets and matplotlib) are imported
on first use.
"""

import importlib
import os

from cgh_tf import quiet

# The project's programs (trainers, cgh-* scripts) are quiet by default (cgh_tf/quiet.py); for
# everyone else, TensorFlow's C++ start-up INFO lines are quietened unless the user chose a level.
quiet.quiet_if_our_program()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"

_SUBMODULES = (
    "callbacks", "coherence", "data", "distribute", "models", "optimizers", "per_example",
    "robust", "training",
)
_ATTRIBUTES = {
    "M3": "optimizers", "RM3": "optimizers", "RA3": "optimizers",
    "Model": "training",
}

from cgh_tf import optimizers, training  # noqa: E402  (registers the Keras serializables)
from cgh_tf.optimizers import M3, RA3, RM3  # noqa: E402
from cgh_tf.training import Model  # noqa: E402


def __getattr__(name):
    """Import submodules and public classes on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
    raise AttributeError(f"module 'cgh_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + list(_ATTRIBUTES))
