"""Exact per-example gradients for layers without a closed-form rule, without crashing the process.

    per_example_gradients(model, x, y, loss_fn, variables, training=False, *, method="auto")
        -> list aligned with `variables` of [m, *v.shape] tensors

Per-example gradients g_i of `sum(loss_fn(y_i[None], model(x_i[None])))` (zeros where a variable
does not affect the loss), traceable inside a `tf.function` (also with an
unknown batch size, also inside Keras' compiled train step), float32 / float64 / mixed_float16.

## The defect: vectorized_map + oneDNN batched matmul

Measured with TF 2.21.0 (bundled oneDNN v3.7.3), Keras 3.15.1, Python 3.11, on an AMD EPYC (Zen 3,
AVX2 + FMA, no AVX-512), 2 cores, Linux.

* What vectorized_map does to attention: each example runs the model on a batch of 1, so every
  Einsum / BatchMatMul of the per-example graph (EinsumDense, the attention einsums of
  MultiHeadAttention, Dense on >2-D inputs) becomes, after pfor, a batched matmul whose left operand
  has a size-1 batch dimension and whose right operand (the loop-invariant kernel) is broadcast.
  With oneDNN on, `ONEDNN_VERBOSE=1` shows e.g. `matmul 64x1x64x128:1x1x128x128` (the projection of
  MHA at batch 64, seq 64, width 128) and `64x1x4x64x64:64x1x4x64x32`. A plain Keras train step of
  the same block only has `64x32x64:1x64x64`-style matmuls (no size-1 dimension).
* That is exactly the pattern of the TensorFlow issues: tensorflow/tensorflow#117700 "Memory
  Corruption in matmul with rank-4 input tensor and ONEDNN enabled" (`tf.linalg.matmul` of [13, 1,
  3, 4] by [4, 16]: "corrupted double-linked list", "free(): invalid pointer", SIGSEGV; gone with
  TF_ENABLE_ONEDNN_OPTS=0; fix PR #120199 "heap corruption in OneDNN batch matmul with broadcast
  rank mismatch"; filed against 2.21.0), #123109 "Heap corruption (SIGABRT/SIGSEGV) in eager
  tf.matmul with rank-4 lhs and broadcast rhs on CPU (oneDNN)" (rank-4 lhs with a size-1 dimension x
  broadcast rhs; 8/8 crashes with oneDNN on, 0/5 off), and oneDNN uxlfoundation/oneDNN#4396
  "brgemm_matmul segfaults with multiple threads when broadcasting dims" (`2x1x40x20:1x1x20x40`, x64
  AVX-512).
* Not reproducible on this machine, and why. TensorFlow turns oneDNN on by default only on Linux x86
  CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (`IsMklEnabled` in
  tensorflow/core/util/util.cc); here it is off, so the crashing kernels never run. Forced on
  (TF_ENABLE_ONEDNN_OPTS=1), oneDNN picks its AVX2 `gemm:jit:f32` matmul for these shapes, which
  handles the broadcast correctly. No crash and no NaN, each case 3 subprocess runs of 5 calls of
  the vectorized per-example gradient: Embedding(100, 128) -> MHA(4 heads x 32) -> pool -> Dense at
  batch 64, seq 64 with / without biases and a bare EinsumDense with a 3-D and with a 4-D kernel,
  oneDNN off and forced on; oneDNN off also float64, unknown batch, 20 calls, no-bias EinsumDense;
  180 random-shape stress cases (vectorized attention einsums and rank-4 x rank-2 matmuls, 8
  intra-op threads, MALLOC_CHECK_=3); the issues' own reproducers (#117700, #123109), 4/4 clean
  each; valgrind memcheck of #117700's reproducer with oneDNN on: no invalid read or write. So the
  crashing kernel is most likely oneDNN's AVX-512 `brgemm` matmul (#4396), which oneDNN picks on
  AVX-512 CPUs — the kind on which TensorFlow turns oneDNN on by default (AVX512_VNNI), i.e. the
  reporter's kind of machine (not verifiable here).
* Conditions, then: oneDNN on (default on AVX-512-VNNI / AMX x86 Linux, or TF_ENABLE_ONEDNN_OPTS=1)
  + (most likely) oneDNN's AVX-512 brgemm matmul + a batched matmul with a size-1 batch dimension
  and a broadcast operand, which vectorized_map produces for every Einsum / BatchMatMul of the
  per-example graph. Intermittent because it is a heap overrun: whether it hits a live chunk depends
  on the allocation layout (SIGSEGV, SIGABRT "corrupted double-linked list", SIGILL, or silently
  NaN). Reproducer for such a machine: `tests/test_exact_fallback.py`'s `crash_case` shapes with
  `method="vmap"`, or the one-liner of #117700.

## Formulations (all exact; ms per call, batch 64, float32, after warm-up)

* "vmap": `tf.vectorized_map` of the per-example tape, in a nested `tf.function` (in a first, noisy
  run no slower than inlining it into the caller's graph, often faster). Unsafe with oneDNN on when
  the per-example graph has an Einsum / BatchMatMul (above). `fallback_to_while_loop` does not help:
  pfor has converters for Einsum and BatchMatMulV2, so they are vectorized (into the crash pattern),
  never looped.
* "xla": the same vectorized_map in a nested `tf.function(jit_compile=True)`; works when the outer
  function is not compiled and with unknown batch dimensions (XLA compiles per concrete shape at run
  time: a new batch size, e.g. the last partial batch, compiles again). XLA's CPU backend never runs
  TensorFlow's `_MklBatchMatMul` / `_MklEinsum`: with oneDNN on, `ONEDNN_VERBOSE` shows only plain
  2-D `gemm_api` calls (e.g. 64x32:32x64). It cannot lower string ops, py_function, ... nor the
  pfor-converted Keras GRU / LSTM loop with a dynamic batch ("UnimplementedError ... If" at run
  time): that is checked at trace time (below), never left to fail at run time.
* "loop": `tf.map_fn` over examples (8 parallel iterations), each a batch-1 forward and backward:
  the same kernels and shapes as a plain batch-1 train step (`1x32x64:1x64x64`), so safe with any
  op.
* Rewriting the attention matmuls in pfor (tiling the loop-invariant operand so nothing broadcasts)
  would need replacing TensorFlow's private pfor converters and cannot be validated on this
  hardware; not done.

Benchmark `python -m benchmarks.exact_fallback` (interleaved rounds, median; oneDNN off and forced
on; the 2-core machine was shared with other jobs, load 3-11, so values vary up to ~2x between runs:
ranges over 6 runs, 3 with oneDNN off and 3 forced on; first call in s in parentheses):

| model (batch 64) | vmap | xla | loop |
|---|---|---|---|
| MLP 64-128-128-10 | 5-12 (1-4) | 5-18 (2-5) | 13-36 (1) |
| CNN 16x16x3, 2 conv, GAP | 18-35 (1); oneDNN on: 44-132 | 14-45 (9-12) | 15-52; on: 78-156 (1) |
| GRU(32), 20 steps | 30-95 (11-40) | fails (tf2xla) | 340-1080 (1-4) |
| LSTM(32), 20 steps | 31-64 (13-36) | fails (tf2xla) | 230-810 (1-3) |
| Transformer block (seq 32, width 64, 4 heads, FFN 128) | 40-118 (4-10) | 26-82 (6-22) | 120-283 (3) |
| bare EinsumDense (3-D kernel + bias, 4-D -> 2-D) | 3-8 (1-2) | 2-8 (3-5) | 11-135 (1-2) |

## The rule (method="auto", decided at trace time)

1. oneDNN off in this process (`onednn_enabled()`): "vmap". No oneDNN kernel runs at all, so the
   defect cannot occur; vmap is exact, the fastest without compilation, and works for every layer.
2. oneDNN on and one example's forward + backward graph (traced, not run) has no Einsum /
   BatchMatMul (MLP, CNN, GRU, LSTM, ...): "vmap". pfor then makes MatMul / Conv and BatchMatMul of
   two per-example operands (equal batch dimensions), not the crash pattern.
3. Otherwise (attention, EinsumDense, Dense on sequences) if tf2xla lowers the vectorized function
   (`experimental_get_compiler_ir(stage="hlo")` on the body traced with the caller's unknown
   dimensions, those set to 2): "xla" — the fastest for attention after compilation and it never
   touches the crashing kernels. Cost: the check and the compilation (seconds; again per new batch
   size).
4. Otherwise: "loop" (safe for any op; 2-15x slower).

In 1 and 2, "vmap" also needs TF's vectorizer to handle the graph (`_vectorizable`, at trace time):
it raises converting an Embedding that feeds a Keras RNN loop, and a grouped convolution's
vectorized filter gradient fails when run; both take "loop" instead. The vectorizer's own ERROR
logs of that expected failure (many lines per op) are dropped while it tries; nothing else is.

XLA is not used where vmap is safe, although it is sometimes faster per call: it compiles for
seconds per batch size, cannot lower RNN loops, and gains little outside attention; pass
`method="xla"` to force it (or "vmap" / "loop"). `last_selected_method(model)` tells what "auto"
chose.
"""

