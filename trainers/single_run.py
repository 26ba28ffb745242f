"""One trainer run of a config with Keras `fit` (or `distributed_loop.fit` under a strategy):
prepare, resume, train, write the results (data flow: docs/design.md §7; binary: `train.py`).
"""

import contextlib
import dataclasses
import glob
import math
import os
import time

from absl import logging
import keras
import tensorflow as tf

from cgh_tf import callbacks as cgh_callbacks
from cgh_tf import fault_injection
from trainers import config_schema
from trainers import distributed_loop
from trainers import factories
from trainers import feature_callbacks
from trainers import input_pipeline
from trainers import outputs
from trainers import run_state
from trainers.config_schema import ConfigError, setting
from trainers.run_state import RunState
from trainers.schedule import EpochStepDecay, build_schedule


# Fields that may change when a run resumes (other hardware: numbers differ by rounding only).
RESUMABLE_FIELDS = ("num_epochs", "keep_checkpoints", "distribution", "collective_timeout")


@dataclasses.dataclass
class PreparedRun:
    """Everything built from a config before any file is written."""

    config: object
    data: object                  # cgh_tf.data.Dataset
    model: keras.Model            # compiled, optimizer built
    schedule: EpochStepDecay
    state: RunState               # the run's checkpoint (saved by the chief after every epoch)
    checkpoint: str | None        # newest compatible checkpoint (chief only; None: none)
    strategy: object = None       # tf.distribute strategy (None: one device, Keras fit)
    steps: int = 0                # batches per epoch


def prepare(config, workdir: str, strategy=None) -> PreparedRun:
    """Validate, load data, build and compile (in the `strategy`'s scope); writes nothing.
    ConfigError on a bad field or a `workdir` holding a run of another config."""
    config_schema.validate(config)
    checkpoint = None  # the newest intact one of this config's run (read by the chief)
    if distributed_loop.is_chief(strategy):  # before any data is loaded
        check_workdir_holds_config(workdir, config)
        found = run_state.newest_intact(workdir)
        if found is not None:
            _check_saved(workdir, run_state.read_record(found[1]), config, "a run", found[0])
            checkpoint = found[1]
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    data = factories.load_data(config)
    steps = input_pipeline.steps_per_epoch(len(data.train), config.batch_size,
                                           config.drop_remainder)
    config_schema.check_data_fits(config, len(data.train))
    distributed_loop.check_even_shards(len(data.train), config.batch_size, config.drop_remainder,
                                       distributed_loop.replicas(strategy))
    if setting(config, "coherence.monitor_samples"):
        feature_callbacks.monitor_samples(data, setting(config, "coherence.monitor_samples"),
                                          config.seed)  # raises ConfigError if a pool is too small
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = factories.build_model(config, data.input_shape, data.num_classes)
        schedule = build_schedule(config)
        optimizer = factories.build_optimizer(config, schedule)
        factories.compile_model(model, optimizer, config)
    state = RunState(workdir, model, schedule, keep=config.keep_checkpoints)
    return PreparedRun(config, data, model, schedule, state, checkpoint, strategy, steps)


def check_workdir_holds_config(workdir: str, config) -> None:
    """ConfigError (one line) unless `workdir` is empty or holds a run of `config` (only
    `RESUMABLE_FIELDS` may differ, not to fewer epochs); reads the newest readable checkpoint,
    else a finished results.json (then `num_epochs` must be equal too); writes nothing."""
    if glob.glob(os.path.join(workdir, run_state.CHECKPOINT_DIR, "epoch-*.npz")):
        raise ConfigError(f"workdir {workdir} holds checkpoints of an older cgh_tf trainer "
                          f"(epoch-NNNN.npz), which this version cannot resume; use another "
                          f"workdir")
    for epoch, path in reversed(run_state.list_checkpoints(workdir)):
        try:
            saved = run_state.read_record(path)
        except Exception:  # noqa: BLE001 -- a damaged checkpoint: the next older one says
            continue
        _check_saved(workdir, saved, config, "a run", epoch)
        return
    results = outputs.read_json(os.path.join(workdir, outputs.RESULTS_FILE), keys=("config",))
    if results is not None:  # (not an experiment's report: it has no config)
        _check_saved(workdir, results, config, "the finished results of a run",
                     results.get("epochs_completed"), same_epochs=True)


def _check_saved(workdir, record: dict, config, what: str, epoch, same_epochs=False) -> None:
    """ConfigError unless the config of `record` (a checkpoint record or results.json) is
    `config` up to `RESUMABLE_FIELDS` (and `num_epochs` with `same_epochs`), epoch ≤ num_epochs."""
    try:
        saved = config_schema.saved_config(record)
    except ConfigError as error:
        raise ConfigError(f"workdir {workdir} holds {what} with {error}") from None
    wanted = outputs.json_roundtrip(config.to_dict())
    keys = [k for k in set(saved) | set(wanted) if k not in RESUMABLE_FIELDS
            or (same_epochs and k == "num_epochs")]
    differing = sorted(k for k in keys if saved.get(k) != wanted.get(k))
    if differing:
        raise ConfigError(
            f"workdir {workdir} holds {what} with a different config (fields {differing} "
            f"differ); use another workdir")
    if epoch is not None and epoch > config.num_epochs:
        raise ConfigError(f"workdir {workdir} already holds {epoch} epochs > "
                          f"num_epochs={config.num_epochs}")


