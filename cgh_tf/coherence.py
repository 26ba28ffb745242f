"""Coherence of per-example gradients: α, α⊥, m-coherence, per layer, streaming, f^p / f^c.

For a sample of m examples with per-example gradients g_1..g_m (docs/design.md §1), everything follows
from two running sums, additive over batches and replicas:

| quantity | definition | range |
|---|---|---|
| S | Σ_i g_i (parameter-sized) | |
| Q | Σ_i ‖g_i‖² (scalar) | ≥ 0 |
| α (`alpha`) | ‖S‖² / (m·Q) | [0, 1] |
| α⊥ (`alpha_perp`) | 1/m, the value of α for pairwise orthogonal gradients | (0, 1] |
| m-coherence (`m_coherence`) | α/α⊥ = ‖S‖²/Q; 1 = orthogonal, m = identical, < 1 = cancelling | [0, m] |
| gradient diversity | Q/‖S‖² = 1/m-coherence (Yin et al. 2018) | |
| per layer b | the same with S_b, Q_b; α = Σ_b f_b α_b with f_b = Q_b/Q | |
| f^p, f^c | with g = g^p + g^c (sums over pristine / corrupt examples): f^p = ⟨g, g^p⟩/⟨g, g⟩, f^c = 1 − f^p | |

Undefined values (all gradients zero, Q = 0) are NaN. Per-example gradients are taken in inference
mode (`training=False`) unless asked otherwise; the per-example squared norms come from the fast
exact path of `cgh_tf.per_example` (one backward pass, never O(m · parameters) memory).
"""

import dataclasses
import math
import weakref
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from cgh_tf import input_checks, per_example
from cgh_tf.per_example import per_example_gradients  # noqa: F401  (public API, README "Using it from Keras")

_DEFAULT_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class CoherenceStats:
    """Coherence of a sample of m per-example gradients (see the module table).

    sq_norm_of_sum: ‖S‖² = ‖Σ_i g_i‖²;  sum_of_sq_norms: Q = Σ_i ‖g_i‖².
    per_layer: {layer name: CoherenceStats of that layer's variables}; empty unless requested.
    A layer's share of α is `per_layer[name].sum_of_sq_norms / sum_of_sq_norms` (f_b).
    """

    alpha: float
    alpha_perp: float
    m_coherence: float
    m: int
    sq_norm_of_sum: float
    sum_of_sq_norms: float
    per_layer: Dict[str, "CoherenceStats"] = dataclasses.field(default_factory=dict)

    @property
    def gradient_diversity(self) -> float:
        """Σ‖g_i‖² / ‖Σ g_i‖² = 1 / m-coherence (inf when the sum of gradients is zero)."""
        if self.m_coherence == 0:
            return math.inf
        return 1.0 / self.m_coherence


def stats_from_sums(sq_norm_of_sum, sum_of_sq_norms, m, per_layer=None) -> CoherenceStats:
    """CoherenceStats from ‖S‖², Q and m (pure math; NaN when Q = 0)."""
    m = int(m)
    if m <= 0:
        raise ValueError(f"Empty sample: the number of examples m must be positive; got {m}.")
    sq_norm_of_sum, sum_of_sq_norms = float(sq_norm_of_sum), float(sum_of_sq_norms)
    if sum_of_sq_norms < 0 or sq_norm_of_sum < 0:
        raise ValueError(
            f"Squared norms must be non-negative; got ‖S‖²={sq_norm_of_sum}, Q={sum_of_sq_norms}."
        )
    m_coherence = sq_norm_of_sum / sum_of_sq_norms if sum_of_sq_norms > 0 else math.nan
    return CoherenceStats(
        alpha=m_coherence / m,
        alpha_perp=1.0 / m,
        m_coherence=m_coherence,
        m=m,
        sq_norm_of_sum=sq_norm_of_sum,
        sum_of_sq_norms=sum_of_sq_norms,
        per_layer=dict(per_layer or {}),
    )


