"""Training under a tf.distribute strategy (config field `distribution`) without Keras `fit`, which
fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585): `fit` runs `train_step` /
`test_step` through `strategy.run` and calls the callbacks as Keras `fit` does (docs/design.md §6).
"""

import contextlib
import json
import os
import re

import keras
import numpy as np
import tensorflow as tf

from trainers.config_schema import DISTRIBUTIONS, ConfigError


class PeerFailure(RuntimeError):
    """A multi-worker run stopped because another worker died or hung (message: one line)."""


def build_strategy(name: str, collective_timeout: float = None):
    """The strategy of config field `distribution` (None for "none"); ConfigError in one line.
    collective_timeout (multi_worker): seconds a collective waits for the others (None: forever)."""
    if name not in DISTRIBUTIONS:
        raise ConfigError(f"distribution={name!r} is unknown; allowed: {', '.join(DISTRIBUTIONS)}")
    if name == "multi_worker":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=collective_timeout))
    return {"none": lambda: None, "mirrored": tf.distribute.MirroredStrategy,
            "tpu": _tpu_strategy}[name]()


def _check_tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError(
            "distribution='multi_worker' needs the TF_CONFIG environment variable (cluster and "
            "task of this worker; see README 'Running on several machines')")
    try:
        spec = json.loads(text)
        workers, task = spec["cluster"]["worker"], spec["task"]
        ok = task["type"] in ("worker", "chief") and isinstance(task["index"], int)
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is not a cluster spec with a task ({error!r}): "
                          f"{text[:200]}") from error
    if not ok or not workers:
        raise ConfigError(f"TF_CONFIG needs cluster.worker addresses and task "
                          f"{{'type': 'worker', 'index': i}}; got {text[:200]}")


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"distribution='tpu': no TPU found by TPUClusterResolver (set TPU_NAME or run on a "
            f"TPU VM): {first_line}") from error
    return tf.distribute.TPUStrategy(resolver)


# What TF raises in a worker whose collective was aborted (a peer's heartbeats stopped: Unavailable)
# or timed out (DeadlineExceeded), or that the coordination service cancelled.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError, tf.errors.CancelledError)


@contextlib.contextmanager
def peers_fail_loudly(strategy):
    """With several workers, a collective aborted because a worker died or hung becomes
    `PeerFailure` (one line saying what TF saw and what to do); other errors pass unchanged."""
    try:
        yield
    except _PEER_ERRORS as error:
        if num_workers(strategy) <= 1:
            raise
        seen = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        seen = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", seen)[:400]
        raise PeerFailure(
            f"distribution='multi_worker': stopped because another worker died or hung "
            f"({type(error).__name__}: {seen}); restart all workers with the same commands: "
            f"they resume from the chief's newest checkpoint") from None


def replicas(strategy) -> int:
    """Replicas in sync (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def is_chief(strategy) -> bool:
    """True for the process that writes the workdir (the only process without a cluster)."""
    resolver = None if strategy is None else strategy.cluster_resolver
    if resolver is None or not resolver.cluster_spec().as_dict() or resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().jobs)


def num_workers(strategy) -> int:
    """Processes of the cluster (1 without one)."""
    resolver = None if strategy is None else strategy.cluster_resolver
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, sum(len(jobs.get(job, ())) for job in ("chief", "worker")))


def check_even_shards(num_examples: int, batch_size: int, drop_remainder: bool, count: int):
    """ConfigError unless each training batch (also the last) splits into `count` equal shards."""
    last = 0 if drop_remainder else num_examples % batch_size
    for size in (batch_size, last):
        if size % count:
            raise ConfigError(
                f"distribution over {count} replicas splits every batch into {count} equal shards, "
                f"but {num_examples} training examples in batches of batch_size={batch_size} give "
                f"a batch of {size}; use a batch_size (and max_train, or drop_remainder=True) "
                f"divisible by {count}")


def shard_batches(strategy, index_batches, x, y):
    """Distributed dataset: replica r gets the r-th of R contiguous shards (sizes may differ by
    one, or be empty) of every global batch of `index_batches()` (int index vectors)."""
    x, y = tf.constant(x), tf.constant(y)

    def dataset_fn(context):
        total = context.num_replicas_in_sync
        local = total // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def shards(idx):
            n = tf.cast(tf.shape(idx)[0], tf.int64)
            return tf.data.Dataset.range(first, first + local).map(
                lambda r: idx[r * n // total:(r + 1) * n // total])

        batches = index_batches().flat_map(shards)
        return batches.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx))).prefetch(2)

    return strategy.distribute_datasets_from_function(dataset_fn)


def run_variables(model) -> list:
    """What a worker needs from the chief's checkpoint: weights, optimizer variables (those of the
    optimizers it wraps are in a wrapper's `variables`) and `cgh_tf.Model.steps_trained`."""
    steps_trained = getattr(model, "steps_trained", None)
    return (list(model.weights) + list(model.optimizer.variables)
            + ([steps_trained] if steps_trained is not None else []))


