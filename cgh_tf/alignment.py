"""Per-example alignment: how much of the rest of a sample supports each example's gradient.

For a sample of m examples with per-example gradients g_i, S = Σ_j g_j (docs/design.md §1):

| quantity | definition | meaning |
|---|---|---|
| g_i · S (`dot_with_sum`) | ‖g_i‖² + Σ_{j≠i} g_i·g_j | first-order decrease of ℓ_i per unit step along S |
| a_i (`alignment`) | g_i · (S − g_i) / ‖g_i‖² | how many other examples' worth of support g_i has (0 = orthogonal to the rest, < 0 = opposed); NaN where g_i = 0 |
| Σ_i ‖g_i‖² a_i / Q | (‖S‖² − Q)/Q = r − 1 = (m − 1) × pairwise coherence | the sample's statistics (`stats`) are the ‖g_i‖²-weighted mean of a_i |

Two streamed passes, memory O(parameters + m):

1. the engine (`cgh_tf.per_example`, as `coherence.measure`): S and Q, and every ‖g_i‖² from the
   fast rules;
2. one **forward-mode** pass per batch (`tf.autodiff.ForwardAccumulator`, tangent S/‖S‖): the
   directional derivative of every ℓ_i along S is g_i · S, all m at once.

**Factored: one pass.** Where every trainable variable belongs to a Dense layer applied once per
example (an MLP), each g_i is rank one per variable: kernel g_i = a_i ⊗ b_i (a_i the layer input,
b_i = ∂ℓ_i/∂z_i), bias g_i = b_i, the same a and b the norms are computed from. The first pass
keeps them (`layer_rules.Factors`, m·Σ(i + o) values, at most `FACTOR_VALUES`) and, S known,
g_i · S = Σ_layers a_iᵀ S_W b_i + b_i · S_b: one matmul per layer, no second pass over the data, in
the variables' dtype (float32 or float64; a 16-bit compute dtype keeps forward mode). A model with
any other trainable variable (conv, embedding, a Dense called twice or over positions, ...), or
more factor values than the bound, takes forward mode; the factored values must pass the same
check Σ_i g_i·S = ‖S‖², else forward mode (with a warning). The factored path reads the sample
once, so its g_i are those of that read (with training=True, of its Dropout masks).

**Checks, then the exact path.** Forward mode through TF ops is not proven for every layer: a model
whose forward-mode pass cannot be traced (e.g. Keras' GRU symbolic loop), or whose results fail
the identity Σ_i g_i · S = ‖S‖² (Keras' grouped Conv2D on CPU runs an XLA-compiled function whose
forward-mode derivative TF gets wrong), takes the **exact path** instead, with a warning: reverse
over reverse, g_i · S = ∂/∂c_i ⟨∇_w Σ_j c_j ℓ_j, S⟩ at c = 1 (two backward passes per batch).
`Alignment.method` says which path ran. Both passes must see the same examples in the same order
with the same losses: a dataset that reshuffles, or randomness in the model (Dropout with
training=True), fails with an error instead of a wrong result.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import tensorflow as tf

from cgh_tf import (coherence, input_checks, keras_internals, layer_rules, mode_dependence,
                    regularization, streaming)
from cgh_tf.api_types import Array, Inputs, LossSpec, Nest

if TYPE_CHECKING:  # annotations only
    import keras

FORWARD_MODE = "forward mode"
EXACT = "exact (reverse over reverse)"
FACTORED = "factored (first pass)"

# Bound on the rank-one factors kept by the first pass, m·Σ(i + o) values over the Dense layers
# (256 MB in float32): e.g. the benchmarks' 784-256-256-10 MLP (1,818 values per example) up to
# m ≈ 36,900 examples (twice that memory for a moment while several blocks are joined).
FACTOR_VALUES = 1 << 26

# Relative tolerances of the checks, by the model's least precise dtype: Σ_i g_i·S against ‖S‖² (relative
# to Σ_i |g_i·S|) and each loss of the second pass against the first's (relative to the mean |ℓ|).
_TOLERANCE = {tf.float64: 1e-9, tf.float32: 1e-3, tf.float16: 5e-2, tf.bfloat16: 5e-2}


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Per-example alignment of a sample of m examples (module table), arrays float64 [m] in
    sample order.

    alignment: a_i = g_i·(S − g_i)/‖g_i‖²; dot_with_sum: g_i·S; sq_norms: ‖g_i‖²; losses: ℓ_i;
    stats: the sample's `CoherenceStats` (S, Q, m-coherence, pairwise coherence);
    method: `FACTORED`, `FORWARD_MODE` or `EXACT` (how g_i·S was computed, module docstring).
    """

    alignment: np.ndarray
    dot_with_sum: np.ndarray
    sq_norms: np.ndarray
    losses: np.ndarray
    stats: coherence.CoherenceStats
    method: str


