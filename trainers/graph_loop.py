"""The one custom training loop and the declared run over it (`Training`, `declared_run`):
graph-mode epochs over index tensors, logged, checkpointed, resumable (docs/design.md §7.0)."""

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np

from cgh_tf import workdir_lock

from . import beyond_common as common


@dataclasses.dataclass
class Training:
    """One graph-loop run as data, in positions of `unit`: `advance(start, stop)` trains,
    `log(position)` -> a row of scalars (with "step") at `log_points`, checkpoints at
    `checkpoint_points` and `total` (None: the last log point), `summarize(curves)` -> summary,
    `extra`: more results.json fields (a dict or a function of the curves); `until(curves)`
    true ends the run early (`train_declared`)."""

    model: object
    optimizer: object
    advance: Callable
    log: Callable
    log_points: Sequence
    checkpoint_points: Sequence
    summarize: Callable
    extra: object = dataclasses.field(default_factory=dict)
    unit: str = "epoch"
    total: int = None
    until: Callable = None


def declared_run(setup, check_config):
    """An experiment's `run(config, run_dir, echo=print)`: a finished run's results, else
    `check_config` (before anything is written), then `train_declared` under the run directory's
    lock (echo=None: silent)."""

    def run(config, run_dir, echo=print):
        done = common.finished_or_checked(config, run_dir, check_config)
        if done is not None:
            return done
        with workdir_lock.hold(run_dir, f"run of {setup.__module__}"):
            return train_declared(setup, config, run_dir, echo or (lambda line: None))

    run.__doc__ = (f"Train (or resume, or skip if finished) one {setup.__module__} run; returns "
                   "its results dict.")
    return run


def train_declared(setup, config, run_dir, echo):
    """Seed `config.seed`, `setup(config, run_dir, echo)` -> `Training`; restore this config's
    newest checkpoint (said on `echo`) or log at 0, then `advance` between stops, `log(stop)`
    appended to the curves at `log_points`, checkpoints at `checkpoint_points` and `total`, until
    `until(curves)` (checkpointed when it turns true); `common.finish` with the summary and extra
    fields of the curves (an uninterrupted run's); the results dict."""
    import keras

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    run, config_dict = setup(config, run_dir, echo), config.to_dict()
    total = int(max(run.log_points) if run.total is None else run.total)
    log_points, checkpoint_points = set(run.log_points), set(run.checkpoint_points) | {total}
    ckpt = common.Checkpointer(run_dir, run.model, run.optimizer)
    position, curves = ckpt.restore(config_dict)
    if curves is None:
        position, curves = 0, {}
        if 0 in log_points:
            common.append(curves, run.log(0))
    else:
        echo(f"  resumed {run_dir} at {run.unit} {position}")
    stopped = run.until or (lambda _: False)
    for stop in sorted(p for p in log_points | checkpoint_points if position < p <= total):
        if stopped(curves):
            break
        run.advance(position, stop)
        position = stop
        if stop in log_points:
            common.append(curves, run.log(stop))
        if stop in checkpoint_points or stopped(curves):
            ckpt.save(stop, curves, config_dict)
    extra = run.extra(curves) if callable(run.extra) else run.extra
    return common.finish(run_dir, config_dict, curves, run.summarize(curves), started, **extra)


def epoch_advancer(train_epoch, seed, n):
    """`advance(start, stop)` in epochs: epoch e is `train_epoch(epoch_permutation(seed, e, n))`."""

    def advance(start, stop):
        for epoch in range(start, stop):
            train_epoch(epoch_permutation(seed, epoch, n))

    return advance


def epoch_schedule(train_epoch, config, n, log_epochs=None, epochs=None):
    """`Training` fields in epochs (`epoch_advancer` with the config's seed); logs
    at `capped_log_epochs(log_epochs or config.log_epochs, epochs or config.epochs)`, a checkpoint
    every `checkpoint_every_logs`-th."""
    epochs = int(config.epochs if epochs is None else epochs)
    log_points = capped_log_epochs(config.log_epochs if log_epochs is None else log_epochs,
                                   epochs)
    return dict(advance=epoch_advancer(train_epoch, config.seed, n), log_points=log_points,
                checkpoint_points=log_points[::int(config.checkpoint_every_logs)], total=epochs)


