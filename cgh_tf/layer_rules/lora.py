"""LoRA-enabled Dense and EinsumDense (`layer.enable_lora(rank)`, not quantized).

Keras' kernel is K = cast(W + s · A B, compute dtype) with s = lora_alpha / lora_rank, W the frozen
kernel, A = lora_kernel_a [*K.shape[:-1], r], B = lora_kernel_b [r, K.shape[-1]] (the product
contracts the last axis of A). With G_i = ∇K ℓ_i (an EinsumDense problem, `einsum_dense.py`; a
Dense layer is the equation "...i,io->...o"), and k the last kernel letter, k' the others:

* ∇A ℓ_i = s · G_i Bᵀ: B folded into the side that carries k — the input if k is contracted
  (x' = x Bᵀ), else the output gradient (b' = b Bᵀ; k stays in b' as a position if it is also in the
  input) — leaves an EinsumDense problem with kernel letters k' r;
* ∇B ℓ_i = s · Aᵀ G_i: A folded into the input (x' = x A over the contracted letters of k'; the
  free letters of k' become positions) leaves a problem with kernel letters r k.

Each is solved like a kernel (Gram or materialised, `base.outer_sum_sq_norm`), times s². W, if
made trainable again, is the plain kernel problem. Σ_i g_i comes from the tape.
"""

import keras
import tensorflow as tf

from cgh_tf.layer_rules import base
from cgh_tf.layer_rules import einsum_dense as ed


def base_kernel(layer):
    """The stored (pre-LoRA) kernel variable, found by its public name, or None."""
    found = [v for v in layer.weights if v.name == "kernel"]
    return found[0] if len(found) == 1 else None


def _specs(layer, rank):
    """Specs of the layer's kernel equation for an input of `rank` axes (Dense: "...i,io->...o")."""
    if isinstance(layer, keras.layers.EinsumDense):
        return ed.parse(layer.equation, rank)
    return ed.parse("...i,io->...o", rank)


def _layer_rank(layer):
    """The input rank the equation is checked for (Dense: any rank ≥ 2 reads alike)."""
    if isinstance(layer, keras.layers.Dense):
        return 2
    return getattr(getattr(layer, "input_spec", None), "ndim", None) if layer.built else None


def _fold_b(specs, lora_b, letter_r):
    """(new specs, transform(x, b) -> (x', b')) folding B [r, k] into the side carrying k."""
    ins, ker, out, e = specs
    k = ker[-1]
    new_kernel = ker[:-1] + letter_r
    if k in ins and k not in out:
        new_ins = ins.replace(k, letter_r)
        return (ed.Specs(new_ins, new_kernel, out, e),
                lambda x, b: (tf.einsum(f"{ins},{letter_r}{k}->{new_ins}", x, lora_b), b))
    new_out = out.replace(k, letter_r) if k not in ins else out + letter_r
    return (ed.Specs(ins, new_kernel, new_out, e),
            lambda x, b: (x, tf.einsum(f"{out},{letter_r}{k}->{new_out}", b, lora_b)))


def _fold_a(specs, lora_a, letter_r):
    """(new specs, transform) folding A [k', r] into the input."""
    ins, ker, out, e = specs
    rest = ker[:-1]
    new_ins = ("".join(c for c in ins if not (c in rest and c not in out))
               + "".join(c for c in rest if c not in ins) + letter_r)
    return (ed.Specs(new_ins, letter_r + ker[-1], out, e),
            lambda x, b: (tf.einsum(f"{ins},{rest}{letter_r}->{new_ins}", x, lora_a), b))


class LoraRule(base.LayerRule):
    name = "lora"

    @staticmethod
    def matches(layer):
        if not (base.unmodified(layer, keras.layers.Dense) or base.unmodified(layer, keras.layers.EinsumDense)):
            return False
        if not getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None) is not None:
            return False
        kernel = base_kernel(layer)
        return (kernel is not None and _specs(layer, _layer_rank(layer)) is not None
                and tuple(kernel.shape) == tuple(layer.lora_kernel_a.shape[:-1]) + (layer.lora_kernel_b.shape[-1],))

    @staticmethod
    def call(layer, inputs, ctx, training=None):
        lora_a = ctx.weight(layer.lora_kernel_a)
        lora_b = ctx.weight(layer.lora_kernel_b)
        scale = _lora_scale(layer)
        kernel = keras.ops.cast(
            keras.ops.add(ctx.weight(base_kernel(layer)), scale * keras.ops.matmul(lora_a, lora_b)),
            dtype=layer.compute_dtype)
        if isinstance(layer, keras.layers.EinsumDense):
            z = keras.ops.einsum(layer.equation, inputs, kernel)
        else:
            z = keras.ops.matmul(inputs, kernel)
        if layer.bias is not None:
            z = keras.ops.add(z, ctx.weight(layer.bias))
        ctx.keep(inputs=inputs, lora_a=lora_a, lora_b=lora_b)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        """Each call read with its own specs (a Dense layer may see inputs of several ranks)."""
        specs = [_specs(layer, len(c["inputs"].shape)) for c in calls]
        scale2 = _lora_scale(layer) ** 2
        letter_r = ed.fresh_letters("".join(s.inputs + s.kernel + s.outputs for s in specs), 1)
        xs = [base.full_precision(c["inputs"]) for c in calls]
        bs = [base.full_precision(c.output_grads[0]) for c in calls]
        dtype = bs[0].dtype  # LoRA factors are float32 variables whatever the policy
        lora_a, lora_b = (tf.cast(calls[0][name], dtype) for name in ("lora_a", "lora_b"))
        kernel = base_kernel(layer)
        out = {}
        if base.trainable(layer, kernel):
            out[id(kernel)] = base.Statistic(ed.problems_sq_norms(
                [ed.kernel_problem(x, b, s, kernel.shape) for x, b, s in zip(xs, bs, specs)]))
        for variable, fold, factor in ((layer.lora_kernel_a, _fold_b, lora_b),
                                       (layer.lora_kernel_b, _fold_a, lora_a)):
            if base.trainable(layer, variable):
                problems = []
                for x, b, s in zip(xs, bs, specs):
                    new_specs, transform = fold(s, factor, letter_r)
                    problems.append(ed.kernel_problem(*transform(x, b), new_specs, variable.shape))
                out[id(variable)] = base.Statistic(scale2 * ed.problems_sq_norms(problems))
        if base.trainable(layer, layer.bias):
            bias_axes = getattr(layer, "bias_axes", None) or specs[0].outputs[-1]
            out[id(layer.bias)] = base.Statistic(ed.bias_sq_norms(list(zip(bs, specs)), bias_axes))
        return out


def _lora_scale(layer):
    """s = lora_alpha / lora_rank of Keras' K = W + s · A B (`lora_alpha` exists from Keras 3.10;
    before, K = W + A B, i.e. lora_alpha = lora_rank)."""
    return getattr(layer, "lora_alpha", layer.lora_rank) / layer.lora_rank