class _Sample(NamedTuple):
    """The arguments of `alignment` that both passes read the sample with."""

    model: object
    x: object
    y: object
    loss: object
    batch_size: object
    training: bool
    sample_weight: object


def alignment(model: keras.Model, x: Inputs, y: Nest | None = None, loss: LossSpec = None,
              batch_size: int | None = None, training: bool = False,
              sample_weight: Array | None = None,
              include_regularization: bool = False) -> Alignment:
    """a_i and g_i · S of every example of a sample, with the sample's coherence statistics.

    x, y, loss, sample_weight, include_regularization: as `coherence.measure` (ℓ_i the
      decomposition of Keras' loss of each batch; with include_regularization=True, g_i is the
      gradient of ℓ_i + R, `cgh_tf.regularization`, at the cost of one more forward-mode pass
      for g_i·∇R when the model has weight regularisers, none on the factored path); a
      `tf.data.Dataset` must yield the same batches each time it is iterated (it is read two or
      three times, once on the factored path).
    training: the mode the model runs in (inference mode by default, as `measure`).
    """
    mode_dependence.check_examples_independent(model, training, "coherence.alignment()")
    sample = _Sample(model, x, y, loss, batch_size, training, sample_weight)
    first = coherence.streamed_sums(model, x, y, loss, batch_size, training, sample_weight,
                                    include_regularization=include_regularization,
                                    factor_values=FACTOR_VALUES if _may_factor(model, x) else None)
    input_checks.check_finite_results(first.losses, first.sq_norms)
    grad_sum = _grad_sums(first)
    sq_norms, shift = first.sq_norms, None
    if include_regularization and regularization.regularized_variables(model):
        sq_norms, shift = _add_regularizer(sample, first, grad_sum)
    stats = first.accumulator.result()
    new_sum = _grad_sums(first)  # S' = S + m·r with the regulariser
    dots, method = _dots_with(sample, first, new_sum, coherence.flat_dot(grad_sum, new_sum))
    if shift is not None:
        dots = dots + coherence.flat_dot(shift, new_sum)  # g'_i·S' = g_i·S' + r·S'
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(sq_norms > 0, (dots - sq_norms) / sq_norms, np.nan)
    return Alignment(a, dots, sq_norms, first.losses, stats, method)


def _grad_sums(first):
    """The first pass's running S per variable, as float64 arrays."""
    return [np.asarray(total.numpy()) for total in first.accumulator.grad_sums]


def _add_regularizer(sample, first, grad_sum):
    """g_i → g_i + r, r = ∇R (`cgh_tf.regularization`): translates the first pass's sums and
    returns (‖g_i + r‖² = ‖g_i‖² + 2 g_i·r + ‖r‖² [m], r), g_i·r from one more pass."""
    shift = regularization.gradient(sample.model)
    r_dots, _ = _dots_with(sample, first, shift, coherence.flat_dot(grad_sum, shift))
    first.accumulator.translate(shift)
    return first.sq_norms + 2.0 * r_dots + coherence.flat_dot(shift, shift), shift


def _may_factor(model, x):
    """True unless the factored path is ruled out before the first pass: a trainable variable
    outside a Dense layer with the Dense rule, a 16-bit compute or variable dtype, or a sample of
    known size whose factors would exceed `FACTOR_VALUES` (an unbuilt model, or a dataset of
    unknown size: True, the first pass's factors decide)."""
    layers = keras_internals.flatten_layers(model, include_self=True)
    dtypes = {layer.dtype_policy.compute_dtype for layer in layers} | {
        v.dtype for v in model.trainable_variables}
    if not all(tf.as_dtype(d) in (tf.float32, tf.float64) for d in dtypes):
        return False
    dense = [layer for layer in layers if layer_rules.rule_for(layer) is layer_rules.DenseRule]
    covered = {id(v) for layer in dense for v in layer.trainable_weights}
    if not all(id(v) in covered for v in model.trainable_variables):
        return False
    m = _known_size(x)
    return m is None or m * sum(_factor_values_per_example(layer) for layer in dense) <= FACTOR_VALUES


def _known_size(x):
    """The number of examples of an array sample (a nest of arrays), or None (a dataset)."""
    if isinstance(x, tf.data.Dataset):
        return None
    shape = getattr(tf.nest.flatten(x)[0], "shape", None)
    return None if shape is None or not len(shape) or shape[0] is None else int(shape[0])


