"""Keras callbacks that measure what the model has learnt about fixed subsets of examples.

| callback           | measured when                   | logs / TensorBoard                      | CSV                  |
|--------------------|---------------------------------|-----------------------------------------|----------------------|
| `SubsetAccuracy`   | every `every` epochs            | `{name}_accuracy` per subset (top-1, in | —                    |
|                    |                                 | inference mode, against given labels)   |                      |
| `CoherenceMonitor` | every `every_epochs` epochs or  | `coherence/<sample>/m_coherence`,       | one row per sample   |
|                    | every `every_steps` steps       | `.../alpha`, `.../pairwise_coherence`,  | (and layer), append- |
|                    |                                 | per layer                               | only, row by row     |
|                    |                                 | `coherence/<sample>/<layer>/m_coherence`|                      |
| `LearningTimes`    | at step 0, every `every_steps`  | histograms `learning_times/<group>/     | one row per example  |
|                    | steps and at train end          | first_correct_step`, scalars `.../      | at train end (atomic)|
|                    |                                 | fraction_correct` (pristine, corrupted) |                      |

Values are written into the `logs`, so `keras.callbacks.TensorBoard` and `History` (which run after
user callbacks) record them like built-in metrics: put these callbacks *before* TensorBoard in the
`callbacks` list.

**Steps** are *batches seen*: the number of `on_train_batch_end` calls since the callback was
created (cumulative over `fit` calls; independent of the optimizer, so M3's consecutive-batch mode,
which updates on every 3rd batch, still counts every batch). With `steps_per_execution=k` Keras
calls `on_train_batch_end` once per k batches, so one step is then k batches.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from cgh_tf import atomic_files
from cgh_tf import coherence
from cgh_tf import data as cgh_data
from cgh_tf.api_types import LossSpec, Logs


class SubsetAccuracy(keras.callbacks.Callback):
    """Top-1 accuracy of the model on named fixed subsets, e.g. pristine vs corrupted training examples.

    Args:
        subsets: `{name: (x, y)}` with x `[n, *input_shape]` and integer labels y `[n]`. Accuracy is
            measured against these labels (for memorisation: the *training* labels, noisy or not).
            Empty subsets are skipped (nothing is logged for them).
        batch_size: examples per inference batch (memory, not results, depends on it).
        every: evaluate after epochs `every`, `2 * every`, ... (counted from 1; 1 = every epoch);
            the other epochs log nothing for these subsets.

    The model must output class scores `[batch, num_classes]` (logits or probabilities; the argmax
    is taken, ties resolve to the lowest index as in `np.argmax`). Logged key: `f"{name}_accuracy"`,
    a Python float in [0, 1], equal to (number correct) / n.
    """

    def __init__(self, subsets: Mapping[str, tuple], batch_size: int = 1000, every: int = 1):
        super().__init__()
        if not isinstance(subsets, Mapping):
            raise TypeError(f"subsets must be a mapping name -> (x, y), got "
                            f"{type(subsets).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.subsets = {}
        for name, pair in subsets.items():
            x, y = _check_subset(name, pair)
            if len(y):
                self.subsets[name] = (x, y)
        self.batch_size = batch_size
        self.every = every
        self._count_fn = _PerModel(_count_correct_fn)

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        """Add `{name}_accuracy` for every non-empty subset to `logs` (every `every` epochs)."""
        if logs is None or (epoch + 1) % self.every:
            return
        logs.update(self.evaluate())

    def evaluate(self) -> dict:
        """Return `{f"{name}_accuracy": float}` for the current weights, without touching `logs`."""
        return {f"{name}_accuracy": self._accuracy(x, y) for name, (x, y) in self.subsets.items()}

    def _accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        correct = 0
        for start in range(0, len(y), self.batch_size):
            stop = start + self.batch_size
            correct += int(self._count_correct(x[start:stop], y[start:stop]))
        return correct / len(y)

    def _count_correct(self, x, y):
        return self._count_fn(self.model, x, y)


def _count_correct_fn(model):
    """Compiled `(x, y) -> number of examples whose arg-max class is y`."""

    @tf.function(reduce_retracing=True)
    def count_correct(x, y):
        scores = model(x, training=False)
        predicted = tf.argmax(scores, axis=-1, output_type=tf.int64)
        return tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(y, tf.int64)), tf.int64))

    return count_correct


class _PerModel:
    """A function compiled for one model by `build(model)`, rebuilt when called with another."""

    def __init__(self, build):
        self._build, self._model, self._fn = build, None, None

    def __call__(self, model, *args):
        if model is not self._model:
            self._model, self._fn = model, self._build(model)
        return self._fn(*args)


def _check_subset(name, pair):
    """Validate one `(x, y)` subset; returns `(x, y)` as NumPy arrays (y as int64)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"subset names must be non-empty strings, got {name!r}")
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"subset {name!r} must be a pair (x, y), got {type(pair).__name__}")
    x, y = np.asarray(pair[0]), np.asarray(pair[1])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"subset {name!r}: y must be a 1-D integer array, got shape {y.shape} "
                         f"dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"subset {name!r}: x has {len(x)} examples but y has {len(y)}")
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# CoherenceMonitor and LearningTimes


