"""Per-example losses, gradients and squared gradient norms.

Notation: m examples, per-example loss ℓ_i, per-example gradient g_i = ∇_w ℓ_i (docs/design.md §1).

| function | returns | cost |
|---|---|---|
| `gradients_and_sq_norms` (the fast exact path) | Σ_i g_i per variable and ‖g_{i,v}‖² [m, V] | one forward, one backward pass (+ the fallback for layers without a rule) |
| `per_example_gradients` | every g_i, [m, *v.shape] per variable | the exact fallback for every variable, chunked over examples |
| `reduced_per_example_gradients` | a coordinate-wise reduction over examples (winsorized mean) | Dense kernels in column blocks, the rest by the fallback |
| `explain` | which way each layer is handled, and why | a trace on a sample batch (optional) |

The fast path instruments every layer that a rule of `cgh_tf.layer_rules` matches: while the model
runs, the rule records what it needs (layer input, pre-activation output z, ...) and reads the
layer's weights as watched stop-gradient copies. The single `tape.gradient` then returns b = ∂(Σ_i
ℓ_i)/∂z, each weight copy's gradient (the layer's share of Σ_i g_i) and the gradient of each variable
itself, which is None exactly when nothing outside the rule uses the variable. A variable whose own
gradient is not None (tied embeddings, a kernel read by another layer or a closure), read by two
layers, or a layer called on a tensor without the example axis, takes the exact fallback instead,
found structurally while tracing, with a warning once per layer. Because examples are independent
in inference mode, b_i is example i's output gradient and the rule's norms are exact.

Valid in inference mode (`training=False`, the default), where examples do not interact; with
`training=True` and layers that mix examples (BatchNormalization in training mode) the "per-example"
gradients are those of ℓ_i *within the batch*. Regularisation losses (`model.losses`) are not part
of ℓ_i and are not included (`coherence.measure(..., include_regularization=True)` offers ℓ_i + R:
`cgh_tf.regularization`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, NamedTuple, Sequence

import tensorflow as tf

from cgh_tf import (exact_fallback, keras_internals, layer_rules, loss_decomposition,
                    mode_dependence, regularization)
from cgh_tf.layer_rules import base
from cgh_tf.layer_rules.base import by_examples, concat_positions, shared_input_grams, sum_sq
from cgh_tf.api_types import Array, LossSpec, Nest

if TYPE_CHECKING:  # annotations only
    import keras

_DEFAULT_CHUNK_ELEMENTS = 2**25  # per-example gradient elements held at once (~128 MB float32)


class GradientSums(NamedTuple):
    """Result of `gradients_and_sq_norms` for a batch of m examples.

    losses:   [m] per-example losses.
    grad_sum: list aligned with `model.trainable_variables`: Σ_i g_i (shape of the variable), or
              None where the loss does not depend on the variable.
    sq_norms: [m, num_trainable_variables] per-example squared gradient norms ‖g_{i,v}‖² per
              variable v (float32, float64 if the model computes in float64).
    predictions: the model output for the m examples (for metrics in a train step).
    factors:  with `with_factors=True`, a list aligned with `model.trainable_variables`: the
              `layer_rules.Factors` of the rank-one per-example gradients of a variable whose rule
              gives them and holds (Dense applied once per example), else None; None otherwise.
    """

    losses: tf.Tensor
    grad_sum: list
    sq_norms: tf.Tensor
    predictions: object = None
    factors: list | None = None


# ----------------------------------------------------------------------------------------------
# Per-example losses


def per_example_loss_fn(model: keras.Model,
                        loss: LossSpec = None) -> loss_decomposition.LossDecomposition:
    """`fn(y_true, y_pred, sample_weight=None) -> [m]` per-example losses ℓ_i: the decomposition
    of the loss Keras computes for the batch (`cgh_tf.loss_decomposition`; mean_i ℓ_i = Keras'
    loss: masks on y_pred, sample weights, reductions, loss_weights, several outputs).

    loss: a `keras.losses.Loss`, a loss name, a function `(y_true, y_pred) -> [m]` or `[m, ...]`
      values (reduced as Keras reduces it: "sum_over_batch_size"), a dict / list of them (one per
      output), or None for the model's compiled loss.
    Raises ValueError if there is no loss or it cannot be decomposed per example.
    """
    return loss_decomposition.for_model(model, loss)


# ----------------------------------------------------------------------------------------------
# Materialised per-example gradients (the exact fallback for every variable)


def _to_tensors(x, y):
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    y = tf.nest.map_structure(tf.convert_to_tensor, y)
    m_x = tf.nest.flatten(x)[0].shape[0]
    m_y = _num_examples(y)
    if m_y != m_x:
        raise ValueError(f"x has {m_x} examples but y has {m_y}; they must match.")
    if m_x == 0:
        raise ValueError("Empty sample: x and y have no examples.")
    return x, y


def _num_examples(structure):
    """Static size of the example axis of a nest of tensors (its first tensor's)."""
    return tf.nest.flatten(structure)[0].shape[0]


def _first(structure, count=1):
    return tf.nest.map_structure(lambda t: t[:count], structure)


def _check_loss_on_one_example(model, x, y, loss_fn):
    """Runs the loss on the first example, eagerly, so that a loss that is not per example fails
    with its one-line error before any tracing (an exception raised while TF vectorizes a traced
    function can leave TF's distribution state inconsistent for later calls in the process)."""
    loss_fn(_first(y), model(_first(x), training=False))  # inference mode: no BatchNorm update


def per_example_gradients(model: keras.Model, x: Nest, y: Nest, loss: LossSpec = None,
                          training: bool = False, chunk_size: int | None = None,
                          sample_weight: Array | None = None,
                          include_regularization: bool = False) -> List[tf.Tensor]:
    """Per-example gradients g_i = ∇ℓ_i w.r.t. `model.trainable_variables`, ℓ_i the decomposition
    of Keras' loss of the batch (`per_example_loss_fn`; mean_i g_i = Keras' gradient).
    include_regularization=True: g_i = ∇(ℓ_i + R), R the weight regularisers' penalty
    (`cgh_tf.regularization`; mean_i g_i is then the gradient of Keras' whole objective);
    activity regularisers and `add_loss` penalties are refused in one line before any pass.

    x: array / tensor [m, ...] (or a nest of them); y: [m, ...] (or a nest, one per output);
    sample_weight: None, [m], [m, ...] or a nest per output, as in `keras.Model.fit`.
    chunk_size: examples per call of the exact fallback (`cgh_tf.exact_fallback`); the default
      keeps ≈ 2**25 gradient elements at once. Inside a `tf.function` the whole batch is one call.
    The batch's targets (masks, weights, divisors) come from one inference-mode forward pass.
    Returns a list aligned with `model.trainable_variables`, each a [m, *var.shape] tensor.
    """
    regularization.check_flag(include_regularization)
    mode_dependence.check_examples_independent(model, training, "per_example_gradients()")
    x, y = _to_tensors(x, y)
    loss_fn = per_example_loss_fn(model, loss)
    ensure_built(model, x)
    if not tf.inside_function():
        _check_loss_on_one_example(model, x, y, loss_fn)
    if include_regularization:
        regularization.check_weight_regularizers_only(model, _first(x), "include_regularization")
    grads = _loss_gradients(model, x, y, loss_fn, training, chunk_size, sample_weight)
    if not include_regularization:
        return grads
    return [g + tf.cast(r, g.dtype)[tf.newaxis] for g, r in zip(grads, regularization.gradient(model))]


def _loss_gradients(model, x, y, loss_fn, training, chunk_size, sample_weight):
    """`per_example_gradients` of ℓ_i alone: a list of [m, *var.shape] tensors."""
    targets = loss_fn.prepare(y, model(x, training=False), sample_weight)
    variables = list(model.trainable_variables)
    m = _num_examples(y)
    if m is None or tf.inside_function():
        # Inside a traced train step (batch size possibly unknown): one fallback call over the
        # batch; the caller's batch size bounds the memory.
        return exact_fallback.per_example_gradients(model, x, targets, loss_fn, variables, training)
    if chunk_size is None:
        num_params = max(1, sum(v.shape.num_elements() for v in variables))
        chunk_size = max(1, _DEFAULT_CHUNK_ELEMENTS // num_params)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}.")
    compute = tf.function(
        lambda xc, yc: exact_fallback.per_example_gradients(model, xc, yc, loss_fn, variables, training)
    )
    chunks = []
    for start in range(0, m, chunk_size):
        part = tf.nest.map_structure(lambda t: t[start:start + chunk_size], (x, targets))
        chunks.append(compute(*part))
    return [tf.concat([c[j] for c in chunks], axis=0) for j in range(len(variables))]


# ----------------------------------------------------------------------------------------------
# Fast path: which layer takes which rule


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How the per-example squared norms of one layer's own variables are computed.

    path: "outer/inner" layer path; rule: the `layer_rules` rule name, or "exact fallback";
    reason: why the fallback (empty for a rule); variables: number of the layer's own trainable
    variables.
    """

    path: str
    layer_class: str
    rule: str
    variables: int
    reason: str = ""


class Explanation(list):
    """A list of `LayerPlan`, printed as a table."""

    def __str__(self):
        rows = [("layer", "class", "per-example norms", "variables", "why")]
        rows += [(p.path, p.layer_class, p.rule, str(p.variables), p.reason) for p in self]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


FALLBACK = "exact fallback"
_NO_RULE = "no fast rule for this layer class (or its call is overridden, LoRA, quantized)"
_SHARED = "its variables are also used outside the layer (tied or shared weights)"
_NOT_PER_EXAMPLE = "it was called on a tensor without the example axis"

_FINDINGS = weakref.WeakKeyDictionary()  # model -> {layer path: reason found while tracing}
_WARNED = weakref.WeakKeyDictionary()  # model -> {layer paths warned about}


def _layers_with_paths(model):
    """[(layer, "outer/inner" path)] for every layer below `model`, depth first in the model's
    layer order; a layer reachable twice (a tied head holding another layer) keeps its first path."""
    found = {}

    def visit(layer, path):
        if id(layer) in found:
            return
        found[id(layer)] = (layer, path)
        for child in keras_internals.child_layers(layer):
            visit(child, f"{path}/{child.name}")

    for child in keras_internals.child_layers(model):
        visit(child, child.name)
    return list(found.values())


def _layer_paths(model):
    """{id(layer): path} (see `_layers_with_paths`)."""
    return {id(layer): path for layer, path in _layers_with_paths(model)}


def _own_variables(layer):
    """The trainable variables of `layer` not owned by one of its sublayers."""
    inner = {id(v) for child in keras_internals.child_layers(layer) for v in child.trainable_weights}
    return [v for v in layer.trainable_weights if id(v) not in inner]


def _rule_layers(model):
    """[(layer, rule)] for every layer that a rule matches and that has trainable variables."""
    chosen = []
    for layer in keras_internals.flatten_layers(model, include_self=False):
        rule = layer_rules.rule_for(layer)
        if rule is not None and layer.trainable_weights:
            chosen.append((layer, rule))
    return chosen


def explain(model: keras.Model, x: Nest | None = None, y: Nest | None = None,
            loss: LossSpec = None, training: bool = False) -> Explanation:
    """Which way each layer's per-example squared gradient norms are computed.

    One row per layer owning trainable variables: its fast rule (`cgh_tf.layer_rules`) or the exact
    fallback, and why. With a sample batch `x, y` (a few examples suffice), the engine is traced
    (not run) on it, which also finds variables used outside their layer (tied weights), since that
    is only visible in the computation. Unbuilt models are built on `x`.
    """
    if x is not None:
        x, y = _to_tensors(x, y)
        ensure_built(model, x)
        loss_fn = per_example_loss_fn(model, loss)
        trace = tf.function(lambda xb, yb: gradients_and_sq_norms(model, xb, yb, loss_fn, training).sq_norms)
        trace.get_concrete_function(x, y)
    elif not model.built:
        raise ValueError("explain(model) needs a built model, or a sample batch x, y to build it on.")
    paths = _layer_paths(model)
    # A rule covers its layer's variables, also those its sublayers own (an RNN's cell).
    covering = {id(v): (rule, paths.get(id(layer), layer.name))
                for layer, rule in _rule_layers(model) for v in layer.trainable_weights}
    findings = _FINDINGS.get(model, {})
    plans = Explanation()
    for layer in keras_internals.flatten_layers(model, include_self=False):
        own = _own_variables(layer)
        if not own:
            continue
        path = paths.get(id(layer), layer.name)
        rule, ruling_path = covering.get(id(own[0]), (None, path))
        reason = findings.get(path, findings.get(ruling_path, "" if rule is not None else _NO_RULE))
        name = rule.name if rule is not None and not reason else FALLBACK
        plans.append(LayerPlan(path, type(layer).__name__, name, len(own), reason))
    return plans


def _note_fallback(model, paths, layer, reason):
    """Records (for `explain`) and warns once per model and layer that `layer` takes the fallback."""
    path = paths.get(id(layer), layer.name)
    _FINDINGS.setdefault(model, {})[path] = reason
    warned = _WARNED.setdefault(model, set())
    if path not in warned:
        warned.add(path)
        warnings.warn(
            f"cgh_tf: per-example gradient norms of layer '{path}' ({type(layer).__name__}) take "
            f"the exact fallback because {reason}: one backward pass per example for its "
            f"{len(layer.trainable_weights)} variable(s) instead of one for the batch. "
            "`cgh_tf.per_example.explain(model, x, y)` lists every layer's path.", stacklevel=3)


def ensure_built(model: keras.Model, x: Nest) -> None:
    """Builds an unbuilt model by calling it on `x`, as Keras' own first call does (inside a
    traced train step too, where Keras creates the variables on the first trace)."""
    if not model.built or not model.trainable_variables:
        model(x, training=False)


@contextlib.contextmanager
def instrumented(tape: tf.GradientTape,
                 layers_and_rules: Sequence[tuple]) -> Iterator[None]:
    """Temporarily replaces `call` of each layer by its rule's recording version.

    Yields {id(layer): [LayerCall, ...]}, filled as the layers are called under `tape`.
    """
    records = {id(layer): [] for layer, _ in layers_and_rules}
    with contextlib.ExitStack() as stack:
        for layer, rule in layers_and_rules:

            def recording_call(inputs, *args, _layer=layer, _rule=rule, **kwargs):
                ctx = layer_rules.CallContext(tape, _layer)
                outputs = _rule.call(_layer, inputs, ctx, *args, **kwargs)
                records[id(_layer)].append(ctx.record)
                return outputs

            stack.enter_context(keras_internals.call_replaced(layer, recording_call))
        yield records


def _result_dtype(variables):
    return tf.float64 if any(tf.as_dtype(v.dtype) == tf.float64 for v in variables) else tf.float32


def _same_examples(tensor, m):
    """False when `tensor`'s first axis is statically known and differs from the m examples."""
    first = tensor.shape[0] if tensor.shape.rank else None
    return first is None or m is None or first == m


class _Pass(NamedTuple):
    """The forward and backward pass of the fast path, before the rules' statistics."""

    losses: tf.Tensor
    predictions: object
    targets: loss_decomposition.Targets  # the batch's labels and loss coefficients
    records: dict          # id(layer) -> [LayerCall]
    output_grads: list     # aligned with the flattened outputs of `records`
    weight_grads: dict     # id(weight value tensor) -> tape gradient
    variable_grads: dict   # id(variable) -> tape gradient (None: unused outside the rules)


def _forward_backward(model, x, y, loss_fn, training, layers_and_rules, sample_weight, loss_scale):
    variables = list(model.trainable_variables)
    with tf.GradientTape() as tape:
        with instrumented(tape, layers_and_rules) as records:
            y_pred = model(x, training=training)
        targets = loss_fn.prepare(y, y_pred, sample_weight, loss_scale)
        losses = loss_fn(targets, y_pred)
        total = tf.reduce_sum(losses)
    calls = [c for layer, _ in layers_and_rules for c in records[id(layer)]]
    outputs = [z for c in calls for z in c.outputs]
    watched = [value for c in calls for _, value, tape_sum in c.weights.values() if tape_sum]
    grads = tape.gradient(total, outputs + watched + variables)
    n_out, n_w = len(outputs), len(watched)
    output_grads = [tf.zeros_like(z) if g is None else g for z, g in zip(outputs, grads[:n_out])]
    return _Pass(losses, y_pred, targets, records, output_grads,
                 {id(w): g for w, g in zip(watched, grads[n_out:n_out + n_w])},
                 {id(v): g for v, g in zip(variables, grads[n_out + n_w:])})


def _fallback_reason(layer, calls, p, readers, m):
    """Why `layer`'s rule cannot be trusted on this trace, or "" (all checks are structural)."""
    for call in calls:
        if not all(_same_examples(z, m) for z in call.outputs):
            return _NOT_PER_EXAMPLE
        for var_id in call.weights:
            if p.variable_grads.get(var_id) is not None or readers[var_id] != {id(layer)}:
                return _SHARED
    return ""


@tf.autograph.experimental.do_not_convert
def gradients_and_sq_norms(model: keras.Model, x: Nest, y: Nest,
                           loss_fn: Callable[..., tf.Tensor] | None = None, training: bool = False,
                           sample_weight: Array | None = None,
                           loss_scale: float | tf.Tensor | None = None,
                           with_factors: bool = False) -> GradientSums:
    """Σ_i g_i and per-example squared norms ‖g_{i,v}‖² per variable, from one backward pass.

    Traceable (use inside `tf.function`, also with `jit_compile=True`). Layers with a rule in
    `cgh_tf.layer_rules` take it; every other variable, and the variables of a ruled layer that
    are also used outside it (found while tracing: see `layer_rules.base`), take the exact
    fallback for their variables only, with a warning once per layer (`explain` lists them).
    x: model input for m examples; y: [m, ...] targets (a nest for several outputs); loss_fn: as
    `per_example_loss_fn`'s `loss`. sample_weight: None, [m], [m, ...] (per token) or a nest per
    output, as in a Keras train step: ℓ_i is the decomposition of Keras' weighted batch loss, so
    with per-example weights w_i its gradient is w_i g_i. loss_scale: optional scalar multiplying
    every ℓ_i (mixed precision's loss scale). with_factors: also return the rank-one factors of
    the per-example gradients where a rule proves them (`GradientSums.factors`).
    Returns `GradientSums(losses [m] (ℓ_i × loss_scale), grad_sum [per variable or None],
    sq_norms [m, V], predictions, factors)`.
    """
    loss_fn = per_example_loss_fn(model, loss_fn)
    ensure_built(model, x)
    variables = list(model.trainable_variables)
    if not variables:
        raise ValueError(
            f"The model {model.name!r} has no trainable variables (is it built? call it on a batch "
            "or give it a keras.Input); per-example gradients need at least one.")
    layers_and_rules = _rule_layers(model)
    p = _forward_backward(model, x, y, loss_fn, training, layers_and_rules, sample_weight,
                          loss_scale)
    grad_sum_of = {id(v): p.variable_grads[id(v)] for v in variables}
    dtype = _result_dtype(variables)
    factors_of = {}
    sq_norm_of = _rule_statistics(model, p, layers_and_rules, grad_sum_of, dtype, factors_of)
    unruled = {id(v) for v in variables} - set(sq_norm_of)
    if unruled:
        paths = _layer_paths(model)
        for layer in keras_internals.flatten_layers(model, include_self=True):
            if any(id(v) in unruled for v in _own_variables(layer)) and layer is not model:
                if paths.get(id(layer), layer.name) not in _FINDINGS.get(model, {}):
                    _note_fallback(model, paths, layer, _NO_RULE)
    fallback = [v for v in variables if id(v) in unruled]
    fallback_grads = exact_fallback.per_example_gradients(model, x, p.targets, loss_fn, fallback,
                                                          training)
    for v, per_example in zip(fallback, fallback_grads):
        sq_norm_of[id(v)] = tf.cast(sum_sq(per_example), dtype)

    sq_norms = tf.stack([sq_norm_of[id(v)] for v in variables], axis=1)
    grad_sum = [_dense(grad_sum_of.get(id(v))) for v in variables]
    factors = [factors_of.get(id(v)) for v in variables] if with_factors else None
    return GradientSums(p.losses, grad_sum, sq_norms, p.predictions, factors)


@shared_input_grams()  # Q, K and V of self-attention: one Gram of their input
def _rule_statistics(model, p, layers_and_rules, grad_sum_of, dtype, factors_of):
    """Every ruled layer's statistics from the pass `p`: adds the layer's contributions to Σ_i g_i
    into `grad_sum_of` ({id(variable): gradient}) and returns {id(variable): squared norms [m]}
    for the variables whose rule holds, whose factors (where the rule gives them) it puts in
    `factors_of` ({id(variable): `layer_rules.Factors`}); a layer whose rule does not hold is
    noted as a fallback."""
    readers = {}
    for layer, _ in layers_and_rules:
        for call in p.records[id(layer)]:
            for var_id in call.weights:
                readers.setdefault(var_id, set()).add(id(layer))
    base.note_input_readers([c for layer, _ in layers_and_rules for c in p.records[id(layer)]])
    m = p.losses.shape[0]
    sq_norm_of, paths = {}, None
    outputs = iter(p.output_grads)
    for layer, rule in layers_and_rules:
        calls = p.records[id(layer)]
        for call in calls:
            call.output_grads = [next(outputs) for _ in call.outputs]
        for call in calls:  # the layer's own contributions to Σ_i g_i
            for var_id, (var, value, tape_sum) in call.weights.items():
                if tape_sum:
                    grad_sum_of[var_id] = _add(grad_sum_of[var_id], p.weight_grads[id(value)], var)
        if not calls:
            continue
        reason = _fallback_reason(layer, calls, p, readers, m)
        statistics = rule.statistics(layer, calls)
        for var_id, stat in statistics.items():
            if stat.grad_sum is not None:
                var = calls[0].weights[var_id][0]
                grad_sum_of[var_id] = _add(grad_sum_of[var_id], stat.grad_sum, var)
            if not reason:
                sq_norm_of[var_id] = tf.cast(stat.sq_norms, dtype)
                if stat.factors is not None:
                    factors_of[var_id] = stat.factors
        if reason:
            paths = paths or _layer_paths(model)
            _note_fallback(model, paths, layer, reason)
    return sq_norm_of


def _add(total, gradient, variable):
    """total + gradient (None = zero), densified and cast to the variable's dtype."""
    if gradient is None:
        return total
    gradient = tf.cast(_dense(gradient), variable.dtype)
    return gradient if total is None else _dense(total) + gradient


# Per-example gradients of one reduced block: examples × coordinates, in float32 elements.
REDUCE_BLOCK_ELEMENTS = 1 << 22


@tf.autograph.experimental.do_not_convert
def reduced_per_example_gradients(model: keras.Model, x: Nest, y: Nest,
                                  reduce: Callable[..., tf.Tensor],
                                  loss_fn: Callable[..., tf.Tensor] | None = None,
                                  training: bool = False,
                                  block_elements: int = REDUCE_BLOCK_ELEMENTS,
                                  reduce_outer: Callable[..., tf.Tensor | None] | None = None,
                                  with_sums: bool = False, sample_weight: Array | None = None,
                                  loss_scale: float | tf.Tensor | None = None) -> Any:
    """A coordinate-wise reduction over the examples of the per-example gradients of every
    trainable variable, never materialising more than a block of them.

    Dense kernels and biases come from the layer input a and output gradient b of a single backward
    pass (kernel: g_i = Σ_t a_{i,t} ⊗ b_{i,t}; bias: Σ_t b_{i,t}); a kernel's per-example gradients
    are built and reduced a few output columns at a time, at most about `block_elements` values
    (m × fan_in × columns) per block. Every other variable comes from the exact fallback restricted
    to those variables, materialised whole. Valid where examples are independent (as the fast path:
    inference mode, or no layer that mixes the batch).

    Args:
      reduce: `reduce(g, axis)` with g [..., m, ...] holding the examples on `axis`, returning g
        without that axis; it must treat every coordinate on its own (e.g.
        `lambda g, axis: robust.winsorized_mean(g, 2.0, axis)`). Kernel blocks arrive as
        [fan_in, columns, m] (axis=-1: the layout top_k reads without a transpose); the rest as
        [m, *var.shape] (axis=0).
      block_elements: bound on m × fan_in × columns per kernel block (memory, in elements).
      reduce_outer: optional `reduce_outer(a, b)`, a [m, fan_in], b [m, fan_out] -> the same
        reduction of the outer products a_i ⊗ b_i as [fan_in, fan_out], or None where it does not
        apply (e.g. `robust.winsorized_mean_of_outer_products`); tried first for Dense layers
        applied once per example (no sequence axis).
      with_sums: also return the `GradientSums` of the same pass (Σ_i g_i, per-example squared
        norms, per-example losses, predictions), so the coherence metrics need no pass of their own.
      sample_weight, loss_scale: as in `gradients_and_sq_norms`.
    Returns:
      A list aligned with `model.trainable_variables` (None where the loss does not depend on it);
      with `with_sums`, the pair (that list, `GradientSums`).
    """
    loss_fn = per_example_loss_fn(model, loss_fn)
    variables = list(model.trainable_variables)
    dense = [(layer, rule) for layer, rule in _rule_layers(model) if rule is layer_rules.DenseRule]
    with tf.GradientTape() as tape:
        with instrumented(tape, dense) as records:
            y_pred = model(x, training=training)
        targets = loss_fn.prepare(y, y_pred, sample_weight, loss_scale)
        losses = loss_fn(targets, y_pred)
        total = tf.reduce_sum(losses)
    calls = [(layer, call) for layer, _ in dense for call in records[id(layer)]]
    grads = tape.gradient(total, [call.outputs[0] for _, call in calls] + variables)
    output_grads, variable_grads = grads[:len(calls)], grads[len(calls):]
    shared = {id(v) for v, g in zip(variables, variable_grads) if g is not None}
    reduced, sums = {}, {} if with_sums else None
    for layer, _ in dense:
        mine = [(c, g) for (owner, c), g in zip(calls, output_grads) if owner is layer]
        if mine and not any(id(v) in shared for v in layer.trainable_weights):
            reduced.update(_reduced_dense_gradients(layer, mine, reduce, block_elements,
                                                    reduce_outer, sums))
    rest = [v for v in variables if id(v) not in reduced]
    for v, g in zip(rest, exact_fallback.per_example_gradients(model, x, targets, loss_fn, rest,
                                                               training)):
        reduced[id(v)] = reduce(g, 0)
        if with_sums:
            sums[id(v)] = (tf.reduce_sum(g, axis=0), sum_sq(g))
    result = [reduced.get(id(v)) for v in variables]
    if not with_sums:
        return result
    dtype = _result_dtype(variables)
    sq_norms = tf.stack([tf.cast(sums[id(v)][1], dtype) for v in variables], axis=1)
    grad_sum = [tf.cast(sums[id(v)][0], v.dtype) for v in variables]
    return result, GradientSums(losses, grad_sum, sq_norms, y_pred)


def _reduced_dense_gradients(layer, calls_and_grads, reduce, block_elements, reduce_outer=None,
                             sums=None):
    """{id(var): reduced per-example gradients} for a Dense layer's kernel and bias.

    With a dict `sums`, also stores {id(var): (Σ_i g_i, [m] ‖g_i‖²)} for kernel and bias (from the
    same a and b: ‖Σ_t a_t ⊗ b_t‖² = Σ_{s,t} (a_s·a_t)(b_s·b_t)).
    """
    fan_in, fan_out = layer.kernel.shape
    dtype = layer.kernel.dtype
    a = tf.cast(concat_positions([by_examples(c["inputs"], fan_in) for c, _ in calls_and_grads]),
                dtype)
    b = tf.cast(concat_positions([by_examples(tf.zeros_like(c.outputs[0]) if g is None else g,
                                              fan_out) for c, g in calls_and_grads]), dtype)
    kernel = None
    if reduce_outer is not None and a.shape[1] == 1:
        kernel = reduce_outer(a[:, 0], b[:, 0])
    if kernel is None:
        kernel = _reduced_kernel_in_blocks(a, b, reduce, block_elements)
    out = {id(layer.kernel): kernel}
    if layer.bias is not None:
        out[id(layer.bias)] = reduce(tf.reduce_sum(b, axis=1), 0)
    if sums is not None:
        if a.shape[1] == 1:
            kernel_sq = tf.reduce_sum(tf.square(a[:, 0]), 1) * tf.reduce_sum(tf.square(b[:, 0]), 1)
        else:
            kernel_sq = tf.reduce_sum(tf.einsum("msi,mti->mst", a, a)
                                      * tf.einsum("mso,mto->mst", b, b), axis=[1, 2])
        sums[id(layer.kernel)] = (tf.einsum("mti,mto->io", a, b), kernel_sq)
        if layer.bias is not None:
            bias = tf.reduce_sum(b, axis=1)
            sums[id(layer.bias)] = (tf.reduce_sum(bias, axis=0), sum_sq(bias))
    return out


def _reduced_kernel_in_blocks(a, b, reduce, block_elements):
    """`reduce` of the per-example kernel gradients Σ_t a_t ⊗ b_t, a few output columns at a time.

    a: [m, T, fan_in], b: [m, T, fan_out] -> [fan_in, fan_out].
    """
    fan_in, fan_out = a.shape[-1], b.shape[-1]
    examples = a.shape[0] or 256  # a dynamic batch is budgeted as 256 examples
    columns = max(1, block_elements // (examples * fan_in))
    blocks = [reduce(tf.einsum("mti,mto->iom", a, b[..., lo:lo + columns]), -1)
              for lo in range(0, fan_out, columns)]
    return blocks[0] if len(blocks) == 1 else tf.concat(blocks, axis=1)


def _dense(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


# ----------------------------------------------------------------------------------------------
# Variables -> layer names


def variable_layer_names(model: keras.Model) -> List[str]:
    """Name of the layer owning each trainable variable, aligned with `model.trainable_variables`.

    Nested models and layers give a path, e.g. "encoder/dense_1": the owner is the innermost layer
    holding the variable itself (not through a sublayer). A variable reachable from several layers
    (tied weights: a head holding the Embedding layer or its matrix) belongs to the first one met in
    the model's layer order, usually the layer that created it. Variables created by the model
    itself are named after the model.
    """
    owner = {}
    for layer, path in _layers_with_paths(model):
        for v in _own_variables(layer):
            owner.setdefault(id(v), path)
    return [owner.get(id(v), model.name) for v in model.trainable_variables]
