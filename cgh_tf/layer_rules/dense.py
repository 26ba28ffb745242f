"""Dense: z = a W + c, then the activation (inputs [m, ..., fan_in]).

Per example, with T positions: ∇W ℓ_i = Σ_t a_t ⊗ b_t, ∇c ℓ_i = Σ_t b_t (b = ∂ℓ/∂z), so
‖∇W ℓ_i‖² = ‖a‖²‖b‖² (T = 1), else the per-example gradients materialised, their sum replacing the
tape's weight gradient (`materialised.chosen`, decided per call in `call`), or the cheaper of
Σ_{s,t}(a_s·a_t)(b_s·b_t) and ‖Σ_t a_t ⊗ b_t‖² (`base.outer_sum_sq_norm`), Σ_i g_i from the tape.
Applied once per example (one call, T = 1), the rule also gives the factors a_i, b_i of the
rank-one g_i (`base.Factors`, for `cgh_tf.alignment`).
"""

import keras
import tensorflow as tf

from cgh_tf.layer_rules import base, materialised


class DenseRule(base.LayerRule):
    name = "dense"

    @staticmethod
    def matches(layer):
        return base.unmodified(layer, keras.layers.Dense) and base.plain(layer)

    @staticmethod
    def call(layer, inputs, ctx, training=None):
        fan_in, fan_out = layer.kernel.shape
        materialise = base.trainable(layer, layer.kernel) and materialised.chosen(
            inputs.shape[1:-1].num_elements(), fan_in, fan_out, inputs.shape[0], inputs.dtype)
        z = keras.ops.matmul(inputs, ctx.weight(layer.kernel, tape_sum=not materialise))
        if layer.bias is not None:
            z = keras.ops.add(z, ctx.weight(layer.bias))
        ctx.keep(inputs=inputs, materialise=materialise)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        fan_in, fan_out = layer.kernel.shape
        a = [base.full_precision(base.by_examples(c["inputs"], fan_in)) for c in calls]
        b = [base.full_precision(base.by_examples(c.output_grads[0], fan_out)) for c in calls]
        if any(c["materialise"] for c in calls):
            kernel = materialised.statistic(
                [tf.einsum("mti,mto->mio", a_c, b_c) for a_c, b_c in zip(a, b)],
                [c["materialise"] for c in calls])
        else:
            a_all, b_all = base.concat_positions(a), base.concat_positions(b)
            kernel = base.Statistic(base.outer_sum_sq_norm(a_all, b_all),
                                    factors=_rank_one_factors(a_all, b_all))
        out = {id(layer.kernel): kernel}
        if layer.bias is not None:
            b_sum = keras.ops.sum(base.concat_positions(b), axis=1)
            factors = None if kernel.factors is None else base.Factors(None, kernel.factors.b)  # = b_sum
            out[id(layer.bias)] = base.Statistic(base.sum_sq(b_sum), factors=factors)
        return out


def _rank_one_factors(a, b):
    """`base.Factors` (a_i, b_i) [m, i], [m, o] of the kernel when the layer is applied once
    per example (one call, T = 1 known while tracing: g_i = a_i ⊗ b_i), else None."""
    if a.shape[1] != 1:
        return None
    return base.Factors(a[:, 0], b[:, 0])
