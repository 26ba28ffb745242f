"""trainers/winsorize_controls.py: the frontier statistic by hand, the calibration against the
library's per-example gradients, the plan, and a tiny real run of every arm."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import aggregators, data
from trainers import catalog, models, runner, winsorize_controls


def test_frontier_point_interpolates_the_first_crossing():
    curves = {"epoch": [0, 1, 2, 3], "pristine_accuracy": [0.1, 0.5, 0.7, 0.9],
              "corrupted_accuracy": [0.1, 0.2, 0.4, 0.8]}
    point = winsorize_controls.frontier_point(curves, 0.6)
    assert point["corrupted_at_pristine"] == pytest.approx(0.3)
    assert point["epoch_at_pristine"] == pytest.approx(1.5)
    assert winsorize_controls.frontier_point(curves, 0.05)["corrupted_at_pristine"] == 0.1
    assert winsorize_controls.frontier_point(curves, 0.95) == {"corrupted_at_pristine": None,
                                                               "epoch_at_pristine": None}


def test_calibration_matches_a_numpy_recomputation():
    arms, _ = catalog.plan("winsorize_controls", seeds=1, overrides={
        "train_size": 200, "calibration_batches": 2, "width": 8, "batch_size": 16})
    config = next(a.config for a in arms if a.config.arm == "clip" and a.config.winsorize_pct == 4)
    ds = data.load("mnist1d", label_noise=0.4, seed=0, train_size=200)
    keras.utils.set_random_seed(0)
    model = models.mlp(config, ds.input_shape, ds.num_classes)
    got = winsorize_controls.calibrate(model, ds, config)
    perm = np.random.default_rng([0, 0]).permutation(200)
    shares, ratios_w, ratios_m = [], [], []
    for k in range(2):
        idx = perm[k * 16:(k + 1) * 16]
        x, y = ds.train.x[idx].astype(np.float32), ds.train.y[idx]
        rows = []
        for i in range(16):  # brute force: one tape per example
            with tf.GradientTape() as tape:
                loss = keras.losses.sparse_categorical_crossentropy(
                    y[i:i + 1], model(x[i:i + 1]), from_logits=True)[0]
            rows.append(np.concatenate([g.numpy().ravel() for g in
                                        tape.gradient(loss, model.trainable_variables)]))
        g = np.asarray(rows, np.float64)
        low, high = np.percentile(g, [4, 96], axis=0, method="nearest")
        shares.append(np.mean((g < low) | (g > high)))
        ratios_w.append(np.linalg.norm(np.clip(g, low, high).mean(0)))
        ratios_m.append(np.linalg.norm(g.mean(0)))
    assert got["changed_share"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert got["norm_ratio"] == pytest.approx(np.mean(ratios_w) / np.mean(ratios_m), rel=1e-4)
    assert got["nominal_share"] == 2 / 16  # round(15 · 0.04) = 1 value per side
    step = aggregators.NormMatchedMean(4.0).gradients(
        model, tf.constant(x), tf.constant(y), keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
    want = g.mean(0) * np.linalg.norm(np.clip(g, low, high).mean(0)) / np.linalg.norm(g.mean(0))
    np.testing.assert_allclose(np.concatenate([v.numpy().ravel() for v in step]), want,
                               rtol=2e-4, atol=1e-7)


def test_plan_and_one_line_errors():
    arms, _ = catalog.plan("winsorize_controls")
    groups = list(dict.fromkeys(a.group for a in arms))
    assert groups == ["sgd"] + [f"{arm}_c{c}" for c in (2, 4)
                                for arm in ("winsorize", "clip", "matched_lr", "step_matched")]
    with pytest.raises(ValueError, match="arm is set by each arm"):
        catalog.plan("winsorize_controls", overrides={"arm": "clip"})
    with pytest.raises(ValueError, match=r"calibration_batches=100 must be"):
        catalog.plan("winsorize_controls", overrides={"calibration_batches": 100})


@pytest.mark.slow
def test_tiny_real_run_of_every_arm(tmp_path):
    tiny = {"epochs": 2, "train_size": 260, "width": 16, "calibration_batches": 1,
            "frontier_pristine": 0.2, "pcts": (4.0,)}
    arms, experiment = catalog.plan("winsorize_controls", seeds=2, overrides=tiny)
    summary = runner.run(experiment, arms, str(tmp_path), "test", echo=lambda line: None)
    clip = json.loads((tmp_path / "clip_c4/seed1/results.json").read_text())["summary"]
    lr = json.loads((tmp_path / "matched_lr_c4/seed1/results.json").read_text())["summary"]
    assert 0 < clip["changed_share"] <= clip["nominal_share"] == 6 / 64
    assert lr["learning_rate_used"] == pytest.approx(0.2 * lr["norm_ratio"])
    assert len(summary["verdicts"]) == 4  # winsorize vs SGD and vs each of the 3 controls
    assert set(summary["analyses"]["attribution"]) == {"c4"}
    assert (tmp_path / "winsorize_controls_frontier.png").stat().st_size > 1000
