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
| pairwise coherence (`pairwise_coherence`) | (r − 1)/(m − 1) = Σ_{i≠j} g_i·g_j / ((m − 1)·Q): the mean off-diagonal alignment, unbiased across m | [−1/(m−1), 1] |
| gradient diversity | Q/‖S‖² = 1/m-coherence (Yin et al. 2018) | |
| per layer b | the same with S_b, Q_b; α = Σ_b f_b α_b with f_b = Q_b/Q | |
| f^p, f^c | with g = g^p + g^c (sums over pristine / corrupt examples): f^p = ⟨g, g^p⟩/⟨g, g⟩, f^c = 1 − f^p | |
| per-example alignment (`alignment`) | a_i = g_i·(S − g_i)/‖g_i‖² and g_i·S (cgh_tf/alignment.py) | |

Undefined values (all gradients zero, Q = 0) are NaN. Per-example gradients are taken in inference
mode (`training=False`) unless asked otherwise; the per-example squared norms come from the fast
exact path of `cgh_tf.per_example` (one backward pass, never O(m · parameters) memory).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from cgh_tf import (input_checks, layer_rules, per_example, precision, recent_builds, regularization,
                    streaming)
from cgh_tf.per_example import per_example_gradients  # noqa: F401  (public API, README "Using it from Keras")
from cgh_tf.api_types import Array, Inputs, LossSpec, Nest

if TYPE_CHECKING:  # annotations only
    import keras


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
    def pairwise_coherence(self) -> float:
        """(r − 1)/(m − 1) = Σ_{i≠j} g_i·g_j / ((m − 1)·Q), r = m-coherence: the mean alignment of
        an example's gradient with another's, the diagonal (i = j) left out. Unlike r it does not
        grow with m (r ≈ 1 + (m − 1)·α), so compare samples of different sizes, and take ratios
        between arms, with it (docs/design.md §1). NaN for m = 1 or Q = 0."""
        if self.m < 2:
            return math.nan
        return (self.m_coherence - 1.0) / (self.m - 1)

    @property
    def gradient_diversity(self) -> float:
        """Σ‖g_i‖² / ‖Σ g_i‖² = 1 / m-coherence (inf when the sum of gradients is zero)."""
        if self.m_coherence == 0:
            return math.inf
        return 1.0 / self.m_coherence


