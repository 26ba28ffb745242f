"""Per-example losses, gradients and squared gradient norms.

Notation: m examples, per-example loss ℓ_i, per-example gradient g_i = ∇_w ℓ_i (DESIGN.md §1).

Two ways to get per-example information:

* `per_example_gradients` materialises every g_i (one `[m, *var.shape]` tensor per trainable
  variable) with `tf.vectorized_map`, chunked over examples so memory stays bounded.
* `gradients_and_sq_norms` (the **fast exact path**, DESIGN.md §3) returns Σ_i g_i and the
  per-example squared norms ‖g_i‖² per variable from **one** forward and **one** backward pass,
  without materialising g_i. Supported layers are temporarily instrumented: their `call` records
  the layer input `a` and the pre-activation output `z` (z = conv/matmul(a) + bias, activation
  after), and the single `tape.gradient` returns both the parameter gradients and b = ∂(Σ_i ℓ_i)/∂z.
  Because examples are independent in inference mode, b_i is example i's output gradient.

Layer rules of the fast path (exact `keras.layers` types whose `call` is not overridden; m examples,
T positions per example, "·" dot product over features):

| layer | recorded | ‖∇ kernel ℓ_i‖² | ‖∇ bias ℓ_i‖² | Σ_i g_i from |
|---|---|---|---|---|
| Dense (input [m, ..., i]) | a [m,T,i], b [m,T,o] | T=1: ‖a‖²‖b‖²; else Σ_{s,t}(a_s·a_t)(b_s·b_t) or ‖Σ_t a_t b_tᵀ‖² (cheaper by cost) | ‖Σ_t b_t‖² | tape |
| Conv1D / Conv2D (channels_last, groups=1; dilation and the Gram form need a static spatial shape) | patches P [m,L,K] (im2col, from one strided slice per kernel offset), b [m,L,o] | Σ_{p,q}(P_p·P_q)(b_p·b_q) or ‖G_i‖² with G_i = P_iᵀ b_i materialised per example (TF's filter-gradient kernel per example; with dilation one batched matmul per offset) (cheaper by cost) | ‖Σ_p b_p‖² | Σ_i G_i (materialised; the tape skips the filter gradient), or tape (Gram) |
| Embedding | ids [m,T], b [m,T,d] | Σ_{s,t}[id_s = id_t](b_s·b_t) | – | tape (densified) |
| LayerNormalization | x̂ [m,...] (normalised input), b | γ: ‖Σ_pos b ⊙ x̂‖² | β: ‖Σ_pos b‖² | tape |
| any other layer with trainable weights, LoRA / quantized layers, weights shared between layers | – | `tf.vectorized_map` of the per-example gradient, only for that layer's variables | same | tape |

Cost model for the "or" cells (per example): Gram form T²·(i+o) multiply-adds and T² memory;
materialised form T·i·o multiply-adds and i·o memory. The cheaper is chosen per layer at trace time.
A layer called several times (shared layer) is handled by concatenating its calls along T.

Valid in inference mode (`training=False`, the default), where examples do not interact; with
`training=True` and layers that mix examples (BatchNormalization in training mode) the "per-example"
gradients of the fast path are those of ℓ_i *within the batch*. Regularisation losses
(`model.losses`) are not part of ℓ_i and are not included.
"""

import contextlib
import dataclasses
from typing import Callable, List, NamedTuple, Optional

import keras
import tensorflow as tf

_PER_EXAMPLE_MARK = "_cgh_per_example_loss"
_DEFAULT_CHUNK_ELEMENTS = 2**25  # per-example gradient elements held at once (~128 MB float32)


class GradientSums(NamedTuple):
    """Result of `gradients_and_sq_norms` for a batch of m examples.

    losses:   [m] per-example losses.
    grad_sum: list aligned with `model.trainable_variables`: Σ_i g_i (shape of the variable), or
              None where the loss does not depend on the variable.
    sq_norms: [m, num_trainable_variables] per-example squared gradient norms ‖g_{i,v}‖² per
              variable v (float32, float64 if the model computes in float64).
    predictions: the model output for the m examples (for metrics in a train step).
    """

    losses: tf.Tensor
    grad_sum: list
    sq_norms: tf.Tensor
    predictions: object = None


# ----------------------------------------------------------------------------------------------
# Per-example losses