import contextlib
import logging
import threading
import weakref
from typing import Callable, List, Optional, Sequence

import keras
import tensorflow as tf

from cgh_tf import keras_internals, mode_dependence, recent_builds

METHODS = ("auto", "vmap", "xla", "loop")

# Op types whose oneDNN kernels (_MklBatchMatMul*, _MklEinsum) hit the broadcast-batch corruption.
_BATCHED_MATMUL_OPS = frozenset({
    "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
    "_MklBatchMatMul", "_MklBatchMatMulV2", "_MklEinsum",
})


# ----------------------------------------------------------------------------------------------
# Environment


def onednn_enabled() -> bool:
    """True if TensorFlow's oneDNN (MKL) CPU kernels are on in this process.

    TensorFlow decides once per process: `TF_ENABLE_ONEDNN_OPTS` if set, else on for Linux x86 CPUs
    with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (off on e.g. AVX2-only CPUs).
    """
    return keras_internals.onednn_enabled()


# ----------------------------------------------------------------------------------------------
# The per-example function and the formulations


def _expand(structure):
    return tf.nest.map_structure(lambda t: tf.expand_dims(t, 0), structure)


def _one_example_fn(model, loss_fn, variables, training):
    def one_example(example):
        xi, yi = example
        with tf.GradientTape() as tape:
            y_pred = model(_expand(xi), training=training)
            loss_value = tf.reduce_sum(loss_fn(_expand(yi), y_pred))
        grads = tape.gradient(loss_value, variables)
        return [
            tf.zeros(v.shape, v.dtype) if g is None else tf.cast(tf.convert_to_tensor(g), v.dtype)
            for g, v in zip(grads, variables)
        ]

    return one_example