def step_schedule(train, config, n, log_points, checkpoint_points, unit="step"):
    """`Training` fields in global steps of the `epoch_trainer` `train`: step s is batch s mod S
    of epoch s // S (S batches per epoch)."""
    per_epoch = train.batches_per_epoch

    def advance(step, stop):
        while step < stop:
            epoch, first = divmod(step, per_epoch)
            last = min(per_epoch, first + stop - step)
            train(epoch_permutation(config.seed, epoch, n).astype(np.int32), first, last)
            step += last - first

    return dict(advance=advance, log_points=log_points, checkpoint_points=checkpoint_points,
                unit=unit)


def epoch_permutation(seed, epoch, n):
    """The example order of epoch `epoch` (int64 [n]), a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))


def epoch_trainer(model, optimizer, loss_fn, x, y, batch_size):
    """`train(perm, first=0, last=None)`: batches first..last−1 (default all ⌈n / B⌉, the last
    partial) in the order perm (int [n]) over x [n, ...], y [n] in one `tf.function` call, one
    `optimizer.apply` of the mean-loss gradient each."""
    import tensorflow as tf

    n, batch, variables = int(x.shape[0]), int(batch_size), model.trainable_variables
    num_batches = -(-n // batch)

    @tf.function(reduce_retracing=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    @tf.function
    def train_range(perm, first, last):  # the batch loop runs inside the graph
        for k in tf.range(first, last):
            idx = perm[k * batch:(k + 1) * batch]
            train_step(tf.gather(x, idx), tf.gather(y, idx))

    def train(perm, first=0, last=None):
        train_range(tf.constant(perm), tf.constant(first, tf.int32),
                    tf.constant(num_batches if last is None else last, tf.int32))

    train.batches_per_epoch = num_batches
    return train


def update_trainer(model, optimizer, loss_fn, x, y, batch_size, per_update=1, aggregator=None):
    """`train(idx)`: idx int [u, per_update, B] = u updates in one `tf.function` call, each
    `per_update` `optimizer.apply` calls on the batches idx[k, g] of x [n, ...], y [n]; gradient
    of the mean loss, or `aggregator` over per-example gradients (its `reduce`, or its own
    `gradients(model, x, y, loss_fn, training)`); static batch shapes."""
    import tensorflow as tf

    from cgh_tf import per_example

    variables = model.trainable_variables

    def gradients(xb, yb):
        if hasattr(aggregator, "gradients"):
            return aggregator.gradients(model, xb, yb, loss_fn, training=True)
        if aggregator is not None:
            return per_example.reduced_per_example_gradients(
                model, xb, yb, aggregator.reduce, loss_fn=loss_fn, training=True,
                reduce_outer=aggregator.reduce_outer)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        return tape.gradient(loss, variables)

    @tf.function(input_signature=[tf.TensorSpec([None, per_update, batch_size], tf.int32)])
    def train(idx):
        for k in tf.range(tf.shape(idx)[0]):
            for g in range(per_update):
                optimizer.apply(gradients(tf.gather(x, idx[k, g]), tf.gather(y, idx[k, g])),
                                variables)

    return lambda idx: train(tf.constant(np.asarray(idx, dtype=np.int32)))


class Batches:
    """`update_trainer`'s batches by index j: batch j mod E of `default_rng([seed, j // E])`'s
    permutation (E = ⌊n / B⌋, the rest dropped; B >= n: the whole set); updates cross epochs."""

    def __init__(self, n, batch_size, batches_per_update, seed):
        self.n, self.seed, self.per_update = n, int(seed), batches_per_update
        self.full = batch_size >= n
        self.size = n if self.full else batch_size
        self.per_epoch = 1 if self.full else n // batch_size
        self._perm = {}

    def batch(self, j):
        """int32 [size]: the example indices of batch j."""
        if self.full:
            return np.arange(self.n, dtype=np.int32)
        epoch, k = divmod(j, self.per_epoch)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm[epoch][k * self.size:(k + 1) * self.size].astype(np.int32)

    def updates(self, first, last):
        """int32 [last − first, batches per update, size]: the batches of updates first..last−1."""
        b = self.per_update
        return np.stack([self.batch(j) for j in range(first * b, last * b)]).reshape(
            last - first, b, self.size)


def epoch_updates(perm, batch_size, per_update):
    """int32 [⌊n / U⌋, per_update, B]: the whole updates (U = B × per_update examples) of one
    epoch in the order perm [n]."""
    per = int(batch_size) * int(per_update)
    updates = len(perm) // per
    return np.asarray(perm[:updates * per], dtype=np.int32).reshape(updates, per_update,
                                                                     batch_size)


_REUSED = {}  # one key at a time: the built functions of the last architecture


def reused_epoch_trainer(key, build_model, build_optimizer, input_shape, n, batch_size):
    """(model, optimizer, loss_fn, x, y, train_epoch, evaluate), built once while runs ask for
    the same `key` (its seeds share the traced functions; each run starts with `restart`):
    x [n, *input_shape] float32, y [n] int32 variables, `evaluate(xs, ys)` -> (loss, argmax)."""
    import keras
    import tensorflow as tf

    if key not in _REUSED:
        _REUSED.clear()
        model, optimizer = build_model(), build_optimizer()
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        x = tf.Variable(np.zeros((n, *input_shape), np.float32), trainable=False)
        y = tf.Variable(np.zeros((n,), np.int32), trainable=False)

        @tf.function(reduce_retracing=True)
        def evaluate(xs, ys):
            logits = model(xs, training=False)
            return loss_fn(ys, logits), tf.argmax(logits, -1, output_type=tf.int32)

        _REUSED[key] = (model, optimizer, loss_fn, x, y,
                        epoch_trainer(model, optimizer, loss_fn, x, y, batch_size), evaluate)
    return _REUSED[key]


def restart(model, optimizer, weights, assignments=()):
    """Start a run on a reused model as on fresh objects: `weights` set, optimizer variables but
    the learning rate zeroed, each (variable, value) of `assignments` assigned."""
    import tensorflow as tf

    model.set_weights(weights)
    for variable, value in assignments:
        variable.assign(value)
    for variable in optimizer.variables:
        if not variable.path.endswith("learning_rate"):
            variable.assign(tf.zeros_like(variable))


def log_steps(log_epochs, epochs, steps_per_epoch):
    """{update: epoch}: each of `log_epochs` up to `epochs` rounded to the nearest update, plus
    the end of training."""
    steps = {int(round(float(e) * steps_per_epoch)) for e in log_epochs if e <= epochs}
    steps.add(int(epochs) * steps_per_epoch)
    return {s: s / steps_per_epoch for s in sorted(steps)}


def capped_log_epochs(log_epochs, epochs):
    """Sorted `log_epochs` up to `epochs`, plus `epochs` (`--set=epochs=N` needs no new list)."""
    return sorted({int(e) for e in log_epochs if e <= int(epochs)} | {int(epochs)})


def predictor(model, chunk=16384):
    """`predict(xs, ys)` -> (argmax int32 [n], cross-entropy float32 [n]) in inference mode over
    NumPy arrays, `chunk` examples per call, traced once per dtypes and example shape."""
    import tensorflow as tf

    def logits_stats(xs, ys):
        logits = model(xs, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits)
        return tf.argmax(logits, -1, output_type=tf.int32), losses

    traced = {}  # one trace per input dtypes and example shape

    def predict(xs, ys):
        key = (str(xs.dtype), str(ys.dtype), tuple(xs.shape[1:]))
        if key not in traced:
            traced[key] = tf.function(logits_stats, input_signature=[
                tf.TensorSpec([None, *key[2]], tf.as_dtype(xs.dtype)),
                tf.TensorSpec([None], tf.as_dtype(ys.dtype))])
        preds, losses = [], []
        for i in range(0, len(xs), chunk):
            p, l = traced[key](tf.constant(xs[i:i + chunk]), tf.constant(ys[i:i + chunk]))
            preds.append(p.numpy())
            losses.append(l.numpy())
        return np.concatenate(preds), np.concatenate(losses)
    return predict