COHERENCE_CSV_COLUMNS = ("epoch", "step", "sample", "layer", "m", "alpha", "alpha_perp", "m_coherence")
LEARNING_TIMES_CSV_COLUMNS = ("example_id", "original_label", "label", "corrupted",
                              "first_correct_step", "stable_since_step", "last_prediction")


class CoherenceMonitor(keras.callbacks.Callback):
    """α and m-coherence of per-example gradients on fixed samples, during training.

    Args:
        samples: `{name: (x, y)}`, e.g. "train", "test", "pristine", "corrupted"; x `[m, ...]`,
            y `[m, ...]` targets for the loss. Fixed samples chosen by the caller; give them the same
            m when comparing them (m-coherence grows with m, docs/design.md §1).
        every_epochs: measure at the end of every `every_epochs`-th epoch (epochs counted from 1).
        every_steps: if given, measure every `every_steps` steps (batches seen, see above) *instead*
            of at epoch ends; then `every_epochs` must be left at 1 or None.
        per_layer: also report m-coherence per layer (`coherence.measure(per_layer=True)`).
        batch_size: examples per per-example-gradient batch (memory, not results, depends on it).
        loss: Keras loss / name / per-example function, or None for the model's compiled loss.
        log_dir: if given, TensorBoard scalars are written there (own file writer); the step is the
            epoch index (0-based, as Keras' TensorBoard) in epoch mode, the step count in step mode.
        csv_path: if given, rows `COHERENCE_CSV_COLUMNS` are appended (layer "" = whole model),
            one flushed line at a time, so a crash never leaves a half-written row.
        training: take gradients with `model(x, training=training)` (default inference mode).
            Beware: `training=True` also updates BatchNormalization moving statistics and draws
            dropout masks, i.e. the measurement then changes the model it measures.

    Values go into the `logs` of the epoch (epoch mode) or of the batch (step mode) under the keys
    `coherence/<sample>/m_coherence`, `coherence/<sample>/alpha` and, per layer,
    `coherence/<sample>/<layer>/m_coherence` — place this callback before `keras.callbacks.
    TensorBoard` so History and TensorBoard record them. `last_stats` holds the last measurement
    `{sample: coherence.CoherenceStats}`. Each measurement costs one forward + backward pass over
    every sample.
    """

    def __init__(self, samples: Mapping[str, tuple], every_epochs: int | None = 1,
                 every_steps: int | None = None, per_layer: bool = False, batch_size: int = 256,
                 loss: LossSpec = None, log_dir: str | None = None, csv_path: str | None = None,
                 training: bool = False) -> None:
        super().__init__()
        self.samples = _check_samples(samples)
        if every_steps is not None:
            every_steps = _check_positive_int(every_steps, "every_steps")
            if every_epochs not in (None, 1):
                raise ValueError(f"Give one schedule: every_steps={every_steps} replaces the epoch "
                                 f"schedule, so every_epochs must be 1 (default) or None, got "
                                 f"{every_epochs!r}.")
            every_epochs = None
        elif every_epochs is None:
            raise ValueError("No schedule: give every_epochs (a positive int) or every_steps.")
        else:
            every_epochs = _check_positive_int(every_epochs, "every_epochs")
        self.every_epochs, self.every_steps = every_epochs, every_steps
        self.per_layer = bool(per_layer)
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.loss = loss
        self.training = bool(training)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        if self.csv_path is not None:
            _check_csv_header(self.csv_path, COHERENCE_CSV_COLUMNS)
        self.steps_seen = 0
        self.last_stats = {}
        self._epoch = 0
        self._writer = None

    # -- Keras hooks ------------------------------------------------------------------------------

    def on_train_begin(self, logs: Logs = None) -> None:
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        self.steps_seen += 1
        if self.every_steps is not None and self.steps_seen % self.every_steps == 0:
            values = self.record(epoch=self._epoch, step=self.steps_seen, summary_step=self.steps_seen)
            if logs is not None:
                logs.update(values)

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        if self.every_epochs is not None and (epoch + 1) % self.every_epochs == 0:
            values = self.record(epoch=epoch, step=self.steps_seen, summary_step=epoch)
            if logs is not None:
                logs.update(values)

    def on_train_end(self, logs: Logs = None) -> None:
        if self._writer is not None:
            self._writer.flush()

    # -- measurement ------------------------------------------------------------------------------

    def measure_samples(self) -> dict:
        """`{sample: coherence.CoherenceStats}` at the current weights (no logging, no files):
        `coherence.measure` of each sample, which compiles once per model, loss and mode."""
        return {name: coherence.measure(self.model, x, y, loss=self.loss, batch_size=self.batch_size,
                                        per_layer=self.per_layer, training=self.training)
                for name, (x, y) in self.samples.items()}

    def record(self, epoch: int, step: int, summary_step: int) -> dict:
        """Measures every sample, writes TensorBoard scalars and CSV rows; returns the logs dict."""
        self.last_stats = self.measure_samples()
        values = _coherence_log_values(self.last_stats)
        if self._writer is not None:
            with self._writer.as_default():
                for tag, value in values.items():
                    tf.summary.scalar(tag, value, step=summary_step)
            self._writer.flush()
        if self.csv_path is not None:
            _append_csv_rows(self.csv_path, COHERENCE_CSV_COLUMNS,
                             _coherence_csv_rows(self.last_stats, epoch, step))
        return values


