"""CoherenceMonitor: values, logs, CSV rows and TensorBoard scalars during a real `fit`.

References: `coherence.measure` recomputed at the same weights, and the docs/design.md §1 definitions in
float64 NumPy on closed-form softmax-regression per-example gradients (tests/reference.py):
g_i = (x_i ⊗ (softmax(z_i) − e_{y_i}), softmax(z_i) − e_{y_i}).
"""

import csv
import glob
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import coherence
from cgh_tf.callbacks import COHERENCE_CSV_COLUMNS, CoherenceMonitor

import reference

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
INPUTS, CLASSES = 4, 3


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def softmax_regression(hidden=None, seed=0):
    """Dense(CLASSES) on INPUTS features (optionally after a tanh hidden layer), compiled SGD 0.1."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((INPUTS,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="tanh", name="hidden"))
    layers.append(keras.layers.Dense(CLASSES, name="out"))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    return model


def arrays(m, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, INPUTS)), rng.integers(0, CLASSES, m)


def numpy_stats(model, x, y):
    """(α, m-coherence) of softmax regression from closed-form per-example gradients (float64)."""
    kernel, bias = (v.numpy().astype(np.float64) for v in model.trainable_variables)
    gw, gb = reference.per_example_gradients(kernel, bias, x, y)
    flat = np.concatenate([gw.reshape(len(x), -1), gb], axis=1)
    r = reference.m_coherence(flat)
    return r / len(x), r


class Snapshot(keras.callbacks.Callback):
    """Placed after the monitor: at each epoch end records the logs and the references there."""

    def __init__(self, samples):
        super().__init__()
        self.samples, self.logs, self.numpy, self.measured = samples, [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.logs.append(dict(logs))
        self.numpy.append({k: numpy_stats(self.model, x, y) for k, (x, y) in self.samples.items()})
        self.measured.append({k: coherence.measure(self.model, x, y) for k, (x, y) in self.samples.items()})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_scalars(log_dir):
    """{tag: [(step, value)]} from every TensorBoard event file under log_dir."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_epoch_mode_matches_references_logs_csv_and_tensorboard(tmp_path):
    samples = {"train": arrays(12, seed=1), "test": arrays(12, seed=2)}
    x_fit, y_fit = arrays(16, seed=3)
    model = softmax_regression()
    csv_path, log_dir = str(tmp_path / "coh.csv"), str(tmp_path / "tb")
    monitor = CoherenceMonitor(samples, batch_size=5, csv_path=csv_path, log_dir=log_dir)
    snapshot = Snapshot(samples)
    history = model.fit(x_fit, y_fit, batch_size=8, epochs=3, shuffle=False, verbose=0,
                        callbacks=[monitor, snapshot])

    scalars = read_scalars(log_dir)
    rows = read_csv(csv_path)
    assert len(rows) == 3 * 2 and list(rows[0]) == list(COHERENCE_CSV_COLUMNS)
    for epoch in range(3):
        for name in samples:
            key = f"coherence/{name}/m_coherence"
            alpha_ref, r_ref = snapshot.numpy[epoch][name]
            measured = snapshot.measured[epoch][name]
            logged_r, logged_alpha = snapshot.logs[epoch][key], snapshot.logs[epoch][f"coherence/{name}/alpha"]
            assert logged_r == pytest.approx(r_ref, rel=1e-9)
            assert logged_alpha == pytest.approx(alpha_ref, rel=1e-9)
            pairwise = snapshot.logs[epoch][f"coherence/{name}/pairwise_coherence"]
            assert pairwise == pytest.approx((r_ref - 1) / (measured.m - 1), rel=1e-9)
            assert logged_r == pytest.approx(measured.m_coherence, rel=1e-12)
            assert history.history[key][epoch] == logged_r
            assert (epoch, pytest.approx(logged_r, rel=1e-6)) in scalars[key]  # TensorBoard: float32
            row = next(r for r in rows if r["sample"] == name and int(r["epoch"]) == epoch)
            assert row["layer"] == "" and int(row["step"]) == 2 * (epoch + 1) and int(row["m"]) == 12
            assert float(row["m_coherence"]) == logged_r and float(row["alpha"]) == logged_alpha
            assert float(row["alpha_perp"]) == pytest.approx(1 / 12)
    # The monitor's values are not constant: training changed them (the test can fail).
    assert snapshot.logs[0]["coherence/train/m_coherence"] != snapshot.logs[2]["coherence/train/m_coherence"]


