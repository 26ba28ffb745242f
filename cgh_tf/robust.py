"""Robust reductions of stacked gradients: medians and winsorized means (pure TensorFlow math).

Every function reduces a tensor `values` of shape `[k, *shape]` (k candidates per coordinate, e.g.
k group-mean gradients or k per-example gradients) along `axis` (default 0) to one tensor of the
remaining shape, coordinate by coordinate. `k` must be known statically (it always is: it is the
number of groups, the window length or the batch size).

| function                                  | result per coordinate                         | NumPy twin                                     |
|-------------------------------------------|-----------------------------------------------|------------------------------------------------|
| `median3(a, b, c)`                        | median of three, 4 min/max ops, branch-free   | `np.median(np.stack([a, b, c]), 0)`            |
| `median(values, axis=0)`                  | median; even k: mean of the two middle values | `np.median(values, axis)`                      |
| `median_of(list)`, `fused_medians(lists)` | median of k same-shaped tensors (fused: one XLA launch for all lists) | `np.median(np.stack(list), 0)`                 |
| `mean(values, axis=0)`                    | arithmetic mean (RA3, the control)            | `np.mean(values, axis)`                        |
| `percentile_nearest(values, q, axis=0)`   | q-th percentile, nearest rank                 | `np.percentile(values, q, axis, method="nearest")` |
| `winsorized_mean(values, pct, axis=0)`    | mean after clipping to the pct-th and         | clip to the two percentiles above, then mean   |
|                                           | (100 - pct)-th percentile (ICLR 2020)         |                                                |
| `winsorized_mean_of_outer_products(a, b, | the same for values a_i ⊗ b_i, never          | `winsorized_mean(einsum("mi,mo->mio", a, b))`  |
| pct)`                                     | materialised (XLA sorting network, small k)   |                                                |

No Keras import: these are used inside optimizers and train steps, eagerly, in `tf.function` and
under XLA. Inputs must be finite (callers skip non-finite gradients; see `cgh_tf.optimizers`).
"""

from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf


def nonfinite_marker(tensors: Iterable[tf.Tensor | None]) -> tf.Tensor:
    """float32 scalar: 0 if no tensor (None ignored) has a NaN or Inf entry, else NaN.

    sum(t * 0) per tensor: one fused multiply-reduce, about half the cost of
    reduce_all(is_finite(t)), and unlike sum(t) it cannot overflow. Adding the marker to a
    result makes the result non-finite exactly when an input was."""
    zeros = [tf.cast(tf.reduce_sum(t * tf.zeros([], t.dtype)), tf.float32)
             for t in tensors if t is not None]
    return tf.add_n(zeros) if zeros else tf.constant(0.0)


def all_finite(tensors: Iterable[tf.Tensor | None]) -> tf.Tensor:
    """Bool scalar: no tensor (None ignored) has a NaN or Inf entry (`nonfinite_marker`)."""
    return tf.math.is_finite(nonfinite_marker(tensors))


