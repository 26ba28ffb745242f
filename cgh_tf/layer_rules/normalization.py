"""Normalisation layers: z = γ ⊙ x̂ + β, with x̂ the normalised input.

Per example: ∇γ ℓ_i = Σ_pos b ⊙ x̂ and ∇β ℓ_i = Σ_pos b, summed over every axis the parameters do
not span (b = ∂ℓ/∂z); one function, `affine_statistics`, for every rule here. Σ_i g_i comes from
the tape.

| rule | layer | x̂ | γ / β span |
|---|---|---|---|
| layer_norm | LayerNormalization | (x − μ)/σ over `axis`, per example (or RMS scaling) | `axis` |
| group_norm | GroupNormalization | (x − μ)/σ per example and group of channels | the channel `axis` |
| batch_norm | BatchNormalization (no renorm) | moving statistics (inference); batch statistics with `training=True`: gradients *within the batch*, moving statistics updated as Keras does | `axis` |
| rms_norm | RMSNormalization | x / sqrt(mean(x²) + ε) over `axis` (only `scale`) | trailing axes |

UnitNormalization has no weights and needs no rule.
"""

import keras
import tensorflow as tf

from cgh_tf.layer_rules import base


def _broadcast(param, axes, ndims, dtype):
    """A parameter of shape [x.shape[a] for a in axes] reshaped to broadcast against rank `ndims`."""
    shape = [1] * ndims
    for position, axis in enumerate(axes):
        shape[axis % ndims] = param.shape[position]
    return keras.ops.reshape(keras.ops.cast(param, dtype), shape)


def affine_statistics(gamma, beta, axes, calls):
    """{id: Statistic} for γ and β (either may be None) of an affine z = γ ⊙ x̂ + β.

    calls: recorded calls keeping `normalised` (x̂), with output_grads [b]; axes: the axes γ and β
    span (negative allowed)."""
    gamma_sum = beta_sum = 0.0
    for call in calls:
        b = base.full_precision(call.output_grads[0])
        ndims = b.shape.rank
        kept = {axis % ndims for axis in axes}
        summed = [axis for axis in range(1, ndims) if axis not in kept]
        if gamma is not None:
            gamma_sum += tf.reduce_sum(b * tf.cast(call["normalised"], b.dtype), axis=summed)
        beta_sum += tf.reduce_sum(b, axis=summed)
    out = {}
    if gamma is not None:
        out[id(gamma)] = base.Statistic(base.sum_sq(gamma_sum))
    if beta is not None:
        out[id(beta)] = base.Statistic(base.sum_sq(beta_sum))
    return out


class LayerNormRule(base.LayerRule):
    name = "layer_norm"

    @staticmethod
    def matches(layer):
        # keras.ops.layer_normalization exists from Keras 3.11; without it the exact path runs.
        return (base.unmodified(layer, keras.layers.LayerNormalization)
                and hasattr(keras.ops, "layer_normalization"))

    @staticmethod
    def call(layer, inputs, ctx):
        normalised = keras.ops.layer_normalization(
            inputs, None, None, layer.axis, layer.epsilon, rms_scaling=layer.rms_scaling)
        z = normalised
        ndims = len(normalised.shape)
        # γ, β in the dtype of x̂, as Keras' op (x̂ is float32 for a float32 input under a 16-bit
        # policy: the layer does not autocast its input); the output is cast to compute_dtype.
        if layer.gamma is not None:
            z = z * _broadcast(ctx.weight(layer.gamma), layer.axis, ndims, normalised.dtype)
        if layer.beta is not None and not layer.rms_scaling:
            z = z + _broadcast(ctx.weight(layer.beta), layer.axis, ndims, normalised.dtype)
        ctx.keep(normalised=normalised)
        return keras.ops.cast(ctx.output(z), layer.compute_dtype)

    @staticmethod
    def statistics(layer, calls):
        beta = layer.beta if not layer.rms_scaling else None
        return affine_statistics(layer.gamma, beta, layer.axis, calls)


def _compute_dtype(dtype):
    """The dtype Keras' normalisation layers compute in: at least float32."""
    return keras.backend.result_type(dtype, "float32")


def _trainable(layer, variable):
    """`variable` if it exists and takes gradients, else None (no statistic is made for it)."""
    return variable if base.trainable(layer, variable) else None


class GroupNormRule(base.LayerRule):
    """GroupNormalization: per example, x̂ normalised within each group of channels; γ, β per channel.

    The forward pass is Keras' own formula (x · rsqrt(σ² + ε)γ + (β − μ · rsqrt(σ² + ε)γ), on the
    input split into groups); x̂ = (x − μ) rsqrt(σ² + ε) is kept for the statistics.
    """

    name = "group_norm"

    @staticmethod
    def matches(layer):
        return base.unmodified(layer, keras.layers.GroupNormalization)

    @staticmethod
    def call(layer, inputs, ctx):
        ndims = len(inputs.shape)
        axis = layer.axis % ndims
        shape = keras.ops.shape(inputs)
        group_shape = [-1] + [d if d is not None else shape[i + 1] for i, d in enumerate(inputs.shape[1:])]
        group_shape[axis] = shape[axis] // layer.groups
        group_shape.insert(axis, layer.groups)
        grouped = keras.ops.cast(keras.ops.reshape(inputs, group_shape), _compute_dtype(inputs.dtype))
        reduction = [a for a in range(1, ndims + 1) if a != axis]
        mean, variance = keras.ops.moments(grouped, axes=reduction, keepdims=True)
        rstd = keras.ops.rsqrt(variance + layer.epsilon)
        param_shape = [1] * (ndims + 1)
        param_shape[axis], param_shape[axis + 1] = layer.groups, inputs.shape[axis] // layer.groups
        inv = rstd
        if layer.scale:
            inv = inv * keras.ops.cast(keras.ops.reshape(ctx.weight(layer.gamma), param_shape), grouped.dtype)
        res = -mean * inv
        if layer.center:
            res = res + keras.ops.cast(keras.ops.reshape(ctx.weight(layer.beta), param_shape), grouped.dtype)
        z = ctx.output(keras.ops.reshape(grouped * inv + res, shape))
        ctx.keep(normalised=keras.ops.reshape((grouped - mean) * rstd, shape))
        return keras.ops.cast(keras.ops.cast(z, inputs.dtype), layer.compute_dtype)

    @staticmethod
    def statistics(layer, calls):
        return affine_statistics(_trainable(layer, layer.gamma), _trainable(layer, layer.beta),
                                 [layer.axis], calls)