def test_per_layer_keys_and_values_match_measure(tmp_path):
    samples = {"a": arrays(10, seed=4)}
    model = softmax_regression(hidden=5)
    csv_path = str(tmp_path / "coh.csv")
    monitor = CoherenceMonitor(samples, per_layer=True, csv_path=csv_path)
    history = model.fit(*arrays(8, seed=5), batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    expected = coherence.measure(model, *samples["a"], per_layer=True)
    assert set(expected.per_layer) == {"hidden", "out"}
    for layer, stats in expected.per_layer.items():
        assert history.history[f"coherence/a/{layer}/m_coherence"][0] == pytest.approx(stats.m_coherence, rel=1e-12)
    rows = read_csv(csv_path)
    assert [r["layer"] for r in rows] == ["", "hidden", "out"]
    # α = Σ_b f_b α_b with f_b = Q_b / Q (docs/design.md §1), from the CSV numbers alone.
    whole, layers = monitor.last_stats["a"], monitor.last_stats["a"].per_layer
    combined = sum(s.sum_of_sq_norms / whole.sum_of_sq_norms * s.alpha for s in layers.values())
    assert combined == pytest.approx(float(rows[0]["alpha"]), rel=1e-12)


def test_step_mode_measures_every_n_batches_and_appends(tmp_path):
    samples = {"s": arrays(6, seed=6)}
    model = softmax_regression()
    csv_path, log_dir = str(tmp_path / "sub" / "coh.csv"), str(tmp_path / "tb")
    seen = []

    class BatchLogs(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append("coherence/s/m_coherence" in logs)

    monitor = CoherenceMonitor(samples, every_steps=3, csv_path=csv_path, log_dir=log_dir)
    x, y = arrays(16, seed=7)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[monitor, BatchLogs()])
    assert seen == [(b + 1) % 3 == 0 for b in range(8)]
    assert "coherence/s/m_coherence" not in history.history
    rows = read_csv(csv_path)
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(0, 3), (1, 6)]
    assert [step for step, _ in read_scalars(log_dir)["coherence/s/m_coherence"]] == [3, 6]
    # A second fit keeps counting steps and appends to the same file (header once).
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    rows = read_csv(csv_path)
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]
    assert float(rows[-1]["m_coherence"]) == monitor.last_stats["s"].m_coherence
    assert open(csv_path).read().count("epoch,step") == 1


def test_existing_csv_with_other_header_or_cut_line(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        CoherenceMonitor({"s": arrays(3, 0)}, csv_path=str(other))
    cut = tmp_path / "cut.csv"
    cut.write_text(",".join(COHERENCE_CSV_COLUMNS) + "\n0,2,s,,3,0.5")  # crash mid-row
    monitor = CoherenceMonitor({"s": arrays(3, 0)}, csv_path=str(cut))
    model = softmax_regression()
    model.fit(*arrays(4, 1), batch_size=4, epochs=1, verbose=0, callbacks=[monitor])
    lines = cut.read_text().splitlines()
    assert lines[1] == "0,2,s,,3,0.5" and lines[2].startswith("0,1,s,,3,")


@pytest.mark.parametrize("samples,kwargs,error,match", [
    ({}, {}, ValueError, "empty"),
    ([("s", (np.zeros((2, 4)), np.zeros(2)))], {}, TypeError, "mapping"),
    ({"s": (np.zeros((3, 4)), np.zeros(2))}, {}, ValueError, "x has \\[3\\] examples but y has 2"),
    ({"s": (np.zeros((0, 4)), np.zeros(0))}, {}, ValueError, "empty"),
    ({"s": np.zeros((2, 4))}, {}, ValueError, "pair"),
    ({"": (np.zeros((2, 4)), np.zeros(2))}, {}, ValueError, "names"),
    ({"s": (np.zeros((2, 4)), np.zeros(2))}, {"every_epochs": 0}, ValueError, "every_epochs"),
    ({"s": (np.zeros((2, 4)), np.zeros(2))}, {"every_steps": 0}, ValueError, "every_steps"),
    ({"s": (np.zeros((2, 4)), np.zeros(2))}, {"every_steps": 5, "every_epochs": 2}, ValueError, "one schedule"),
    ({"s": (np.zeros((2, 4)), np.zeros(2))}, {"every_epochs": None}, ValueError, "No schedule"),
    ({"s": (np.zeros((2, 4)), np.zeros(2))}, {"batch_size": 0}, ValueError, "batch_size"),
])
def test_bad_arguments(samples, kwargs, error, match):
    with pytest.raises(error, match=match):
        CoherenceMonitor(samples, **kwargs)


def test_nan_when_all_gradients_vanish():
    """Zero-loss-gradient model (bias-free, zero kernel, zero inputs): Q = 0 gives NaN, not a crash."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(CLASSES, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
    monitor = CoherenceMonitor({"zeros": (np.zeros((3, INPUTS)), np.array([0, 1, 2]))})
    history = model.fit(*arrays(4, 1), batch_size=4, epochs=1, verbose=0, callbacks=[monitor])
    assert math.isnan(history.history["coherence/zeros/m_coherence"][0])
