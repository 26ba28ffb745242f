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
| `batches(x, y, batch_size, extra, sample_weight)` | (x, y, w[, extra]) batches of arrays or of a Dataset of (x, y[, w]) batches, validated |
| `blocks(x, y, batch_size, sample_weight)` | `Block`s: `stacked` [k, B, ...] of full batches, else one batch [b, ...] |
| `over_stacked_batches(fn, (xs, ys, ws), dtypes)` | inside `tf.function`: `fn(x, y, w)` on each [B, ...] slice; outputs stacked [k, ...] |
| `PerRankFunction(fn)` | the compiled per-batch function: one `tf.function` per argument structure, dtypes and ranks |

A block holds at most about `BLOCK_ELEMENTS` input values (memory: one extra copy of that much of
x as a tensor), and at least one batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from cgh_tf.api_types import Array, Inputs, Nest

DEFAULT_BATCH_SIZE = 256
BLOCK_ELEMENTS = 1 << 24  # input values per stacked block (64 MB of float32)


class Block(NamedTuple):
    """x, y, w (sample weights or None), each a nest: [k, B, ...] (k full batches) when `stacked`,
    else one batch [b, ...]."""

    x: object
    y: object
    w: object
    stacked: bool


def _examples(structure):
    return len(tf.nest.flatten(structure)[0])


def _slice(structure, part):
    return tf.nest.map_structure(lambda t: None if t is None else t[part], structure)


def _check_arrays(x, y, batch_size, extra, sample_weight):
    """(x, y, sample weights, m, batch size) validated: arrays (nests) with matching example
    counts, a positive batch size."""
    if y is None:
        raise ValueError("y is required when x is an array.")
    x, y = tf.nest.map_structure(np.asarray, x), tf.nest.map_structure(np.asarray, y)
    m = _examples(x)
    for name, part in (("y", y), ("the mask", extra), ("sample_weight", sample_weight)):
        if part is not None and _examples(part) != m:
            raise ValueError(f"x has {m} examples but {name} has {_examples(part)}; they must match.")
    if sample_weight is not None:
        sample_weight = tf.nest.map_structure(np.asarray, sample_weight)
    if m == 0:
        raise ValueError("Empty sample: x and y have no examples.")
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}.")
    return x, y, sample_weight, m, batch_size


def _dataset_batches(dataset, y, batch_size, extra, sample_weight):
    """(x, y, sample weights or None) of a Dataset of (x, y) or (x, y, sample weights) batches."""
    if y is not None or batch_size is not None:
        raise ValueError("With a tf.data.Dataset of (x, y) batches, pass y=None and batch_size=None.")
    if extra is not None or sample_weight is not None:
        raise ValueError("With a tf.data.Dataset, put the sample weights in its (x, y, sample "
                         "weights) batches and pass the per-example mask as arrays (x, y, mask).")
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError("The dataset must yield (x, y) or (x, y, sample weights) batches.")
        yield batch[0], batch[1], batch[2] if len(batch) == 3 else None


def batches(x: Inputs, y: Nest | None, batch_size: int | None, extra: Array | None = None,
            sample_weight: Array | None = None) -> Iterator[tuple]:
    """Yields (x, y, sample weights or None[, extra]) batches from arrays (validated before the
    first batch; y, sample weights: arrays or nests, one per output) or from a `tf.data.Dataset`
    of (x, y[, sample weights]) batches (then y=None, batch_size=None, extra=None)."""
    if isinstance(x, tf.data.Dataset):
        yield from _dataset_batches(x, y, batch_size, extra, sample_weight)
        return
    x, y, sample_weight, m, batch_size = _check_arrays(x, y, batch_size, extra, sample_weight)
    for start in range(0, m, batch_size):
        batch = _slice((x, y, sample_weight), slice(start, start + batch_size))
        yield batch if extra is None else batch + (extra[start:start + batch_size],)


def blocks(x: Inputs, y: Nest | None, batch_size: int | None,
           sample_weight: Array | None = None) -> Iterator[Block]:
    """Yields `Block`s covering the sample in order: stacked full batches, then the remainder.

    Arrays are validated before anything is yielded; a Dataset yields its batches one by one."""
    if isinstance(x, tf.data.Dataset):
        for xb, yb, wb in _dataset_batches(x, y, batch_size, None, sample_weight):
            yield Block(xb, yb, wb, stacked=False)
        return
    x, y, sample_weight, m, batch_size = _check_arrays(x, y, batch_size, None, sample_weight)
    per_example = sum(int(np.prod(t.shape[1:])) for t in tf.nest.flatten(x))
    per_block = max(1, BLOCK_ELEMENTS // max(1, per_example * batch_size))  # batches per block
    full = m // batch_size
    for first in range(0, full, per_block):
        k = min(per_block, full - first)
        part = slice(first * batch_size, (first + k) * batch_size)
        stacked = tf.nest.map_structure(
            lambda t: None if t is None else t[part].reshape((k, batch_size) + t.shape[1:]),
            (x, y, sample_weight))
        yield Block(*stacked, stacked=True)
    if full * batch_size < m:
        yield Block(*_slice((x, y, sample_weight), slice(full * batch_size, m)), stacked=False)


def over_stacked_batches(fn: Callable[..., Any], stacked: tuple, dtypes: Any) -> Any:
    """Runs `fn(*batch)` on every batch of a stacked block, in order, in one graph loop.

    Call inside a `tf.function`. stacked: a tuple of nests of [k, B, ...] tensors (None entries
    stay None), e.g. (x, y, w). `fn` returns a tuple of tensors of the given `dtypes`; the result
    is the tuple of their stacks over the k batches ([k, ...] each).
    """
    k = tf.shape(tf.nest.flatten(stacked)[0])[0]
    arrays = tuple(tf.TensorArray(dtype, size=k) for dtype in dtypes)

    def body(i, arrays):
        batch = tf.nest.map_structure(lambda t: None if t is None else t[i], stacked)
        outputs = fn(*batch)
        return i + 1, tuple(a.write(i, o) for a, o in zip(arrays, outputs))

    _, arrays = tf.while_loop(lambda i, _: i < k, body, (tf.constant(0), arrays))
    return tuple(a.stack() for a in arrays)


class PerRankFunction:
    """`tf.function(fn, reduce_retracing=True, autograph=False)`, one per signature of the
    arguments: their nest structure and each leaf's dtype and rank.

    reduce_retracing relaxes a dimension that changes between calls (the remainder batch) to
    None, which is what the batch functions want; but an argument whose *rank* changes (labels
    [m] in one call and [m, 1] in the next, on the same model) it relaxes to an unknown rank,
    which Keras' losses cannot take (`len(shape)`: "Cannot take the length of shape with unknown
    rank"). A function per rank signature keeps every trace's ranks known.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self._functions: dict = {}

    @staticmethod
    def _signature(args):
        leaves = tuple((tf.as_dtype(t.dtype).name, len(t.shape)) if hasattr(t, "dtype") else repr(t)
                       for t in tf.nest.flatten(args))
        return repr(tf.nest.map_structure(lambda _: 0, args)), leaves

    def _function(self, args):
        key = self._signature(args)
        if key not in self._functions:
            self._functions[key] = tf.function(self._fn, reduce_retracing=True, autograph=False)
        return self._functions[key]

    def __call__(self, *args: Any) -> Any:
        return self._function(args)(*args)

    def get_concrete_function(self, *args: Any) -> Any:
        return self._function(args).get_concrete_function(*args)

    def experimental_get_tracing_count(self) -> int:
        """Traces over all the signatures' functions."""
        return sum(f.experimental_get_tracing_count() for f in self._functions.values())