def _vmap_function(one_example):
    """vectorized_map in a nested tf.function (benchmarked: no slower than inlining it)."""
    return tf.function(lambda x, y: tf.vectorized_map(one_example, (x, y)), autograph=False)


def _xla_function(one_example, x, y):
    """(call(x, y), jit) with `jit` a jit-compiled function of the flat tensors of (x, y), whose body
    is the vectorized_map traced for x, y's shapes — unknown dimensions kept."""
    body = _vmap_function(one_example).get_concrete_function(_specs(x), _specs(y))
    structure = (x, y)

    def flat_body(*flat):
        return body(*tf.nest.pack_sequence_as(structure, list(flat)))

    jit = tf.function(flat_body, jit_compile=True, autograph=False)
    return (lambda x, y: jit(*tf.nest.flatten((x, y)))), jit


def _loop_function(one_example, variables):
    signature = [tf.TensorSpec(v.shape, tf.as_dtype(v.dtype)) for v in variables]
    return lambda x, y: tf.map_fn(one_example, (x, y), fn_output_signature=signature,
                                  parallel_iterations=8)


def _specs(structure, fill=None):
    """TensorSpecs of a nest of tensors; `fill` replaces unknown dimensions (for a static trace)."""
    def spec(t):
        shape = t.shape.as_list()
        if fill is not None:
            shape = [fill if d is None else d for d in shape]
        return tf.TensorSpec(shape, t.dtype)

    return tf.nest.map_structure(spec, structure)


