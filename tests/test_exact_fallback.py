"""Exact per-example gradients that never crash the process (`cgh_tf.exact_fallback`).

Reference: a Python loop of per-example `tf.GradientTape`s in float64 (batch of 1 each).
The crash test runs the attention reproducer (module docstring of cgh_tf.exact_fallback) with
TensorFlow's oneDNN kernels forced on in subprocesses (`python tests/test_exact_fallback.py crash`),
so that a crash fails a test instead of killing pytest.
"""

import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

if __name__ == "__main__":  # subprocess mode: oneDNN on, before TensorFlow initialises
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cgh_tf import exact_fallback  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
KINDS = ("mlp", "cnn", "gru", "lstm", "transformer", "einsum")


class HashIds(keras.layers.Layer):
    """String ops (no XLA kernel): ids -> as_string -> hash bucket."""

    def call(self, ids):
        return tf.strings.to_hash_bucket_fast(tf.strings.as_string(ids), 20)


def make(kind, m=3, seed=0):
    """(model, x, y) of a tiny model of `kind`, in the current Keras floatx."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    fx = keras.config.floatx()
    L = keras.layers
    if kind == "mlp":
        inputs = keras.Input((5,))
        h = L.Dense(6, activation="tanh")(inputs)
        x = rng.standard_normal((m, 5))
    elif kind == "cnn":
        inputs = keras.Input((6, 6, 2))
        h = L.Conv2D(3, 3, activation="tanh")(inputs)
        h = L.MaxPooling2D()(h)
        h = L.Flatten()(h)
        x = rng.standard_normal((m, 6, 6, 2))
    elif kind in ("gru", "lstm"):
        inputs = keras.Input((4, 3))
        # GRU: the symbolic loop (Keras default); LSTM unrolled (pfor of a second loop costs ~15 s)
        h = L.GRU(5)(inputs) if kind == "gru" else L.LSTM(5, unroll=True)(inputs)
        x = rng.standard_normal((m, 4, 3))
    elif kind == "embedding_gru":  # TF's vectorizer fails on it (trace time): "loop"
        inputs = keras.Input((4,), dtype="int32")
        h = L.GRU(3)(L.Embedding(7, 2)(inputs))
        x = rng.integers(0, 7, (m, 4))
    elif kind == "transformer":
        inputs = keras.Input((5,), dtype="int32")
        e = L.Embedding(11, 8)(inputs)
        h = L.LayerNormalization()(e + L.MultiHeadAttention(2, 4)(e, e))
        f = L.Dense(8)(L.Dense(12, activation="relu")(h))
        h = L.LayerNormalization()(h + f)
        h = L.GlobalAveragePooling1D()(h)
        x = rng.integers(0, 11, (m, 5))
    elif kind == "einsum":  # bare EinsumDense: 3-D kernel with bias, then a contraction without
        inputs = keras.Input((4, 6))
        h = L.EinsumDense("abc,cde->abde", (4, 2, 3), bias_axes="de")(inputs)
        h = L.EinsumDense("abde,de->ab", (4,))(h)
        x = rng.standard_normal((m, 4, 6))
    elif kind == "strings_einsum":  # batched matmuls and an op XLA cannot compile
        inputs = keras.Input((4,), dtype="int32")
        h = L.Embedding(20, 6)(HashIds()(inputs))
        h = L.Flatten()(L.EinsumDense("abc,cd->abd", (4, 3))(h))
        x = rng.integers(0, 1000, (m, 4))
    elif kind == "dict_einsum":  # a nest of inputs
        inputs = {"ids": keras.Input((4,), dtype="int32", name="ids"),
                  "z": keras.Input((4, 2), name="z")}
        h = L.Concatenate()([L.Embedding(9, 3)(inputs["ids"]), inputs["z"]])
        h = L.Flatten()(L.EinsumDense("abc,cd->abd", (4, 3), bias_axes="d")(h))
        x = {"ids": rng.integers(0, 9, (m, 4)), "z": rng.standard_normal((m, 4, 2))}
    else:
        raise ValueError(kind)
    model = keras.Model(inputs, L.Dense(3)(h))
    x = tf.nest.map_structure(
        lambda a: tf.constant(a.astype("int32") if a.dtype.kind == "i" else a.astype(fx)), x)
    return model, x, tf.constant(rng.integers(0, 3, (m,)).astype("int32"))


def brute_force(model, x, y, variables):
    """Per-example gradients from a Python loop of batch-1 GradientTapes."""
    out = []
    for i in range(y.shape[0]):
        xi = tf.nest.map_structure(lambda t: t[i:i + 1], x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(SCCE.call(y[i:i + 1], model(xi, training=False)))
        grads = tape.gradient(loss, variables)
        out.append([np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
                    for g, v in zip(grads, variables)])
    return [np.stack([o[j] for o in out]) for j in range(len(variables))]


def assert_exact(got, want, tol=1e-6):
    """Relative error ≤ tol per variable; a gradient that is zero up to rounding (the key bias of
    attention: softmax ignores a shift of all scores) is compared to the largest gradient."""
    assert len(got) == len(want)
    largest = max(np.linalg.norm(w) for w in want)
    for g, w in zip(got, want):
        g = np.asarray(g)
        assert g.shape == w.shape
        scale = max(np.linalg.norm(w), 1e-9 * largest, 1e-300)
        assert np.linalg.norm(g - w) / scale <= tol, np.linalg.norm(g - w) / scale


def traced(model, x, y, variables, method="auto"):
    """per_example_gradients inside a tf.function whose batch dimension is None."""
    x_spec = tf.nest.map_structure(lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), x)

    @tf.function(input_signature=[x_spec, tf.TensorSpec([None], y.dtype)])
    def step(x, y):
        return exact_fallback.per_example_gradients(model, x, y, SCCE.call, variables,
                                                    method=method)

    return step(x, y)


@pytest.mark.parametrize("kind", KINDS)
def test_auto_matches_brute_force_with_unknown_batch(kind, float64_keras):
    model, x, y = make(kind)
    variables = model.trainable_variables
    assert_exact(traced(model, x, y, variables), brute_force(model, x, y, variables))


@pytest.mark.parametrize("kind,method", [("transformer", "xla"), ("einsum", "xla"),
                                         ("transformer", "loop"), ("gru", "loop"),
                                         ("einsum", "loop"), ("dict_einsum", "xla")])
def test_forced_methods_match_brute_force(kind, method, float64_keras):
    model, x, y = make(kind)
    variables = model.trainable_variables
    assert_exact(traced(model, x, y, variables, method), brute_force(model, x, y, variables))


def test_eager_call_unconnected_variable_and_subset(float64_keras):
    model, x, y = make("einsum")
    unused = keras.Variable(np.ones((2, 2)), name="unused")
    variables = model.trainable_variables[:2] + [unused]
    got = exact_fallback.per_example_gradients(model, x, y, SCCE.call, variables)
    want = brute_force(model, x, y, model.trainable_variables[:2])
    assert_exact(got[:2], want)
    assert got[2].shape == (3, 2, 2) and not np.any(got[2].numpy())
    assert exact_fallback.per_example_gradients(model, x, y, SCCE.call, []) == []


def test_rule(float64_keras):
    """oneDNN off: vectorized_map. On: vectorized_map unless batched matmuls (then XLA if tf2xla
    lowers the model, else the loop over examples)."""
    def select(kind, onednn):
        model, x, y = make(kind)
        return exact_fallback._select(model, x, y, SCCE.call, model.trainable_variables, False,
                                      onednn=onednn)[0]

    assert select("transformer", onednn=False) == "vmap"
    assert select("mlp", onednn=True) == "vmap"
    assert select("einsum", onednn=True) == "xla"
    assert select("dict_einsum", onednn=True) == "xla"
    assert select("strings_einsum", onednn=True) == "loop"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_auto_rules_out_vmap_without_error_logs(float64_keras):
    """TF's vectorizer logs each op it cannot convert at ERROR (many lines) before raising; "auto"
    expects that failure while it decides and drops those records, and only those."""
    model, x, y = make("embedding_gru")
    caught = _Records()
    logger = tf.get_logger()
    logger.addHandler(caught)
    try:
        method, _ = exact_fallback._select(model, x, y, SCCE.call, model.trainable_variables,
                                           False, onednn=False)
        assert method == "loop"
        assert [r.getMessage()[:80] for r in caught.records] == []
        logger.error("another error")  # the rest of TF's logger is untouched
    finally:
        logger.removeHandler(caught)
    assert [r.getMessage() for r in caught.records] == ["another error"]


def test_not_xla_lowerable_model_takes_the_loop_exactly(float64_keras):
    model, x, y = make("strings_einsum")
    variables = model.trainable_variables
    assert_exact(traced(model, x, y, variables, "loop"), brute_force(model, x, y, variables))


@pytest.mark.parametrize("kind,method", [("transformer", "auto"), ("einsum", "xla"),
                                         ("einsum", "loop")])
def test_mixed_float16(kind, method):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, x, y = make(kind, m=4)
    finally:
        keras.config.set_dtype_policy(previous)
    variables = model.trainable_variables
    got = traced(model, x, y, variables, method)
    assert [g.dtype for g in got] == [tf.float32] * len(variables)
    want = brute_force(model, x, y, variables)
    largest = max(np.linalg.norm(w) for w in want)
    for g, w in zip(got, want):  # float16 compute: loose; a gradient that is zero up to rounding
        assert np.all(np.isfinite(g.numpy()))  # (attention's key bias) against the largest one
        assert np.linalg.norm(g.numpy() - w) <= 1e-2 * max(np.linalg.norm(w), 1e-2 * largest)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        exact_fallback.per_example_gradients(None, 0.0, 0.0, None, [tf.Variable(1.0)],
                                             method="fast")


# ----------------------------------------------------------------------------------------------
# Crash test: the attention reproducer in subprocesses, oneDNN forced on


def crash_case(use_bias, calls=4):
    """Reproducer shapes: Embedding(100, 128) -> MultiHeadAttention(4 heads, key_dim 32) -> pool ->
    Dense(10); batch 64, seq 64; unknown batch size in the trace; `calls` calls."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), dtype="int32")
    h = keras.layers.Embedding(100, 128)(inputs)
    h = keras.layers.MultiHeadAttention(4, 32, use_bias=use_bias)(h, h)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, 100, (64, 64)).astype("int32"))
    y = tf.constant(rng.integers(0, 10, (64,)).astype("int32"))
    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.int32),
                                  tf.TensorSpec([None], tf.int32)])
    def step(x, y):
        return exact_fallback.per_example_gradients(model, x, y, SCCE.call, variables)

    for _ in range(calls):
        grads = step(x, y)
        assert all(np.all(np.isfinite(g.numpy())) for g in grads), "non-finite gradients"
    print("onednn", exact_fallback.onednn_enabled(), "method",
          exact_fallback.last_selected_method(model))