def per_example_loss_fn(model, loss=None) -> Callable:
    """Returns `fn(y_true, y_pred) -> [m]` per-example losses.

    loss: a `keras.losses.Loss` (its reduction is ignored, its `.call` is used), a loss name
      ("sparse_categorical_crossentropy"), a function `(y_true, y_pred) -> [m]` or `[m, ...]`, or
      None for the model's compiled loss (`model.loss`). Losses with extra axes (e.g. per token,
      [m, T]) are averaged over them, which matches Keras' "sum_over_batch_size" reduction.
    Raises ValueError if there is no loss or it returns a scalar (not computable per example).
    """
    if getattr(loss, _PER_EXAMPLE_MARK, False):
        return loss
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "No loss: the model is not compiled with a loss. Pass `loss=` (a keras.losses.Loss, "
                "a loss name or a function (y_true, y_pred) -> per-example losses) or compile the model."
            )
    if isinstance(loss, (list, tuple, dict)):
        raise TypeError(
            f"Only single-output models with a single loss are supported; got a {type(loss).__name__} "
            "of losses."
        )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        loss_call = loss.call
    elif callable(loss):
        loss_call = loss
    else:
        raise TypeError(
            f"`loss` must be a keras.losses.Loss, a loss name, a callable or None; got {loss!r}."
        )

    def per_example_losses(y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        if y_true.dtype.is_floating and y_pred.dtype.is_floating and y_true.dtype != y_pred.dtype:
            y_true = tf.cast(y_true, y_pred.dtype)
        values = tf.convert_to_tensor(loss_call(y_true, y_pred))
        if values.shape.rank == 0:
            raise ValueError(
                f"The loss {loss!r} returned a scalar, so it cannot be computed per example; it must "
                "return one value per example (shape [m] or [m, ...])."
            )
        m_pred, m_loss = y_pred.shape[0], values.shape[0]
        if m_pred is not None and m_loss is not None and m_pred != m_loss:
            raise ValueError(
                f"The loss returned shape {values.shape} for {m_pred} examples; the first axis must "
                "be the example axis."
            )
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    setattr(per_example_losses, _PER_EXAMPLE_MARK, True)
    return per_example_losses


# ----------------------------------------------------------------------------------------------
# Materialised per-example gradients (vectorized_map)


def _expand(structure):
    return tf.nest.map_structure(lambda t: tf.expand_dims(t, 0), structure)


def _num_examples(x):
    """Static or dynamic number of examples (first axis of the first tensor in x)."""
    first = tf.nest.flatten(x)[0]
    return first.shape[0] if first.shape[0] is not None else tf.shape(first)[0]


@tf.autograph.experimental.do_not_convert
def _vmap_gradients(model, x, y, loss_fn, variables, training=False):
    """[m, *v.shape] per-example gradients of `variables` (zeros where unconnected). Traceable."""
    if not variables:
        return []

    def one_example(example):
        xi, yi = example
        with tf.GradientTape() as tape:
            y_pred = model(_expand(xi), training=training)
            loss_value = tf.reduce_sum(loss_fn(_expand(yi), y_pred))
        grads = tape.gradient(loss_value, variables)
        return [
            tf.zeros(v.shape, v.dtype) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables)
        ]

    return tf.vectorized_map(one_example, (x, y))


def _to_tensors(x, y):
    x = tf.nest.map_structure(tf.convert_to_tensor, x)
    y = tf.convert_to_tensor(y)
    m_x = tf.nest.flatten(x)[0].shape[0]
    if y.shape[0] != m_x:
        raise ValueError(f"x has {m_x} examples but y has {y.shape[0]}; they must match.")
    if m_x == 0:
        raise ValueError("Empty sample: x and y have no examples.")
    return x, y


