"""The regulariser-included variant of per-example gradients, asked for by name.

By default g_i = ∇ℓ_i, ℓ_i the decomposition of Keras' batch loss without `model.losses`
(docs/design.md §1.1). Keras minimises mean_i ℓ_i + R for a batch, R = Σ_v regularizer_v(v) over
the trainable variables that carry a weight regulariser. With `include_regularization=True`
(`coherence.measure`, `coherence.alignment`) each example's objective is ℓ_i + R, whose mean over
the batch is Keras' loss, so g'_i = g_i + r with r = ∇_w R, the same for every example. Nothing
per example has to be recomputed (per variable, hence per layer and in total):

| quantity | with the regulariser |
|---|---|
| S' | S + m·r |
| Q' | Q + 2⟨S, r⟩ + m‖r‖² |
| ‖g'_i‖² | ‖g_i‖² + 2 g_i·r + ‖r‖² (g_i·r: a directional derivative, as alignment's g_i·S) |
| g'_i·S' | g_i·S' + r·S' |

Activity regularisers and `add_loss` penalties depend on each example's activations; they are
not decomposed: with the option on they are refused in one line before any work.
"""

import numpy as np
import tensorflow as tf

from cgh_tf import keras_internals


def regularized_variables(model):
    """The trainable variables of `model` that carry a weight regulariser (`variable.regularizer`,
    Keras' public attribute set by `add_weight(regularizer=...)`), in `trainable_variables` order."""
    return [v for v in model.trainable_variables if getattr(v, "regularizer", None) is not None]


def check_flag(value, option="include_regularization"):
    """Raises one ValueError unless the option `value` is a bool (a string such as "yes" is not);
    `option`: the name the message gives."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{option} must be True or False; got {value!r}.")


def check_weight_regularizers_only(model, x_one, option="include_regularization"):
    """Raises one ValueError if `model.losses` holds anything but weight regularisers: an
    activity regulariser (found by layer) or an `add_loss` penalty (found by calling the built
    model on `x_one`, one example, in inference mode). `option`: the name the message gives."""
    for layer in keras_internals.flatten_layers(model, include_self=False):
        if getattr(layer, "activity_regularizer", None) is not None:
            raise ValueError(
                f"{option}=True: layer {layer.name!r} has an activity_regularizer, "
                "whose penalty depends on each example's activations and is not decomposed per "
                "example; only weight regularisers (kernel_regularizer, bias_regularizer, ...) "
                f"are supported (or pass {option}=False).")
    model(x_one, training=False)
    added = len(model.losses) - len(regularized_variables(model))
    if added > 0:
        raise ValueError(
            f"{option}=True: model {model.name!r} adds {added} loss(es) with "
            "add_loss in its call, which depend on the examples and are not decomposed per "
            "example; only weight regularisers (kernel_regularizer, bias_regularizer, ...) are "
            f"supported (or pass {option}=False).")


def gradient(model):
    """r = ∇_w R, R = Σ_v regularizer_v(v): one float64 tensor per trainable variable (zeros where
    no regulariser reads it), aligned with `model.trainable_variables`. Eager or traced."""
    variables = list(model.trainable_variables)
    regularized = regularized_variables(model)
    if not regularized:
        return [tf.zeros(v.shape, tf.float64) for v in variables]
    with tf.GradientTape() as tape:
        penalty = tf.add_n([tf.cast(v.regularizer(v), tf.float64) for v in regularized])
    grads = tape.gradient(penalty, variables)
    return [tf.zeros(v.shape, tf.float64) if g is None else tf.cast(tf.convert_to_tensor(g), tf.float64)
            for g, v in zip(grads, variables)]


def translated(grad_sum, sum_of_sq_norms, m, shift):
    """The sums of m gradients after adding the same r to each, g_i → g_i + r, per variable:
    (S_v + m·r_v, Q_v + 2⟨S_v, r_v⟩ + m‖r_v‖²).

    grad_sum: [V] tensors S_v; sum_of_sq_norms: [V] Q_v; m: scalar; shift: [V] r_v (None = 0).
    Computed in the dtype of each S_v (Q in its own)."""
    new_sum, added = [], []
    for total, r in zip(grad_sum, shift):
        total = tf.convert_to_tensor(total)
        r = tf.zeros_like(total) if r is None else tf.cast(r, total.dtype)
        count = tf.cast(m, total.dtype)
        new_sum.append(total + count * r)
        added.append(2.0 * tf.reduce_sum(total * r) + count * tf.reduce_sum(tf.square(r)))
    if not added:
        return new_sum, sum_of_sq_norms
    return new_sum, sum_of_sq_norms + tf.cast(tf.stack(added), sum_of_sq_norms.dtype)