def _factor_values_per_example(layer):
    """The values the first pass keeps per example for a Dense layer applied once: a_i [i] if its
    kernel is trainable, b_i [o] if any of its variables is (the bias shares the kernel's b_i);
    0 for an unbuilt layer."""
    if not layer.built or not layer.trainable_weights:
        return 0
    fan_in, fan_out = layer.kernel.shape
    return (int(fan_in) if layer.kernel.trainable else 0) + int(fan_out)


def _factored_dots(factors, direction):
    """g_i·d [m] float64 from the first pass's rank-one factors (`coherence.SampleSums.factors`):
    Σ_v a_iᵀ d_v b_i (kernels) + b_i·d_v (biases), each in the factors' dtype; None unless every
    trainable variable has factors."""
    if factors is None or any(f is None for f in factors):
        return None
    return _factored_dots_graph(list(factors), [tf.convert_to_tensor(d) for d in direction]).numpy()


@tf.function(reduce_retracing=True, autograph=False)
def _factored_dots_graph(factors, direction):
    """`_factored_dots` compiled: TF's matmul, 13.5 ms CPU against NumPy's threaded matmul's 31.6
    for the benchmarks' 784-256-256-10 MLP at m = 2,048 in float32 (the 2 shared cores, load 4.6)."""
    dots = []
    for f, d in zip(factors, direction):
        d = tf.cast(d, f.b.dtype)
        along = tf.linalg.matvec(f.b, d) if f.a is None else tf.reduce_sum(
            tf.matmul(f.a, d) * f.b, axis=1)  # d: the kernel's [i, o]
        dots.append(tf.cast(along, tf.float64))
    return tf.add_n(dots)


def _dots_with(sample, first, direction, sum_of_dots):
    """(g_i·d [m], method) for a direction d (one array per variable) after the first pass `first`
    (`coherence.SampleSums`): from its factors, checked against Σ_i g_i·d = `sum_of_dots`
    (= ⟨S, d⟩); else forward mode, checked against the first pass's losses and the same sum;
    else the exact path."""
    factored = _factored_dots(first.factors, direction)
    if factored is not None:
        if _sums_to(sample.model, factored, sum_of_dots):
            return factored, FACTORED
        warnings.warn(
            f"cgh_tf.alignment: the factored g_i·d of model {sample.model.name!r} fail the check "
            "Σ_i g_i·d = ⟨S, d⟩; recomputing g_i·d in forward mode.", stacklevel=3)
    norm = math.sqrt(coherence.flat_dot(direction, direction))
    if norm == 0:  # d = 0: every g_i · d is 0
        return np.zeros_like(first.losses), FORWARD_MODE
    tangent = _unit_tangent(sample.model, direction, norm)
    dots, losses, method = _forward_or_exact(sample, tangent)
    _check_same_examples(sample.model, first.losses, losses)
    if method == FORWARD_MODE and not _sums_to(sample.model, dots * norm, sum_of_dots):
        warnings.warn(
            f"cgh_tf.alignment: the forward-mode derivatives of model {sample.model.name!r} fail "
            "the check Σ_i g_i·d = ⟨S, d⟩ (d = S, or ∇R with include_regularization; a layer "
            "whose forward-mode derivative TF computes wrongly, e.g. Keras' grouped Conv2D on "
            "CPU); recomputing g_i·d on the exact path "
            "(reverse over reverse, about twice the cost).", stacklevel=3)
        (dots, _), method = _exact_dots(sample, tangent), EXACT
    return dots * norm, method


def _unit_tangent(model, direction, norm):
    """d/‖d‖ per trainable variable, in the variable's dtype (a unit tangent keeps the forward-mode
    values in range in float16 however large m, and so ‖S‖, is)."""
    return [tf.cast(d / norm, v.dtype) for d, v in zip(direction, model.trainable_variables)]


def _tolerance(model):
    """The loosest tolerance among the compute dtype and the trainable variables' dtypes (LoRA
    keeps float32 factors in a float64 model)."""
    dtypes = {model.dtype_policy.compute_dtype} | {v.dtype for v in model.trainable_variables}
    return max(_TOLERANCE.get(tf.as_dtype(d), 5e-2) for d in dtypes)


def _sums_to(model, dots, sum_of_dots):
    """Σ_i g_i·d = ⟨S, d⟩, to the dtype's tolerance relative to Σ_i |g_i·d|."""
    return abs(np.sum(dots) - sum_of_dots) <= _tolerance(model) * np.sum(np.abs(dots))


def _check_same_examples(model, first_losses, second_losses):
    scale = np.mean(np.abs(first_losses)) + 1e-30
    worst = np.max(np.abs(first_losses - second_losses)) / scale
    if not worst <= _tolerance(model):
        raise ValueError(
            "alignment reads the sample twice and the second pass saw different per-example losses "
            f"(largest difference {worst:.3g} × the mean loss): the dataset must yield the same "
            "batches in the same order each time it is iterated (no reshuffling), and the model "
            "must be deterministic in the requested mode (no Dropout with training=True).")