def per_example_gradients(model, x, y, loss=None, training=False, chunk_size=None):
    """Per-example gradients g_i of the per-example loss w.r.t. `model.trainable_variables`.

    x: array / tensor [m, ...] (or a nest of them); y: [m, ...].
    chunk_size: examples per vectorized_map call; default keeps ≈ 2**25 gradient elements at once.
      Called inside a `tf.function` (e.g. a train step), the whole batch is one call.
    Returns a list aligned with `model.trainable_variables`, each a [m, *var.shape] tensor.
    """
    x, y = _to_tensors(x, y)
    loss_fn = per_example_loss_fn(model, loss)
    variables = list(model.trainable_variables)
    m = y.shape[0]
    if m is None or tf.inside_function():
        # Inside a traced train step (batch size possibly unknown): one vectorized_map over the
        # batch; the caller's batch size bounds the memory.
        return _vmap_gradients(model, x, y, loss_fn, variables, training)
    if chunk_size is None:
        num_params = max(1, sum(v.shape.num_elements() for v in variables))
        chunk_size = max(1, _DEFAULT_CHUNK_ELEMENTS // num_params)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}.")
    compute = tf.function(
        lambda xc, yc: _vmap_gradients(model, xc, yc, loss_fn, variables, training)
    )
    chunks = []
    for start in range(0, m, chunk_size):
        x_chunk = tf.nest.map_structure(lambda t: t[start:start + chunk_size], x)
        chunks.append(compute(x_chunk, y[start:start + chunk_size]))
    return [tf.concat([c[j] for c in chunks], axis=0) for j in range(len(variables))]


# ----------------------------------------------------------------------------------------------
# Fast path: layer rules


@dataclasses.dataclass
class _Call:
    """One recorded call of an instrumented layer: rule-specific input and pre-activation output."""

    inputs: tf.Tensor
    z: tf.Tensor
    extra: dict = dataclasses.field(default_factory=dict)


def _by_examples(t, features):
    """Reshape [m, ..., features] to [m, T, features] (T static when the input shape allows)."""
    positions = t.shape[1:-1].num_elements()
    return tf.reshape(t, tf.stack([tf.shape(t)[0], -1 if positions is None else positions, features]))


def _concat_positions(tensors):
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=1)


def _sum_sq(t):
    """Per-example sum of squares over all non-example axes: [m, ...] -> [m]."""
    return tf.reduce_sum(tf.square(t), axis=list(range(1, t.shape.rank)))


def _gram_sq_norm(a, b):
    """Σ_{s,t} (a_s·a_t)(b_s·b_t) for a [m,T,i], b [m,T,o] -> [m]."""
    return tf.reduce_sum(tf.matmul(a, a, transpose_b=True) * tf.matmul(b, b, transpose_b=True), [1, 2])


def _prefer_gram(positions, fan_in, fan_out):
    """True if the Gram form T²(i+o) is cheaper than materialising T·i·o (unknown T: Gram)."""
    if positions is None:
        return True
    return positions * (fan_in + fan_out) <= fan_in * fan_out


def _unmodified(layer, cls):
    return isinstance(layer, cls) and type(layer).call is cls.call


def _plain(layer):
    return not getattr(layer, "lora_enabled", False) and getattr(layer, "quantization_mode", None) is None


class _DenseRule:
    """Dense: z = a W + c."""

    @staticmethod
    def matches(layer):
        return _unmodified(layer, keras.layers.Dense) and _plain(layer)

    @staticmethod
    def call(layer, inputs, record):
        z = keras.ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            z = keras.ops.add(z, layer.bias)
        record(_Call(inputs, z))
        return layer.activation(z) if layer.activation is not None else z

    @staticmethod
    def supplies_grad_sum(layer, calls):
        return set()

    @staticmethod
    def statistics(layer, calls, output_grads):
        fan_in, fan_out = layer.kernel.shape
        a = _concat_positions([_by_examples(c.inputs, fan_in) for c in calls])
        b = _concat_positions([_by_examples(g, fan_out) for g in output_grads])
        positions = a.shape[1]
        if positions == 1:
            kernel_sq = _sum_sq(a) * _sum_sq(b)
        elif _prefer_gram(positions, fan_in, fan_out):
            kernel_sq = _gram_sq_norm(a, b)
        else:
            kernel_sq = _sum_sq(tf.einsum("mti,mto->mio", a, b))
        out = {id(layer.kernel): (kernel_sq, None)}
        if layer.bias is not None:
            out[id(layer.bias)] = (_sum_sq(tf.reduce_sum(b, axis=1)), None)
        return out