def stats_from_sums(sq_norm_of_sum: float | Array, sum_of_sq_norms: float | Array, m: int,
                    per_layer: Dict[str, tuple] | None = None) -> CoherenceStats:
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

    def __init__(self, variable_shapes: Sequence[Sequence[int] | tf.Variable],
                 layer_names: Optional[List[str]] = None) -> None:
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
        self._sq_norms_of_sums = tf.function(self.squared_norms_of_sums, autograph=False)

    @classmethod
    def for_model(cls, model: keras.Model) -> StreamingCoherence:
        """Accumulator over `model.trainable_variables`, grouped by owning layer."""
        return cls(model.trainable_variables, per_example.variable_layer_names(model))

    def reset(self) -> None:
        self._reset()

    def _assign_zeros(self):
        for s in self._sums:
            s.assign(tf.zeros_like(s))
        self._sq_norm_sums.assign(tf.zeros_like(self._sq_norm_sums))
        self._count.assign(0)

    def squared_norms_of_sums(self) -> tf.Tensor:
        """[V] float64: ‖S_v‖² of every variable's running sum."""
        return tf.stack([tf.reduce_sum(tf.square(s)) for s in self._sums] or [tf.zeros([], tf.float64)])

    def update(self, grad_sum: Sequence[tf.Tensor | None], sq_norms: Array,
               first: bool | tf.Tensor = False) -> None:
        """Adds a batch: grad_sum = list of Σ_i g_i per variable (None = zero); sq_norms [m, V].

        first: bool (or bool scalar tensor); True replaces everything added before by this batch
        (a reset and an update in one pass over the sums); the Python constant False adds in place
        (`assign_add`; after `reset_if` in a loop over batches)."""
        if len(grad_sum) != len(self._sums):
            raise ValueError(f"grad_sum has {len(grad_sum)} entries for {len(self._sums)} variables.")
        sq_norms = tf.cast(sq_norms, tf.float64)
        values = [tf.zeros_like(total) if g is None else tf.cast(tf.convert_to_tensor(g), tf.float64)
                  for total, g in zip(self._sums, grad_sum)]
        values += [tf.reduce_sum(sq_norms, axis=0), tf.cast(tf.shape(sq_norms)[0], tf.int64)]
        variables = self._sums + [self._sq_norm_sums, self._count]
        if first is False:  # nothing to replace: one in-place add per variable
            for variable, value in zip(variables, values):
                variable.assign_add(value)
            return
        first = tf.convert_to_tensor(first, tf.bool)
        for variable, value in zip(variables, values):
            # `where`, not a product: a NaN from before must not survive
            variable.assign(tf.where(first, value, variable + value))

    def reset_if(self, first: bool | tf.Tensor) -> None:
        """Zeroes the sums where `first` (a bool tensor) is True: the reset of `update(...,
        first=True)` on its own, so that a loop over batches can then add with first=False (one
        in-place add per variable and batch instead of a read, an add, a `where` and an assign)."""
        first = tf.convert_to_tensor(first, tf.bool)
        for variable in self._sums + [self._sq_norm_sums, self._count]:
            variable.assign(tf.where(first, tf.zeros_like(variable), variable))

    def translate(self, shift: Sequence[Array | None]) -> None:
        """Adds the same vector r to every gradient added so far, g_i → g_i + r (e.g. a weight
        regulariser's gradient, `cgh_tf.regularization`): per variable S_v → S_v + m·r_v and
        Q_v → Q_v + 2⟨S_v, r_v⟩ + m‖r_v‖². shift: one array per variable (None = zero)."""
        if len(shift) != len(self._sums):
            raise ValueError(f"shift has {len(shift)} entries for {len(self._sums)} variables.")
        sums, sum_of_sq_norms = regularization.translated(
            [tf.convert_to_tensor(s) for s in self._sums], tf.convert_to_tensor(self._sq_norm_sums),
            self._count, shift)
        for total, value in zip(self._sums, sums):
            total.assign(value)
        self._sq_norm_sums.assign(sum_of_sq_norms)

    @property
    def grad_sums(self) -> list:
        """The running S_v per variable (float64 `tf.Variable`s, read-only by convention)."""
        return list(self._sums)

    @property
    def count(self) -> int:
        return int(self._count.numpy())

    @staticmethod
    def _stats(indices, m, sq_norms_of_sums, sum_of_sq_norms):
        indices = list(indices)
        return stats_from_sums(float(np.sum(sq_norms_of_sums[indices])),
                               float(np.sum(sum_of_sq_norms[indices])), m)

    def result(self, per_layer: bool = False,
               sq_norms_of_sums: Array | None = None) -> CoherenceStats:
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
# Measurements on a model


