"""One-line errors for a sample that cannot give finite per-example gradients (`coherence.measure`).

| check                | when                                                     | message names                      |
|----------------------|----------------------------------------------------------|------------------------------------|
| NaN / Inf in x or y  | any floating input or target                              | the examples (first 5) and how many |
| NaN / Inf in ℓ_i, ‖g_i‖² | after the first pass of `alignment` (x, y finite: the model made them) | the examples |
| label out of range   | integer labels with a sparse categorical cross-entropy (the given or compiled loss) | the examples, their labels, the range [0, K) of the model's K outputs (K = 1: {0, 1}) |

Arrays are checked whole before any gradient is computed; a `tf.data.Dataset` is checked batch by
batch as it streams (example numbers count from its first element), so nothing is read twice.
"""

import keras
import numpy as np
import tensorflow as tf

_SHOWN = 5


def checked_batches(model, loss, x, y, batches, where="coherence.measure()"):
    """`batches` (an iterator of (x, y) batches of the sample `x`, `y`) after the checks of the
    module table: at once for arrays, per batch for a `tf.data.Dataset`. ValueError (one line)."""
    if not isinstance(x, tf.data.Dataset):
        if _well_formed(x, y):  # else `batches` says what is wrong with the shapes
            check_examples(x, y, _sparse_classes(model, loss, x), where=where)
        return batches
    return _checked_stream(batches, _sparse_classes(model, loss, x), where)


def _well_formed(x, y) -> bool:
    """True when `y` and every array of `x` have the same positive number of examples."""
    if y is None or any(np.ndim(v) == 0 for v in tf.nest.flatten(y)):
        return False
    m = len(tf.nest.flatten(y)[0])
    return m > 0 and all(np.ndim(v) > 0 and len(v) == m
                         for v in tf.nest.flatten(x) + tf.nest.flatten(y))


def check_examples(x, y, classes=None, first=0, where="coherence.measure()") -> None:
    """ValueError (one line) if `x` (array or nest of arrays, [m, ...]) or `y` has a NaN / Inf,
    or (`classes` K given) an integer label of `y` is outside [0, K) ([0, 1] for K = 1).
    Example numbers in the message start at `first`."""
    bad = np.zeros(len(tf.nest.flatten(y)[0]), bool)
    for values in tf.nest.flatten(x) + tf.nest.flatten(y):
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.inexact):
            bad |= ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{where}: NaN or Inf in {_examples(np.flatnonzero(bad), first)} "
                         f"({bad.sum()} of {len(bad)}); their per-example gradients are not "
                         f"finite: remove or repair them")
    if classes is None or len(tf.nest.flatten(y)) != 1:  # several outputs: no single label range
        return
    labels = np.asarray(tf.nest.flatten(y)[0])
    if not np.issubdtype(labels.dtype, np.integer):
        return
    high = max(int(classes), 2)
    outside = np.flatnonzero((labels.reshape(len(labels), -1) < 0).any(axis=1)
                             | (labels.reshape(len(labels), -1) >= high).any(axis=1))
    if outside.size:
        shown = ", ".join(f"example {first + i} (label {labels[i].tolist()})"
                          for i in outside[:_SHOWN])
        more = f" and {outside.size - _SHOWN} more" if outside.size > _SHOWN else ""
        raise ValueError(f"{where}: labels outside [0, {high}) (the model has {classes} "
                         f"output{'s' if classes != 1 else ''}): {shown}{more}")


def check_finite_results(losses, sq_norms, where="coherence.alignment()") -> None:
    """ValueError (one line) naming the examples whose loss ℓ_i or squared gradient norm ‖g_i‖²
    ([m] each, in sample order) is NaN or Inf although x and y are finite: the model made them
    (e.g. Keras' masked average over an all-padded sequence is 0/0, its batch loss too)."""
    bad = ~(np.isfinite(losses) & np.isfinite(sq_norms))
    if bad.any():
        raise ValueError(f"{where}: the loss or gradient of {_examples(np.flatnonzero(bad), 0)} "
                         f"({bad.sum()} of {len(bad)}) is not finite, so S = Σ g_i and every "
                         "example's alignment are undefined (Keras' loss of the batch is not "
                         "finite either; e.g. a masked average over an all-padded sequence)")


def _checked_stream(batches, classes, where):
    first = 0
    for batch in batches:  # (x, y, ...): only x and y are checked, the batch is passed on whole
        xb, yb = tf.nest.map_structure(np.asarray, tuple(batch[:2]))
        check_examples(xb, yb, classes, first, where)
        first += len(tf.nest.flatten(yb)[0])
        yield batch


def _examples(indices, first) -> str:
    shown = ", ".join(str(first + i) for i in indices[:_SHOWN])
    more = f", ... ({len(indices) - _SHOWN} more)" if len(indices) > _SHOWN else ""
    return f"example{'s' if len(indices) > 1 else ''} {shown}{more}"


def _sparse_classes(model, loss, x):
    """K, the model's outputs, when the loss (given, else compiled) is a sparse categorical
    cross-entropy and the model's output shape is known (built, or `x` an array to build it on
    one example); else None (no label range to check)."""
    loss = getattr(model, "loss", None) if loss is None else loss
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    sparse = (isinstance(loss, keras.losses.SparseCategoricalCrossentropy)
              or loss is keras.losses.sparse_categorical_crossentropy)
    if not sparse:
        return None
    outputs = getattr(model, "outputs", None)
    if outputs and outputs[0].shape[-1] is not None:
        return int(outputs[0].shape[-1])
    if isinstance(x, tf.data.Dataset):
        return None
    one = tf.nest.map_structure(lambda v: np.asarray(v)[:1], x)
    return int(model(one, training=False).shape[-1])
