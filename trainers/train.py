r"""Train a classifier from a config with Keras `fit`; resumable, deterministic, atomic outputs.

    python -m trainers.train --config=configs/default.py --workdir=/tmp/run \
        --config.num_epochs=2 --config.optimizer.name=rm3

Every config field can be overridden by a `--config.FIELD=VALUE` flag (see `configs/default.py`).
Starting the same command again after an interruption (even `kill -9`) resumes from the newest
checkpoint and ends with a `results.json` byte-identical to that of an uninterrupted run.

TensorBoard scalars (one point per epoch, `WORKDIR/tensorboard`):

| run          | tag                        | what                                                   |
|--------------|----------------------------|--------------------------------------------------------|
| `train`      | `epoch_loss`, `epoch_accuracy` | running mean over the epoch's batches (training mode) |
| `validation` | `epoch_loss`, `epoch_accuracy` | test split, inference mode                          |
| `train`      | `epoch_pristine_accuracy`  | inference-mode accuracy on training examples whose label was kept |
| `train`      | `epoch_corrupted_accuracy` | ... on corrupted examples, against their *noisy* training label (memorisation) |
| `train`      | `epoch_learning_rate`      | learning rate of the epoch                             |
| `train`      | `epoch_m_coherence`, `epoch_alpha`, `epoch_m_coherence/<layer>` | mean over the epoch's measured training batches (`coherence.every > 0`); none for an epoch without one |
| `train`      | `epoch_coherence/<sample>/m_coherence`, `.../alpha`, `.../<layer>/m_coherence` | fixed monitor samples train / test / pristine / corrupted at epoch end (`coherence.monitor_samples > 0`; also `coherence.csv`) |
| `train`      | `epoch_f_pristine`, `epoch_f_corrupt` | loss-reduction fractions of the monitor's training sample (label noise > 0) |
| `learning_times` | `learning_times/<group>/first_correct_step` (histogram), `.../fraction_correct` | per-example learning times (`learning_times.every_steps > 0`; also `learning_times.csv`) |
| `steps`      | `loss`, `coherence/<sample>/...`, `f_pristine`, `f_corrupt` | at step 0, every `coherence.monitor_every_steps` batches and every epoch end, x = global step (`step_history` of results.json) |

Every value of the epoch logs is also in `results.json` (`history`). A NaN value means "no value"
(`m_coherence` of an epoch without a measured step, when `coherence.every` exceeds the steps per
epoch; a batch whose per-example gradients all vanish): it gets no TensorBoard scalar, no entry in
the checkpoint's history, `null` in `results.json`, and `curves.png` skips it (never 0).

The feature fields and their defaults are listed in `trainers/builders.py`; `mode = "easy_hard"`
runs `train_easy_hard` (probe, easy / hard split, one sub-workdir per part).

`distribution` other than "none" trains under a tf.distribute strategy with
`trainers/distributed_loop.py` instead of Keras `fit` (same callbacks, same `results.json`); in a
multi-worker cluster only the chief writes the workdir (README "Running on several machines").

The other files of the workdir are described in `trainers/io.py`. A config error (unknown name, bad
number, a workdir holding a different run) exits with status 1 and a message naming the field,
before anything is written.
"""

import contextlib
import dataclasses
import math
import os
import sys
import time

from absl import app, flags, logging
import keras
from ml_collections import config_flags
import tensorflow as tf

from cgh_tf import callbacks as cgh_callbacks
from trainers import builders
from trainers import distributed_loop
from trainers import io