def measure(model: keras.Model, x: Inputs, y: Nest | None = None, loss: LossSpec = None,
            batch_size: int | None = None, per_layer: bool = False, training: bool = False,
            sample_weight: Array | None = None,
            coherence_dtype: str | tf.DType | None = None,
            include_regularization: bool = False) -> CoherenceStats:
    """α, α⊥ and m-coherence of the per-example gradients of `model` on a sample.

    x, y: arrays with m examples (streamed in batches of `batch_size`, default 256; y a dict /
      list for several outputs), or x a `tf.data.Dataset` of (x, y) or (x, y, sample weights)
      batches (then y=None, batch_size=None).
    loss: Keras loss / name / function (or a dict / list, one per output), or None for the
      compiled loss (its `loss_weights` included).
    sample_weight: None, [m] (per example), [m, ...] (e.g. per token) or a dict / list per output.
    g_i is the gradient of ℓ_i, the decomposition of the loss Keras computes for each batch
    (`cgh_tf.loss_decomposition`: masks carried by the model's output, weights, reductions), so
    the batches' losses are those `model.evaluate(x, y, batch_size, sample_weight=...)` averages.
    With weights w_i, g_i = w_i ∇(unweighted loss of i) and m-coherence = ‖Σ w_i g_i‖² /
    Σ w_i² ‖g_i‖² (unweighted g_i on the right). Regularisation losses are not part of ℓ_i unless
    include_regularization=True: then each example's objective is ℓ_i + R, R the weight
    regularisers' penalty (mean_i of it is the loss Keras minimises), g_i → g_i + ∇R
    (`cgh_tf.regularization`; no extra pass); activity regularisers and `add_loss` are refused.
    Memory is O(parameters + batch) whatever m is (plus one block of stacked input batches, see
    `cgh_tf.streaming`). The batch computation is compiled once per model, loss and mode and
    reused by later calls; array inputs run as blocks of full batches, each block one compiled
    call (no host round trip per batch). An unbuilt model is built on the first batch.
    coherence_dtype: None (the layers' own compute dtype) or "float32": under a 16-bit mixed
      policy, compute the statistics in float32 (`cgh_tf.precision`; without it a one-time
      warning names the expected error).
    """
    sums = streamed_sums(model, x, y, loss, batch_size, training, sample_weight, coherence_dtype,
                         include_regularization)
    if not include_regularization:
        return sums.stats(per_layer)
    sums.accumulator.translate(regularization.gradient(model))
    return sums.accumulator.result(per_layer=per_layer)


class SampleSums(NamedTuple):
    """The first pass over a sample: S and Q in `accumulator`, and per example (in sample order)
    ‖g_i‖² and ℓ_i, float64 [m] each.

    factors: None unless requested and within the bound (`streamed_sums`), else a list aligned
    with `model.trainable_variables`: `layer_rules.Factors` of eager tensors (a [m, i] or None,
    b [m, o], in the variables' dtype, float32 or float64) where the engine proves g_i rank one,
    None where it does not."""

    accumulator: "StreamingCoherence"
    sq_norms_of_sums: np.ndarray
    sq_norms: np.ndarray
    losses: np.ndarray
    factors: list | None = None

    def stats(self, per_layer: bool = False) -> CoherenceStats:
        return self.accumulator.result(per_layer=per_layer, sq_norms_of_sums=self.sq_norms_of_sums)


def first_batch(block: streaming.Block) -> Nest:
    """The model input of one batch of a `streaming.Block` (the first of a stacked block)."""
    if not block.stacked:
        return block.x
    return tf.nest.map_structure(lambda t: t[0], block.x)


def checked_blocks(model: keras.Model, x: Inputs, y: Nest | None, loss: LossSpec,
                   batch_size: int | None, sample_weight: Array | None = None,
                   where: str = "coherence.measure()") -> tuple:
    """(first `streaming.Block`, iterator of the others) of a sample, after its input checks
    (`cgh_tf.input_checks`; a missing or undecomposable loss fails first); the model built."""
    per_example.per_example_loss_fn(model, loss)
    blocks = input_checks.checked_batches(
        model, loss, x, y, streaming.blocks(x, y, batch_size, sample_weight), where=where)
    first = next(blocks, None)
    if first is None:
        raise ValueError("Empty sample: the dataset yielded no examples.")
    per_example.ensure_built(model, first_batch(first))
    return first, blocks