def _masked_moments(inputs, mask, axes):
    """Keras BatchNormalization's moments over `axes` of the positions where `mask` is true."""
    weights = keras.ops.cast(keras.ops.broadcast_to(keras.ops.expand_dims(mask, axis=-1),
                                                    keras.ops.shape(inputs)), "bool")
    count = keras.ops.sum(keras.ops.cast(weights, inputs.dtype), axes, keepdims=True)
    total = keras.ops.sum(keras.ops.where(weights, inputs, 0), axes, keepdims=True)
    mean = total / (count + keras.config.epsilon())
    squares = keras.ops.sum(keras.ops.square(keras.ops.where(weights, inputs - mean, 0)), axes, keepdims=True)
    variance = squares / (count + keras.config.epsilon())
    return keras.ops.squeeze(mean), keras.ops.squeeze(variance)


class BatchNormRule(base.LayerRule):
    """BatchNormalization (not renorm). Inference (`training=False`, or a frozen layer): x̂ uses the
    moving statistics, and examples are independent. `training=True`: x̂ uses the batch statistics
    (which the rule also folds into the moving statistics exactly as Keras does), and ∇γ ℓ_i =
    Σ_pos b_i ⊙ x̂_i is example i's gradient *within the batch* (b = ∂(Σ_j ℓ_j)/∂z, DESIGN §1)."""

    name = "batch_norm"

    @staticmethod
    def matches(layer):
        # `renorm` exists from Keras 3.14; a layer without the option never renormalises.
        return (base.unmodified(layer, keras.layers.BatchNormalization)
                and not getattr(layer, "renorm", False))

    @staticmethod
    def call(layer, inputs, ctx, training=None, mask=None):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the inputs. Received: "
                f"mask.shape={mask.shape}, inputs.shape={inputs.shape}")
        inputs = keras.ops.cast(inputs, _compute_dtype(inputs.dtype))
        moving_mean = keras.ops.cast(layer.moving_mean, inputs.dtype)
        moving_variance = keras.ops.cast(layer.moving_variance, inputs.dtype)
        gamma = keras.ops.cast(ctx.weight(layer.gamma), inputs.dtype) if layer.scale else None
        beta = keras.ops.cast(ctx.weight(layer.beta), inputs.dtype) if layer.center else None
        if training and layer.trainable:
            axes = [a for a in range(len(inputs.shape)) if a != layer.axis % len(inputs.shape)]
            if mask is None:
                mean, variance = keras.ops.moments(inputs, axes=axes, synchronized=layer.synchronized)
            else:
                mean, variance = _masked_moments(inputs, mask, axes)
            layer.moving_mean.assign(moving_mean * layer.momentum + mean * (1.0 - layer.momentum))
            layer.moving_variance.assign(moving_variance * layer.momentum + variance * (1.0 - layer.momentum))
        else:
            mean, variance = moving_mean, moving_variance
        z = keras.ops.batch_normalization(inputs, mean, variance, axis=layer.axis, offset=beta, scale=gamma,
                                          epsilon=layer.epsilon)
        ctx.keep(normalised=keras.ops.batch_normalization(inputs, mean, variance, axis=layer.axis,
                                                          epsilon=layer.epsilon))
        return keras.ops.cast(ctx.output(z), layer.compute_dtype)

    @staticmethod
    def statistics(layer, calls):
        return affine_statistics(_trainable(layer, layer.gamma), _trainable(layer, layer.beta),
                                 [layer.axis], calls)


class RMSNormRule(base.LayerRule):
    """RMSNormalization: z = x · rsqrt(mean(x²) + ε) ⊙ scale, per example (Keras' own formula, in at
    least float32, cast back to the input dtype). The scale broadcasts against the trailing axes."""

    name = "rms_norm"

    @staticmethod
    def matches(layer):
        # RMSNormalization exists from Keras 3.9.
        rms_normalization = getattr(keras.layers, "RMSNormalization", None)
        return rms_normalization is not None and base.unmodified(layer, rms_normalization)

    @staticmethod
    def call(layer, inputs, ctx):
        original = inputs.dtype
        x = keras.ops.cast(inputs, _compute_dtype(original))
        scale = keras.ops.cast(ctx.weight(layer.scale), x.dtype)
        epsilon = keras.config.epsilon() if layer.epsilon is None else layer.epsilon
        rrms = keras.ops.rsqrt(keras.ops.mean(keras.ops.square(x), axis=layer.axis, keepdims=True) + epsilon)
        normalised = x * rrms
        ctx.keep(normalised=normalised)
        return keras.ops.cast(ctx.output(normalised * scale), original)

    @staticmethod
    def statistics(layer, calls):
        axes = list(range(-len(layer.scale.shape), 0))
        return affine_statistics(_trainable(layer, layer.scale), None, axes, calls)
