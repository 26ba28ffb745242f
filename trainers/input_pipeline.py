"""The trainer's input pipeline: the order of every epoch, a pure function of (seed, epoch), so a
resumed run sees exactly the batches of an uninterrupted one, and its batches.
"""

import numpy as np
import tensorflow as tf

from trainers.config_schema import ConfigError


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Number of batches in one epoch."""
    steps = num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
    if steps < 1:
        raise ConfigError(f"batch_size={batch_size} with drop_remainder leaves no batch of the "
                          f"{num_examples} training examples")
    return steps


def _epoch_order_tf(n, seed, epoch):
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64),
                                                           tf.cast(epoch, tf.int64)]))
    return tf.argsort(keys, stable=True)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """`[n]` int64: the order in which epoch `epoch` (0-based) visits the training examples."""
    return _epoch_order_tf(n, seed, epoch).numpy().astype(np.int64)


def train_dataset(x, y, *, batch_size, seed, first_epoch, num_epochs, drop_remainder=False):
    """`(x, y)` batches of epochs `first_epoch .. num_epochs - 1`, each in `epoch_order`, for
    `fit(steps_per_epoch=...)`; an epoch's last batch may be smaller unless `drop_remainder`."""
    batches = epoch_index_batches(len(y), batch_size=batch_size, seed=seed, first_epoch=first_epoch,
                                  num_epochs=num_epochs, drop_remainder=drop_remainder)
    x, y = tf.constant(x), tf.constant(y)
    return batches.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx))).prefetch(2)


def epoch_index_batches(n, *, batch_size, seed, first_epoch, num_epochs, drop_remainder=False):
    """`tf.data.Dataset` of int index vectors: the batches of `train_dataset`, as example indices."""
    def batches_of_epoch(epoch):
        order = _epoch_order_tf(n, seed, epoch)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder)

    return tf.data.Dataset.range(first_epoch, num_epochs).flat_map(batches_of_epoch)


def memorisation_subsets(train_split) -> dict:
    """`{"pristine": (x, y), "corrupted": (x, y)}` of a Split, y = the *training* labels."""
    corrupted = np.asarray(train_split.corrupted, dtype=bool)
    return {"pristine": (train_split.x[~corrupted], train_split.y[~corrupted]),
            "corrupted": (train_split.x[corrupted], train_split.y[corrupted])}