def _coherence_log_values(stats_by_sample) -> dict:
    """Log keys (module table) -> Python floats."""
    values = {}
    for name, stats in stats_by_sample.items():
        values[f"coherence/{name}/m_coherence"] = float(stats.m_coherence)
        values[f"coherence/{name}/alpha"] = float(stats.alpha)
        values[f"coherence/{name}/pairwise_coherence"] = float(stats.pairwise_coherence)
        for layer, layer_stats in stats.per_layer.items():
            values[f"coherence/{name}/{layer}/m_coherence"] = float(layer_stats.m_coherence)
    return values


def _coherence_csv_rows(stats_by_sample, epoch, step):
    """Rows of COHERENCE_CSV_COLUMNS: per sample the whole model (layer "") then each layer."""
    rows = []
    for name, stats in stats_by_sample.items():
        parts = [("", stats)] + list(stats.per_layer.items())
        for layer, s in parts:
            rows.append((epoch, step, name, layer, s.m, s.alpha, s.alpha_perp, s.m_coherence))
    return rows


class LearningTimes(keras.callbacks.Callback):
    """Per-example learning times: when each training example is first, and stably, classified right.

    Args:
        split: a `cgh_tf.data.Split` (usually `dataset.train`); its examples are classified in
            inference mode (`model(x, training=False)`, own batches, no `predict`, no metric state
            touched) against their *training* labels `split.y` (noisy labels for corrupted examples).
        every_steps: evaluate every `every_steps` steps (batches seen, see above); also at train
            begin when no step has been seen yet (step 0) and at train end.
        batch_size: examples per inference batch.
        csv_path: if given, `LEARNING_TIMES_CSV_COLUMNS` for every example are written at train end,
            atomically (temp file in the same directory + `os.replace`).
        log_dir: if given, at every evaluation TensorBoard histograms of `first_correct_step` of the
            examples learned so far, for the groups "pristine" and "corrupted" (empty groups are
            skipped), and scalars `learning_times/<group>/fraction_correct` (step = step count).

    Per example (arrays in split order, see `results()`; −1 = never / not currently / not evaluated):

    | field              | meaning                                                            |
    |--------------------|--------------------------------------------------------------------|
    | first_correct_step | first evaluated step at which argmax prediction == training label  |
    | stable_since_step  | step since which every evaluation was correct (−1: wrong at last)  |
    | last_prediction    | argmax class at the last evaluation                                |

    Times are only as fine as the evaluation grid (multiples of `every_steps`, plus 0 and the end).
    The model must output class scores `[batch, num_classes]`, num_classes ≥ 2 (logits or
    probabilities; ties resolve to the lowest index). State persists across `fit` calls on the same
    instance; use a new instance for a new run.
    """

    def __init__(self, split: cgh_data.Split, every_steps: int, batch_size: int = 1024,
                 csv_path: str | None = None, log_dir: str | None = None) -> None:
        super().__init__()
        if not isinstance(split, cgh_data.Split):
            raise TypeError(f"split must be a cgh_tf.data.Split (e.g. dataset.train), "
                            f"got {type(split).__name__}")
        if len(split) == 0:
            raise ValueError("split is empty: LearningTimes needs at least one example.")
        self.split = split
        self.every_steps = _check_positive_int(every_steps, "every_steps")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._labels = np.asarray(split.y).astype(np.int64)
        n = len(split)
        self.first_correct_step = np.full(n, -1, np.int64)
        self.stable_since_step = np.full(n, -1, np.int64)
        self.last_prediction = np.full(n, -1, np.int64)
        self.evaluated_steps = []
        self.steps_seen = 0
        self._writer = None
        self._predict_fn = _PerModel(_predict_classes_fn)

    # -- Keras hooks ------------------------------------------------------------------------------

    def on_train_begin(self, logs: Logs = None) -> None:
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        if self.steps_seen == 0 and not self.evaluated_steps:
            self.evaluate()

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        self.steps_seen += 1
        if self.steps_seen % self.every_steps == 0:
            self.evaluate()

    def on_train_end(self, logs: Logs = None) -> None:
        if not self.evaluated_steps or self.evaluated_steps[-1] != self.steps_seen:
            self.evaluate()
        if self._writer is not None:
            self._writer.flush()
        if self.csv_path is not None:
            self.save_csv(self.csv_path)

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self) -> None:
        """Classifies every example now and updates the learning times at step `steps_seen`."""
        step = self.steps_seen
        prediction = self._predict_all()
        correct = prediction == self._labels
        self.first_correct_step[correct & (self.first_correct_step < 0)] = step
        self.stable_since_step[correct & (self.stable_since_step < 0)] = step
        self.stable_since_step[~correct] = -1
        self.last_prediction = prediction
        self.evaluated_steps.append(step)
        if self._writer is not None:
            self._write_summaries(step, correct)

    def results(self) -> dict:
        """Copies of the per-example arrays, keyed by `LEARNING_TIMES_CSV_COLUMNS` (split order)."""
        return {
            "example_id": np.array(self.split.example_id),
            "original_label": np.asarray(self.split.original_y).astype(np.int64),
            "label": self._labels.copy(),
            "corrupted": np.asarray(self.split.corrupted).astype(bool),
            "first_correct_step": self.first_correct_step.copy(),
            "stable_since_step": self.stable_since_step.copy(),
            "last_prediction": self.last_prediction.copy(),
        }

    def save_csv(self, path: str) -> None:
        """Writes `results()` as CSV atomically (temp file in the same directory + os.replace)."""
        columns = self.results()
        rows = zip(*(columns[name] for name in LEARNING_TIMES_CSV_COLUMNS))
        rows = ((int(i), int(o), int(y), int(bool(c)), int(f), int(s), int(p))
                for i, o, y, c, f, s, p in rows)
        _atomic_write_csv(os.fspath(path), LEARNING_TIMES_CSV_COLUMNS, rows)

    def _predict_all(self) -> np.ndarray:
        x = self.split.x
        parts = [self._predict_batch(x[start:start + self.batch_size]).numpy()
                 for start in range(0, len(x), self.batch_size)]
        return np.concatenate(parts).astype(np.int64)

    def _predict_batch(self, x):
        return self._predict_fn(self.model, x)

    def _write_summaries(self, step, correct):
        corrupted = np.asarray(self.split.corrupted).astype(bool)
        with self._writer.as_default():
            for group, members in (("pristine", ~corrupted), ("corrupted", corrupted)):
                if not members.any():
                    continue
                learned = self.first_correct_step[members]
                learned = learned[learned >= 0]
                tf.summary.scalar(f"learning_times/{group}/fraction_correct",
                                  float(correct[members].mean()), step=step)
                if learned.size:
                    tf.summary.histogram(f"learning_times/{group}/first_correct_step",
                                         learned.astype(np.float64), step=step)
        self._writer.flush()


