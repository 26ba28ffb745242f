"""A sample of any size as batches for compiled per-batch computations, with few host round trips.

`measure` and `alignment` (cgh_tf/coherence.py, cgh_tf/alignment.py) stream a sample batch by batch
so that memory stays O(parameters + batch). Calling a compiled function once per batch from Python
costs a host round trip (argument conversion, dispatch) per batch, which on a small model costs as
much as the batch's computation. So in-memory arrays come as **blocks**: k full batches stacked on a
leading axis, [k, B, ...], that one compiled call runs through in a `tf.while_loop`
(`over_stacked_batches`); only the remainder (fewer than B examples) and `tf.data.Dataset` batches
come one by one.

| function | yields / returns |
|---|---|
| `batches(x, y, batch_size, extra)` | (x, y[, extra]) batches of arrays or of a Dataset of (x, y) batches, validated |
| `blocks(x, y, batch_size)` | `Block`s: `stacked` [k, B, ...] of full batches, else one batch [b, ...] |
| `over_stacked_batches(fn, xs, ys, first, dtypes)` | inside `tf.function`: `fn(x, y, first)` on each [B, ...] slice; outputs stacked [k, ...] |

A block holds at most about `BLOCK_ELEMENTS` input values (memory: one extra copy of that much of
x as a tensor), and at least one batch.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

DEFAULT_BATCH_SIZE = 256
BLOCK_ELEMENTS = 1 << 24  # input values per stacked block (64 MB of float32)


class Block(NamedTuple):
    """x, y: [k, B, ...] (k full batches) when `stacked`, else one batch [b, ...]."""

    x: object
    y: object
    stacked: bool


def _check_arrays(x, y, batch_size, extra):
    """(x, y, m, batch size) validated: arrays with matching example counts, positive batch size."""
    if y is None:
        raise ValueError("y is required when x is an array.")
    x = tf.nest.map_structure(np.asarray, x)
    y = np.asarray(y)
    m = len(tf.nest.flatten(x)[0])
    if len(y) != m:
        raise ValueError(f"x has {m} examples but y has {len(y)}; they must match.")
    if extra is not None and len(extra) != m:
        raise ValueError(f"x has {m} examples but the mask has {len(extra)}; they must match.")
    if m == 0:
        raise ValueError("Empty sample: x and y have no examples.")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}.")
    return x, y, m, batch_size


def _dataset_batches(dataset, y, batch_size, extra):
    if y is not None or batch_size is not None:
        raise ValueError("With a tf.data.Dataset of (x, y) batches, pass y=None and batch_size=None.")
    if extra is not None:
        raise ValueError("Pass the per-example mask as arrays (x, y, mask), not with a Dataset.")
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("The dataset must yield (x, y) batches.")
        yield batch[0], batch[1]


def batches(x, y, batch_size, extra=None):
    """Yields (x, y[, extra]) batches from arrays (validated before the first batch) or from a
    `tf.data.Dataset` of (x, y) batches (then y=None, batch_size=None, extra=None)."""
    if isinstance(x, tf.data.Dataset):
        yield from _dataset_batches(x, y, batch_size, extra)
        return
    x, y, m, batch_size = _check_arrays(x, y, batch_size, extra)
    for start in range(0, m, batch_size):
        part = slice(start, start + batch_size)
        batch = (tf.nest.map_structure(lambda t: t[part], x), y[part])
        yield batch if extra is None else batch + (extra[part],)


def blocks(x, y, batch_size):
    """Yields `Block`s covering the sample in order: stacked full batches, then the remainder.

    Arrays are validated before anything is yielded; a Dataset yields its batches one by one."""
    if isinstance(x, tf.data.Dataset):
        for xb, yb in _dataset_batches(x, y, batch_size, None):
            yield Block(xb, yb, stacked=False)
        return
    x, y, m, batch_size = _check_arrays(x, y, batch_size, None)
    per_example = sum(int(np.prod(t.shape[1:])) for t in tf.nest.flatten(x))
    per_block = max(1, BLOCK_ELEMENTS // max(1, per_example * batch_size))  # batches per block
    full = m // batch_size
    for first in range(0, full, per_block):
        k = min(per_block, full - first)
        part = slice(first * batch_size, (first + k) * batch_size)
        stack = lambda t: t[part].reshape((k, batch_size) + t.shape[1:])  # noqa: E731
        yield Block(tf.nest.map_structure(stack, x), stack(y), stacked=True)
    if full * batch_size < m:
        rest = slice(full * batch_size, m)
        yield Block(tf.nest.map_structure(lambda t: t[rest], x), y[rest], stacked=False)


def over_stacked_batches(fn, xs, ys, first, dtypes):
    """Runs `fn(x, y, first_i)` on every batch of a stacked block, in order, in one graph loop.

    Call inside a `tf.function`. xs: [k, B, ...] (or a nest of them), ys: [k, B, ...]; `first` (bool
    tensor) is passed on to the first batch only (False to the others). `fn` returns a tuple of
    tensors of the given `dtypes`; the result is the tuple of their stacks over the k batches
    ([k, ...] each).
    """
    k = tf.shape(ys)[0]
    first = tf.convert_to_tensor(first, tf.bool)
    arrays = tuple(tf.TensorArray(dtype, size=k) for dtype in dtypes)

    def body(i, arrays):
        xb = tf.nest.map_structure(lambda t: t[i], xs)
        outputs = fn(xb, ys[i], tf.logical_and(first, tf.equal(i, 0)))
        return i + 1, tuple(a.write(i, o) for a, o in zip(arrays, outputs))

    _, arrays = tf.while_loop(lambda i, _: i < k, body, (tf.constant(0), arrays))
    return tuple(a.stack() for a in arrays)