def _example_specs(structure):
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape[1:], t.dtype), structure)


def _op_types(concrete_function):
    """All op types in a traced function, including nested functions (loop bodies, calls)."""
    graph_def = concrete_function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


def _has_batched_matmul(one_example, x, y) -> bool:
    """True if one example's forward + backward graph has an Einsum / BatchMatMul (EinsumDense,
    MultiHeadAttention, Dense on >2-D inputs, ...): vectorized_map turns them into batched matmuls
    with a size-1 batch dimension (the batch of 1) that broadcast a loop-invariant operand (the
    kernel): the oneDNN crash pattern."""
    trace = tf.function(lambda e: one_example(e), autograph=False)
    return bool(_op_types(trace.get_concrete_function((_example_specs(x), _example_specs(y))))
                & _BATCHED_MATMUL_OPS)


def _vectorizable(model, vmap, x, y) -> bool:
    """False where TF 2.21's vectorizer fails on the per-example graph, decided at trace time:
    it raises while converting (an Embedding feeding a Keras RNN loop: "dtype variant is not
    compatible with ... int64"), or the model has a grouped convolution, whose vectorized filter
    gradient fails only when run ("filter_size does not have enough elements")."""
    if isinstance(model, keras.layers.Layer) and any(
            getattr(layer, "groups", 1) > 1 for layer in keras_internals.flatten_layers(model)):
        return False
    try:
        with _vectorizer_errors_unlogged():
            vmap.get_concrete_function(_specs(x), _specs(y))
    except (TypeError, ValueError, NotImplementedError, tf.errors.OpError):
        return False
    return True


class _DropVectorizerErrors(logging.Filter):
    """Drops the records TF's vectorizer (tensorflow/python/ops/parallel_for) logs at ERROR."""

    def filter(self, record):
        return not (record.levelno >= logging.ERROR and "parallel_for" in record.pathname)


@contextlib.contextmanager
def _vectorizer_errors_unlogged():
    """While trying to vectorize: TF's vectorizer logs every op it cannot convert at ERROR (the
    op, its inputs and stack traces, many lines) and then raises; here that failure is expected
    (it is how "auto" rules vmap out and takes "loop"), so those records are dropped. Other
    records of TF's logger pass."""
    drop = _DropVectorizerErrors()
    logger = tf.get_logger()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _xla_lowerable(jit, x, y) -> bool:
    """True if tf2xla lowers `jit` (from `_xla_function`) for x, y's shapes, unknown dimensions set
    to 2; decided at trace time without running anything.

    The body keeps the unknown dimensions of the real call, so constructs that tf2xla rejects only
    with a dynamic batch (the pfor-converted `If` in Keras' GRU / LSTM loop) are caught, as are ops
    without an XLA kernel (string ops, py_function, ...).
    """
    try:
        with tf.init_scope():
            jit.experimental_get_compiler_ir(*tf.nest.flatten(_specs((x, y), fill=2)))(stage="hlo")
        return True
    except Exception:  # any failure to lower: not XLA
        return False


def _select(model, x, y, loss_fn, variables, training, onednn=None):
    """Method for `method="auto"`, decided at trace time. Returns (name, callable(x, y))."""
    one_example = _one_example_fn(model, loss_fn, variables, training)
    if onednn is None:
        onednn = onednn_enabled()
    if not onednn or not _has_batched_matmul(one_example, x, y):
        vmap = _vmap_function(one_example)
        if _vectorizable(model, vmap, x, y):
            return "vmap", vmap
        return "loop", _loop_function(one_example, variables)
    xla, jit = _xla_function(one_example, x, y)
    if _xla_lowerable(jit, x, y):
        return "xla", xla
    return "loop", _loop_function(one_example, variables)


