"""Steps and epochs without a coherence measurement have no value — never 0.0.

`cgh_tf.Model` with `coherence_every=10` and 4 steps per epoch measures at steps 0 and 10 (the step
counter starts at 0 and runs across epochs): in epoch 1 (step 0, its first batch) and in epoch 3
(step 10, its third batch); epochs 2, 4 and 5 have no measured step. Checked here, on real training
runs:

- History: NaN on exactly the unmeasured epochs, the independently measured value on the others
  (SGD with learning rate 0, so every measurement is taken at the initial weights); the per-batch
  logs (what the progress bar shows) are NaN until the epoch's first measurement; Keras' CSVLogger
  writes `nan`. A measured batch whose per-example gradients all vanish (Q = 0) gives NaN too.
- The trainer: `null` in `results.json` (no NaN, which is not JSON), nothing in the checkpoint's
  history, no TensorBoard scalar for those epochs, a resumed run byte-identical to a whole one, the
  report helpers reading the nulls, and an m-coherence panel in `curves.png` with points only at the
  measured epochs.
"""

import csv
import glob
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf
import reference
from configs import default
from trainers import config_schema
from trainers import outputs
from trainers import run_state
from trainers import figures
from trainers import fit_arm
from trainers import train

BATCH, STEPS, EPOCHS, EVERY = 10, 4, 5, 10
MEASURED = [True, False, True, False, False]  # epochs 1..5: steps 0-3, 4-7, 8-11, 12-15, 16-19
D, C = 5, 4


def _softmax_regression(w0, b0):
    inputs = keras.Input((D,), dtype="float64")
    outputs = keras.layers.Dense(C, dtype="float64", name="dense")(inputs)
    model = cgh_tf.Model(inputs, outputs)
    model.get_layer("dense").set_weights([w0, b0])
    return model


class _BatchLogs(keras.callbacks.Callback):
    """Records `m_coherence` of every batch's logs (the running value the progress bar shows)."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_epoch_begin(self, epoch, logs=None):
        self.values.append([])

    def on_train_batch_end(self, batch, logs=None):
        self.values[-1].append(float(logs["m_coherence"]))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_epochs_without_a_measured_step_are_nan_not_zero(float64_keras, tmp_path, jit_compile):
    x, y, w0, b0 = reference.problem(m=BATCH * STEPS)
    model = _softmax_regression(w0, b0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  dtype="float64"),
                  coherence_every=EVERY, coherence_per_layer=True)
    batch_logs = _BatchLogs()
    csv_path = str(tmp_path / "history.csv")
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
                        callbacks=[batch_logs, keras.callbacks.CSVLogger(csv_path)]).history

    for key in ("m_coherence", "alpha", "m_coherence/dense"):
        assert [math.isfinite(v) for v in history[key]] == MEASURED, (key, history[key])
        assert [math.isnan(v) for v in history[key]] == [not m for m in MEASURED], key
    np.testing.assert_array_equal(model.get_layer("dense").get_weights()[0], w0)  # lr 0

    # Epoch 1 measured its batch 0 (step 0), epoch 3 its batch 2 (step 10): the same numbers as
    # `cgh_tf.coherence.measure` and a float64 NumPy reference on those batches.
    for epoch, batch in ((0, 0), (2, 2)):
        xb, yb = x[batch * BATCH:(batch + 1) * BATCH], y[batch * BATCH:(batch + 1) * BATCH]
        stats = cgh_tf.coherence.measure(model, xb, yb)
        gw, gb = reference.per_example_gradients(w0, b0, xb, yb)
        numpy_value = reference.m_coherence(np.concatenate([gw.reshape(BATCH, -1), gb], axis=1))
        assert history["m_coherence"][epoch] == pytest.approx(stats.m_coherence, rel=1e-6)
        assert history["m_coherence"][epoch] == pytest.approx(numpy_value, rel=1e-6)
        assert history["alpha"][epoch] == pytest.approx(numpy_value / BATCH, rel=1e-6)
        assert history["m_coherence/dense"][epoch] == pytest.approx(numpy_value, rel=1e-6)

    # Per batch (progress bar): NaN until the epoch's first measured step, then its value.
    finite = [[math.isfinite(v) for v in epoch] for epoch in batch_logs.values]
    assert finite == [[True] * 4, [False] * 4, [False, False, True, True], [False] * 4,
                      [False] * 4]
    assert batch_logs.values[2][-1] == pytest.approx(history["m_coherence"][2], rel=1e-12)

    # CSVLogger: "nan" (not "0.0") in the unmeasured epochs.
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["m_coherence"] == "nan" for r in rows] == [not m for m in MEASURED]
    assert all(float(r["m_coherence"]) > 0 for r, m in zip(rows, MEASURED) if m)


@pytest.mark.parametrize("every", [1, 2])  # 1: shared backward pass; 2: separate pass
def test_measured_batch_with_vanishing_gradients_is_nan(every):
    """Bias-free zero kernel on zero inputs: every per-example gradient is 0, Q = 0, m-coherence
    is undefined — NaN on every epoch, as `stats_from_sums` gives, although every epoch is
    measured."""
    inputs = keras.Input((D,))
    model = cgh_tf.Model(inputs, keras.layers.Dense(C, use_bias=False, kernel_initializer="zeros",
                                                    name="dense")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), coherence_every=every,
                  coherence_per_layer=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((8, D), np.float32), np.arange(8) % C
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0).history
    assert math.isnan(cgh_tf.coherence.stats_from_sums(0.0, 0.0, 4).m_coherence)
    for key in ("m_coherence", "alpha", "m_coherence/dense"):
        assert all(math.isnan(v) for v in history[key]), (key, history[key])
    assert all(math.isfinite(v) for v in history["loss"])


# ------------------------------------------------------------------------------------ trainer

def _config(num_epochs=EPOCHS):
    """MNIST-1D, 200 examples in batches of 50 (4 steps per epoch), batch coherence every 10 steps."""
    config = config_schema.add_feature_fields(default.get_config())
    config.max_train, config.max_test, config.num_epochs = 200, 64, num_epochs
    config.batch_size, config.eval_batch_size = 50, 64
    config.model.kwargs.width = 8
    config.coherence.every = EVERY
    config.coherence.per_layer = True
    return config


def _scalars(directory):
    """`{tag: {step: value}}` of the scalar summaries of the event files in `directory`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """Workdirs of the trainer on `_config()`: run whole, and run 2 epochs then resumed to 5."""
    root = tmp_path_factory.mktemp("unmeasured")
    whole, resumed = str(root / "whole"), str(root / "resumed")
    train.train_and_evaluate(_config(), whole, progress=False)
    train.train_and_evaluate(_config(num_epochs=2), resumed, progress=False)
    train.train_and_evaluate(_config(), resumed, progress=False)
    return {"whole": whole, "resumed": resumed}