class _ConvRule:
    """Conv1D / Conv2D (channels_last, groups=1): z = conv(a, W) + c, via im2col patches."""

    @staticmethod
    def matches(layer):
        conv = _unmodified(layer, keras.layers.Conv1D) or _unmodified(layer, keras.layers.Conv2D)
        return (
            conv and _plain(layer) and layer.data_format == "channels_last"
            and getattr(layer, "groups", 1) == 1
        )

    @staticmethod
    def call(layer, inputs, record):
        padding = layer.padding
        if padding == "causal":
            inputs = keras.ops.pad(inputs, layer._compute_causal_padding())
            padding = "valid"
        z = keras.ops.conv(
            inputs, layer.kernel, strides=list(layer.strides), padding=padding,
            dilation_rate=layer.dilation_rate, data_format=layer.data_format,
        )
        if layer.use_bias:
            z = keras.ops.add(z, keras.ops.reshape(layer.bias, (1,) * (layer.rank + 1) + (layer.filters,)))
        record(_Call(inputs, z, {"padding": padding}))
        return layer.activation(z) if layer.activation is not None else z

    @staticmethod
    def _shifted_inputs(layer, call):
        """One [m, L, in_channels] slice of the input per kernel offset (row-major kernel order).

        Slice k holds, for every output position, the input pixel that kernel offset k multiplies,
        so concatenating them along channels gives the im2col patches [m, L, K]."""
        inputs = call.inputs
        kernel, strides, rates = list(layer.kernel_size), list(layer.strides), list(layer.dilation_rate)
        if layer.rank == 1:
            inputs = tf.expand_dims(inputs, 1)
            kernel, strides, rates = [1] + kernel, [1] + strides, [1] + rates
        out_sizes = list(call.z.shape[1:-1]) if layer.rank == 2 else [1, call.z.shape[1]]
        in_sizes = list(inputs.shape[1:3])
        if None in out_sizes or None in in_sizes:
            raise ValueError("Conv fast rule needs static spatial shapes.")
        if call.extra["padding"] == "same":
            paddings = [[0, 0]]
            for size, out, k, s, d in zip(in_sizes, out_sizes, kernel, strides, rates):
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                paddings.append([total // 2, total - total // 2])
            inputs = tf.pad(inputs, paddings + [[0, 0]])
        slices = []
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                piece = inputs[
                    :,
                    i * rates[0]: i * rates[0] + (out_sizes[0] - 1) * strides[0] + 1: strides[0],
                    j * rates[1]: j * rates[1] + (out_sizes[1] - 1) * strides[1] + 1: strides[1],
                ]
                slices.append(_by_examples(piece, piece.shape[-1]))
        return slices

    @staticmethod
    def _use_gram(layer, calls):
        sizes = [c.z.shape[1:-1].num_elements() for c in calls]
        if None in sizes:  # unknown spatial size: materialise (needs no static shape)
            return False
        return _prefer_gram(sum(sizes), layer.kernel.shape[:-1].num_elements(), layer.filters)

    @classmethod
    def supplies_grad_sum(cls, layer, calls):
        return set() if not calls or cls._use_gram(layer, calls) else {id(layer.kernel)}

    @staticmethod
    def _per_example_kernel_grads(layer, call, output_grad):
        """[m, *kernel.shape] per-example kernel gradients G_i of one call.

        Without dilation: TF's own filter-gradient kernel on each example (a while loop of batch-1
        Conv2DBackpropFilter, as fast as the batch filter gradient). With dilation: one batched
        matmul per kernel offset, G_i[offset] = Σ_p a_i[p + offset] ⊗ b_i[p]."""
        kernel_shape = layer.kernel.shape
        if all(d == 1 for d in layer.dilation_rate):
            inputs, grads = call.inputs, output_grad
            strides = [1, *layer.strides, 1]
            filter_shape = list(kernel_shape)
            if layer.rank == 1:
                inputs, grads = tf.expand_dims(inputs, 1), tf.expand_dims(grads, 1)
                strides, filter_shape = [1, 1, *layer.strides, 1], [1, *filter_shape]

            def one_example(example):
                return tf.raw_ops.Conv2DBackpropFilter(
                    input=example[0][None], filter_sizes=filter_shape, out_backprop=example[1][None],
                    strides=strides, padding=call.extra["padding"].upper(),
                )

            per_example = tf.map_fn(
                one_example, (inputs, tf.cast(grads, inputs.dtype)),
                fn_output_signature=inputs.dtype, parallel_iterations=16,
            )
            return tf.reshape(per_example, tf.concat([tf.shape(per_example)[:1], kernel_shape], 0))
        b = _by_examples(output_grad, layer.filters)
        pieces = _ConvRule._shifted_inputs(layer, call)
        per_offset = [tf.matmul(piece, b, transpose_a=True) for piece in pieces]  # [m, in, out] each
        per_example = tf.stack(per_offset, axis=1)
        return tf.reshape(per_example, tf.concat([tf.shape(per_example)[:1], kernel_shape], 0))

    @classmethod
    def statistics(cls, layer, calls, output_grads):
        b = _concat_positions([_by_examples(g, layer.filters) for g in output_grads])
        if cls._use_gram(layer, calls):
            patches = _concat_positions([tf.concat(cls._shifted_inputs(layer, c), axis=-1) for c in calls])
            out = {id(layer.kernel): (_gram_sq_norm(patches, b), None)}
        else:
            per_example = 0.0
            for call, g in zip(calls, output_grads):
                per_example += cls._per_example_kernel_grads(layer, call, g)
            grad_sum = tf.reduce_sum(per_example, axis=0)
            out = {id(layer.kernel): (_sum_sq(per_example), grad_sum)}
        if layer.use_bias:
            out[id(layer.bias)] = (_sum_sq(tf.reduce_sum(b, axis=1)), None)
        return out


class _EmbeddingRule:
    """Embedding: z_t = E[id_t]."""

    @staticmethod
    def matches(layer):
        return _unmodified(layer, keras.layers.Embedding) and _plain(layer)

    @staticmethod
    def call(layer, inputs, record):
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = keras.ops.cast(inputs, "int32")
        z = keras.ops.take(layer.embeddings, inputs, axis=0)
        record(_Call(inputs, z))
        return keras.ops.cast(z, dtype=layer.compute_dtype)

    @staticmethod
    def supplies_grad_sum(layer, calls):
        return set()

    @staticmethod
    def statistics(layer, calls, output_grads):
        dim = layer.embeddings.shape[-1]
        ids = _concat_positions([tf.reshape(c.inputs, tf.stack([tf.shape(c.inputs)[0], -1])) for c in calls])
        b = _concat_positions([_by_examples(g, dim) for g in output_grads])
        same_id = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), b.dtype)
        gram = tf.matmul(b, b, transpose_b=True)
        return {id(layer.embeddings): (tf.reduce_sum(same_id * gram, axis=[1, 2]), None)}


