"""The trainer's feature callbacks: coherence monitor, loss-reduction fractions, per-step
measurements, learning times (fields: `configs/default.py`; files: docs/guide/trainer.md).
"""

import csv
import math
import os

import keras
import numpy as np
import tensorflow as tf

from cgh_tf import callbacks
from cgh_tf.atomic_files import atomic_open
from trainers.config_schema import ConfigError, setting

COHERENCE_CSV = "coherence.csv"
STEP_TENSORBOARD_RUN = "steps"  # TensorBoard run of StepMeasurements (scalars at the global step)
LEARNING_TIMES_CSV = "learning_times.csv"
_MONITOR_SEED_SALT = 20_081_217  # separates the monitor's sample choice from other uses of the seed


def monitor_samples(data, m: int, seed: int) -> dict:
    """`{"train", "test", "pristine"[, "corrupted"]: Split}`: the monitor's fixed samples of `m`
    examples chosen with `seed` (training labels; "corrupted" only with corrupted examples);
    ConfigError if a pool has fewer than m."""
    rng = np.random.default_rng([seed, _MONITOR_SEED_SALT])
    corrupted = np.asarray(data.train.corrupted, dtype=bool)
    pools = {"train": (data.train, np.ones(len(data.train), bool)),
             "test": (data.test, np.ones(len(data.test), bool)),
             "pristine": (data.train, ~corrupted)}
    if corrupted.any():
        pools["corrupted"] = (data.train, corrupted)
    samples = {}
    for name, (split, mask) in pools.items():
        candidates = np.flatnonzero(mask)
        if len(candidates) < m:
            raise ConfigError(f"coherence.monitor_samples={m} but the {name} examples number only "
                              f"{len(candidates)}; choose a smaller sample size")
        samples[name] = split.subset(np.sort(rng.choice(candidates, size=m, replace=False)))
    return samples


class LossReductionFractions(keras.callbacks.Callback):
    """Logs f^p (`f_pristine`), f^c = 1 − f^p (`f_corrupt`) of a fixed training sample at every
    epoch end (`cgh_tf.coherence`) and their gradient-blind null (`f_pristine_null`, `cgh_tf.nulls`)."""

    def __init__(self, split, batch_size: int, training: bool = False):
        super().__init__()
        self.split, self.batch_size, self.training = split, int(batch_size), bool(training)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.measure())

    def measure(self) -> dict:
        """`{"f_pristine", "f_corrupt", "f_pristine_null"}` (floats) at the current weights."""
        from cgh_tf import coherence, nulls

        pristine = ~np.asarray(self.split.corrupted, bool)
        f_p, f_c = coherence.loss_reduction_fractions(
            self.model, self.split.x, self.split.y, pristine,
            batch_size=self.batch_size, training=self.training)
        null = nulls.fp_null_of_model(self.model, self.split.x, self.split.y, pristine,
                                      batch_size=self.batch_size, training=self.training)
        return {"f_pristine": float(f_p), "f_corrupt": float(f_c), "f_pristine_null": float(null)}


STEP_ONLY_KEYS = ("step", "epoch", "loss", "accuracy")  # step rows' keys not put into epoch logs


