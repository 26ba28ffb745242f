"""The interface of a fast per-layer rule and the tensor helpers the rules share.

A rule turns one forward and one backward pass into exact per-example squared gradient norms of a
layer's variables (docs/design.md, "Fast per-example norms"). While the engine
(`cgh_tf.per_example.gradients_and_sq_norms`) runs the model, each supported layer's `call` is
replaced by `rule.call(layer, inputs, ctx, *args, **kwargs)`, which must compute exactly what the
layer computes, but

* reads each trainable variable through `ctx.weight(variable)`: a stop-gradient copy of its value
  that the tape watches, so the tape's gradient w.r.t. that copy is the layer's own contribution to
  Σ_i g_i, and the tape's gradient w.r.t. the variable itself is None unless something *else* (tied
  weights, a closure, another layer) also uses it: a structural proof, found while tracing, that the
  rule sees every use of the variable;
* marks the tensors whose loss gradients it needs with `ctx.output(z)` (e.g. the pre-activation
  output), and keeps any other tensor with `ctx.keep(name=tensor)`.

After the backward pass, `rule.statistics(layer, calls)` receives every recorded call of the layer
(a layer called twice is one layer with two calls) with `call.output_grads` filled in, and returns
`{id(variable): Statistic}`: the per-example squared norms [m] and, for variables read with
`ctx.weight(v, tape_sum=False)`, Σ_i g_i computed by the rule itself; a rule whose per-example
gradients are rank one (Dense applied once per example) also gives their factors
(`Statistic.factors`), from which `cgh_tf.alignment` takes every g_i · d without a second pass.

Shapes: m examples; "positions" T are every axis between the example axis and the feature axis.
"""

import contextlib
import dataclasses
import math
import threading
from typing import Dict, List, NamedTuple, Optional

import tensorflow as tf


class Statistic(NamedTuple):
    """Per-example squared norms [m] of one variable's gradient, and Σ_i g_i if the rule made it.

    factors: None, or (a [m, i] or None, b [m, o]) with g_i = a_i ⊗ b_i (a kernel [i, o]) or, a
    None, g_i = b_i (a bias [o]): per-example gradients the rule proves rank one (`Factors`)."""

    sq_norms: tf.Tensor
    grad_sum: Optional[tf.Tensor] = None
    factors: Optional["Factors"] = None


class Factors(NamedTuple):
    """Rank-one per-example gradients of one variable: g_i = a_i ⊗ b_i (a [m, i], b [m, o], the
    variable [i, o]) or g_i = b_i (a None, the variable [o]). So g_i · d = a_iᵀ d b_i (or b_i · d)
    for any direction d of the variable's shape."""

    a: Optional[tf.Tensor]
    b: tf.Tensor


@dataclasses.dataclass
class LayerCall:
    """What one call of an instrumented layer recorded.

    outputs: tensors marked with `ctx.output` (their loss gradients arrive in `output_grads`, zeros
      where the loss does not depend on them); kept: named tensors from `ctx.keep`;
    weights: {id(variable): (variable, value tensor read by the rule, watched by the tape)}.
    """

    layer: object
    outputs: List[tf.Tensor] = dataclasses.field(default_factory=list)
    kept: Dict[str, object] = dataclasses.field(default_factory=dict)
    weights: Dict[int, tuple] = dataclasses.field(default_factory=dict)
    output_grads: List[tf.Tensor] = dataclasses.field(default_factory=list)

    def __getitem__(self, name):
        return self.kept[name]