def easy_mask(results: Mapping[str, np.ndarray] | LearningTimes) -> np.ndarray:
    """The "easy" mask of 2003.07422: examples classified correctly at the last evaluation.

    results: `LearningTimes.results()` (or a `LearningTimes`). Returns `[n]` bool in split order,
    True where `last_prediction == label` (the training label); for `LearningTimes(dataset.train)`
    this is the `easy` argument of `cgh_tf.data.easy_hard_datasets(dataset, easy, ...)`.
    """
    if isinstance(results, LearningTimes):
        results = results.results()
    if not isinstance(results, Mapping) or not {"label", "last_prediction"} <= set(results):
        raise TypeError("easy_mask takes LearningTimes.results() (a dict with 'label' and "
                        "'last_prediction') or a LearningTimes callback.")
    prediction, label = np.asarray(results["last_prediction"]), np.asarray(results["label"])
    if prediction.shape != label.shape or prediction.ndim != 1:
        raise ValueError(f"'last_prediction' {prediction.shape} and 'label' {label.shape} must be "
                         f"1-D arrays of the same length.")
    if np.any(prediction < 0):
        raise ValueError("Some examples were never evaluated (last_prediction = -1): run training "
                         "with the LearningTimes callback (or call evaluate()) first.")
    return prediction == label


