"""Flagging mislabelled training examples: the detection scores of the noisy-label literature and
their evaluation against the known `corrupted` mask (`cgh_tf.data.corrupt_labels`).

| function | returns | reference |
|---|---|---|
| `auroc(scores, corrupted)` | P(score of a corrupted example > score of a clean one), ties counting ½ | Mann–Whitney U / (n_c · n_p) |
| `small_loss_flags(losses, noise_rate)` | [n] bool: the round(noise_rate · n) largest losses flagged | the small-loss rule (Co-teaching, Han et al. 2018): small-loss examples are deemed clean |
| `forgetting_counts(correct)` | [n] number of correct → incorrect transitions over epochs; never-learned examples +inf | Toneva et al. 2019 |

Convention: a higher score means "more likely mislabelled". For the loss, use the loss; for the
per-example alignment a_i (`cgh_tf.coherence.alignment`), whose *low* values mark unsupported
examples, use −a_i.
"""

import numpy as np

from cgh_tf.rank_correlation import midranks


def _mask(corrupted, n):
    mask = np.asarray(corrupted)
    if mask.ndim != 1 or len(mask) != n or not (mask.dtype == bool or np.isin(mask, (0, 1)).all()):
        raise ValueError(f"corrupted must be a 1-D boolean array with one entry per score ({n}).")
    return mask.astype(bool)


def auroc(scores, corrupted) -> float:
    """Area under the ROC curve of `scores` for separating corrupted (True) from clean examples.

    scores: [n] float (higher = more likely corrupted; NaN not allowed); corrupted: [n] bool.
    Equal scores count ½ per (corrupted, clean) pair (midranks). 0.5 = chance, 1 = perfect."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array; got shape {scores.shape}.")
    mask = _mask(corrupted, len(scores))
    n_corrupted, n_clean = int(mask.sum()), int((~mask).sum())
    if n_corrupted == 0 or n_clean == 0:
        raise ValueError(f"auroc needs corrupted and clean examples; got {n_corrupted} corrupted and "
                         f"{n_clean} clean.")
    ranks = midranks(scores)
    u = ranks[mask].sum() - n_corrupted * (n_corrupted + 1) / 2
    return float(u / (n_corrupted * n_clean))


def small_loss_flags(losses, noise_rate) -> np.ndarray:
    """[n] bool: the round(noise_rate · n) examples with the largest losses, flagged as corrupted
    (the rest, the small-loss examples, deemed clean). Equal losses: the later example first."""
    losses = np.asarray(losses, np.float64)
    if losses.ndim != 1 or np.isnan(losses).any():
        raise ValueError("losses must be a 1-D array without NaN.")
    if not 0.0 <= float(noise_rate) <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1]; got {noise_rate}.")
    count = int(np.floor(float(noise_rate) * len(losses) + 0.5))
    flags = np.zeros(len(losses), bool)
    if count:
        flags[np.argsort(losses, kind="mergesort")[len(losses) - count:]] = True
    return flags


def forgetting_counts(correct) -> np.ndarray:
    """[n] float: forgetting events per example from its correctness after each epoch.

    correct: [epochs, n] bool (example i classified correctly, against its training label, after
    epoch t). A forgetting event is correct at t and incorrect at t + 1. Examples never correct get
    +inf (Toneva et al.: never learned ranks above every forgotten one)."""
    correct = np.asarray(correct)
    if correct.ndim != 2 or not (correct.dtype == bool or np.isin(correct, (0, 1)).all()):
        raise ValueError("correct must be a [epochs, n] boolean array.")
    correct = correct.astype(bool)
    counts = np.sum(correct[:-1] & ~correct[1:], axis=0).astype(np.float64)
    counts[~correct.any(axis=0)] = np.inf
    return counts
