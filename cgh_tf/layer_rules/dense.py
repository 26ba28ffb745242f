"""Dense: z = a W + c, then the activation (inputs [m, ..., fan_in]).

Per example, with T positions: ∇W ℓ_i = Σ_t a_t ⊗ b_t, ∇c ℓ_i = Σ_t b_t (b = ∂ℓ/∂z), so
‖∇W ℓ_i‖² = ‖a‖²‖b‖² (T = 1), else Σ_{s,t}(a_s·a_t)(b_s·b_t) or ‖Σ_t a_t ⊗ b_t‖², whichever costs
less (`base.outer_sum_sq_norm`). Σ_i g_i comes from the tape.
"""

import keras

from cgh_tf.layer_rules import base


class DenseRule(base.LayerRule):
    name = "dense"

    @staticmethod
    def matches(layer):
        return base.unmodified(layer, keras.layers.Dense) and base.plain(layer)

    @staticmethod
    def call(layer, inputs, ctx, training=None):
        z = keras.ops.matmul(inputs, ctx.weight(layer.kernel))
        if layer.bias is not None:
            z = keras.ops.add(z, ctx.weight(layer.bias))
        ctx.keep(inputs=inputs)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        fan_in, fan_out = layer.kernel.shape
        a = base.full_precision(base.concat_positions([base.by_examples(c["inputs"], fan_in) for c in calls]))
        b = base.full_precision(base.concat_positions([base.by_examples(c.output_grads[0], fan_out) for c in calls]))
        out = {id(layer.kernel): base.Statistic(base.outer_sum_sq_norm(a, b))}
        if layer.bias is not None:
            out[id(layer.bias)] = base.Statistic(base.sum_sq(keras.ops.sum(b, axis=1)))
        return out
