"""Accuracy of coherence under 16-bit policies, against a float64 brute-force loop.

Run: `python -m benchmarks.precision [--batch 64] [--seeds 3]`.

For each model and policy (mixed_bfloat16, mixed_float16), the model is built under the policy and
a float64 twin gets the same weights; `coherence.measure(per_layer=True)` of the 16-bit model, with
the default and with `coherence_dtype="float32"`, is compared with the m-coherence of the twin's
per-example gradients from one GradientTape per example (float64 NumPy). Printed: the largest and
median relative error over layers and seeds. The warning of `cgh_tf.precision` quotes these
figures (EXPECTED_RELATIVE_ERROR).

Models (batch 64): MLP 32-64-64-10; CNN 12x12x3 Conv(8)-pool-Conv(16)-GAP-Dense(10); a Transformer
encoder block (sequence 16, width 32, 4 heads, FFN 64, pool, Dense 10).
"""

import argparse
import os
import statistics
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cgh_tf import coherence, per_example  # noqa: E402

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
MODELS = ("mlp", "cnn", "transformer")


def build(kind, batch, seed):
    """(model, x, y) in the current Keras dtype policy."""
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if kind == "mlp":
        inputs = keras.Input((32,))
        h = L.Dense(64, activation="relu")(L.Dense(64, activation="tanh")(inputs))
        x = rng.standard_normal((batch, 32))
    elif kind == "cnn":
        inputs = keras.Input((12, 12, 3))
        h = L.Conv2D(16, 3, activation="relu")(L.MaxPooling2D()(L.Conv2D(8, 3, activation="relu")(inputs)))
        h = L.GlobalAveragePooling2D()(h)
        x = rng.standard_normal((batch, 12, 12, 3))
    elif kind == "transformer":
        inputs = keras.Input((16, 32))
        a = L.MultiHeadAttention(4, 8)(inputs, inputs)
        h = L.LayerNormalization()(inputs + a)
        h = L.LayerNormalization()(h + L.Dense(32)(L.Dense(64, activation="relu")(h)))
        h = L.GlobalAveragePooling1D()(h)
        x = rng.standard_normal((batch, 16, 32))
    else:
        raise ValueError(kind)
    model = keras.Model(inputs, L.Dense(10, dtype="float32")(h))
    return model, x.astype("float32"), rng.integers(0, 10, batch)


def float64_layer_coherence(kind, weights, x, y):
    """{layer: m-coherence} of the float64 twin from one tape per example."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        twin, _, _ = build(kind, len(y), 0)
    finally:
        keras.config.set_dtype_policy(previous)
    twin.set_weights([np.asarray(w, np.float64) for w in weights])
    variables = twin.trainable_variables
    grads = []
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(LOSS.call(y[i:i + 1], twin(x[i:i + 1].astype(np.float64))))
        grads.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)])
    names = per_example.variable_layer_names(twin)
    blocks = {}
    for j, name in enumerate(names):
        blocks.setdefault(name, []).append(j)
    out = {}
    for name, index in blocks.items():
        flat = np.concatenate([np.stack([g[j] for g in grads]).reshape(len(y), -1) for j in index], 1)
        out[name] = float(np.sum(flat.sum(0) ** 2) / np.sum(flat ** 2))
    return out


def errors(kind, policy, batch, seed):
    """{coherence_dtype: [relative error per layer]} for one model, policy and seed."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, x, y = build(kind, batch, seed)
    finally:
        keras.config.set_dtype_policy(previous)
    want = float64_layer_coherence(kind, model.get_weights(), x, y)
    names = per_example.variable_layer_names(model)
    out = {}
    for dtype in (None, "float32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stats = coherence.measure(model, x, y, loss=LOSS, per_layer=True,
                                      coherence_dtype=dtype)
        out[dtype] = [abs(stats.per_layer[n].m_coherence - want[w]) / want[w]
                      for n, w in zip(dict.fromkeys(names), want)]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"batch {args.batch}, {args.seeds} seeds; relative error of per-layer m-coherence vs "
          "float64 brute force: max / median over layers and seeds")
    print("| model | policy | default | coherence_dtype='float32' |\n|---|---|---|---|")
    for kind in MODELS:
        for policy in ("mixed_bfloat16", "mixed_float16"):
            found = {None: [], "float32": []}
            for seed in range(args.seeds):
                for dtype, values in errors(kind, policy, args.batch, seed).items():
                    found[dtype] += values
            cells = [f"{max(v):.2e} / {statistics.median(v):.2e}" for v in found.values()]
            print(f"| {kind} | {policy} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