_SELECTED = weakref.WeakKeyDictionary()  # model -> method chosen by the last "auto" trace


def last_selected_method(model) -> Optional[str]:
    """The method ("vmap", "xla" or "loop") the last `method="auto"` trace chose for `model`."""
    try:
        return _SELECTED.get(model)
    except TypeError:
        return None


def _build(model, x, y, loss_fn, variables, training, method):
    if method == "auto":
        name, function = _select(model, x, y, loss_fn, variables, training)
        try:
            _SELECTED[model] = name
        except TypeError:  # not weak-referenceable
            pass
        return function
    one_example = _one_example_fn(model, loss_fn, variables, training)
    if method == "vmap":
        return _vmap_function(one_example)
    if method == "xla":
        return _xla_function(one_example, x, y)[0]
    if method == "loop":
        return _loop_function(one_example, variables)
    raise ValueError(f"method must be one of {METHODS}; got {method!r}.")


# ----------------------------------------------------------------------------------------------
# Public entry point

# model -> {key: (loss_fn, variables, tf.function)}, the most recently used `recent_builds`
# (the key holds the loss decomposition, new on each public call); the functions hold the model weakly.
_EAGER_CACHE = weakref.WeakKeyDictionary()
_EAGER_LOCK = threading.Lock()


def per_example_gradients(model, x, y, loss_fn: Callable, variables: Sequence, training=False,
                          *, method="auto") -> List[tf.Tensor]:
    """Per-example gradients: a list aligned with `variables`, each a [m, *v.shape] tensor.

    model: a Keras model (or any callable `model(x, training=...)`); x: a tensor [m, ...] or a
      nest of them; y: [m, ...] or a nest (e.g. the `loss_decomposition.Targets` of the batch);
      loss_fn(y, y_pred) -> [m] per-example losses (e.g.
      `cgh_tf.per_example.per_example_loss_fn(model, loss)`); variables: the variables to
      differentiate (zeros where a variable does not affect the loss).
    method: "auto" (the rule in the module docstring), or "vmap", "xla", "loop" to force one.
    Traceable (inside a `tf.function`, also with an unknown batch size); called eagerly, a cached
    `tf.function` is used.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    variables = list(variables)
    if not variables:
        return []
    if isinstance(model, keras.Model):
        mode_dependence.check_examples_independent(
            model, training, "Per-example gradients taken one example at a time (the exact "
            "fallback: cgh_tf.per_example.explain lists its layers; winsorized aggregation of "
            "every variable but Dense ones)")
    x, y = tf.nest.map_structure(tf.convert_to_tensor, (x, y))
    if tf.inside_function():
        return list(_build(model, x, y, loss_fn, variables, training, method)(x, y))
    return list(_eager_function(model, loss_fn, variables, training, method)(x, y))


def _eager_function(model, loss_fn, variables, training, method):
    key = (id(loss_fn), tuple(id(v) for v in variables), bool(training), method)
    with _EAGER_LOCK:
        try:
            per_model = _EAGER_CACHE.setdefault(model, {})
        except TypeError:  # not weak-referenceable: no cache
            per_model = {}
        entry = per_model.get(key)
        if entry is not None and entry[0] is loss_fn:
            return recent_builds.put_recent(per_model, key, entry)[2]

        try:
            model_ref = weakref.ref(model)
        except TypeError:
            model_ref = lambda: model  # noqa: E731

        @tf.function(reduce_retracing=True, autograph=False)
        def compute(x, y):
            return _build(model_ref(), x, y, loss_fn, variables, training, method)(x, y)

        recent_builds.put_recent(per_model, key, (loss_fn, variables, compute))
        return compute