# Config fields that may change between an interrupted run and its resumption (a run may resume
# on other hardware: its numbers then differ from an uninterrupted run's by float rounding only).
RESUMABLE_FIELDS = ("num_epochs", "keep_checkpoints", "distribution")


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before any file is written."""

    config: object
    data: object                  # cgh_tf.data.Dataset
    model: keras.Model            # compiled, optimizer built
    schedule: builders.EpochStepDecay
    checkpoint: str | None        # newest compatible checkpoint (chief only; None: none)
    strategy: object = None       # tf.distribute strategy (None: one device, Keras fit)


def prepare(config, workdir: str, data=None, strategy=None) -> Experiment:
    """Validate the config, load data (unless `data` is given), build and compile the model. Writes nothing.

    With a tf.distribute `strategy` the model, optimizer, schedule and metrics are created in its
    scope, and only the chief looks for a checkpoint in `workdir`.
    Raises `builders.ConfigError` on any bad field or if `workdir` holds a run of another config.
    """
    builders.validate(config)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    data = builders.load_data(config) if data is None else data
    builders.steps_per_epoch(len(data.train), config.batch_size, config.drop_remainder)
    _check_m3_batches(config, len(data.train))
    distributed_loop.check_even_shards(len(data.train), config.batch_size, config.drop_remainder,
                                       distributed_loop.replicas(strategy))
    if builders.setting(config, "coherence.monitor_samples"):
        builders.monitor_samples(data, builders.setting(config, "coherence.monitor_samples"),
                                 config.seed)  # raises ConfigError if a pool is too small
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = builders.build_model(config, data.input_shape, data.num_classes)
        schedule = builders.build_schedule(config)
        optimizer = builders.build_optimizer(config, schedule)
        builders.compile_model(model, optimizer, config)
    checkpoint = (_compatible_checkpoint(workdir, config) if distributed_loop.is_chief(strategy)
                  else None)
    return Experiment(config, data, model, schedule, checkpoint, strategy)


def _check_m3_batches(config, num_train):
    """In-batch M3 needs every batch, the last one of an epoch too, divisible by the groups."""
    if not (builders.is_m3(config) and builders.setting(config, "optimizer.m3_in_batch")):
        return
    last = num_train % config.batch_size
    groups = builders.m3_groups(config)
    if not config.drop_remainder and last % groups:
        raise builders.ConfigError(
            f"optimizer.m3_in_batch=True: the last batch of an epoch holds {last} of the "
            f"{num_train} training examples, not divisible by the {groups} M3 groups; set "
            f"drop_remainder=True or change batch_size / max_train")


def _comparable(config_dict: dict) -> dict:
    return {k: v for k, v in io.json_roundtrip(config_dict).items() if k not in RESUMABLE_FIELDS}


def _compatible_checkpoint(workdir: str, config):
    """Newest checkpoint in `workdir` (None if none); ConfigError if it belongs to another config."""
    checkpoints = io.list_checkpoints(workdir)
    if not checkpoints:
        return None
    epoch, path = checkpoints[-1]
    state = io.read_checkpoint_state(path)
    saved, wanted = _comparable(state["config"]), _comparable(config.to_dict())
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise builders.ConfigError(
            f"workdir {workdir} holds a run with a different config (fields {differing} differ); "
            f"use another workdir")
    if epoch > config.num_epochs:
        raise builders.ConfigError(f"workdir {workdir} already holds {epoch} epochs > "
                                   f"num_epochs={config.num_epochs}")
    return path


class _EpochSchedule(keras.callbacks.Callback):
    """Sets the schedule's epoch at every epoch start and logs `learning_rate`."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.schedule.set_epoch(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.schedule.value_at(epoch)


def _is_missing(value) -> bool:
    """True for an epoch log value that means "no value" (NaN: nothing measured, or undefined)."""
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _measured(logs) -> dict:
    """The epoch logs without their missing (NaN) values."""
    return {k: v for k, v in (logs or {}).items() if not _is_missing(v)}


