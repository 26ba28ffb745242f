"""The trainer's feature callbacks: coherence monitor, loss-reduction fractions, learning times
(docs/design.md, "Trainers"; the fields in `configs/default.py`).

| file (in the workdir)            | written                          | content                     |
|----------------------------------|----------------------------------|-----------------------------|
| `coherence.csv`                  | every epoch / N steps (appended) | `CoherenceMonitor` rows     |
| `learning_times.csv`             | at train end (atomic)            | `LearningTimes` rows        |
| `tensorboard/learning_times`     | at every evaluation              | histograms / fractions      |
| `tensorboard/steps`              | every N steps                    | `StepMeasurements` scalars  |

The monitor's values go into the epoch logs (TensorBoard `train` run, History, results.json). The
learning times' state is part of the run's checkpoint (`ResumableLearningTimes.state`).
"""

import csv
import math
import os

import keras
import numpy as np
import tensorflow as tf

from cgh_tf.atomic_files import atomic_open
from trainers.config_schema import ConfigError, setting

COHERENCE_CSV = "coherence.csv"
STEP_TENSORBOARD_RUN = "steps"  # TensorBoard run of StepMeasurements (scalars at the global step)
LEARNING_TIMES_CSV = "learning_times.csv"
_MONITOR_SEED_SALT = 20_081_217  # separates the monitor's sample choice from other uses of the seed