class StreamingCoherence:
    """Running S (per variable) and Q (per variable) over batches; memory O(parameters).

    Accumulates in float64 `tf.Variable`s, so `update` also works inside a `tf.function`.

        acc = StreamingCoherence.for_model(model)
        for x, y in batches:
            acc.update(*per_example.gradients_and_sq_norms(model, x, y)[1:])
        stats = acc.result(per_layer=True)
    """

    def __init__(self, variable_shapes, layer_names: Optional[List[str]] = None):
        """variable_shapes: one shape per variable (or the variables themselves);
        layer_names: the layer (block) of each variable, for `result(per_layer=True)`."""
        shapes = [tuple(getattr(v, "shape", v)) for v in variable_shapes]
        if layer_names is not None and len(layer_names) != len(shapes):
            raise ValueError(
                f"layer_names has {len(layer_names)} entries for {len(shapes)} variables."
            )
        self.layer_names = list(layer_names) if layer_names is not None else None
        self._sums = [tf.Variable(tf.zeros(s, tf.float64), trainable=False) for s in shapes]
        self._sq_norm_sums = tf.Variable(tf.zeros([len(shapes)], tf.float64), trainable=False)
        self._count = tf.Variable(tf.constant(0, tf.int64), trainable=False)
        # One compiled call each instead of 2V + 2 (reset) and 2V (result) eager ops: on the MLP
        # of benchmarks/measure_calls.py those ops cost as much as the batch computation itself.
        self._reset = tf.function(self._assign_zeros, autograph=False)
        self._sq_norms_of_sums = tf.function(self._squared_norms, autograph=False)

    @classmethod
    def for_model(cls, model):
        """Accumulator over `model.trainable_variables`, grouped by owning layer."""
        return cls(model.trainable_variables, per_example.variable_layer_names(model))

    def reset(self):
        self._reset()

    def _assign_zeros(self):
        for s in self._sums:
            s.assign(tf.zeros_like(s))
        self._sq_norm_sums.assign(tf.zeros_like(self._sq_norm_sums))
        self._count.assign(0)

    def _squared_norms(self):
        """[V] float64: ‖S_v‖² of every variable's running sum."""
        return tf.stack([tf.reduce_sum(tf.square(s)) for s in self._sums] or [tf.zeros([], tf.float64)])

    def update(self, grad_sum, sq_norms, first=False):
        """Adds a batch: grad_sum = list of Σ_i g_i per variable (None = zero); sq_norms [m, V].

        first: bool (or bool scalar tensor); True replaces everything added before by this batch
        (a reset and an update in one pass over the sums)."""
        if len(grad_sum) != len(self._sums):
            raise ValueError(f"grad_sum has {len(grad_sum)} entries for {len(self._sums)} variables.")
        sq_norms = tf.cast(sq_norms, tf.float64)
        first = tf.convert_to_tensor(first, tf.bool)

        def added(variable, value):  # `where`, not a product: a NaN from before must not survive
            return tf.where(first, value, variable + value)

        for total, g in zip(self._sums, grad_sum):
            g = tf.zeros_like(total) if g is None else tf.cast(tf.convert_to_tensor(g), tf.float64)
            total.assign(added(total, g))
        self._sq_norm_sums.assign(added(self._sq_norm_sums, tf.reduce_sum(sq_norms, axis=0)))
        self._count.assign(added(self._count, tf.cast(tf.shape(sq_norms)[0], tf.int64)))

    @property
    def count(self) -> int:
        return int(self._count.numpy())

    @staticmethod
    def _stats(indices, m, sq_norms_of_sums, sum_of_sq_norms):
        indices = list(indices)
        return stats_from_sums(float(np.sum(sq_norms_of_sums[indices])),
                               float(np.sum(sum_of_sq_norms[indices])), m)

    def result(self, per_layer=False, sq_norms_of_sums=None) -> CoherenceStats:
        """CoherenceStats of everything added so far (per layer on request).

        sq_norms_of_sums: [V] ‖S_v‖² if the caller computed them already (as `measure`'s compiled
        batch function does, after its last update), else computed here."""
        m = self.count
        if m == 0:
            raise ValueError("Empty sample: no examples were added to the accumulator.")
        if sq_norms_of_sums is None:
            sq_norms_of_sums = self._sq_norms_of_sums()
        sums = (np.asarray(sq_norms_of_sums), self._sq_norm_sums.numpy())
        whole = self._stats(range(len(self._sums)), m, *sums)
        if not per_layer:
            return whole
        if self.layer_names is None:
            raise ValueError("per_layer=True needs layer_names (use StreamingCoherence.for_model).")
        groups = {}
        for j, name in enumerate(self.layer_names):
            groups.setdefault(name, []).append(j)
        layers = {name: self._stats(indices, m, *sums) for name, indices in groups.items()}
        return dataclasses.replace(whole, per_layer=layers)


# ----------------------------------------------------------------------------------------------
# Batching


def _batches(x, y, batch_size, extra=None):
    """Yields (x, y[, extra]) batches from arrays or a tf.data.Dataset of (x, y) batches."""
    if isinstance(x, tf.data.Dataset):
        if y is not None or batch_size is not None:
            raise ValueError("With a tf.data.Dataset of (x, y) batches, pass y=None and batch_size=None.")
        if extra is not None:
            raise ValueError("Pass the per-example mask as arrays (x, y, mask), not with a Dataset.")
        for batch in x:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("The dataset must yield (x, y) batches.")
            yield batch[0], batch[1]
        return
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
    batch_size = _DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}.")
    for start in range(0, m, batch_size):
        part = slice(start, start + batch_size)
        batch = (tf.nest.map_structure(lambda t: t[part], x), y[part])
        yield batch if extra is None else batch + (extra[part],)


# ----------------------------------------------------------------------------------------------
# Measurements on a model