class _FlushingTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard that flushes its event files every epoch, so a killed run loses no logged epoch.

    Writes no scalar for a missing (NaN) value of the epoch logs.
    """

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, None if logs is None else _measured(logs))
        for writer in self._writers.values():
            writer.flush()


class _Checkpointer(keras.callbacks.Callback):
    """Appends the epoch's logs to the history and writes a checkpoint; logs one line with absl.

    Missing (NaN) values are left out of the history row (`results.json` shows null there); the
    absl line shows them as nan.
    """

    def __init__(self, workdir, config, history, keep, step_history=None):
        super().__init__()
        self.workdir, self.config, self.history, self.keep = workdir, config, history, keep
        self.step_history = step_history

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({k: float(v) for k, v in _measured(logs).items()})
        state = {"epoch": epoch + 1, "history": self.history, "config": self.config.to_dict()}
        if self.step_history is not None:
            state["step_history"] = self.step_history
        io.save_checkpoint(self.workdir, self.model, self.model.optimizer, state, self.keep)
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted((logs or {}).items()))
        logging.info("epoch %d/%d: %s", epoch + 1, self.config.num_epochs, shown)


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
    """Run (or resume, or just re-report) the experiment of `config` in `workdir`; return the results.

    Returns the dict written to `results.json`. With `config.mode == "easy_hard"` runs
    `train_easy_hard` instead.
    """
    builders.validate(config)
    if builders.setting(config, "mode") == "easy_hard":
        return train_easy_hard(config, workdir, progress)
    strategy = distributed_loop.build_strategy(config.distribution)
    return _train(config, workdir, progress, strategy=strategy)[0]


def _train(config, workdir, progress, data=None, strategy=None):
    """`train_and_evaluate` of one run on `data` (None: the config's); returns (results, model).

    Under a multi-worker `strategy` only the chief writes `workdir`; the other workers return
    (None, model).
    """
    started = time.time()
    experiment = prepare(config, workdir, data, strategy)
    model, data = experiment.model, experiment.data
    chief = distributed_loop.is_chief(strategy)
    steps = builders.steps_per_epoch(len(data.train), config.batch_size, config.drop_remainder)
    history, first_epoch = [], 0
    step_history = [] if builders.setting(config, "coherence.monitor_every_steps") else None
    if experiment.checkpoint:
        state = io.restore_checkpoint(experiment.checkpoint, model, model.optimizer)
        history, first_epoch = state["history"], state["epoch"]
        if step_history is not None:
            step_history = state.get("step_history", [])
        logging.info("resumed from %s after epoch %d", experiment.checkpoint, first_epoch)
    if distributed_loop.num_workers(strategy) > 1:  # the chief's checkpoint, on every worker
        first_epoch = distributed_loop.broadcast_int(strategy, first_epoch)
        distributed_loop.broadcast_from_chief(
            strategy, model.weights + io.optimizer_variables(model.optimizer))
    if first_epoch:
        _restore_step_counter(model, first_epoch * steps)
    feature_callbacks = []
    if first_epoch < config.num_epochs and chief:
        feature_callbacks = builders.feature_callbacks(config, data, workdir, first_epoch, steps,
                                                       step_history)
    if chief:
        os.makedirs(workdir, exist_ok=True)
    setup_seconds = time.time() - started

    if first_epoch < config.num_epochs:
        _fit(experiment, workdir, history, first_epoch, progress, feature_callbacks, step_history)
    trained_seconds = time.time() - started - setup_seconds
    if not chief:
        logging.info("worker done: the chief writes the results")
        return None, model

    results = make_results(config, data, history, step_history)
    io.write_json(os.path.join(workdir, io.RESULTS_FILE), results)
    io.plot_curves(os.path.join(workdir, io.PLOT_FILE), history,
                   title=f"{config.dataset}, {config.label_noise:.0%} label noise, "
                         f"{config.model.name}, {config.optimizer.name}")
    epochs_run = config.num_epochs - first_epoch
    io.write_json(os.path.join(workdir, io.TIMINGS_FILE), {
        "setup_seconds": round(setup_seconds, 3),
        "training_seconds": round(trained_seconds, 3),
        "epochs_this_invocation": epochs_run,
        "seconds_per_epoch": round(trained_seconds / epochs_run, 4) if epochs_run else None,
        "total_seconds": round(time.time() - started, 3),
    })
    logging.info("results in %s", os.path.join(workdir, io.RESULTS_FILE))
    return results, model


def _restore_step_counter(model, steps_done):
    """`cgh_tf.Model` counts its train steps (coherence every N steps) outside `model.weights`."""
    state = getattr(model, "_cgh_state", None)
    if state is not None:
        state.step.assign(steps_done)


def _callbacks(experiment, workdir, history, feature_callbacks, step_history):
    """The trainer's callbacks, in order (the chief's; other workers only `_EpochSchedule`)."""
    config, data = experiment.config, experiment.data
    schedule = _EpochSchedule(experiment.schedule)
    if not distributed_loop.is_chief(experiment.strategy):
        return [schedule]  # the only callback that changes training; the chief writes the rest
    return [
        schedule,
        cgh_callbacks.SubsetAccuracy(builders.memorisation_subsets(data.train),
                                     batch_size=config.eval_batch_size),
        *feature_callbacks,
        _FlushingTensorBoard(os.path.join(workdir, "tensorboard"), write_graph=False,
                             write_steps_per_second=False),
        _Checkpointer(workdir, config, history, config.keep_checkpoints, step_history),
    ]


def _fit(experiment, workdir, history, first_epoch, progress, feature_callbacks=(),
         step_history=None):
    config, data, model = experiment.config, experiment.data, experiment.model
    callbacks = _callbacks(experiment, workdir, history, feature_callbacks, step_history)
    if experiment.strategy is not None:
        _fit_distributed(experiment, first_epoch, progress, callbacks)
        return
    steps = builders.steps_per_epoch(len(data.train), config.batch_size, config.drop_remainder)
    train = builders.train_dataset(
        data.train.x, data.train.y, batch_size=config.batch_size, seed=config.seed,
        first_epoch=first_epoch, num_epochs=config.num_epochs,
        drop_remainder=config.drop_remainder)
    model.fit(train, epochs=config.num_epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
              validation_data=(data.test.x, data.test.y),
              validation_batch_size=config.eval_batch_size, callbacks=callbacks,
              shuffle=False, verbose=1 if progress else 2)


def _fit_distributed(experiment, first_epoch, progress, callbacks):
    """`_fit` under a tf.distribute strategy: `distributed_loop.fit` over the same batches."""
    config, data, strategy = experiment.config, experiment.data, experiment.strategy
    n_train, n_test = len(data.train), len(data.test)
    train = distributed_loop.shard_batches(strategy, lambda: builders.epoch_index_batches(
        n_train, batch_size=config.batch_size, seed=config.seed, first_epoch=first_epoch,
        num_epochs=config.num_epochs, drop_remainder=config.drop_remainder),
        data.train.x, data.train.y)
    test = distributed_loop.shard_batches(
        strategy, lambda: tf.data.Dataset.range(n_test).batch(config.eval_batch_size),
        data.test.x, data.test.y)
    logging.info("distribution=%s: %d replicas, %d workers", config.distribution,
                 distributed_loop.replicas(strategy), distributed_loop.num_workers(strategy))
    verbose = (1 if progress else 2) if distributed_loop.is_chief(strategy) else 0
    distributed_loop.fit(
        experiment.model, strategy, train, test, callbacks=callbacks, first_epoch=first_epoch,
        num_epochs=config.num_epochs,
        steps=builders.steps_per_epoch(n_train, config.batch_size, config.drop_remainder),
        test_steps=-(-n_test // config.eval_batch_size), verbose=verbose)


def make_results(config, data, history: list, step_history: list = None) -> dict:
    """The content of `results.json`: config, dataset sizes, per-epoch history, final figures.

    With `coherence.monitor_every_steps > 0` also `step_history`: `{key: [value per measurement]}`
    of the per-step rows (`builders.StepMeasurements`: step, epoch, loss, monitor values, f^p, f^c).
    """
    last = history[-1] if history else {}
    results = {
        "config": io.json_roundtrip(config.to_dict()),
        "dataset": {
            "name": data.name,
            "num_classes": int(data.num_classes),
            "input_shape": [int(d) for d in data.input_shape],
            "num_train": len(data.train),
            "num_train_corrupted": int(data.train.corrupted.sum()),
            "num_test": len(data.test),
        },
        "epochs_completed": len(history),
        "history": io.history_columns(history),
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
        results["step_history"] = io.history_columns(step_history)
    return results


EASY_HARD_SPLIT_CSV = "easy_hard_split.csv"
EASY_HARD_PARTS = ("easy", "hard")


def train_easy_hard(config, workdir: str, progress: bool = True) -> dict:
    """The easy / hard experiment of 2003.07422 in `workdir`; returns the dict of `results.json`.

    1. Define "easy": train the config for `easy_hard.probe_epochs` epochs in `WORKDIR/probe` and
       call a training example easy if the probe classifies it correctly (inference mode, against
       its training label) — or read `last_prediction == label` from `easy_hard.learning_times_csv`.
    2. `cgh_tf.data.easy_hard_datasets`: each part gets its own train / test split
       (`easy_hard.test_fraction`, seed `config.seed`, classes of the original dataset);
       `WORKDIR/easy_hard_split.csv` lists `example_id, part, role` of every training example.
    3. Train a fresh model (same initial weights: same seed) on each part for `num_epochs` in
       `WORKDIR/easy` and `WORKDIR/hard` (each a complete, resumable trainer workdir).

    `results.json` holds per part the sizes, its final test accuracy on its own test split, its
    pristine training accuracy, and the probe's figures. Everything is resumable: finished sub-runs
    are only re-reported.
    """
    from cgh_tf import data as cgh_data

    builders.validate(config)
    started = time.time()
    data = builders.load_data(config)
    csv_path = builders.setting(config, "easy_hard.learning_times_csv")
    probe = None
    if csv_path is None:
        probe_config = builders.part_config(
            config, "probe", num_epochs=builders.setting(config, "easy_hard.probe_epochs"))
        probe, probe_model = _train(probe_config, os.path.join(workdir, "probe"), progress, data)
        easy = builders.predicted_correctly(probe_model, data.train, config.eval_batch_size)
    else:
        easy = builders.easy_mask_from_csv(csv_path, data.train)
    parts = dict(zip(EASY_HARD_PARTS, cgh_data.easy_hard_datasets(
        data, easy, test_fraction=builders.setting(config, "easy_hard.test_fraction"),
        seed=config.seed)))
    for name, part in parts.items():
        if len(part.train) == 0 or len(part.test) == 0:
            raise builders.ConfigError(
                f"the {name} part has {len(part.train)} training and {len(part.test)} test "
                f"examples ({int(easy.sum())} of {len(easy)} examples are easy); change "
                f"easy_hard.probe_epochs, max_train or easy_hard.test_fraction")
    os.makedirs(workdir, exist_ok=True)
    _write_split_csv(os.path.join(workdir, EASY_HARD_SPLIT_CSV), parts)
    part_results = {name: _train(builders.part_config(config, name), os.path.join(workdir, name),
                                 progress, part)[0]
                    for name, part in parts.items()}
    results = _easy_hard_results(config, data, easy, probe, part_results, csv_path)
    io.write_json(os.path.join(workdir, io.RESULTS_FILE), results)
    io.write_json(os.path.join(workdir, io.TIMINGS_FILE),
                  {"total_seconds": round(time.time() - started, 3)})
    logging.info("easy / hard results in %s", os.path.join(workdir, io.RESULTS_FILE))
    return results


def _write_split_csv(path, parts):
    """Rows `example_id, part, role, label, corrupted` (role: train / test), sorted by id."""
    rows = []
    for name, part in parts.items():
        for role, split in (("train", part.train), ("test", part.test)):
            rows += [(int(i), name, role, int(y), int(c))
                     for i, y, c in zip(split.example_id, split.original_y, split.corrupted)]
    with io.atomic_open(path, "w") as f:
        f.write("example_id,part,role,original_label,corrupted\n")
        f.writelines(",".join(map(str, row)) + "\n" for row in sorted(rows))


def _easy_hard_results(config, data, easy, probe, part_results, csv_path):
    def summary(results):
        return {"num_train": results["dataset"]["num_train"],
                "num_test": results["dataset"]["num_test"],
                "num_train_corrupted": results["dataset"]["num_train_corrupted"],
                "epochs_completed": results["epochs_completed"],
                **results["final"]}

    return {
        "config": io.json_roundtrip(config.to_dict()),
        "mode": "easy_hard",
        "easy_defined_by": ("probe" if csv_path is None else f"learning_times_csv:{csv_path}"),
        "dataset": {"name": data.name, "num_train": len(data.train),
                    "num_train_corrupted": int(data.train.corrupted.sum()),
                    "num_easy": int(easy.sum()), "num_hard": int((~easy).sum())},
        "probe": None if probe is None else summary(probe),
        **{name: summary(results) for name, results in part_results.items()},
        "final": {f"{name}_test_accuracy": results["final"]["test_accuracy"]
                  for name, results in part_results.items()},
    }


def run_or_exit(config, workdir, progress=True) -> dict:
    """`train_and_evaluate` with deterministic ops; a `ConfigError` exits with status 1 and its message."""
    tf.config.experimental.enable_op_determinism()
    try:
        return train_and_evaluate(config, workdir, progress=progress)
    except builders.ConfigError as error:
        logging.error("%s", error)
        sys.exit(f"error: {error}")


def _define_flags():
    """Flags of this binary (defined only when it runs, so other binaries can import this module)."""
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard, results.")
    flags.DEFINE_boolean("progress", True, "Show the Keras progress bar (else one line per epoch).")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    run_or_exit(flags.FLAGS.config, flags.FLAGS.workdir, progress=flags.FLAGS.progress)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