class CallContext:
    """Handed to `rule.call`: reads weights and records what the statistics need."""

    def __init__(self, tape, layer):
        self._tape = tape
        self.record = LayerCall(layer)

    def weight(self, variable, tape_sum=True):
        """The value of `variable` for this call's computation (autocast like the layer's own read).

        tape_sum=True: the engine takes Σ_i g_i from the tape's gradient w.r.t. this value; False:
        the rule returns Σ_i g_i in its `Statistic` (when it has it anyway, e.g. materialised
        per-example gradients), and the tape skips the weight gradient.
        A frozen variable (or one of a frozen layer) is returned as its plain value: the engine keeps
        Σ_i g_i and norms for trainable variables only.
        """
        if not (variable.trainable and self.record.layer.trainable):
            return tf.convert_to_tensor(variable)
        value = tf.stop_gradient(tf.convert_to_tensor(variable))
        if tape_sum:
            self._tape.watch(value)
        self.record.weights[id(variable)] = (variable, value, tape_sum)
        return value

    def output(self, tensor):
        """Marks `tensor` as one whose loss gradient the statistics need; returns it.

        Watched by the tape: when nothing traced feeds it (a first layer, its weights read with
        tape_sum=False, no bias) the tape would otherwise not connect it and return None."""
        self._tape.watch(tensor)
        self.record.outputs.append(tensor)
        return tensor

    def keep(self, **tensors):
        """Keeps named tensors (or Python values) for the statistics."""
        self.record.kept.update(tensors)


class LayerRule:
    """Base class: `matches`, `call`, `statistics` (see the module docstring)."""

    name = "rule"

    @staticmethod
    def matches(layer) -> bool:
        raise NotImplementedError

    @staticmethod
    def call(layer, inputs, ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def statistics(layer, calls) -> Dict[int, Statistic]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------
# Helpers shared by the rules


def unmodified(layer, cls) -> bool:
    """`layer` is a `cls` whose `call` is Keras' own (a subclass overriding `call` is not)."""
    return isinstance(layer, cls) and type(layer).call is cls.call


def plain(layer) -> bool:
    """Neither LoRA-enabled nor quantized (those read their weights differently)."""
    return not getattr(layer, "lora_enabled", False) and getattr(layer, "quantization_mode", None) is None


def by_examples(t, features):
    """Reshape [m, ..., features] to [m, T, features] (T static when the input shape allows)."""
    positions = t.shape[1:-1].num_elements()
    return tf.reshape(t, tf.stack([tf.shape(t)[0], -1 if positions is None else positions, features]))


def concat_positions(tensors):
    """Concatenates [m, T_j, f] tensors along the position axis (a layer called several times)."""
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=1)


def sum_sq(t):
    """Per-example sum of squares over all non-example axes: [m, ...] -> [m]."""
    return tf.reduce_sum(tf.square(t), axis=list(range(1, t.shape.rank)))


@tf.function(jit_compile=True, reduce_retracing=True)
def gram_sq_norm(a, b):
    """‖Σ_t a_t ⊗ b_t‖² per example as Σ_{s,t} (a_s·a_t)(b_s·b_t): a [m,T,i], b [m,T,o] -> [m].

    Compiled with XLA (also inside a graph that is not): TF's CPU batched matmul computes the
    [m, T, T] Gram matrices at about half XLA's rate (benchmarks/transformer_rules.py)."""
    return tf.reduce_sum(tf.matmul(a, a, transpose_b=True) * tf.matmul(b, b, transpose_b=True), [1, 2])


def prefer_gram(positions, fan_in, fan_out, sharers=1):
    """True if the Gram form, T²(i/n + o) multiply-adds (a aᵀ shared by n problems of one input),
    is cheaper than materialising Σ_t a_t ⊗ b_t, T·i·o (unknown T: Gram, which needs no static
    shape; n = inf when a aᵀ is already computed)."""
    if positions is None:
        return True
    return positions * (fan_in / sharers + fan_out) <= fan_in * fan_out


@tf.function(jit_compile=True, reduce_retracing=True)
def gram(a):
    """Per-example Gram matrices a aᵀ: [m,T,i] -> [m,T,T] (XLA, as in `gram_sq_norm`)."""
    return tf.matmul(a, a, transpose_b=True)


@tf.function(jit_compile=True, reduce_retracing=True)
def gram_sq_norm_given(a_gram, b):
    """`gram_sq_norm` with the Gram matrices of a given: a_gram [m,T,T], b [m,T,o] -> [m]."""
    return tf.reduce_sum(a_gram * tf.matmul(b, b, transpose_b=True), [1, 2])