class _LayerNormRule:
    """LayerNormalization: z = γ ⊙ x̂ + β with x̂ the normalised input."""

    @staticmethod
    def matches(layer):
        return _unmodified(layer, keras.layers.LayerNormalization)

    @staticmethod
    def _broadcast(layer, param, ndims):
        shape = [1] * ndims
        for axis in layer.axis:
            shape[axis % ndims] = param.shape[layer.axis.index(axis)]
        return keras.ops.reshape(keras.ops.cast(param, layer.compute_dtype), shape)

    @classmethod
    def call(cls, layer, inputs, record):
        normalised = keras.ops.layer_normalization(
            inputs, None, None, layer.axis, layer.epsilon, rms_scaling=layer.rms_scaling
        )
        z = normalised
        ndims = len(normalised.shape)
        if layer.gamma is not None:
            z = z * cls._broadcast(layer, layer.gamma, ndims)
        if layer.beta is not None and not layer.rms_scaling:
            z = z + cls._broadcast(layer, layer.beta, ndims)
        record(_Call(normalised, z))
        return keras.ops.cast(z, layer.compute_dtype)

    @staticmethod
    def supplies_grad_sum(layer, calls):
        return set()

    @staticmethod
    def statistics(layer, calls, output_grads):
        gamma_sq = beta_sq = 0.0
        for call, b in zip(calls, output_grads):
            ndims = b.shape.rank
            kept = {axis % ndims for axis in layer.axis}
            summed = [axis for axis in range(1, ndims) if axis not in kept]
            gamma_sq += tf.reduce_sum(b * tf.cast(call.inputs, b.dtype), axis=summed)
            beta_sq += tf.reduce_sum(b, axis=summed)
        out = {}
        if layer.gamma is not None:
            out[id(layer.gamma)] = (_sum_sq(gamma_sq), None)
        if layer.beta is not None:
            out[id(layer.beta)] = (_sum_sq(beta_sq), None)
        return out