def monitor_samples(data, m: int, seed: int) -> dict:
    """Fixed samples of `m` examples each for the coherence monitor, chosen with `seed`.

    Returns `{"train", "test", "pristine"[, "corrupted"]: cgh_tf.data.Split}` (subsets of
    `data.train` / `data.test`; training subsets carry their *training* labels, `"corrupted"` only
    when the training split has corrupted examples). Raises ConfigError if a pool has fewer than m.
    """
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
    """Logs `f_pristine`, `f_corrupt` (ICLR 2020) of a fixed training sample at every epoch end,
    and `f_pristine_null` = Q_p/Q, the value f^p takes for orthogonal (gradient-blind) gradients.

    f^p = ⟨g, g^p⟩ / ⟨g, g⟩ with g^p, g^c the summed gradients of the pristine / corrupt examples
    of the sample (training labels) and g = g^p + g^c; f^c = 1 − f^p
    (`cgh_tf.coherence.loss_reduction_fractions`, inference mode unless `training`).
    """

    def __init__(self, split, batch_size: int, training: bool = False):
        super().__init__()
        self.split, self.batch_size, self.training = split, int(batch_size), bool(training)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.measure())

    def measure(self) -> dict:
        """`{"f_pristine": f^p, "f_corrupt": f^c, "f_pristine_null": Q_p/Q}` (Python floats) at
        the current weights; Q_p/Q is f^p's gradient-blind null (`cgh_tf.nulls`)."""
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
    """Drives a `CoherenceMonitor` (and `LossReductionFractions`) every N batches and at epoch ends.

    Measures at step 0 (train begin of a fresh run), after every `every_steps`-th batch (steps =
    batches seen, counted over the whole run) and at every epoch end (reusing the measurement of
    the epoch's last batch when that step was just measured). Every measurement

    | goes to                          | content                                                        |
    |----------------------------------|----------------------------------------------------------------|
    | `rows` (a list shared with the checkpoint state; `step_history` of results.json) | `{"step", "epoch" (0-based, in progress), "loss", "accuracy" (running means over the epoch's batches so far, training mode; None at step 0), "coherence/<sample>/...", "f_pristine", "f_corrupt", "f_pristine_null"}` |
    | `coherence.csv` (the monitor's)  | its rows, column `epoch` as above, so `truncate_csv_epochs` works |
    | TensorBoard `log_dir`            | every value of the row (except step / epoch; None and NaN: no scalar) at the global step |
    | epoch logs (epoch ends only)     | the same keys as the per-epoch monitor, so `history` is unchanged |

    Deterministic (no wall-clock); resume with `steps_seen = epochs done x steps per epoch` and the
    rows of the checkpoint, which end with that epoch's end measurement.
    """

    def __init__(self, monitor, fractions, every_steps: int, log_dir=None, steps_seen: int = 0,
                 rows=None):
        super().__init__()
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps must be a positive int, got {every_steps!r}")
        self.monitor, self.fractions, self.every_steps = monitor, fractions, every_steps
        self.log_dir, self.steps_seen = log_dir, int(steps_seen)
        self.rows = [] if rows is None else rows
        self._epoch, self._writer = 0, None

    def set_model(self, model):
        super().set_model(model)
        for callback in (self.monitor, self.fractions):
            if callback is not None:
                callback.set_model(model)

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        if self.steps_seen == 0 and not self.rows:
            self._measure(loss=None, accuracy=None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps_seen += 1
        if self.steps_seen % self.every_steps == 0:
            self._measure(loss=(logs or {}).get("loss"), accuracy=(logs or {}).get("accuracy"))

    def on_epoch_end(self, epoch, logs=None):
        if not self.rows or self.rows[-1]["step"] != self.steps_seen:
            self._measure(loss=(logs or {}).get("loss"), accuracy=(logs or {}).get("accuracy"))
        if logs is not None:
            logs.update({k: v for k, v in self.rows[-1].items()
                         if k not in STEP_ONLY_KEYS})

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _measure(self, loss, accuracy=None):
        step = self.steps_seen
        values = self.monitor.record(epoch=self._epoch, step=step, summary_step=step)
        if self.fractions is not None:
            values.update(self.fractions.measure())
        row = {"step": step, "epoch": self._epoch, **values}
        for key, value in (("loss", loss), ("accuracy", accuracy)):
            row[key] = None if value is None else float(value)
        self.rows.append(row)
        if self._writer is not None:
            with self._writer.as_default():
                for tag, value in row.items():
                    if tag not in ("step", "epoch") and value is not None \
                            and not math.isnan(value):  # NaN: no value (null in step_history)
                        tf.summary.scalar(tag, value, step=step)
            self._writer.flush()


def truncate_csv_epochs(path: str, first_epoch: int) -> None:
    """Keep the header and the rows of epochs < `first_epoch` (column `epoch`) of a CSV, atomically.

    Used on resume so that an append-only CSV never holds a row twice: rows written after the
    checkpoint being resumed from (and a line cut by a kill) are dropped. No-op if `path` is absent.
    """
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


class ResumableLearningTimes(keras.callbacks.Callback):
    """`cgh_tf.callbacks.LearningTimes` whose state is part of the run's checkpoint.

    `state()` is the JSON-able state (arrays, evaluated steps, steps seen) that the trainer saves
    under `state_key` in every epoch's checkpoint record (`trainers/run_state.py`);
    `load_state(state)` restores it on resume. Delegates everything else to the wrapped callback.
    """

    state_key = "learning_times"  # a callback with a `state_key` has its `state()` checkpointed

    def __init__(self, workdir, split, every_steps, batch_size):
        from cgh_tf import callbacks

        super().__init__()
        self.inner = callbacks.LearningTimes(
            split, every_steps, batch_size=batch_size,
            csv_path=os.path.join(workdir, LEARNING_TIMES_CSV),
            log_dir=os.path.join(workdir, "tensorboard", "learning_times"))

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def on_train_begin(self, logs=None):
        self.inner.on_train_begin(logs)

    def on_train_batch_end(self, batch, logs=None):
        self.inner.on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)

    def state(self) -> dict:
        """The learning times' state as JSON-able lists (for the checkpoint's record)."""
        lt = self.inner
        return {"first_correct_step": np.asarray(lt.first_correct_step).tolist(),
                "stable_since_step": np.asarray(lt.stable_since_step).tolist(),
                "last_prediction": np.asarray(lt.last_prediction).tolist(),
                "evaluated_steps": [int(s) for s in lt.evaluated_steps],
                "steps_seen": int(lt.steps_seen)}

    def load_state(self, state: dict) -> None:
        """Restore `state()` of a checkpoint (ConfigError if it is missing)."""
        if not state:
            raise ConfigError("the checkpoint has no learning-times state: the workdir's learning "
                              "times cannot be resumed; use another workdir")
        lt = self.inner
        lt.first_correct_step = np.asarray(state["first_correct_step"],
                                           np.asarray(lt.first_correct_step).dtype)
        lt.stable_since_step = np.asarray(state["stable_since_step"],
                                          np.asarray(lt.stable_since_step).dtype)
        lt.last_prediction = np.asarray(state["last_prediction"],
                                        np.asarray(lt.last_prediction).dtype)
        lt.evaluated_steps = [int(s) for s in state["evaluated_steps"]]
        lt.steps_seen = int(state["steps_seen"])


def feature_callbacks(config, data, workdir: str, first_epoch: int, steps: int,
                      step_history: list = None, resumed: dict = None) -> list:
    """Callbacks of the feature fields, in order; each adds its values to the epoch logs.

    `first_epoch` > 0 means a resume: the monitor CSV is truncated to the epochs before it (the
    CSV is an output, rewritten from the checkpoint's epoch on), the monitor's step count is
    `first_epoch × steps`, and the learning times load their state from `resumed` (the record
    of the checkpoint, `trainers/run_state.py`). `steps`: batches per epoch. `step_history`: the
    list the per-step measurements (`coherence.monitor_every_steps > 0`,
    `StepMeasurements.rows`) are appended to — the rows of the checkpoint resumed from.
    """
    from cgh_tf import callbacks

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
            times.load_state((resumed or {}).get(times.state_key))
        result.append(times)
    return result