def streamed_sums(model: keras.Model, x: Inputs, y: Nest | None, loss: LossSpec,
                  batch_size: int | None, training: bool, sample_weight: Array | None = None,
                  coherence_dtype: str | tf.DType | None = None,
                  include_regularization: bool = False,
                  factor_values: int | None = None) -> SampleSums:
    """S, Q and every example's ‖g_i‖² and loss, streamed through the engine (`measure`).

    The sums are always those of g_i = ∇ℓ_i; include_regularization=True only checks, before the
    first pass, that the model's added losses are weight regularisers (the caller adds r = ∇R:
    `cgh_tf.regularization`). factor_values: None, or a bound on the number of values kept: the
    pass also returns the rank-one factors of the per-example gradients (`SampleSums.factors`,
    m·Σ(i + o) values) while they stay within it, else none (the rest of the pass without them)."""
    precision.check_coherence_dtype(coherence_dtype)
    regularization.check_flag(include_regularization)
    first, blocks = checked_blocks(model, x, y, loss, batch_size, sample_weight)
    if include_regularization:
        regularization.check_weight_regularizers_only(
            model, tf.nest.map_structure(lambda t: t[:1], first_batch(first)))
    precision.check_float32_possible(model, coherence_dtype)
    precision.warn_if_16_bit(model, coherence_dtype)
    sums = compiled_for(model, "measure", loss, training, _BatchSums, coherence_dtype=coherence_dtype)
    factors = None if factor_values is None else _FactorCollector(factor_values)
    parts = []
    for i, block in enumerate(itertools.chain([first], blocks)):
        part = sums(block, i == 0, factored=factors is not None and factors.keeping)
        parts.append(part[:3])
        if len(part) > 3:
            factors.add(part[3:])
    return SampleSums(sums.accumulator, parts[-1][0].numpy(),
                      *(np.concatenate([np.reshape(p[j], [-1]) for p in parts]) for j in (1, 2)),
                      factors=None if factors is None else factors.result())


