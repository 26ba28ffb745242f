"""Noisy-label detection scores and rank correlations against hand computations and brute force."""

import math

import numpy as np
import pytest

from cgh_tf import noisy_labels, rank_correlation


def brute_force_auroc(scores, corrupted):
    """Σ over (corrupted, clean) pairs of [s_c > s_p] + ½[s_c = s_p], / number of pairs."""
    pos, neg = scores[corrupted], scores[~corrupted]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auroc_by_hand_with_ties():
    assert noisy_labels.auroc([0.1, 0.4, 0.35, 0.8], [False, True, False, True]) == 1.0
    assert noisy_labels.auroc([0.1, 0.4, 0.35, 0.8], [True, False, True, False]) == 0.0
    # corrupted {1, 3} vs clean {1, 2}: ½ + 0 + 1 + 1 = 2.5 of 4 pairs
    assert noisy_labels.auroc([1, 1, 2, 3], [True, False, False, True]) == pytest.approx(0.625)
    assert noisy_labels.auroc([5.0, 5.0, 5.0], [True, False, False]) == pytest.approx(0.5)


def test_auroc_matches_brute_force_on_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 300).astype(float)  # heavy ties
    scores[:5] = np.inf  # never-learned forgetting counts
    corrupted = rng.random(300) < 0.3
    assert noisy_labels.auroc(scores, corrupted) == pytest.approx(brute_force_auroc(scores, corrupted),
                                                                  rel=1e-12)


def test_small_loss_flags_by_hand():
    flags = noisy_labels.small_loss_flags([0.1, 2.0, 0.5, 3.0, 0.2], 0.4)
    assert flags.tolist() == [False, True, False, True, False]
    assert not noisy_labels.small_loss_flags([1.0, 2.0], 0.0).any()
    assert noisy_labels.small_loss_flags([1.0, 2.0], 1.0).all()


def test_forgetting_counts_by_hand():
    correct = np.array([[1, 0, 1, 0],
                        [0, 0, 1, 1],
                        [1, 0, 0, 1]], bool)  # epochs × examples
    counts = noisy_labels.forgetting_counts(correct)
    assert counts.tolist() == [1.0, math.inf, 1.0, 0.0]


def test_midranks_by_hand():
    np.testing.assert_array_equal(rank_correlation.midranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


def residual_correlation(x, y, z):
    """Partial correlation the long way: correlate the least-squares residuals of rank(x) and
    rank(y) regressed on (1, rank(z))."""
    rx, ry, rz = (rank_correlation.midranks(v) for v in (x, y, z))
    design = np.stack([np.ones_like(rz), rz], axis=1)
    res = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in (rx, ry)]
    return float(res[0] @ res[1] / np.sqrt((res[0] @ res[0]) * (res[1] @ res[1])))


def test_partial_spearman_equals_the_residual_correlation_and_its_interval():
    rng = np.random.default_rng(1)
    z = rng.normal(size=200)
    x = z + 0.5 * rng.normal(size=200)
    y = z + 0.3 * x + rng.normal(size=200)
    got = rank_correlation.partial_spearman(x, y, z)
    assert got.rho == pytest.approx(residual_correlation(x, y, z), rel=1e-10)
    half = 1.959963984540054 * math.sqrt(1.06 / (200 - 4))
    assert got.low == pytest.approx(math.tanh(math.atanh(got.rho) - half), rel=1e-12)
    assert got.high == pytest.approx(math.tanh(math.atanh(got.rho) + half), rel=1e-12)
    assert got.n == 200 and got.low < got.rho < got.high


def test_partial_spearman_removes_a_shared_cause():
    """x and y both driven by z only: Spearman is high, partial Spearman's interval covers 0."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=400)
    x, y = z + 0.3 * rng.normal(size=400), z + 0.3 * rng.normal(size=400)
    assert rank_correlation.spearman(x, y) > 0.8
    got = rank_correlation.partial_spearman(x, y, z)
    assert got.low < 0 < got.high


def test_errors():
    with pytest.raises(ValueError, match="corrupted and clean"):
        noisy_labels.auroc([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="one entry per score"):
        noisy_labels.auroc([1.0, 2.0], [True])
    with pytest.raises(ValueError, match="NaN"):
        noisy_labels.auroc([1.0, np.nan], [True, False])
    with pytest.raises(ValueError, match="noise_rate"):
        noisy_labels.small_loss_flags([1.0], 1.5)
    with pytest.raises(ValueError, match="epochs, n"):
        noisy_labels.forgetting_counts([1, 0, 1])
    with pytest.raises(ValueError, match="at least 5"):
        rank_correlation.partial_spearman([1, 2, 3], [1, 2, 3], [3, 2, 1])
    with pytest.raises(ValueError, match="equal length"):
        rank_correlation.partial_spearman([1, 2, 3, 4, 5], [1, 2, 3, 4], [1, 2, 3, 4, 5])