def _fault_points(steps_per_epoch: int) -> keras.callbacks.Callback:
    """The `cgh_tf.fault_injection` points `train-step-<S>` and `epoch-end-<E>` (before the
    checkpoint is saved)."""
    epoch = {"now": 0}  # the current epoch, for the global step S
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda begun, logs: epoch.update(now=begun),
        on_train_batch_end=lambda batch, logs: fault_injection.point(
            f"train-step-{epoch['now'] * steps_per_epoch + batch + 1}"),
        on_epoch_end=lambda ended, logs: fault_injection.point(f"epoch-end-{ended + 1}"))


class _EpochRecord(keras.callbacks.Callback):
    """At every epoch end: the measured logs appended to the history and written as TensorBoard
    scalars named as Keras' TensorBoard names them (`train/epoch_<key>`, `validation/epoch_<key>`
    for `val_<key>`), then the run's state saved (record: epochs, config and its version, history,
    per-step rows, `state()` of every callback with a `state_key`); one absl DEBUG line."""

    def __init__(self, state, config, history, log_dir, step_history=None, stateful=()):
        super().__init__()
        self.state, self.config, self.history, self.log_dir = state, config, history, log_dir
        self.step_history, self.stateful, self._writers = step_history, tuple(stateful), {}

    def on_epoch_end(self, epoch, logs=None):
        measured = {k: float(v) for k, v in (logs or {}).items()
                    if not math.isnan(float(v))}  # NaN: nothing measured, or undefined
        for key, value in measured.items():
            run, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            if run not in self._writers:
                self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, run))
            with self._writers[run].as_default():
                tf.summary.scalar(f"epoch_{name}", value, step=epoch)
        for writer in self._writers.values():
            writer.flush()
        self.history.append(measured)
        record = {"epoch": epoch + 1, "history": self.history,
                  "config": outputs.json_roundtrip(self.config.to_dict()),
                  "config_version": config_schema.CONFIG_VERSION}
        if self.step_history is not None:
            record["step_history"] = self.step_history
        for callback in self.stateful:
            record[callback.state_key] = callback.state()
        self.state.save(epoch + 1, outputs.json_roundtrip(record))
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted((logs or {}).items()))
        logging.debug("epoch %d/%d: %s", epoch + 1, self.config.num_epochs, shown)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def run(config, workdir, progress, strategy=None):
    """One run of `config`; returns its results. Under a multi-worker `strategy` only the chief
    writes `workdir`; the others return None."""
    started = time.time()
    prepared = prepare(config, workdir, strategy)
    chief = distributed_loop.is_chief(strategy)
    resumed = prepared.state.restore(prepared.checkpoint) if prepared.checkpoint else {}
    history, first_epoch = resumed.get("history", []), resumed.get("epoch", 0)
    step_history = (resumed.get("step_history", [])
                    if setting(config, "coherence.monitor_every_steps") else None)
    if resumed:
        logging.info("resumed from %s after epoch %d", prepared.checkpoint, first_epoch)
    if distributed_loop.num_workers(strategy) > 1:  # the chief's checkpoint, on every worker
        first_epoch = distributed_loop.broadcast_int(strategy, first_epoch)
        distributed_loop.broadcast_from_chief(strategy,
                                              distributed_loop.run_variables(prepared.model))
    if chief:
        os.makedirs(workdir, exist_ok=True)
    setup_seconds = time.time() - started
    if first_epoch < config.num_epochs:
        callbacks = _callbacks(prepared, workdir, history, first_epoch, step_history, resumed)
        _fit(prepared, first_epoch, progress, callbacks)
    trained_seconds = time.time() - started - setup_seconds
    if not chief:
        logging.info("worker done: the chief writes the results")
        return None
    results = make_results(config, prepared.data, history, step_history)
    outputs.write_json(os.path.join(workdir, outputs.RESULTS_FILE), results)
    fault_injection.point("results-written")
    outputs.plot_curves(os.path.join(workdir, outputs.PLOT_FILE), history,
                        title=f"{config.dataset}, {config.label_noise:.0%} label noise, "
                              f"{config.model.name}, {config.optimizer.name}")
    epochs_run = config.num_epochs - first_epoch
    outputs.write_json(os.path.join(workdir, outputs.TIMINGS_FILE), {
        "setup_seconds": round(setup_seconds, 3),
        "training_seconds": round(trained_seconds, 3),
        "epochs_this_invocation": epochs_run,
        "seconds_per_epoch": round(trained_seconds / epochs_run, 4) if epochs_run else None,
        "total_seconds": round(time.time() - started, 3),
    })
    logging.info("results in %s", os.path.join(workdir, outputs.RESULTS_FILE))
    return results