@pytest.fixture(scope="module", autouse=True)
def crash_subprocesses(request):
    """Starts the crash subprocesses (bias on / off) when this module starts, so they overlap the
    other tests; `test_attention_reproducer_does_not_crash_in_subprocesses` collects them."""
    if not any(item.name == CRASH_TEST for item in request.session.items):
        yield []
        return
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runs = []
    for use_bias in ("bias", "no_bias"):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "crash", use_bias],
                                   cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        runs.append((use_bias, process, out, err))
    yield runs
    for _, process, out, err in runs:
        if process.poll() is None:
            process.kill()
            process.wait()
        out.close()
        err.close()


CRASH_TEST = "test_attention_reproducer_does_not_crash_in_subprocesses"


def test_attention_reproducer_does_not_crash_in_subprocesses(crash_subprocesses):
    assert len(crash_subprocesses) == 2
    for use_bias, process, out, err in crash_subprocesses:
        try:
            returncode = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = "timeout"
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        assert returncode == 0, (
            f"{use_bias}: subprocess returncode {returncode}; stderr tail:\n{stderr[-3000:]}")
        # oneDNN forced on and the attention model: the rule must take XLA (not vectorized_map).
        assert "onednn True method xla" in stdout, stdout


if __name__ == "__main__" and sys.argv[1:2] == ["crash"]:
    crash_case(use_bias=sys.argv[2] == "bias")


def test_eager_functions_per_model_are_bounded():
    """Each eager `gradients_and_sq_norms` call brings a new loss decomposition, the key of the
    fallback's eager function: the cache kept one traced function per call while the model lived
    (4 calls: 4 entries, growing); now the most recent `recent_builds.MAX_BUILDS_PER_MODEL`."""
    from cgh_tf import per_example, recent_builds  # pylint: disable=import-outside-toplevel
    from matrix_models import LayerScale  # a custom layer: no fast rule, the exact fallback

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(LayerScale()(inputs)))
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for _ in range(recent_builds.MAX_BUILDS_PER_MODEL + 2):
        per_example.gradients_and_sq_norms(model, x, y, loss)
    assert len(exact_fallback._EAGER_CACHE[model]) == recent_builds.MAX_BUILDS_PER_MODEL