_RULES = (_DenseRule, _ConvRule, _EmbeddingRule, _LayerNormRule)


def _rule_for(layer):
    for rule in _RULES:
        if rule.matches(layer):
            return rule
    return None


def _all_layers(model):
    if hasattr(model, "_flatten_layers"):
        return model._flatten_layers(include_self=True, recursive=True)
    return [model]


def supported_layers(model):
    """[(layer, rule)] for the layers of `model` that the fast path handles (see module table).

    Layers whose trainable variables are also used by another layer (tied weights) are excluded.
    """
    layers = _all_layers(model)
    leaf_owners = {}
    for layer in layers:
        if not getattr(layer, "_layers", None):
            for v in layer.trainable_weights:
                leaf_owners[id(v)] = leaf_owners.get(id(v), 0) + 1
    supported = []
    for layer in layers:
        rule = _rule_for(layer)
        if rule and layer.trainable_weights and all(
            leaf_owners.get(id(v), 0) == 1 for v in layer.trainable_weights
        ):
            supported.append((layer, rule))
    return supported


@contextlib.contextmanager
def instrumented(layers_and_rules):
    """Temporarily replaces `call` of each supported layer by its recording version.

    Yields {id(layer): [ _Call, ... ]}, filled as the layers are called.
    """
    records = {id(layer): [] for layer, _ in layers_and_rules}
    previous = {}
    try:
        for layer, rule in layers_and_rules:
            previous[id(layer)] = layer.__dict__.get("call")

            def recording_call(inputs, *args, _layer=layer, _rule=rule, **kwargs):
                return _rule.call(_layer, inputs, records[id(_layer)].append)

            object.__setattr__(layer, "call", recording_call)
        yield records
    finally:
        for layer, _ in layers_and_rules:
            if id(layer) in previous:
                if previous[id(layer)] is None:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", previous[id(layer)])


def _result_dtype(variables):
    return tf.float64 if any(tf.as_dtype(v.dtype) == tf.float64 for v in variables) else tf.float32


@tf.autograph.experimental.do_not_convert
def gradients_and_sq_norms(model, x, y, loss_fn=None, training=False) -> GradientSums:
    """Σ_i g_i and per-example squared norms ‖g_{i,v}‖² per variable, from one backward pass.

    Traceable (use inside `tf.function`, also with `jit_compile=True`). Layers without a rule
    (module table) are handled by `tf.vectorized_map` for their variables only.
    x: model input for m examples; y: [m, ...] targets; loss_fn: as `per_example_loss_fn`'s `loss`.
    Returns `GradientSums(losses [m], grad_sum [per variable or None], sq_norms [m, V],
    predictions)`.
    """
    loss_fn = per_example_loss_fn(model, loss_fn)
    variables = list(model.trainable_variables)
    layers_and_rules = supported_layers(model)
    with instrumented(layers_and_rules) as records:
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            losses = loss_fn(y, y_pred)
            total = tf.reduce_sum(losses)

    covered, supplied, z_targets = set(), set(), []
    for layer, rule in layers_and_rules:
        calls = records[id(layer)]
        covered.update(id(v) for v in layer.trainable_weights)
        supplied |= rule.supplies_grad_sum(layer, calls)
        z_targets.extend(call.z for call in calls)
    tape_variables = [v for v in variables if id(v) not in supplied]
    grads = tape.gradient(total, z_targets + tape_variables)
    z_grads, variable_grads = grads[: len(z_targets)], grads[len(z_targets):]

    dtype = _result_dtype(variables)
    sq_norm_of, grad_sum_of = {}, {id(v): g for v, g in zip(tape_variables, variable_grads)}
    position = 0
    for layer, rule in layers_and_rules:
        calls = records[id(layer)]
        if not calls:
            continue
        output_grads = [
            tf.zeros_like(c.z) if g is None else g for c, g in zip(calls, z_grads[position:])
        ]
        position += len(calls)
        for var_id, (sq_norm, grad_sum) in rule.statistics(layer, calls, output_grads).items():
            if sq_norm is not None:
                sq_norm_of[var_id] = tf.cast(sq_norm, dtype)
            if grad_sum is not None:
                grad_sum_of[var_id] = grad_sum

    fallback = [v for v in variables if id(v) not in covered]
    for v, per_example in zip(fallback, _vmap_gradients(model, x, y, loss_fn, fallback, training)):
        sq_norm_of[id(v)] = tf.cast(_sum_sq(per_example), dtype)

    zeros = tf.zeros_like(losses, dtype=dtype)
    sq_norms = tf.stack([sq_norm_of.get(id(v), zeros) for v in variables], axis=1)
    grad_sum = [_dense(grad_sum_of.get(id(v))) for v in variables]
    return GradientSums(losses, grad_sum, sq_norms, y_pred)