# -- helpers of this section --------------------------------------------------------------------

def _check_positive_int(value, name) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_samples(samples) -> dict:
    """Validates `{name: (x, y)}`: non-empty, string names, m ≥ 1 examples with len(x) == len(y)."""
    if not isinstance(samples, Mapping):
        raise TypeError(f"samples must be a mapping name -> (x, y), got {type(samples).__name__}")
    if not samples:
        raise ValueError("samples is empty: give at least one sample, e.g. {'train': (x, y)}.")
    checked = {}
    for name, pair in samples.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"sample names must be non-empty strings without '/', got {name!r}")
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"sample {name!r} must be a pair (x, y), got {type(pair).__name__}")
        x = tf.nest.map_structure(np.asarray, pair[0])
        y = np.asarray(pair[1])
        sizes = {len(leaf) if np.ndim(leaf) else 0 for leaf in tf.nest.flatten(x)}
        if len(sizes) != 1 or np.ndim(y) == 0 or sizes != {len(y)}:
            raise ValueError(f"sample {name!r}: x has {sorted(sizes)} examples but y has "
                             f"{len(y) if np.ndim(y) else 'no'} examples; they must match.")
        if len(y) == 0:
            raise ValueError(f"sample {name!r} is empty: coherence needs m >= 1 examples.")
        checked[name] = (x, y)
    return checked


def _csv_line(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _check_csv_header(path, columns):
    """An existing non-empty CSV must start with `columns`, else appending would mix formats."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            first = f.readline()
        if first != _csv_line(columns):
            raise ValueError(f"{path} exists with header {first.strip()!r}, expected "
                             f"{','.join(columns)!r}; use a new csv_path.")


def _append_csv_rows(path, columns, rows):
    """Appends rows (header first if the file is new); each line is written and flushed whole."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    _check_csv_header(path, columns)
    is_new = not os.path.exists(path) or os.path.getsize(path) == 0
    cut_line = False
    if not is_new:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut_line = f.read(1) != b"\n"
    with open(path, "a", newline="") as f:
        if cut_line:  # a line cut by a crash: end it so it cannot swallow the next row
            f.write("\n")
            f.flush()
        if is_new:
            f.write(_csv_line(columns))
            f.flush()
        for row in rows:
            f.write(_csv_line(row))
            f.flush()


def _atomic_write_csv(path, columns, rows):
    """Writes a whole CSV atomically (`cgh_tf.atomic_files`)."""
    with atomic_files.atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _predict_classes_fn(model):
    """Compiled `x -> arg-max class`; the model must output [batch, num_classes >= 2] scores."""

    @tf.function(reduce_retracing=True)
    def predict_classes(x):
        scores = model(x, training=False)
        if scores.shape.rank != 2 or scores.shape[-1] == 1:
            raise ValueError(f"LearningTimes needs class scores [batch, num_classes] with "
                             f"num_classes >= 2; the model outputs shape {scores.shape}.")
        return tf.argmax(scores, axis=-1, output_type=tf.int64)

    return predict_classes
