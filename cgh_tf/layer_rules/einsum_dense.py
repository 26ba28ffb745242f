"""EinsumDense: z = einsum(equation, x, W) + c, then the activation.

Every equation Keras builds (MultiHeadAttention / GroupedQueryAttention projections, "...b,bc->...c",
"ab...,bc->ac...", user equations) is read as specs over letters, ellipses expanded to fresh letters.
With e the example letter (first input letter, first output letter, not in the kernel), the letters
of the kernel are

| kind | in input | in output | role in ∇W ℓ_i = Σ_{letters ∉ kernel, ≠ e} x_i ⊗ b_i |
|---|---|---|---|
| contracted | yes | no | fan_in |
| free | no | yes | fan_out |
| shared (e.g. "abc,bcd->abd") | yes | yes | an independent block per value: S blocks |

and the input∩output letters outside the kernel (other than e) are positions T; input-only letters
are summed in the input first. So per example ‖∇W ℓ_i‖² = Σ_S ‖Σ_T a_t ⊗ b_t‖² with a [m·S, T,
fan_in], b [m·S, T, fan_out]: the Dense problem, by `base.outer_sum_sq_norm` (Gram form or one
materialising einsum, the cheaper by cost). Bias (spans the `bias_axes` letters): ‖Σ over the other
output letters of b‖². Σ_i g_i comes from the tape. When a is the layer input only reshaped,
layers reading the same input tensor (the query, key and value projections of self-attention)
share its Gram matrices within one engine pass (`Problem.key`, `base.shared_input_grams`):
measured on the Transformer block of benchmarks/transformer_rules.py, 1–4 % of the engine pass.

`kernel_problem` is shared with the LoRA rule (`lora.py`), which rewrites its factors into
problems of this form.
"""

import math
import re
from typing import NamedTuple, Optional

import keras
import tensorflow as tf

from cgh_tf.layer_rules import base, materialised

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class Specs(NamedTuple):
    """The equation as letter strings, ellipses expanded: inputs, kernel, outputs, example letter."""

    inputs: str
    kernel: str
    outputs: str
    example: str


def fresh_letters(used, count):
    """`count` letters not in `used`."""
    letters = [c for c in _ALPHABET if c not in used][:count]
    if len(letters) < count:
        raise ValueError(f"No {count} unused einsum letters besides {used!r}.")
    return "".join(letters)


def parse(equation, rank) -> Optional[Specs]:
    """Specs of a Keras EinsumDense `equation` for an input of `rank` axes, or None if the rule does
    not apply (the example axis is not a plain batch axis of input and output, repeated letters)."""
    if rank is None:
        return None
    text = equation.replace(" ", "")
    left = re.fullmatch(r"\.\.\.([a-zA-Z]+),([a-zA-Z]+)->\.\.\.([a-zA-Z]+)", text)
    right = re.fullmatch(r"([a-zA-Z]{2,})\.\.\.,([a-zA-Z]+)->([a-zA-Z]+)\.\.\.", text)
    plain_match = re.fullmatch(r"([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]+)", text)
    match = left or right or plain_match
    if match is None:
        return None
    inputs, kernel, outputs = match.groups()
    elided = rank - len(inputs)
    if elided < 0 or (plain_match and elided):
        return None
    extra = fresh_letters(inputs + kernel + outputs, elided)
    if left:
        inputs, outputs = extra + inputs, extra + outputs
    elif right:
        inputs, outputs = inputs + extra, outputs + extra
    if any(len(set(s)) != len(s) for s in (inputs, kernel, outputs)):
        return None
    example = inputs[0]
    if outputs[0] != example or example in kernel:
        return None
    if any(c not in inputs and c not in outputs for c in kernel):
        return None
    if any(c not in inputs and c not in kernel for c in outputs):
        return None
    return Specs(inputs, kernel, outputs, example)


def layer_specs(layer) -> Optional[Specs]:
    """Specs of a built EinsumDense layer (None before it is built or when the rule cannot apply)."""
    spec = getattr(layer, "input_spec", None)
    rank = getattr(spec, "ndim", None) if layer.built else None
    return parse(layer.equation, rank)


def _size(letters, sizes):
    return math.prod(sizes[c] for c in letters)


def _dim(tensor, axis):
    """Static size of `axis` if known, else the dynamic one."""
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _product(dims):
    """Product of Python ints and scalar tensors (a Python int if all are ints)."""
    out = 1
    for d in dims:
        out = out * d
    return out


class Problem(NamedTuple):
    """The per-example kernel gradient Σ_T a_t ⊗ b_t per block s: a [m·S, T, fan_in], b [m·S, T,
    fan_out], S blocks; key: how a was made from the layer input, when a is only a reshape of it
    (`base.outer_sum_sq_norm` shares its Gram matrices), else None."""

    a: tf.Tensor
    b: tf.Tensor
    blocks: int
    key: Optional[tuple]


def _roles(specs):
    """The kernel's letters by role (shared, contracted, free) and the position letters."""
    ins, ker, out, e = specs
    shared = "".join(c for c in ker if c in ins and c in out)
    contracted = "".join(c for c in ker if c in ins and c not in out)
    free = "".join(c for c in ker if c in out and c not in ins)
    positions = "".join(c for c in ins if c in out and c not in ker and c != e)
    return shared, contracted, free, positions