def median3(a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """Coordinate-wise median of three tensors of the same shape and dtype.

    med(a, b, c) = max(min(a, b), min(max(a, b), c)): exact (returns one of the inputs), no sort,
    no branches, so it vectorises and compiles with XLA.
    """
    return tf.maximum(tf.minimum(a, b), tf.minimum(tf.maximum(a, b), c))


def _static_size(values, axis):
    size = values.shape[axis]
    if size is None:
        raise ValueError(
            f"The reduced axis {axis} of a tensor of shape {values.shape} must have a static "
            "size (the number of groups / window / batch size)."
        )
    return int(size)


def _sorted_along(values, axis):
    return tf.sort(values, axis=axis)


def median(values: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """Coordinate-wise median of `values` along `axis`, exactly as `np.median`.

    Args:
        values: float tensor `[..., k, ...]` with k (the size of `axis`) static and >= 1.
        axis: the axis holding the k candidates.

    Returns:
        Tensor with `axis` removed. k = 3 uses `median3` (min/max only); k = 2 is the mean of the
        two; other k sort along `axis` and take the middle value (odd k) or the mean of the two
        middle values (even k).
    """
    values = tf.convert_to_tensor(values)
    k = _static_size(values, axis)
    if k == 1:
        return tf.squeeze(values, axis=axis)
    if k == 3:
        a, b, c = tf.unstack(values, num=3, axis=axis)
        return median3(a, b, c)
    if k == 2:
        a, b = tf.unstack(values, num=2, axis=axis)
        return (a + b) / 2
    ordered = _sorted_along(values, axis)
    middle = tf.gather(ordered, k // 2, axis=axis)
    if k % 2 == 1:
        return middle
    lower = tf.gather(ordered, k // 2 - 1, axis=axis)
    return (lower + middle) / 2


def median_of(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Median of a Python list of k same-shaped tensors (k static), without stacking for k <= 3."""
    tensors = list(tensors)
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) == 2:
        return (tensors[0] + tensors[1]) / 2
    if len(tensors) == 3:
        return median3(*tensors)
    return median(tf.stack(tensors), axis=0)


@tf.function(jit_compile=True, autograph=False)  # no control flow: nothing to convert
def fused_medians(lists: Sequence[Sequence[tf.Tensor]]) -> list[tf.Tensor]:
    """`[median_of(tensors) for tensors in lists]` in one XLA computation: one launch for every
    variable of a model, each median one fused pass over its k inputs instead of 4 kernels.

    Used by the optimizers on the hot path; inside an XLA-compiled train step it is inlined.
    """
    return [median_of(tensors) for tensors in lists]


def means(lists: Sequence[Sequence[tf.Tensor]]) -> list[tf.Tensor]:
    """`[mean_of(tensors) for tensors in lists]` (the RA3 control of `fused_medians`)."""
    return [mean_of(tensors) for tensors in lists]


def mean(values: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """Coordinate-wise arithmetic mean along `axis` (the RA3 control)."""
    return tf.reduce_mean(values, axis=axis)


def mean_of(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Mean of a Python list of same-shaped tensors."""
    tensors = list(tensors)
    return tf.add_n(tensors) / len(tensors)


def _nearest_rank(k, q):
    """0-based rank (ascending) that `np.percentile(..., q, method="nearest")` picks among k values.

    NumPy rounds the virtual index (k - 1) * q / 100 half to even; `np.round` and `tf.round` do the
    same, in float64 as NumPy. k: a Python int (-> int) or an int32 scalar tensor, possibly dynamic
    (-> int32 tensor); q: Python float in [0, 100].
    """
    if isinstance(k, int):
        return int(np.round((k - 1) * (q / 100.0)))
    index = tf.cast(k - 1, tf.float64) * (q / 100.0)
    return tf.cast(tf.round(index), tf.int32)


def _check_winsorize_pct(pct):
    if not 0.0 <= float(pct) < 50.0:
        raise ValueError(f"`pct` must be in [0, 50) (percent clipped on each side); got {pct}.")


def _check_percentiles(qs):
    for q in qs:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"Percentiles must be in [0, 100]; got {q}.")


def _order_statistic(last, rank, k):
    """The `rank`-th smallest (0-based) of the k values on the last axis of `last`: [..., k] -> [...].

    Uses `top_k` from whichever end is nearer, so the c-th percentile costs O(k log c) per
    coordinate instead of a full sort.
    """
    def from_bottom():
        return -tf.math.top_k(-last, rank + 1, sorted=True).values[..., -1]

    def from_top():
        return tf.math.top_k(last, k - rank, sorted=True).values[..., -1]

    return tf.cond(2 * rank < k, from_bottom, from_top)


def percentile_nearest(values: tf.Tensor, q: float | Sequence[float], axis: int = 0) -> tf.Tensor:
    """Coordinate-wise q-th percentile(s) of `values` along `axis` with the nearest-rank rule.

    Identical to `np.percentile(values, q, axis=axis, method="nearest")`.

    Args:
        values: tensor `[..., k, ...]`; k may be unknown while tracing (e.g. a last partial batch).
        q: a number in [0, 100] or a list of them.
        axis: axis holding the k candidates.

    Returns:
        For scalar q: tensor with `axis` removed. For a list of n percentiles: tensor `[n, ...]`
        (percentiles first, as NumPy).
    """
    values = tf.convert_to_tensor(values)
    scalar = np.ndim(q) == 0
    qs = [float(x) for x in np.atleast_1d(q)]
    _check_percentiles(qs)
    axis = axis % values.shape.rank
    last = tf.experimental.numpy.moveaxis(values, axis, -1)
    k = tf.shape(last)[-1]
    picked = [_order_statistic(last, _nearest_rank(k, q), k) for q in qs]
    return picked[0] if scalar else tf.stack(picked)


def winsorized_mean(values: tf.Tensor, pct: float, axis: int = 0) -> tf.Tensor:
    """Coordinate-wise winsorized mean (ICLR 2020 "winsorized gradient descent").

    For each coordinate the k values along `axis` are clipped to their `pct`-th and
    `(100 - pct)`-th percentile (nearest rank, as
    `np.percentile(values, [pct, 100 - pct], axis, method="nearest")`) and then averaged.
    `pct = 0` is the plain mean.

    Args:
        values: float tensor `[..., k, ...]` (e.g. k per-example gradients); k may be dynamic.
        pct: percentage clipped on each side, in [0, 50). At k = 100 exactly `pct` values are
            clipped on each side; at other k the bounds are the values of nearest rank
            round((k - 1) * pct / 100) and its mirror, so round((k - 1) * pct / 100) values
            (ties aside) are clipped on each side.
        axis: axis holding the k values.

    Returns:
        Tensor with `axis` removed.

    Raises:
        ValueError: if pct is outside [0, 50).
    """
    _check_winsorize_pct(pct)
    values = tf.convert_to_tensor(values)
    if float(pct) == 0.0:
        return tf.reduce_mean(values, axis=axis)
    bounds = percentile_nearest(values, [float(pct), 100.0 - float(pct)], axis=axis)
    lower = tf.expand_dims(bounds[0], axis)
    upper = tf.expand_dims(bounds[1], axis)
    return tf.reduce_mean(tf.clip_by_value(values, lower, upper), axis=axis)


# Largest sorting network compiled by `winsorized_mean_of_outer_products`, in (examples × order
# statistics kept per coordinate). XLA's compile time and memory grow fast beyond it (at 1,800 the
# compiler ran out of 24 GB here); 1,024 compiles in ≈ 9 s for a 784×512 kernel.
MAX_NETWORK_SIZE = 1024


def winsorized_mean_of_outer_products(a: tf.Tensor, b: tf.Tensor, pct: float) -> tf.Tensor:
    """Winsorized mean over i of the outer products a_i ⊗ b_i, e.g. the per-example gradients of a
    Dense kernel (a: layer inputs, b: output gradients), without materialising them.

    Equals `winsorized_mean(tf.einsum("mi,mo->mio", a, b), pct, axis=0)`. An XLA-compiled network
    keeps, per coordinate, the values beyond the two nearest-rank bounds (insertion into sorted
    lists: only max / min, exact), then averages the clipped values; XLA fuses the outer products
    into it, so one pass reads only a and b.

    Args:
        a: [m, p]; b: [m, q], same float dtype; m must be known while tracing.
        pct: percentage clipped on each side, in [0, 50).

    Returns:
        [p, q], or None when m is not static or m × (values kept) exceeds `MAX_NETWORK_SIZE`
        (callers then use `winsorized_mean` on blocks of the materialised products).
    """
    _check_winsorize_pct(pct)
    m = a.shape[0]
    if m is None:
        return None
    if float(pct) == 0.0:
        return tf.matmul(a, b, transpose_a=True) / m
    low, high = _nearest_rank(m, float(pct)), _nearest_rank(m, 100.0 - float(pct))
    if m * (low + 1 + m - high) > MAX_NETWORK_SIZE:
        return None
    return _outer_products_network(a, b, low, high)


def _insert_descending(kept, value):
    """Inserts `value` into the descending list `kept` of tensors, dropping the smallest."""
    out = []
    for largest in kept:
        out.append(tf.maximum(largest, value))
        value = tf.minimum(largest, value)
    return out


@tf.function(jit_compile=True)
def _outer_products_network(a, b, low, high):
    """Clip a_i ⊗ b_i to its `low`-th and `high`-th smallest (0-based) over i, then average."""
    m = a.shape[0]

    def product(i):
        return a[i][:, None] * b[i][None, :]

    smallest = tf.fill([a.shape[1], b.shape[1]], tf.constant(-np.inf, a.dtype))
    top, negated_bottom = [smallest] * (m - high), [smallest] * (low + 1)
    for i in range(m):
        value = product(i)
        top = _insert_descending(top, value)
        negated_bottom = _insert_descending(negated_bottom, -value)
    lower, upper = -negated_bottom[-1], top[-1]
    total = tf.zeros_like(lower)
    for i in range(m):
        total += tf.clip_by_value(product(i), lower, upper)
    return total / m