def _forward_or_exact(sample, tangent):
    """(g_i·t [m], ℓ_i [m], method), t the unit tangent: forward mode, or the exact path if the
    forward-mode pass cannot be traced."""
    forward = coherence.compiled_for(sample.model, "alignment_forward", sample.loss, sample.training,
                                _build_forward)
    try:
        return (*_stream(forward, sample, tangent, trace_check=True), FORWARD_MODE)
    except _ForwardModeUntraceable as error:
        warnings.warn(
            f"cgh_tf.alignment: model {sample.model.name!r} cannot be differentiated in forward "
            f"mode ({error}); computing g_i·S on the exact path (reverse over reverse, about twice "
            "the cost).", stacklevel=4)
    return (*_exact_dots(sample, tangent), EXACT)


def _exact_dots(sample, tangent):
    exact = coherence.compiled_for(sample.model, "alignment_exact", sample.loss, sample.training,
                              _build_exact)
    return _stream(exact, sample, tangent)


class _ForwardModeUntraceable(Exception):
    """Tracing the forward-mode pass raised (the message names the original error)."""


def _stream(compiled, sample, tangent, trace_check=False):
    """(g_i·t [m], ℓ_i [m]) float64 over the sample, t the unit tangent, by `compiled`."""
    dots, losses = [], []
    for block in streaming.blocks(sample.x, sample.y, sample.batch_size, sample.sample_weight):
        function = compiled.stacked if block.stacked else compiled.single
        if trace_check:
            try:
                function.get_concrete_function(block.x, block.y, block.w, tangent)
            except Exception as error:  # noqa: BLE001 (any trace failure hands over to the exact path)
                raise _ForwardModeUntraceable(_one_line(error)) from error
        d, l = function(block.x, block.y, block.w, tangent)
        dots.append(np.reshape(d.numpy(), [-1]))
        losses.append(np.reshape(l.numpy(), [-1]))
    return np.concatenate(dots), np.concatenate(losses)


def _one_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}"


class _Compiled:
    """A per-batch `fn(x, y, w, tangent) -> (g_i·t [b], ℓ_i [b])` (float64), compiled for one
    batch and for a stacked block of batches (one graph loop)."""

    def __init__(self, per_batch):
        self.per_batch = per_batch
        self.single = streaming.PerRankFunction(per_batch)
        self.stacked = streaming.PerRankFunction(self._stacked)

    def _stacked(self, xs, ys, ws, tangent):
        return streaming.over_stacked_batches(
            lambda xb, yb, wb: self.per_batch(xb, yb, wb, tangent), (xs, ys, ws),
            (tf.float64,) * 2)


def _build_forward(model, loss_fn, training):
    """g_i·t for every example from one forward-mode pass: the JVP of the per-example losses."""
    variables = [v.value for v in model.trainable_variables]  # the tf.Variables behind Keras'

    def per_batch(xb, yb, wb, tangent):
        if not all(isinstance(v, tf.Variable) for v in variables):
            raise TypeError("a trainable variable's `.value` is not a tf.Variable")
        with tf.autodiff.ForwardAccumulator(variables, tangent) as accumulator:
            losses = loss_fn(yb, model(xb, training=training), wb)
        dots = accumulator.jvp(losses, unconnected_gradients="zero")
        return tf.cast(dots, tf.float64), tf.cast(losses, tf.float64)

    return _Compiled(per_batch)


def _build_exact(model, loss_fn, training):
    """g_i·t = ∂/∂c_i ⟨∇_w Σ_j c_j ℓ_j, t⟩ at c = 1: reverse over reverse, exact for any model
    whose gradient is twice differentiable by TF (also symbolic loops)."""
    variables = list(model.trainable_variables)

    def per_batch(xb, yb, wb, tangent):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                losses = loss_fn(yb, model(xb, training=training), wb)
                weights = tf.ones_like(losses)
                outer.watch(weights)
                total = tf.reduce_sum(weights * losses)
            grads = inner.gradient(total, variables, unconnected_gradients="zero")
            along = tf.add_n([tf.reduce_sum(tf.cast(tf.cast(tf.convert_to_tensor(g), t.dtype) * t,
                                                    tf.float64)) for g, t in zip(grads, tangent)])
        dots = outer.gradient(along, weights, unconnected_gradients="zero")
        return tf.cast(dots, tf.float64), tf.cast(losses, tf.float64)

    return _Compiled(per_batch)