COHERENCE_KEYS = ("m_coherence", "alpha", "m_coherence/dense_0", "m_coherence/dense_1",
                  "m_coherence/logits")


def test_trainer_writes_null_in_results_json(trainer_runs):
    path = os.path.join(trainer_runs["whole"], outputs.RESULTS_FILE)
    with open(path) as f:
        text = f.read()
    assert "NaN" not in text
    history = json.loads(text)["history"]  # strict JSON
    for key in COHERENCE_KEYS:
        assert [v is not None for v in history[key]] == MEASURED, (key, history[key])
        assert all(v > 0 for v in history[key] if v is not None), key
    assert all(v is not None for v in history["loss"])  # every other key: every epoch
    # The checkpoint's history leaves the missing values out.
    state = run_state.read_record(run_state.checkpoint_path(trainer_runs["whole"], EPOCHS))
    assert ["m_coherence" in row for row in state["history"]] == MEASURED


def test_resumed_run_is_byte_identical(trainer_runs):
    with open(os.path.join(trainer_runs["whole"], outputs.RESULTS_FILE), "rb") as f:
        whole = f.read()
    with open(os.path.join(trainer_runs["resumed"], outputs.RESULTS_FILE), "rb") as f:
        assert f.read() == whole


def test_trainer_writes_no_tensorboard_scalar_for_unmeasured_epochs(trainer_runs):
    with open(os.path.join(trainer_runs["whole"], outputs.RESULTS_FILE)) as f:
        history = json.load(f)["history"]
    scalars = _scalars(os.path.join(trainer_runs["whole"], "tensorboard", "train"))
    measured_epochs = [e for e in range(EPOCHS) if MEASURED[e]]
    for key in COHERENCE_KEYS:
        assert sorted(scalars[f"epoch_{key}"]) == measured_epochs, key
        for epoch in measured_epochs:
            assert scalars[f"epoch_{key}"][epoch] == pytest.approx(history[key][epoch], rel=1e-6)
    assert sorted(scalars["epoch_loss"]) == list(range(EPOCHS))


def test_readings_and_bands_read_the_nulls(trainer_runs):
    with open(os.path.join(trainer_runs["whole"], outputs.RESULTS_FILE)) as f:
        results = json.load(f)
    values = [v for v in results["history"]["m_coherence"] if v is not None]
    mean, low, high = figures.mean_band(zip(results["history"]["m_coherence"]))
    assert list(np.isnan(mean)) == [not m for m in MEASURED]
    np.testing.assert_allclose(mean[np.isfinite(mean)], values)
    read = fit_arm.read(results, ("history", "m_coherence", "mean"))
    assert read == pytest.approx(np.mean(values))
    assert fit_arm.read(results, ("history", "m_coherence", "last")) == values[-1]


def test_curves_png_has_an_m_coherence_panel_with_measured_points_only(trainer_runs):
    workdir = trainer_runs["whole"]
    with open(os.path.join(workdir, outputs.PLOT_FILE), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    state = run_state.read_record(run_state.checkpoint_path(workdir, EPOCHS))
    fig = outputs.curves_figure(state["history"])
    try:
        axes = fig.get_axes()
        assert [ax.get_ylabel() for ax in axes] == ["loss", "accuracy",
                                                    "m-coherence (training batches)"]
        lines = {line.get_label(): line for line in axes[2].get_lines()}
        assert set(lines) == {"whole model", "dense_0", "dense_1", "logits"}
        whole = lines["whole model"]
        measured = [e + 1 for e in range(EPOCHS) if MEASURED[e]]
        np.testing.assert_array_equal(whole.get_xdata(), measured)
        np.testing.assert_allclose(
            whole.get_ydata(), [row["m_coherence"] for row in state["history"]
                                if "m_coherence" in row])
    finally:
        from matplotlib import pyplot as plt
        plt.close(fig)


def test_curves_without_coherence_keep_two_panels():
    history = [{"loss": 1.0, "accuracy": 0.5, "m_coherence": None}, {"loss": 0.5, "accuracy": 0.7}]
    fig = outputs.curves_figure(history)
    try:
        assert [ax.get_ylabel() for ax in fig.get_axes()] == ["loss", "accuracy"]
    finally:
        from matplotlib import pyplot as plt
        plt.close(fig)


def test_to_json_writes_nan_as_null():
    text = outputs.to_json({"a": [1.0, float("nan"), np.float64("nan"), np.float32("nan")],
                       "b": {"c": (float("nan"),)}})
    assert json.loads(text) == {"a": [1.0, None, None, None], "b": {"c": [None]}}
