"""Rank correlation: midranks, Spearman's ρ, and partial Spearman controlling for a covariate, with
a confidence interval (float64 NumPy, no SciPy).

| function | returns |
|---|---|
| `midranks(values)` | [n] ranks 1..n, ties get the mean of the ranks they span |
| `spearman(x, y)` | Pearson correlation of the midranks |
| `partial_spearman(x, y, covariate, level)` | `Correlation(rho, low, high, n)`: ρ of x and y with the covariate's ranks partialled out, and its interval |

Partial correlation of the ranks (r = Pearson correlations of the midranks):
ρ_xy·z = (r_xy − r_xz r_yz) / √((1 − r_xz²)(1 − r_yz²)), the correlation of the residuals of
rank(x) and rank(y) regressed on rank(z). Interval: Fisher z, tanh(atanh ρ ± q·σ) with
σ = √(1.06 / (n − k − 3)), k = 1 covariate (Fieller, Hartley & Pearson 1957's variance of the
z-transformed Spearman ρ; n − k − 3 as for partial correlations), q the normal quantile of `level`.
"""

import math
import statistics
from typing import NamedTuple

import numpy as np


class Correlation(NamedTuple):
    """A correlation with its two-sided interval at the requested level, from n pairs."""

    rho: float
    low: float
    high: float
    n: int


def midranks(values) -> np.ndarray:
    """[n] float64 ranks 1..n of a 1-D array; tied values share the mean of their ranks."""
    values = np.asarray(values, np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D; got shape {values.shape}.")
    if np.isnan(values).any():
        raise ValueError("values contain NaN; ranks are undefined (drop those examples first).")
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else math.nan


def _checked(*arrays):
    arrays = [np.asarray(a, np.float64) for a in arrays]
    n = len(arrays[0])
    if any(a.ndim != 1 or len(a) != n for a in arrays):
        raise ValueError(f"x, y (and the covariate) must be 1-D arrays of equal length; got shapes "
                         f"{', '.join(str(a.shape) for a in arrays)}.")
    return arrays


def spearman(x, y) -> float:
    """Spearman's ρ: the Pearson correlation of the midranks of x and y (NaN if one is constant)."""
    x, y = _checked(x, y)
    return _pearson(midranks(x), midranks(y))


def partial_spearman(x, y, covariate, level=0.95) -> Correlation:
    """Spearman correlation of x and y controlling for `covariate` (module docstring), with its
    Fisher-z interval at `level`. Needs n ≥ 5 pairs (the interval's n − 4 > 0)."""
    x, y, z = _checked(x, y, covariate)
    n = len(x)
    if n < 5:
        raise ValueError(f"partial_spearman needs at least 5 pairs; got {n}.")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}.")
    rx, ry, rz = midranks(x), midranks(y), midranks(z)
    r_xy, r_xz, r_yz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    denominator = math.sqrt(max(0.0, (1 - r_xz ** 2) * (1 - r_yz ** 2)))
    rho = (r_xy - r_xz * r_yz) / denominator if denominator > 0 else math.nan
    if math.isnan(rho) or abs(rho) >= 1:
        return Correlation(rho, rho, rho, n)
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(1.06 / (n - 1 - 3))
    center = math.atanh(rho)
    return Correlation(rho, math.tanh(center - half), math.tanh(center + half), n)
