"""The run setup of the custom-loop experiments (`build`, `check_config`), and what the
per-example experiments share: per-example arrays per logged epoch in `RUN/per_example.npz`
(written before the checkpoint that follows each log), learning epochs, permutation nulls."""

import os
import zipfile
from typing import NamedTuple

import numpy as np

from cgh_tf.atomic_files import atomic_open

from . import beyond_common as common
from . import graph_loop
from . import models

RECORDS_FILE = "per_example.npz"
RERUN_HINT = "delete the run's directory and run it again"  # lost records: no resume


class Setup(NamedTuple):
    """The model, its optimizer, the mean cross-entropy of logits, `train_epoch(perm)`
    (`graph_loop.epoch_trainer`) and `predict(xs, ys)` (`graph_loop.predictor`)."""

    model: object
    optimizer: object
    loss_fn: object
    train_epoch: object
    predict: object


def build(config, x, y, input_shape, num_classes, model=None, optimizer=None) -> Setup:
    """`model` (default: the seeded MLP of `config`) with `optimizer` (default: SGD at
    `config.learning_rate`) on x [n, ...] float32, y [n] int32 in `config.batch_size` batches."""
    import keras
    import tensorflow as tf

    if model is None:
        keras.utils.set_random_seed(int(config.seed))
        model = models.mlp(config, input_shape, num_classes)
    if optimizer is None:
        optimizer = keras.optimizers.SGD(float(config.learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_epoch = graph_loop.epoch_trainer(model, optimizer, loss_fn, tf.constant(x),
                                           tf.constant(y), int(config.batch_size))
    return Setup(model, optimizer, loss_fn, train_epoch, graph_loop.predictor(model))


def check_config(config, ints=()):
    """ValueError (one line) for the dataset and the fields of `build`'s run, and `ints`."""
    from cgh_tf import data

    common.require_one_of(config, "dataset", data.DATASETS)
    common.require_ints(config, ("width", "depth", "batch_size", "epochs", *ints,
                                 "checkpoint_every_logs"))
    common.require_positive(config, ("learning_rate",))


class EpochRecords:
    """Per-example arrays by logged epoch in `RUN/per_example.npz` (keys `e<epoch>/<name>`)."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, RECORDS_FILE)
        self.rows = {}
        if os.path.exists(self.path):
            try:
                with np.load(self.path) as saved:
                    for key in saved.files:
                        epoch, name = key.split("/", 1)
                        self.rows.setdefault(int(epoch[1:]), {})[name] = saved[key]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
                raise ValueError(f"{self.path} is damaged ({type(error).__name__}: {error}); "
                                 f"{RERUN_HINT}") from None

    def put(self, epoch, **arrays):
        """Record `arrays` ({name: [n]}) for `epoch` (replacing an earlier record) and save."""
        self.rows[int(epoch)] = {name: np.asarray(a) for name, a in arrays.items()}
        flat = {f"e{e}/{name}": a for e, row in self.rows.items() for name, a in row.items()}
        with atomic_open(self.path, "wb") as f:
            np.savez(f, **flat)

    def get(self, epoch, name):
        """The array `name` of `epoch`; ValueError (one line) if it was never recorded."""
        try:
            return self.rows[int(epoch)][name]
        except KeyError:
            raise ValueError(f"{self.path} has no {name!r} for epoch {epoch} (the run's "
                             f"per-example records are missing or damaged); {RERUN_HINT}") from None

    def stacked(self, name, epochs):
        """[len(epochs), n]: the arrays `name` of `epochs`, in that order."""
        return np.stack([self.get(e, name) for e in epochs])


def learning_epochs(correct, epochs):
    """[n] float64: per example the first of the sorted `epochs` (rows of `correct` [T, n] bool)
    from which it stays correct; `epochs[-1] + 1` if wrong at the last one."""
    correct = np.asarray(correct, bool)
    epochs = np.asarray(epochs, np.float64)
    if correct.ndim != 2 or correct.shape[0] != len(epochs):
        raise ValueError(f"correct must be [len(epochs)={len(epochs)}, n]; got {correct.shape}")
    # stays[k, i]: example i correct at every logged epoch from row k on
    stays = np.flip(np.logical_and.accumulate(np.flip(correct, 0), axis=0), 0)
    first = len(epochs) - stays.sum(axis=0)
    return np.append(epochs, epochs[-1] + 1)[first]


def permutation_null(statistic, a, b, seed, k):
    """The mean of `statistic(a, b[permutation])` over `k` permutations by
    `default_rng([seed, 8191])` (the pairing of a and b broken)."""
    rng = np.random.default_rng([int(seed), 8191])
    b = np.asarray(b)
    return float(np.mean([statistic(a, b[rng.permutation(len(b))]) for _ in range(int(k))]))