# Per-example gradients of one reduced block: examples × coordinates, in float32 elements.
REDUCE_BLOCK_ELEMENTS = 1 << 22


@tf.autograph.experimental.do_not_convert
def reduced_per_example_gradients(model, x, y, reduce, loss_fn=None, training=False,
                                  block_elements=REDUCE_BLOCK_ELEMENTS, reduce_outer=None):
    """A coordinate-wise reduction over the examples of the per-example gradients of every
    trainable variable, never materialising more than a block of them.

    Dense kernels and biases come from the layer input a and output gradient b of a single backward
    pass (kernel: g_i = Σ_t a_{i,t} ⊗ b_{i,t}; bias: Σ_t b_{i,t}); a kernel's per-example gradients
    are built and reduced a few output columns at a time, at most about `block_elements` values
    (m × fan_in × columns) per block. Every other variable comes from `tf.vectorized_map` restricted
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
    Returns:
      A list aligned with `model.trainable_variables` (None where the loss does not depend on it).
    """
    loss_fn = per_example_loss_fn(model, loss_fn)
    variables = list(model.trainable_variables)
    dense = [layer for layer, rule in supported_layers(model) if rule is _DenseRule]
    with instrumented([(layer, _DenseRule) for layer in dense]) as records:
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(loss_fn(y, model(x, training=training)))
    calls = [(layer, call) for layer in dense for call in records[id(layer)]]
    output_grads = tape.gradient(total, [call.z for _, call in calls])
    reduced = {}
    for layer in dense:
        mine = [(c, g) for (owner, c), g in zip(calls, output_grads) if owner is layer]
        if mine:
            reduced.update(_reduced_dense_gradients(layer, mine, reduce, block_elements,
                                                         reduce_outer))
    rest = [v for v in variables if id(v) not in reduced]
    for v, g in zip(rest, _vmap_gradients(model, x, y, loss_fn, rest, training)):
        reduced[id(v)] = reduce(g, 0)
    return [reduced.get(id(v)) for v in variables]


def _reduced_dense_gradients(layer, calls_and_grads, reduce, block_elements, reduce_outer=None):
    """{id(var): reduced per-example gradients} for a Dense layer's kernel and bias."""
    fan_in, fan_out = layer.kernel.shape
    dtype = layer.kernel.dtype
    a = tf.cast(_concat_positions([_by_examples(c.inputs, fan_in) for c, _ in calls_and_grads]),
                dtype)
    b = tf.cast(_concat_positions([_by_examples(tf.zeros_like(c.z) if g is None else g, fan_out)
                                   for c, g in calls_and_grads]), dtype)
    kernel = None
    if reduce_outer is not None and a.shape[1] == 1:
        kernel = reduce_outer(a[:, 0], b[:, 0])
    if kernel is None:
        kernel = _reduced_kernel_in_blocks(a, b, reduce, block_elements)
    out = {id(layer.kernel): kernel}
    if layer.bias is not None:
        out[id(layer.bias)] = reduce(tf.reduce_sum(b, axis=1), 0)
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


def variable_layer_names(model) -> List[str]:
    """Name of the layer owning each trainable variable, aligned with `model.trainable_variables`.

    Nested models and layers give a path, e.g. "encoder/dense_1"; the deepest owning layer wins.
    Variables created by the model itself are named after the model.
    """
    owner = {}

    def visit(layer, path):
        for v in layer.trainable_weights:
            owner[id(v)] = path
        for child in getattr(layer, "_layers", []) or []:
            visit(child, f"{path}/{child.name}" if path else child.name)

    for child in getattr(model, "_layers", []) or []:
        visit(child, child.name)
    return [owner.get(id(v), model.name) for v in model.trainable_variables]
