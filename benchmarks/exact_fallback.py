"""Speed of the exact per-example gradient formulations of `cgh_tf.exact_fallback`.

Run: `python -m benchmarks.exact_fallback [--batch 64] [--rounds 15] [--models mlp,cnn,...]
[--methods vmap,xla,loop,auto]`; prefix `TF_ENABLE_ONEDNN_OPTS=1` (or 0) to force TensorFlow's
oneDNN kernels on (off). Each cell: `per_example_gradients(..., method=...)` inside a `tf.function`
whose `input_signature` has an unknown batch size (as in a Keras train step), float32, batch 64;
"ms" is the median over rounds (one call of each method per round, after a warm-up call), "first"
the first call in seconds (trace, pfor conversion, XLA check and compilation).

Models: MLP 64-128-128-10; CNN 16x16x3 conv3x3(16) maxpool conv3x3(32) GAP dense(10); GRU(32) and
LSTM(32) over 20 steps of 8 features; a Transformer encoder block (Embedding(100, 64), seq 32,
MultiHeadAttention 4 heads x 16, LayerNorm, FFN 128, LayerNorm, pool, Dense 10); a bare EinsumDense
block (abc,cde->abde with a 3-D kernel and bias, then abde,de->ab, Dense 10).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cgh_tf import exact_fallback  # noqa: E402

MODELS = ("mlp", "cnn", "gru", "lstm", "transformer", "einsum")


def make_model(kind, batch, seed=0):
    """(model, x, y, loss_fn) for one benchmark model; float32 (Keras floatx)."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    floatx = keras.config.floatx()
    layers = keras.layers
    if kind == "mlp":
        inputs = keras.Input((64,))
        h = layers.Dense(128, activation="relu")(inputs)
        h = layers.Dense(128, activation="tanh")(h)
        x = rng.standard_normal((batch, 64)).astype(floatx)
    elif kind == "cnn":
        inputs = keras.Input((16, 16, 3))
        h = layers.Conv2D(16, 3, activation="relu")(inputs)
        h = layers.MaxPooling2D()(h)
        h = layers.Conv2D(32, 3, activation="relu")(h)
        h = layers.GlobalAveragePooling2D()(h)
        x = rng.standard_normal((batch, 16, 16, 3)).astype(floatx)
    elif kind in ("gru", "lstm"):
        inputs = keras.Input((20, 8))
        h = (layers.GRU if kind == "gru" else layers.LSTM)(32)(inputs)
        x = rng.standard_normal((batch, 20, 8)).astype(floatx)
    elif kind == "transformer":
        seq, width, heads = 32, 64, 4
        inputs = keras.Input((seq,), dtype="int32")
        e = layers.Embedding(100, width)(inputs)
        a = layers.MultiHeadAttention(heads, width // heads)(e, e)
        h = layers.LayerNormalization()(e + a)
        f = layers.Dense(2 * width, activation="relu")(h)
        h = layers.LayerNormalization()(h + layers.Dense(width)(f))
        h = layers.GlobalAveragePooling1D()(h)
        x = rng.integers(0, 100, (batch, seq)).astype("int32")
    elif kind == "einsum":
        inputs = keras.Input((16, 32))
        h = layers.EinsumDense("abc,cde->abde", (16, 4, 8), bias_axes="de")(inputs)
        h = layers.EinsumDense("abde,de->ab", (16,))(h)
        x = rng.standard_normal((batch, 16, 32)).astype(floatx)
    else:
        raise ValueError(kind)
    model = keras.Model(inputs, layers.Dense(10)(h))
    y = rng.integers(0, 10, (batch,)).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, tf.constant(x), tf.constant(y), loss.call


def step_function(model, x, y, loss_fn, method):
    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None] + x.shape[1:], x.dtype),
                                  tf.TensorSpec([None], y.dtype)])
    def step(x, y):
        return exact_fallback.per_example_gradients(model, x, y, loss_fn, variables,
                                                    method=method)

    return step


def run(step, x, y):
    start = time.perf_counter()
    _ = [g.numpy() for g in step(x, y)]
    return time.perf_counter() - start


def time_model(kind, methods, batch, rounds):
    """{method: (first call s, median ms)}; methods timed interleaved, one call each per round."""
    model, x, y, loss_fn = make_model(kind, batch)
    steps, first, times = {}, {}, {}
    for method in methods:
        step = step_function(model, x, y, loss_fn, method)
        try:
            first[method] = run(step, x, y)
            run(step, x, y)
            steps[method], times[method] = step, []
        except Exception as error:  # a formulation that cannot run this model
            first[method] = f"fails: {type(error).__name__}"
    for _ in range(rounds):
        for method, step in steps.items():
            times[method].append(run(step, x, y))
    return {method: (first[method], 1000 * statistics.median(times[method])
                     if method in times else None) for method in methods}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default="vmap,xla,loop,auto")
    args = parser.parse_args()
    methods = args.methods.split(",")
    print(f"TF {tf.__version__}, Keras {keras.__version__}, oneDNN "
          f"{'on' if exact_fallback.onednn_enabled() else 'off'}, batch {args.batch}, "
          f"median of {args.rounds} interleaved rounds")
    print("| model | " + " | ".join(f"{m} ms (first s)" for m in methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for kind in args.models.split(","):
        result = time_model(kind, methods, args.batch, args.rounds)
        cells = [f"{ms:.1f} ({first:.1f})" if ms is not None else first
                 for first, ms in (result[m] for m in methods)]
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