class StepMeasurements(keras.callbacks.Callback):
    """Drives a `CoherenceMonitor` (and `LossReductionFractions`) at step 0 of a fresh run, every
    `every_steps` batches and at every epoch end; each row {"step", "epoch", "loss", "accuracy",
    monitor values, f^p} goes to `rows` (`step_history`), the monitor's CSV, TensorBoard `log_dir`
    at the global step and, at epoch ends, the epoch logs. Resume: `steps_seen` and the rows."""

    def __init__(self, monitor, fractions, every_steps: int, log_dir: str, steps_seen: int,
                 rows: list):
        super().__init__()
        self.monitor, self.fractions, self.every_steps = monitor, fractions, every_steps
        self.steps_seen, self.rows, self._epoch = steps_seen, rows, 0
        self._writer = tf.summary.create_file_writer(log_dir)

    def set_model(self, model):
        super().set_model(model)
        for callback in (self.monitor, self.fractions):
            if callback is not None:
                callback.set_model(model)

    def on_train_begin(self, logs=None):
        if self.steps_seen == 0 and not self.rows:
            self._measure({})

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps_seen += 1
        if self.steps_seen % self.every_steps == 0:
            self._measure(logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if not self.rows or self.rows[-1]["step"] != self.steps_seen:
            self._measure(logs or {})
        if logs is not None:
            logs.update({k: v for k, v in self.rows[-1].items() if k not in STEP_ONLY_KEYS})

    def _measure(self, logs: dict):
        step = self.steps_seen
        values = self.monitor.record(epoch=self._epoch, step=step, summary_step=step)
        if self.fractions is not None:
            values.update(self.fractions.measure())
        row = {"step": step, "epoch": self._epoch, **values}
        row.update({key: None if logs.get(key) is None else float(logs[key])
                    for key in ("loss", "accuracy")})
        self.rows.append(row)
        with self._writer.as_default():
            for tag, value in row.items():
                if tag not in ("step", "epoch") and value is not None \
                        and not math.isnan(value):  # NaN: no value (null in step_history)
                    tf.summary.scalar(tag, value, step=step)
        self._writer.flush()


def truncate_csv_epochs(path: str, first_epoch: int) -> None:
    """Keep the header and the rows of epochs < `first_epoch` of a CSV (atomically; no-op if
    absent): on resume, rows after the checkpoint and a line cut by a kill are dropped."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    header, complete = lines[0], lines[1:-1]  # lines[-1]: "" or a line cut by a kill
    if not header:
        return
    epoch_column = next(csv.reader([header])).index("epoch")
    kept = [line for line in complete
            if line and int(next(csv.reader([line]))[epoch_column]) < first_epoch]
    new_text = "\n".join([header, *kept]) + "\n"
    if new_text != text:
        with atomic_open(path, "w") as f:
            f.write(new_text)


_LEARNING_TIMES_ARRAYS = ("first_correct_step", "stable_since_step", "last_prediction")


class ResumableLearningTimes(callbacks.LearningTimes):
    """`cgh_tf.callbacks.LearningTimes` whose `state()` is saved under `state_key` in every
    checkpoint record and restored by `load_state` on resume."""

    state_key = "learning_times"  # a callback with a `state_key` has its `state()` checkpointed

    def __init__(self, workdir, split, every_steps, batch_size):
        super().__init__(split, every_steps, batch_size=batch_size,
                         csv_path=os.path.join(workdir, LEARNING_TIMES_CSV),
                         log_dir=os.path.join(workdir, "tensorboard", "learning_times"))

    def state(self) -> dict:
        """The learning times' state as JSON-able lists."""
        return {**{k: np.asarray(getattr(self, k)).tolist() for k in _LEARNING_TIMES_ARRAYS},
                "evaluated_steps": [int(s) for s in self.evaluated_steps],
                "steps_seen": int(self.steps_seen)}

    def load_state(self, state: dict) -> None:
        """Restore `state()` of a checkpoint (ConfigError if it is missing)."""
        if not state:
            raise ConfigError("the checkpoint has no learning-times state: the workdir's learning "
                              "times cannot be resumed; use another workdir")
        for key in _LEARNING_TIMES_ARRAYS:
            setattr(self, key, np.asarray(state[key], np.asarray(getattr(self, key)).dtype))
        self.evaluated_steps = [int(s) for s in state["evaluated_steps"]]
        self.steps_seen = int(state["steps_seen"])


def feature_callbacks(config, data, workdir: str, first_epoch: int, steps: int,
                      step_history: list, resumed: dict) -> list:
    """Callbacks of the feature fields, in order, each adding its values to the epoch logs; on
    resume from `first_epoch` (`steps` batches each) they continue from the checkpoint's record
    `resumed` and its per-step rows `step_history` (appended to)."""
    result = []
    m = setting(config, "coherence.monitor_samples")
    if m:
        samples = monitor_samples(data, m, config.seed)
        csv_path = os.path.join(workdir, COHERENCE_CSV)
        truncate_csv_epochs(csv_path, first_epoch)
        monitor = callbacks.CoherenceMonitor(
            {name: (s.x, s.y) for name, s in samples.items()}, every_epochs=1,
            per_layer=setting(config, "coherence.per_layer"), batch_size=config.eval_batch_size,
            csv_path=csv_path, training=setting(config, "coherence.training"))
        monitor.steps_seen = first_epoch * steps
        fractions = None
        if config.label_noise > 0 and "corrupted" in samples:
            fractions = LossReductionFractions(samples["train"], config.eval_batch_size,
                                               training=setting(config, "coherence.training"))
        every_steps = setting(config, "coherence.monitor_every_steps")
        if every_steps:
            result.append(StepMeasurements(
                monitor, fractions, int(every_steps),
                log_dir=os.path.join(workdir, "tensorboard", STEP_TENSORBOARD_RUN),
                steps_seen=first_epoch * steps, rows=step_history))
        else:
            result += [c for c in (monitor, fractions) if c is not None]
    every_steps = setting(config, "learning_times.every_steps")
    if every_steps:
        times = ResumableLearningTimes(workdir, data.train, every_steps, config.eval_batch_size)
        if first_epoch:
            times.load_state(resumed.get(times.state_key))
        result.append(times)
    return result