_SHARED_GRAMS = threading.local()  # in `shared_input_grams`: .cache {key: (input, graph, Gram)},
#                                    .readers {id(input tensor): layer calls reading it}


@contextlib.contextmanager
def shared_input_grams():
    """Inside the block, `outer_sum_sq_norm(a, b, key)` computes the Gram matrices of a once per
    key and reuses them: the query, key and value projections of self-attention read one input
    (the engine opens one block around its statistics). Per thread: strategies trace replicas in
    threads."""
    previous = getattr(_SHARED_GRAMS, "cache", None), getattr(_SHARED_GRAMS, "readers", None)
    _SHARED_GRAMS.cache, _SHARED_GRAMS.readers = {}, {}
    try:
        yield
    finally:
        _SHARED_GRAMS.cache, _SHARED_GRAMS.readers = previous


def note_input_readers(calls):
    """Inside `shared_input_grams`: counts the layer calls reading each input tensor (the
    `inputs` a call kept, unless it materialises its gradients: `materialised.py`), so that the
    Gram form's cost is shared among them whatever order the layers' statistics come in
    (`prefer_gram`'s n)."""
    readers = getattr(_SHARED_GRAMS, "readers", None)
    if readers is None:
        return
    for call in calls:
        if "inputs" in call.kept and not call.kept.get("materialise"):
            readers[id(call.kept["inputs"])] = readers.get(id(call.kept["inputs"]), 0) + 1


def outer_sum_sq_norm(a, b, key=None):
    """‖Σ_t a_t ⊗ b_t‖² per example, by the cheaper exact form: a [m,T,i], b [m,T,o] -> [m].

    key: (input tensor, hashable) naming how a was made from a layer input (equal keys, equal a),
    so that inside `shared_input_grams` the Gram form computes a aᵀ once per key; None: unshared.
    The Gram form's a aᵀ is costed as shared by every layer call reading the same input
    (`note_input_readers`), and as free once computed: the narrower key / value projections of
    grouped-query attention, which alone would materialise, use their query's."""
    fan_in, fan_out = a.shape[-1], b.shape[-1]
    positions = a.shape[1]
    if positions == 1:
        return sum_sq(a) * sum_sq(b)
    cache = getattr(_SHARED_GRAMS, "cache", None)
    if key is None or cache is None:
        if not prefer_gram(positions, fan_in, fan_out):
            return _materialised_sq_norm(a, b)
        return gram_sq_norm(a, b)
    name, graph = _gram_name(key)
    sharers = math.inf if name in cache else max(1, _SHARED_GRAMS.readers.get(id(key[0]), 1))
    if not prefer_gram(positions, fan_in, fan_out, sharers):
        return _materialised_sq_norm(a, b)
    if name not in cache:
        cache[name] = (key[0], graph, gram(a))  # both held: their ids are not reused in the block
    return gram_sq_norm_given(cache[name][2], b)


def _gram_name(key):
    """(cache name, graph) of a `key` in the current graph (a tensor of one graph cannot be used
    in another): the name is (id of the input tensor, how a was made from it, id of the graph)."""
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    return (id(key[0]), key[1], id(graph)), graph


def _materialised_sq_norm(a, b):
    """‖Σ_t a_t ⊗ b_t‖² per example by materialising the sums: a [m,T,i], b [m,T,o] -> [m]."""
    return sum_sq(tf.einsum("mti,mto->mio", a, b))


def activation(layer, z):
    """The layer's activation applied to z (identity when it has none)."""
    return layer.activation(z) if getattr(layer, "activation", None) is not None else z


def trainable(layer, variable):
    """True if `variable` exists and takes gradients (the layer and the variable trainable)."""
    return variable is not None and layer.trainable and variable.trainable


def full_precision(t):
    """float16 / bfloat16 tensors as float32 (squared norms of half-precision values overflow)."""
    return tf.cast(t, tf.float32) if t.dtype in (tf.float16, tf.bfloat16) else t
