"""The default experiment (MNIST-1D, 50 % label noise, MLP) trained with RM3, the running median of 3.

As in the authors' code: plain SGD inside (no momentum); every step uses the median of the last 3
mini-batch gradients.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the default config with `optimizer.name = "rm3"` and no momentum."""
    config = default.get_config()
    config.optimizer.name = "rm3"
    config.optimizer.momentum = 0.0
    config.optimizer.window = 3
    return config
