"""The update-level memorisation run of `scale`, `noise_structure` and `winsorize_controls`: an
MLP on `train_size` noisy examples under SGD / M3 / RM3 / RA3, logging pristine and corrupted
(noisy-label) train accuracy, test accuracy, loss, updates and examples at `log_epochs`."""

import numpy as np

from . import beyond_common as common
from . import curve_stats
from . import graph_loop
from . import models
from . import probes
from . import update_rules

OPTIMIZERS = update_rules.batches_per_update("sgd")  # name -> batches per optimizer update
DATASETS = ("mnist1d", "mnist5k")
MNIST5K_TRAIN = 4000


def check_data(config):
    """ValueError (one line) for a dataset or train_size that `load_data` cannot give."""
    common.require_one_of(config, "dataset", DATASETS)
    common.require_ints(config, ("train_size",))
    common.require(config.dataset != "mnist1d" or config.train_size % 10 == 0,
                   f"train_size={config.train_size!r} must be a multiple of 10 for mnist1d "
                   "(generated with train_size / 10 examples per class)")
    common.require(config.dataset != "mnist5k" or config.train_size <= MNIST5K_TRAIN,
                   f"train_size={config.train_size!r} must be <= {MNIST5K_TRAIN} for mnist5k")


def check_config(config):
    """ValueError (one line) for a field but the arm's that a run would fail on or misread."""
    from cgh_tf import data

    check_data(config)
    common.require_ints(config, ("width", "depth", "batch_size", "epochs",
                                 "checkpoint_every_logs"))
    common.require_label_noise(config)
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    common.require_positive(config, ("learning_rate",))
    common.require_int_list(config, "log_epochs")


def load_data(config):
    """`cgh_tf.data.load` of the config's dataset at `train_size` with its label noise."""
    from cgh_tf import data

    size = ({"train_size": int(config.train_size)} if config.dataset == "mnist1d"
            else {"max_train": int(config.train_size)})
    return data.load(config.dataset, label_noise=float(config.label_noise),
                     noise_kind=config.noise_kind, seed=int(config.data_seed), **size)


def setup(config, run_dir, echo, build=None, measure=None, summarize_more=None):
    """The `graph_loop.Training` of one memorisation run. build(config, model, ds) -> (optimizer,
    batches per update, aggregator or None, calibration dict for the summary), on the fresh model
    before any restore (None: `update_rules.build` of `config.optimizer`, no calibration);
    measure(model, ds, epoch) -> extra scalars of every row; summarize_more(curves) -> extra
    summary numbers."""
    import keras
    import tensorflow as tf

    ds = load_data(config)
    (x, y), (x_test, y_test) = common.arrays(ds.train), common.arrays(ds.test)
    corrupted, original_y = ds.train.corrupted, ds.train.original_y.astype(np.int32)
    n, batch = len(x), int(config.batch_size)
    model = models.mlp(config, ds.input_shape, ds.num_classes)
    optimizer, per_update, aggregator, calibration = (
        build(config, model, ds) if build else (*update_rules.build(config, OPTIMIZERS), {}))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, tf.constant(x), tf.constant(y),
                                      batch, per_update, aggregator)
    updates_per_epoch = n // (batch * per_update)
    predict = graph_loop.predictor(model)

    def log(epoch):
        pred, losses = predict(x, y)
        pred_test, _ = predict(x_test, y_test)
        row = {"epoch": epoch, "step": epoch, "updates": int(optimizer.iterations.numpy()),
               "examples": epoch * updates_per_epoch * batch * per_update,
               "train_loss": float(np.mean(losses)),
               **probes.label_accuracies(pred, y, corrupted, original_y),
               "test_accuracy": probes.accuracy(pred_test, y_test)}
        if measure is not None:
            row.update(measure(model, ds, epoch))
        if echo and epoch:
            echo(f"  {run_dir} epoch {epoch}/{config.epochs}: updates {row['updates']} "
                 f"corrupted acc {row['corrupted_accuracy']:.3f} test {row['test_accuracy']:.3f}")
        return row

    def summarize_run(curves):
        return {**summarize(curves), **probes.label_pair_density(
            original_y, y, corrupted, ds.num_classes), **calibration,
            **(summarize_more(curves) if summarize_more else {})}

    return graph_loop.Training(
        model, optimizer, log=log, summarize=summarize_run, extra=dict(
            num_train=n, num_test=len(x_test), num_corrupted=int(corrupted.sum()),
            batches_per_update=per_update, updates_per_epoch=updates_per_epoch),
        **graph_loop.epoch_schedule(
            lambda perm: train(graph_loop.epoch_updates(perm, batch, per_update)), config, n))


def summarize(curves):
    """Last logged values, plus the best test accuracy over the logged epochs and its epoch."""
    best = curve_stats.best_at(curves, "test_accuracy")
    return {**curve_stats.last_values(curves),
            **dict(zip(("best_test_accuracy", "epoch_of_best_test"), best))}
