"""cgh_tf.nulls against hand computations: f^p's gradient-blind null Q_p/Q (exact for orthogonal
gradients), the count share, and the fraction of labels that noise really changes."""

import keras
import numpy as np
import pytest

from cgh_tf import coherence, data, nulls

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_fp_null_by_hand():
    assert nulls.fp_null([1.0, 2.0, 3.0, 4.0], [True, False, True, False]) == pytest.approx(4 / 10)
    assert nulls.fp_null([1.0, 3.0], [1, 0]) == pytest.approx(0.25)
    assert np.isnan(nulls.fp_null([0.0, 0.0], [True, False]))
    assert nulls.count_share([True, False, True, True]) == 0.75


def test_fp_equals_its_null_exactly_for_orthogonal_gradients(float64_keras):
    """One-hot inputs, no bias: g_i = e_i ⊗ (p_i − e_{y_i}) are pairwise orthogonal, so
    f^p = Σ_{i∈p} ‖g_i‖² / Σ_i ‖g_i‖²; by hand ‖g_i‖² = ‖p_i − e_{y_i}‖² (‖e_i‖ = 1)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, use_bias=False)])
    model.layers[0].kernel.assign(np.random.default_rng(0).normal(size=(6, 3)))
    model.compile(loss=SCCE)
    x, y = np.eye(6), np.array([0, 1, 2, 0, 1, 2])
    pristine = np.array([True, True, False, True, False, True])
    logits = x @ model.layers[0].kernel.numpy()
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    by_hand = np.sum((p - np.eye(3)[y]) ** 2, axis=1)
    f_p, _ = coherence.loss_reduction_fractions(model, x, y, pristine, batch_size=4)
    null = nulls.fp_null_of_model(model, x, y, pristine, batch_size=4)
    assert null == pytest.approx(by_hand[pristine].sum() / by_hand.sum(), rel=1e-12)
    assert f_p == pytest.approx(null, rel=1e-10)
    assert null != pytest.approx(nulls.count_share(pristine), rel=1e-3)  # not the count share


@pytest.mark.parametrize("kind,expected", [("uniform", 0.9 * 0.25), ("other", 0.25), ("pair", 0.25),
                                           ("isolated", 0.25)])
def test_changed_fraction_by_hand_and_against_corrupt_labels(kind, expected):
    assert nulls.changed_fraction(0.25, 10, kind) == pytest.approx(expected)
    labels = np.arange(40000) % 10
    _, corrupted = data.corrupt_labels(labels, 0.25, 10, seed=0, kind=kind)
    assert corrupted.mean() == pytest.approx(expected, abs=0.005)  # std ≈ 0.002


def test_uniform_noise_count_shares_are_775_and_55_percent():
    """The issue's numbers: 10 classes, 25 % / 50 % uniform noise leave .775 / .55 pristine."""
    pristine = [1 - nulls.changed_fraction(p, 10) for p in (0.25, 0.5)]
    assert pristine == pytest.approx([0.775, 0.55])


def test_permute_changed_fraction_uses_the_class_shares():
    shares = np.array([0.5, 0.3, 0.2])
    assert nulls.changed_fraction(0.4, 3, "permute", shares) == pytest.approx(0.4 * (1 - 0.38))
    labels = np.repeat([0, 1, 2], [20000, 12000, 8000])
    _, corrupted = data.corrupt_labels(labels, 0.4, 3, seed=1, kind="permute")
    assert corrupted.mean() == pytest.approx(0.4 * 0.62, abs=0.006)


def test_errors():
    with pytest.raises(ValueError, match="class_shares"):
        nulls.changed_fraction(0.4, 3, "permute")
    with pytest.raises(ValueError, match="only used"):
        nulls.changed_fraction(0.4, 3, "uniform", [0.5, 0.5])
    with pytest.raises(ValueError, match="unknown label noise kind"):
        nulls.changed_fraction(0.4, 3, "flip")
    with pytest.raises(ValueError, match="must match"):
        nulls.fp_null([1.0, 2.0], [True])
    with pytest.raises(ValueError, match="non-negative"):
        nulls.fp_null([-1.0, 2.0], [True, False])
    with pytest.raises(ValueError, match="booleans"):
        nulls.count_share([0, 2])