def static_dims(specs, kernel_shape, input_shape):
    """(T or None if unknown, fan_in, fan_out, blocks S) of one call, from static shapes."""
    shared, contracted, free, positions = _roles(specs)
    sizes = dict(zip(specs.kernel, kernel_shape))
    lengths = [input_shape[specs.inputs.index(c)] for c in positions]
    t = None if any(n is None for n in lengths) else math.prod(lengths)
    return t, _size(contracted, sizes), _size(free, sizes), _size(shared, sizes)


def kernel_problem(x, b, specs, kernel_shape) -> Problem:
    """The `Problem` of x, b: input and output gradient laid out as specs.inputs / outputs."""
    ins, ker, out, e = specs
    sizes = dict(zip(ker, kernel_shape))
    shared, contracted, free, positions = _roles(specs)
    a_spec, b_spec = e + shared + positions + contracted, e + shared + positions + free
    raw, (x, b) = x, (base.full_precision(x), base.full_precision(b))
    a = x if ins == a_spec else tf.einsum(f"{ins}->{a_spec}", x)
    g = b if out == b_spec else tf.einsum(f"{out}->{b_spec}", b)
    blocks, fan_in, fan_out = _size(shared, sizes), _size(contracted, sizes), _size(free, sizes)
    first = 1 + len(shared)
    axes = range(first, first + len(positions))
    t = _product(_dim(a, i) for i in axes)  # a Python int when every position axis is static
    rows = _dim(a, 0) * blocks if blocks != 1 else _dim(a, 0)
    key = (raw, ("einsum", len(positions))) if ins == a_spec and not shared else None
    return Problem(tf.reshape(a, [rows, t, fan_in]), tf.reshape(g, [rows, t, fan_out]), blocks, key)


def problems_sq_norms(problems):
    """Per-example ‖Σ_T a_t ⊗ b_t‖² summed over the S blocks, for one layer's calls' `Problem`s
    (same S; positions concatenated across calls)."""
    blocks = problems[0].blocks
    a = base.concat_positions([p.a for p in problems])
    g = base.concat_positions([p.b for p in problems])
    sq = base.outer_sum_sq_norm(a, g, problems[0].key if len(problems) == 1 else None)
    if blocks == 1:
        return sq
    return tf.reduce_sum(tf.reshape(sq, tf.stack([-1, blocks])), axis=1)


def bias_sq_norms(grads_and_specs, bias_axes):
    """Per-example ‖Σ over non-bias output letters of b‖², summed over calls [(b, specs)]."""
    total = 0.0
    for b, specs in grads_and_specs:
        out = specs.outputs
        kept = specs.example + "".join(c for c in out if c in bias_axes)
        b = base.full_precision(b)
        total = total + (b if out == kept else tf.einsum(f"{out}->{kept}", b))
    return base.sum_sq(total)


def per_example_kernel_gradients(x, b, specs):
    """∇W ℓ_i of every example, [m, *kernel shape]: x, b laid out as specs.inputs / outputs (the
    positions and input-only letters summed by one einsum)."""
    ins, ker, out, e = specs
    return tf.einsum(f"{ins},{out}->{e}{ker}", base.full_precision(x), base.full_precision(b))


class EinsumDenseRule(base.LayerRule):
    name = "einsum_dense"

    @staticmethod
    def matches(layer):
        return (base.unmodified(layer, keras.layers.EinsumDense) and base.plain(layer)
                and layer_specs(layer) is not None)

    @staticmethod
    def call(layer, inputs, ctx, training=None):
        positions, fan_in, fan_out, blocks = static_dims(layer_specs(layer), layer.kernel.shape,
                                                         inputs.shape)
        materialise = base.trainable(layer, layer.kernel) and materialised.chosen(
            positions, fan_in, fan_out, inputs.shape[0], inputs.dtype, blocks)
        z = keras.ops.einsum(layer.equation, inputs,
                             ctx.weight(layer.kernel, tape_sum=not materialise))
        if layer.bias is not None:
            z = keras.ops.add(z, ctx.weight(layer.bias))
        ctx.keep(inputs=inputs, materialise=materialise)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        specs = layer_specs(layer)
        out = {}
        if base.trainable(layer, layer.kernel) and any(c["materialise"] for c in calls):
            out[id(layer.kernel)] = materialised.statistic(
                [per_example_kernel_gradients(c["inputs"], c.output_grads[0], specs) for c in calls],
                [c["materialise"] for c in calls])
        elif base.trainable(layer, layer.kernel):
            problems = [kernel_problem(c["inputs"], c.output_grads[0], specs, layer.kernel.shape)
                        for c in calls]
            out[id(layer.kernel)] = base.Statistic(problems_sq_norms(problems))
        if base.trainable(layer, layer.bias):
            out[id(layer.bias)] = base.Statistic(
                bias_sq_norms([(c.output_grads[0], specs) for c in calls], layer.bias_axes))
        return out