def _callbacks(prepared, workdir, history, first_epoch, step_history, resumed):
    """The trainer's callbacks, in order (other workers than the chief: those changing training);
    the feature callbacks continue from the checkpoint's record `resumed`."""
    config, data, rate = prepared.config, prepared.data, prepared.schedule
    schedule = keras.callbacks.LambdaCallback(  # the schedule's epoch; logs `learning_rate`
        on_epoch_begin=lambda epoch, logs: rate.set_epoch(epoch),
        on_epoch_end=lambda epoch, logs: logs.update(learning_rate=rate.value_at(epoch)))
    faults = [_fault_points(prepared.steps)] if fault_injection.active() else []
    if not distributed_loop.is_chief(prepared.strategy):
        return [schedule, *faults]  # the only callback that changes training
    features = feature_callbacks.feature_callbacks(config, data, workdir, first_epoch,
                                                   prepared.steps, step_history, resumed)
    return [
        schedule,
        *faults,
        cgh_callbacks.SubsetAccuracy(input_pipeline.memorisation_subsets(data.train),
                                     batch_size=config.eval_batch_size),
        *features,
        _EpochRecord(prepared.state, config, history, os.path.join(workdir, "tensorboard"),
                     step_history, stateful=[c for c in features if getattr(c, "state_key", None)]),
    ]


def _fit(prepared, first_epoch, progress, callbacks):
    """Keras `fit` from `first_epoch` over the batches of `input_pipeline`, or under a strategy
    `distributed_loop.fit` over the same batches. `progress`: Keras' progress bars (True), one
    line per epoch (False) or nothing (None: an experiment's arm; its runner prints one line)."""
    config, data, strategy = prepared.config, prepared.data, prepared.strategy
    verbose = (0 if progress is None or not distributed_loop.is_chief(strategy)
               else 1 if progress else 2)
    order = dict(batch_size=config.batch_size, seed=config.seed, first_epoch=first_epoch,
                 num_epochs=config.num_epochs, drop_remainder=config.drop_remainder)
    if strategy is None:
        prepared.model.fit(
            input_pipeline.train_dataset(data.train.x, data.train.y, **order),
            epochs=config.num_epochs, initial_epoch=first_epoch, steps_per_epoch=prepared.steps,
            validation_data=(data.test.x, data.test.y), validation_batch_size=config.eval_batch_size,
            callbacks=callbacks, shuffle=False, verbose=verbose)
        return
    n_train, n_test = len(data.train), len(data.test)
    train = distributed_loop.shard_batches(
        strategy, lambda: input_pipeline.epoch_index_batches(n_train, **order),
        data.train.x, data.train.y)
    test = distributed_loop.shard_batches(
        strategy, lambda: tf.data.Dataset.range(n_test).batch(config.eval_batch_size),
        data.test.x, data.test.y)
    logging.info("distribution=%s: %d replicas, %d workers", config.distribution,
                 distributed_loop.replicas(strategy), distributed_loop.num_workers(strategy))
    distributed_loop.fit(prepared.model, strategy, train, test, callbacks=callbacks,
                         first_epoch=first_epoch, num_epochs=config.num_epochs,
                         steps=prepared.steps, test_steps=-(-n_test // config.eval_batch_size),
                         verbose=verbose)


def make_results(config, data, history: list, step_history: list = None) -> dict:
    """The content of `results.json`: config and its version, dataset sizes, per-epoch history,
    final figures, and (`coherence.monitor_every_steps > 0`) the per-step rows `step_history`."""
    last = history[-1] if history else {}
    results = {
        "config": outputs.json_roundtrip(config.to_dict()),
        "config_version": config_schema.CONFIG_VERSION,
        "dataset": {
            "name": data.name,
            "num_classes": int(data.num_classes),
            "input_shape": [int(d) for d in data.input_shape],
            "num_train": len(data.train),
            "num_train_corrupted": int(data.train.corrupted.sum()),
            "num_test": len(data.test),
        },
        "epochs_completed": len(history),
        "history": outputs.history_columns(history),
        "final": {
            "pristine_train_accuracy": last.get("pristine_accuracy"),
            "corrupted_train_accuracy": last.get("corrupted_accuracy"),
            "train_loss": last.get("loss"),
            "train_accuracy_running": last.get("accuracy"),
            "test_loss": last.get("val_loss"),
            "test_accuracy": last.get("val_accuracy"),
        },
    }
    if step_history is not None:
        results["step_history"] = outputs.history_columns(step_history)
    return results
