"""The default experiment (MNIST-1D, 50 % label noise, MLP) trained with M3, the median of 3 means.

As in the authors' code: plain SGD inside (no momentum); every update consumes 3 consecutive batches.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the default config with `optimizer.name = "m3"` and no momentum."""
    config = default.get_config()
    config.optimizer.name = "m3"
    config.optimizer.momentum = 0.0
    config.optimizer.groups = 3
    return config
