"""Embedding: z_t = E[id_t] (ids [m, ...], z [m, ..., d]).

Per example: ∇E ℓ_i = Σ_t e_{id_t} ⊗ b_t, so ‖∇E ℓ_i‖² = Σ_{s,t} [id_s = id_t] (b_s·b_t).
Σ_i g_i comes from the tape (densified by the engine).
"""

import keras
import tensorflow as tf

from cgh_tf.layer_rules import base


class EmbeddingRule(base.LayerRule):
    name = "embedding"

    @staticmethod
    def matches(layer):
        return base.unmodified(layer, keras.layers.Embedding) and base.plain(layer)

    @staticmethod
    def call(layer, inputs, ctx):
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = keras.ops.cast(inputs, "int32")
        z = ctx.output(keras.ops.take(ctx.weight(layer.embeddings), inputs, axis=0))
        ctx.keep(ids=inputs)
        return keras.ops.cast(z, dtype=layer.compute_dtype)

    @staticmethod
    def statistics(layer, calls):
        dim = layer.embeddings.shape[-1]
        ids = base.concat_positions([tf.reshape(c["ids"], tf.stack([tf.shape(c["ids"])[0], -1]))
                                     for c in calls])
        b = base.full_precision(base.concat_positions([base.by_examples(c.output_grads[0], dim)
                                                       for c in calls]))
        same_id = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), b.dtype)
        gram = base.gram(b)  # XLA (see `base.gram_sq_norm`)
        return {id(layer.embeddings): base.Statistic(tf.reduce_sum(same_id * gram, axis=[1, 2]))}
