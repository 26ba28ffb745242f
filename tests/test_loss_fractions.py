"""trainers/loss_fractions.py: the logged f^p, Q_p/Q and count share against a float64 hand
computation, the declared early-window rule, and a tiny real run through the runner."""

import json

import keras
import numpy as np
import pytest

from trainers import catalog
from trainers import loss_fractions, runner

from tests import reference

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_fractions_row_matches_a_float64_hand_computation(float64_keras):
    """Softmax regression (closed-form per-example gradients, tests/reference.py):
    f^p = ⟨g, g^p⟩/⟨g, g⟩ and Q_p/Q = Σ_{i∈p} ‖g_i‖² / Σ_i ‖g_i‖², computed by hand."""
    x, y, w0, b0 = reference.problem(m=24, d=5, c=4, seed=2)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    model.layers[0].set_weights([w0, b0])
    pristine = np.random.default_rng(1).random(24) < 0.6
    gw, gb = reference.per_example_gradients(w0, b0, x, y)
    flat = np.concatenate([gw.reshape(24, -1), gb], axis=1)
    g, g_p = flat.sum(0), flat[pristine].sum(0)
    sq = np.sum(flat ** 2, axis=1)
    row = loss_fractions.fractions_row(model, x, y, pristine, SCCE)
    assert row["f_pristine"] == pytest.approx(g @ g_p / (g @ g), rel=1e-10)
    assert row["fp_null"] == pytest.approx(sq[pristine].sum() / sq.sum(), rel=1e-10)
    assert row["fp_minus_null"] == pytest.approx(row["f_pristine"] - row["fp_null"], abs=1e-15)
    assert row["count_share"] == pristine.mean()


def test_early_window_means_only_the_declared_steps():
    curves = {"step": [0, 1, 2, 3, 10], "epoch": [0, .1, .2, .3, 1],
              "f_pristine": [0.9, 0.8, 0.7, 0.1, 0.0], "fp_null": [0.5, 0.5, 0.6, 0.0, 0.0],
              "fp_minus_null": [0.4, 0.3, 0.1, 0.1, 0.0]}
    summary = loss_fractions.summarize(curves, (0, 2))
    assert summary["fp_early"] == pytest.approx(0.8)
    assert summary["null_early"] == pytest.approx(1.6 / 3)
    assert summary["fp_minus_null_early"] == pytest.approx(0.8 / 3)
    assert summary["fp_step0"] == 0.9 and summary["f_pristine"] == 0.0


def test_bad_window_and_noise_override_fail_in_one_line():
    with pytest.raises(ValueError, match=r"early_window=\(5, 80\) must be"):
        catalog.plan("loss_fractions", overrides={"early_window": (5, 80)})
    with pytest.raises(ValueError, match="label_noise is set by each arm"):
        catalog.plan("loss_fractions", overrides={"label_noise": 0.1})
    with pytest.raises(ValueError, match="train_size=205 must be a multiple of 10 for mnist1d"):
        catalog.plan("loss_fractions", overrides={"train_size": 205})   # was: at data loading
    with pytest.raises(ValueError, match="train_size=5000 must be <= 4000 for mnist5k"):
        catalog.plan("loss_fractions", overrides={"train_size": 5000})


def test_tiny_real_run_reports_the_declared_rule_per_noise_level(tmp_path):
    tiny = {"epochs": 1, "train_size": 200, "fraction_samples": 32, "every_step_until": 3,
            "early_window": (0, 2), "width": 16, "dataset": "mnist1d"}
    arms, experiment = catalog.plan("loss_fractions", seeds=2, overrides=tiny)
    summary = runner.run(experiment, arms, str(tmp_path), "test", echo=lambda line: None)
    result = json.loads((tmp_path / "mnist1d/noise50/seed1/results.json").read_text())
    assert result["curves"]["step"] == [0, 1, 2, 3, 4]  # every step to 3, then the epoch end (4)
    curves = result["curves"]
    np.testing.assert_allclose(result["summary"]["fp_minus_null_early"],
                               np.mean(np.subtract(curves["f_pristine"], curves["fp_null"])[:3]))
    assert [v["rule"] for v in summary["verdicts"]] == [
        f"mnist1d/noise{p}: pristine examples dominate early loss reduction beyond the null"
        for p in ("25", "50")]
    assert all(v["decided"] in (True, False) for v in summary["verdicts"])
    assert (tmp_path / runner.RESULTS_MD).exists()
    assert (tmp_path / "loss_fractions_vs_step.png").stat().st_size > 1000