def measure(model, x, y=None, loss=None, batch_size=None, per_layer=False, training=False) -> CoherenceStats:
    """α, α⊥ and m-coherence of the per-example gradients of `model` on a sample.

    x, y: arrays with m examples (streamed in batches of `batch_size`, default 256), or x a
      `tf.data.Dataset` of (x, y) batches (then y=None, batch_size=None).
    loss: Keras loss / name / per-example function, or None for the compiled loss.
    Memory is O(parameters + batch) whatever m is. The batch computation is compiled once per
    model, loss and mode and reused by later calls (a new batch shape retraces once). An unbuilt
    model is built on the first batch.
    """
    per_example.per_example_loss_fn(model, loss)  # a missing or scalar loss fails before any work
    batches = input_checks.checked_batches(model, loss, x, y, _batches(x, y, batch_size))
    first = next(batches, None)
    if first is None:
        raise ValueError("Empty sample: the dataset yielded no examples.")
    per_example.ensure_built(model, first[0])
    add_batch, accumulator = _cached(model, "measure", loss, training, _build_measure)
    sq_norms_of_sums = add_batch(*first, tf.constant(True))  # replaces the previous call's sums
    for xb, yb in batches:
        sq_norms_of_sums = add_batch(xb, yb, tf.constant(False))
    return accumulator.result(per_layer=per_layer, sq_norms_of_sums=sq_norms_of_sums.numpy())


def _build_measure(model, loss_fn, training):
    """(compiled `add_batch(x, y, first) -> [V] ‖S_v‖² so far`, its StreamingCoherence
    accumulator) for `measure`: one launch per batch, no separate reset or read-out."""
    accumulator = StreamingCoherence.for_model(model)

    @tf.function(reduce_retracing=True)
    def add_batch(xb, yb, first):
        sums = per_example.gradients_and_sq_norms(model, xb, yb, loss_fn, training=training)
        accumulator.update(sums.grad_sum, sums.sq_norms, first=first)
        return accumulator._squared_norms()

    return add_batch, accumulator


def _flat_dot(a, b):
    return sum(float(tf.reduce_sum(tf.cast(u, tf.float64) * tf.cast(v, tf.float64))) for u, v in zip(a, b))


_COMPILED = weakref.WeakKeyDictionary()  # model -> {(kind, id(loss), training): (loss, built)}


def _cached(model, kind, loss, training, build):
    """`build(model, per-example loss fn, training)`, built once per model, loss and mode.

    Measuring every few steps must not retrace (and rebuild) a tf.function on every call. The key
    holds the resolved loss object itself, so re-compiling the model with another loss rebuilds.
    """
    cache = _COMPILED.setdefault(model, {})
    resolved = loss if loss is not None else getattr(model, "loss", None)
    key = (kind, id(resolved), training)
    if key not in cache or cache[key][0] is not resolved:
        cache[key] = (resolved, build(model, per_example.per_example_loss_fn(model, loss), training))
    return cache[key][1]


def _build_subset_gradients(model, loss_fn, training):
    """A compiled `(x, y, pristine mask) -> (g^p, g^c)` for `loss_reduction_fractions`."""
    variables = list(model.trainable_variables)

    @tf.function(reduce_retracing=True)
    def subset_gradients(xb, yb, mb):
        with tf.GradientTape(persistent=True) as tape:
            losses = loss_fn(yb, model(xb, training=training))
            weights = tf.cast(mb, losses.dtype)
            pristine, corrupt = tf.reduce_sum(weights * losses), tf.reduce_sum((1 - weights) * losses)
        g_p = tape.gradient(pristine, variables, unconnected_gradients="zero")
        g_c = tape.gradient(corrupt, variables, unconnected_gradients="zero")
        return [tf.convert_to_tensor(g) for g in g_p], [tf.convert_to_tensor(g) for g in g_c]

    return subset_gradients


def loss_reduction_fractions(model, x, y, pristine_mask, loss=None, batch_size=None, training=False):
    """(f^p, f^c): the shares of the first-order loss reduction due to pristine / corrupt examples.

    g^p, g^c = Σ of per-example gradients over pristine / corrupt examples, g = g^p + g^c;
    f^p = ⟨g, g^p⟩ / ⟨g, g⟩, f^c = 1 − f^p (NaN if g = 0). Needs no per-example gradients: two
    gradients of masked loss sums per batch.
    pristine_mask: [m] booleans (True = pristine) aligned with x and y.
    """
    mask = np.asarray(pristine_mask)
    if mask.ndim != 1 or not (mask.dtype == bool or np.isin(mask, (0, 1)).all()):
        raise ValueError("pristine_mask must be a 1-D array of booleans (True = pristine example).")
    variables = list(model.trainable_variables)
    subset_gradients = _cached(model, "fractions", loss, training, _build_subset_gradients)
    sum_p = [np.zeros(v.shape) for v in variables]
    sum_c = [np.zeros(v.shape) for v in variables]
    for xb, yb, mb in _batches(x, y, batch_size, extra=mask.astype(bool)):
        g_p, g_c = subset_gradients(xb, yb, mb)
        sum_p = [s + g.numpy() for s, g in zip(sum_p, g_p)]
        sum_c = [s + g.numpy() for s, g in zip(sum_c, g_c)]
    g = [p + c for p, c in zip(sum_p, sum_c)]
    g_sq = _flat_dot(g, g)
    if g_sq == 0:
        return math.nan, math.nan
    f_p = _flat_dot(g, sum_p) / g_sq
    return f_p, 1.0 - f_p