class _FactorCollector:
    """The factor outputs of `_BatchSums` over a sample's blocks, kept while their values stay
    within a bound (`streamed_sums`' factor_values)."""

    def __init__(self, bound):
        self.bound, self.values, self.keeping = bound, 0, True
        self.b_from, self.blocks = None, []

    def add(self, outputs):
        """outputs: `_BatchSums._factor_outputs`, [b, ...] or stacked [k, B, ...]."""
        b_from = np.reshape(outputs[0].numpy(), [-1, len(outputs[1:]) // 2])
        if self.b_from is None:
            self.b_from = b_from[0]
        arrays = [tf.reshape(t, [math.prod(t.shape[:-1]), t.shape[-1]]) for t in outputs[1:]]
        self.values += sum(a.shape.num_elements() for a in arrays)
        self.blocks.append(arrays)
        # over the bound, or (never seen) traces of one pass that factor differently: none kept
        if self.values > self.bound or not (b_from == self.b_from).all():
            self.keeping, self.blocks = False, []

    def result(self):
        """[per variable: `layer_rules.Factors` (a None where it has no columns) or None], or None
        if the bound was exceeded."""
        if not self.keeping:
            return None
        columns = [parts[0] if len(parts) == 1 else tf.concat(parts, 0) for parts in zip(*self.blocks)]
        a, b = columns[0::2], columns[1::2]
        return [None if j < 0 else layer_rules.Factors(a[v] if a[v].shape[1] else None, b[j])
                for v, j in enumerate(self.b_from)]


class _BatchSums:
    """`measure`'s compiled batch computations over one StreamingCoherence accumulator: a call on
    a `streaming.Block` adds it and returns (‖S_v‖² so far [V], ‖g_i‖² [b], ℓ_i [b]) (float64;
    [k, B] for a stacked block); `first` replaces everything added before (no separate reset).
    factored=True (`alignment`) also returns the rank-one factors of the per-example gradients
    (`_factor_outputs`), in the variables' dtype (float64 if any variable is, else float32)."""

    def __init__(self, model, loss_fn, training, coherence_dtype=None):
        self.accumulator = StreamingCoherence.for_model(model)
        self.model, self.loss_fn, self.training = model, loss_fn, training
        self.coherence_dtype = coherence_dtype
        variables = model.trainable_variables
        self.factor_dtype = tf.float64 if any(v.dtype == tf.float64 for v in variables) else tf.float32
        self._output_dtypes = (tf.float64,) * 2 + (tf.int32,) + (self.factor_dtype,) * 2 * len(variables)
        functions = {(stacked, factored): streaming.PerRankFunction(
            functools.partial(self._add_stacked if stacked else self._add_single, factored=factored))
            for stacked in (False, True) for factored in (False, True)}
        self.single, self.stacked = functions[False, False], functions[True, False]
        self._functions = functions

    def _add(self, xb, yb, wb, first, factored=False):
        """Adds one batch; (‖g_i‖² [b], ℓ_i [b]) float64 (then the factor outputs if factored)."""
        with precision.computed_in(self.model, self.coherence_dtype):
            sums = per_example.gradients_and_sq_norms(self.model, xb, yb, self.loss_fn,
                                                      training=self.training, sample_weight=wb,
                                                      with_factors=factored)
        self.accumulator.update(sums.grad_sum, sums.sq_norms, first=first)
        values = (tf.reduce_sum(tf.cast(sums.sq_norms, tf.float64), axis=1),
                  tf.cast(sums.losses, tf.float64))
        return values + (self._factor_outputs(sums) if factored else ())

    def _factor_outputs(self, sums):
        """(b_from [V] int32, then a_v [b, i], b_v [b, o] per variable): b_from[v] is the variable
        whose b output holds b_v (a bias shares its kernel's: sent once), −1 where v has no
        factors; an absent a_v or b_v is [b, 0]."""
        m = tf.shape(sums.losses)[0]
        empty = tf.zeros(tf.stack([m, 0]), self.factor_dtype)
        b_from, seen, outputs = [], {}, []
        for v, f in enumerate(sums.factors):
            b_from.append(-1 if f is None else seen.setdefault(id(f.b), v))
            a = None if f is None else f.a
            b = None if f is None or b_from[-1] != v else f.b
            outputs += [empty if t is None else tf.cast(t, self.factor_dtype) for t in (a, b)]
        return (tf.constant(b_from, tf.int32),) + tuple(outputs)

    def _add_single(self, xb, yb, wb, first, factored=False):
        per_example_values = self._add(xb, yb, wb, first, factored)
        return (self.accumulator.squared_norms_of_sums(),) + per_example_values  # read after the update

    def _add_stacked(self, xs, ys, ws, first, factored=False):
        self.accumulator.reset_if(first)  # once per block; the loop then adds in place
        dtypes = self._output_dtypes if factored else self._output_dtypes[:2]
        per_batch = streaming.over_stacked_batches(
            lambda xb, yb, wb: self._add(xb, yb, wb, False, factored), (xs, ys, ws), dtypes)
        return (self.accumulator.squared_norms_of_sums(),) + per_batch  # read after the loop

    def __call__(self, block, first, factored=False):
        add = self._functions[block.stacked, factored]
        return add(block.x, block.y, block.w, tf.constant(first))


def flat_dot(a: Sequence[Array | None], b: Sequence[Array | None]) -> float:
    """Σ_v ⟨a_v, b_v⟩ of two lists of per-variable arrays or eager tensors, in float64. NumPy's
    elementwise product and sum: 0.08× the three eager TF ops per variable it replaces on the
    benchmarks' MLP (np.vdot's threaded BLAS was slower on the shared cores)."""
    return sum(float(np.sum(np.asarray(u, np.float64) * np.asarray(v, np.float64)))
               for u, v in zip(a, b))


_COMPILED = weakref.WeakKeyDictionary()  # model -> {key (`compiled_for`): (loss, built)}, oldest first
# Builds kept per model (`compiled_for`): each holds parameter-sized float64 accumulators and traced
# graphs, so a fresh loss object (or trainable set) per call must not keep one per call while the
# model lives (a 545 K-parameter MLP grew 6.5 MB per `measure(..., loss=Loss())` call, unbounded).
MAX_BUILDS_PER_MODEL = recent_builds.MAX_BUILDS_PER_MODEL


def compiled_for(model: keras.Model, kind: str, loss: LossSpec, training: bool,
                 build: Callable[..., Any], **options: Any) -> Any:
    """`build(model, per-example loss fn, training, **options)`, built once per model, loss, mode,
    options and set of trainable variables.

    Measuring every few steps must not retrace (and rebuild) a tf.function on every call. The key
    holds the resolved loss object itself, so re-compiling the model with another loss rebuilds,
    and the trainable variables' identities, so freezing or unfreezing a layer between calls
    rebuilds (the built functions and accumulators hold the variables they were built with).
    At most `MAX_BUILDS_PER_MODEL` builds are kept per model, the least recently used dropped.
    """
    cache = _COMPILED.setdefault(model, {})
    resolved = loss if loss is not None else getattr(model, "loss", None)
    key = (kind, id(resolved), training,
           tuple(sorted((k, v) for k, v in options.items() if v is not None)),  # None: default
           tuple(id(v) for v in model.trainable_variables))
    entry = cache.get(key)
    if entry is None or entry[0] is not resolved:
        entry = (resolved, build(model, per_example.per_example_loss_fn(model, loss), training,
                                 **options))
    return recent_builds.put_recent(cache, key, entry)[1]


def _build_subset_gradients(model, loss_fn, training):
    """A compiled `(x, y, pristine mask) -> (g^p, g^c)` for `loss_reduction_fractions`."""
    variables = list(model.trainable_variables)

    def subset_gradients(xb, yb, mb):
        with tf.GradientTape(persistent=True) as tape:
            losses = loss_fn(yb, model(xb, training=training))
            weights = tf.cast(mb, losses.dtype)
            pristine, corrupt = tf.reduce_sum(weights * losses), tf.reduce_sum((1 - weights) * losses)
        g_p = tape.gradient(pristine, variables, unconnected_gradients="zero")
        g_c = tape.gradient(corrupt, variables, unconnected_gradients="zero")
        return [tf.convert_to_tensor(g) for g in g_p], [tf.convert_to_tensor(g) for g in g_c]

    return streaming.PerRankFunction(subset_gradients)


def checked_pristine_mask(pristine_mask: Array | Sequence[bool],
                          m: int | None = None) -> np.ndarray:
    """[m] bool from a 1-D array of booleans or 0/1 (True = pristine), else one ValueError."""
    mask = np.asarray(pristine_mask)
    if mask.ndim != 1 or not (mask.dtype == bool or np.isin(mask, (0, 1)).all()):
        raise ValueError("pristine_mask must be a 1-D array of booleans (True = pristine example).")
    if m is not None and len(mask) != m:
        raise ValueError(f"pristine_mask has {len(mask)} entries for {m} examples; they must match.")
    return mask.astype(bool)


def loss_reduction_fractions(model: keras.Model, x: Inputs, y: Nest,
                             pristine_mask: Array | Sequence[bool], loss: LossSpec = None,
                             batch_size: int | None = None,
                             training: bool = False) -> Tuple[float, float]:
    """(f^p, f^c): the shares of the first-order loss reduction due to pristine / corrupt examples.

    g^p, g^c = Σ of per-example gradients over pristine / corrupt examples, g = g^p + g^c;
    f^p = ⟨g, g^p⟩ / ⟨g, g⟩, f^c = 1 − f^p (NaN if g = 0). Needs no per-example gradients: two
    gradients of masked loss sums per batch.
    pristine_mask: [m] booleans (True = pristine) aligned with x and y.
    """
    mask = checked_pristine_mask(pristine_mask)
    variables = list(model.trainable_variables)
    subset_gradients = compiled_for(model, "fractions", loss, training, _build_subset_gradients)
    sum_p = [np.zeros(v.shape) for v in variables]
    sum_c = [np.zeros(v.shape) for v in variables]
    for xb, yb, _, mb in streaming.batches(x, y, batch_size, extra=mask):
        g_p, g_c = subset_gradients(xb, yb, mb)
        sum_p = [s + g.numpy() for s, g in zip(sum_p, g_p)]
        sum_c = [s + g.numpy() for s, g in zip(sum_c, g_c)]
    g = [p + c for p, c in zip(sum_p, sum_c)]
    g_sq = flat_dot(g, g)
    if g_sq == 0:
        return math.nan, math.nan
    f_p = flat_dot(g, sum_p) / g_sq
    return f_p, 1.0 - f_p


def __getattr__(name):
    """`coherence.alignment` and `coherence.Alignment` live in cgh_tf/alignment.py (which builds on
    this module, so they are imported on first use, PEP 562)."""
    if name in ("alignment", "Alignment"):
        from cgh_tf import alignment as module  # pylint: disable=import-outside-toplevel
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
