"""What `cgh_tf.Model`'s options cost per Keras train step, relative to a plain Keras step.

Run: `python -m benchmarks.keras_steps [--rounds 10] [--models "MLP 784-512-512-10, b128;..."]`.

Both sides are `model.train_step` of a compiled model (loss tracker and metrics included), wrapped
in one `tf.function`, on the same batch, timed interleaved (one step of each variant per round, so
load from other processes hits all alike; median over rounds). Peak memory is the process RSS above
the level before the step, sampled every 2 ms (CPU; approximate).

| variant            | model / compile                                              | target |
|--------------------|--------------------------------------------------------------|--------|
| plain              | `keras.Model`, SGD                                           |        |
| coherence_every=1  | `cgh_tf.Model`, SGD, m-coherence and alpha of every batch    | ≤ 1.25 |
| M3 in-batch (+ coherence) | `cgh_tf.Model`, `M3(SGD, groups=3)` on the batch (k = 3 groups); with `coherence_every=1` from the same per-group passes | + coherence / M3 alone ≤ 1.25 |
| winsorize c=2 + coherence | the same pass returns S and the norms | / winsorize alone ≤ 1.25 |
| winsorize c=2      | `cgh_tf.Model`, SGD, `aggregation="winsorize"` (per-example   |        |
|                    | gradients of Dense kernels from a ⊗ b: fused XLA sorting     |        |
|                    | network (static batch, small c), else top_k on blocks of ≤ 4M |        |
|                    | values; other variables by vectorized_map)                   |        |

Models: MLP 784-512-512-10 and a small CNN (28x28x1: conv3x3(32), conv3x3(64), maxpool, dense 128,
dense 10) at batch 128; the ICLR 2020 winsorization MLP (3 x 256 on MNIST-1D's 40 inputs) and a
2048-wide MLP at batch 100.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cgh_tf  # noqa: E402
from benchmarks.coherence import mlp, small_cnn, time_interleaved  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def wide_mlp(input_dim, width, depth):
    inputs = keras.Input((input_dim,))
    h = inputs
    for _ in range(depth):
        h = keras.layers.Dense(width, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


MODELS = {
    "MLP 784-512-512-10, b128": (mlp, (784,), 128),
    "CNN 2x conv3x3, b128": (small_cnn, (28, 28, 1), 128),
    "MLP 40-3x256-10, b100": (lambda: wide_mlp(40, 256, 3), (40,), 100),
    "MLP 784-2048-10, b100": (lambda: wide_mlp(784, 2048, 1), (784,), 100),
}

VARIANTS = {
    "plain": (keras.Model, {}),
    "coherence_every=1": (cgh_tf.Model, {"coherence_every": 1}),
    "winsorize c=2": (cgh_tf.Model, {"aggregation": "winsorize", "winsorize_pct": 2.0}),
    "winsorize c=2 + coherence": (cgh_tf.Model, {"aggregation": "winsorize", "winsorize_pct": 2.0,
                                                 "coherence_every": 1}),
    "M3 in-batch": (cgh_tf.Model, {"optimizer": "m3"}),
    "M3 in-batch + coherence": (cgh_tf.Model, {"optimizer": "m3", "coherence_every": 1}),
}


def train_step(build_model, model_class, options):
    """A tf.function running `model.train_step` of a fresh compiled copy of the model."""
    keras.utils.set_random_seed(0)
    base = build_model()
    model = model_class(base.inputs, base.outputs)
    options = dict(options)
    optimizer = keras.optimizers.SGD(0.01)
    if options.pop("optimizer", None) == "m3":  # in cgh_tf.Model: median of 3 group means
        optimizer = cgh_tf.M3(optimizer, groups=3)
    model.compile(optimizer=optimizer, loss=LOSS, metrics=["accuracy"], **options)
    return compiled_train_step(model)


def compiled_train_step(model, jit=False):
    """`tf.function` (x, y) -> loss running the compiled `model`'s own `train_step`, with the
    optimizer built first (and cgh_tf.Model's per-layer keys, as `fit` would); jit: XLA."""
    model.optimizer.build(model.trainable_variables)
    if isinstance(model, cgh_tf.Model):
        model.make_train_function()

    @tf.function(jit_compile=jit)
    def step(x, y):
        return model.train_step((x, y))["loss"]

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default=";".join(MODELS),
                        help="semicolon-separated subset (the labels contain commas)")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, median of {args.rounds} interleaved rounds")
    names = list(VARIANTS)
    print("| model | plain ms | " + " | ".join(f"{n} / plain" for n in names[1:])
          + " | peak ΔRSS MB (" + ", ".join(names) + ") |")
    print("|---" * (len(names) + 2) + "|")
    rng = np.random.default_rng(0)
    for label, (build_model, shape, batch) in MODELS.items():
        if label not in args.models.split(";"):
            continue
        x = tf.constant(rng.normal(size=(batch,) + shape).astype("float32"))
        y = tf.constant(rng.integers(0, 10, size=batch))
        steps = {name: train_step(build_model, cls, opts) for name, (cls, opts) in VARIANTS.items()}
        result = time_interleaved(steps, x, y, args.rounds)
        plain = result["plain"][0]
        ratios = " | ".join(f"{result[n][0] / plain:.2f}" for n in names[1:])
        peaks = ", ".join(f"{result[n][1]:.0f}" for n in names)
        print(f"| {label} | {plain * 1e3:.1f} | {ratios} | {peaks} |", flush=True)


if __name__ == "__main__":
    main()