def broadcast_from_chief(strategy, variables) -> None:
    """Every replica gets the chief's (replica 0's) value of `variables`, exactly (a sum with 0)."""
    variables = list(variables)

    @tf.function
    def chief_values():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            mine = tf.equal(context.replica_id_in_sync_group, 0)
            return [context.all_reduce(
                "SUM", tf.where(mine, tf.convert_to_tensor(v), tf.zeros(v.shape, v.dtype)))
                for v in variables]
        return strategy.run(replica_fn)

    for variable, value in zip(variables, chief_values()):
        variable.assign(strategy.experimental_local_results(value)[0])


def broadcast_int(strategy, value: int) -> int:
    """The chief's `value` on every worker."""
    with strategy.scope():
        holder = tf.Variable(int(value), dtype=tf.int64, trainable=False)
    broadcast_from_chief(strategy, [holder])
    return int(holder.numpy())


def _step_function(strategy, step):
    """`tf.function`: `step` on every replica's shard, its logs averaged over the replicas."""
    @tf.function(reduce_retracing=True)
    def run(batch):
        outputs = strategy.run(step, args=(batch,))
        return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), outputs)
    return run


def fit(model, strategy, train, test, *, callbacks, first_epoch, num_epochs, steps, test_steps,
        verbose):
    """Keras `fit`'s loop and callback calls over distributed datasets `train` (epochs from
    `first_epoch`, `steps` batches each) and `test` (`test_steps` batches)."""
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=verbose != 0, verbose=verbose, epochs=num_epochs,
        steps=steps, model=model)
    train_step = _step_function(strategy, model.train_step)
    test_step = _step_function(strategy, model.test_step)
    model.stop_training = False
    callback_list.on_train_begin()
    iterator, logs, epoch_logs = iter(train), {}, None
    for epoch in range(first_epoch, num_epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps):
            callback_list.on_train_batch_begin(step)
            logs = train_step(next(iterator))
            callback_list.on_train_batch_end(step, logs)
        epoch_logs = {**logs, **model.get_metrics_result()}  # the metrics over all replicas
        val_logs = _evaluate(model, test_step, test, test_steps, callback_list)
        epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
    model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=epoch_logs)


def _evaluate(model, test_step, test, test_steps, callback_list) -> dict:
    """Keras `evaluate` inside `fit`: metrics reset, test callbacks, Python-float logs."""
    callback_list.on_test_begin()
    logs = {}
    model.reset_metrics()
    iterator = iter(test)
    for step in range(test_steps):
        callback_list.on_test_batch_begin(step)
        logs = test_step(next(iterator))
        callback_list.on_test_batch_end(step, logs)
    logs = {k: float(np.asarray(v)) if np.ndim(v) == 0 else v
            for k, v in {**logs, **model.get_metrics_result()}.items()}
    callback_list.on_test_end(logs)
    return logs
