"""Null values: what a statistic would be if gradients carried no shared signal.

A claim such as "pristine examples drive the loss reduction" (2002.10657) compares a statistic with
its value under a gradient-blind null. The null must be right for the statistic:

| statistic | null | why |
|---|---|---|
| f^p = ⟨g, g^p⟩ / ⟨g, g⟩ (`coherence.loss_reduction_fractions`) | **Q_p / Q** (`fp_null`, `fp_null_of_model`), Q_p = Σ_{i pristine} ‖g_i‖², Q = Σ_i ‖g_i‖² | for pairwise orthogonal g_i, ⟨g, g^p⟩ = Σ_{i∈p} ‖g_i‖² and ⟨g, g⟩ = Q: f^p = Q_p/Q exactly |
| (the count share) | n_p / n (`count_share`) | equals Q_p/Q only if every ‖g_i‖² is the same; corrupted examples have larger losses and gradients, so Q_p/Q < n_p/n |
| fraction of labels changed by noise at rate p (`changed_fraction`) | uniform over C classes: (1 − 1/C)·p; "other", "pair", "isolated": p; "permute": p·(1 − Σ_k π_k²) | a uniformly redrawn label keeps its class with probability 1/C; a permuted one with probability Σ_k π_k² (π: class shares of the selected examples) |

So with 10 classes and p = 0.25 / 0.5 of "uniform" noise, the pristine count shares are
1 − 0.9·p = .775 / .55, not .75 / .50, and neither is f^p's null: Q_p/Q is.
"""

import numpy as np

from cgh_tf import coherence
from cgh_tf.data import LABEL_NOISE_KINDS


def fp_null(sq_norms, pristine_mask) -> float:
    """Q_p / Q: f^p of a sample whose per-example gradients are pairwise orthogonal.

    sq_norms: [m] per-example squared gradient norms ‖g_i‖²; pristine_mask: [m] booleans.
    NaN when Q = 0."""
    sq_norms = np.asarray(sq_norms, np.float64)
    if sq_norms.ndim != 1:
        raise ValueError(f"sq_norms must be a 1-D array [m]; got shape {sq_norms.shape}.")
    if (sq_norms < 0).any():
        raise ValueError("sq_norms must be non-negative (squared norms).")
    mask = coherence.checked_pristine_mask(pristine_mask, len(sq_norms))
    total = sq_norms.sum()
    return float(sq_norms[mask].sum() / total) if total > 0 else float("nan")


def fp_null_of_model(model, x, y, pristine_mask, loss=None, batch_size=None, training=False) -> float:
    """Q_p / Q of `model`'s per-example gradients on a sample (x, y arrays, as
    `coherence.loss_reduction_fractions`): the ‖g_i‖² come from the engine's fast rules."""
    mask = coherence.checked_pristine_mask(pristine_mask)
    sums = coherence.streamed_sums(model, x, y, loss, batch_size, training)
    return fp_null(sums.sq_norms, mask)


def count_share(pristine_mask) -> float:
    """n_p / n: the share of pristine examples (not f^p's null; see the module table)."""
    mask = coherence.checked_pristine_mask(pristine_mask)
    if not len(mask):
        raise ValueError("Empty sample: pristine_mask has no entries.")
    return float(mask.mean())


def changed_fraction(fraction, num_classes, kind="uniform", class_shares=None) -> float:
    """Expected fraction of labels that `data.corrupt_labels(..., fraction, num_classes, kind=kind)`
    changes (its `corrupted` mask), for large n.

    class_shares: [C] class shares π of the labels (needed for "permute" only)."""
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"unknown label noise kind {kind!r}; valid: {', '.join(map(repr, LABEL_NOISE_KINDS))}")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0 or int(num_classes) < 1:
        raise ValueError(f"fraction must be in [0, 1] and num_classes >= 1; got {fraction}, {num_classes}.")
    if class_shares is not None and kind != "permute":
        raise ValueError(f"class_shares is only used by kind='permute', not {kind!r}.")
    if kind == "uniform":
        return fraction * (1.0 - 1.0 / int(num_classes))
    if kind == "permute":
        if class_shares is None:
            raise ValueError("kind='permute' needs class_shares (the share of each class among the labels).")
        shares = np.asarray(class_shares, np.float64)
        if shares.ndim != 1 or (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
            raise ValueError("class_shares must be a 1-D array of non-negative shares summing to 1.")
        return fraction * (1.0 - float(np.sum(shares ** 2)))
    return fraction
