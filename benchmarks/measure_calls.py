"""Issue 10's `measure()` target: one call on a batch, after its first call / a compiled gradient.

Run: `python -m benchmarks.measure_calls [--rounds 10] [--models mlp,cnn,transformer,resnet]`.

`cgh_tf.coherence.measure(model, x, y, loss=...)` on one batch (its batch computation is compiled
on the first call and reused; the call also converts the inputs, resets and reads the float64
accumulator) against a `tf.function` returning the gradient of the batch's mean loss on the same
batch (the cheapest way to get Σ_i g_i). Interleaved rounds, median; target ≤ 2. Models and batches
as benchmarks/coherence_models.py (BN in inference mode, `measure`'s default).
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import cgh_tf  # noqa: E402
from benchmarks import memory  # noqa: E402
from benchmarks.coherence import time_interleaved  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def plain_gradient(model):
    """A compiled (x, y) -> Σ of the mean-loss gradient's entries (forces the whole gradient)."""

    @tf.function
    def gradient(x, y):
        with tf.GradientTape() as tape:
            loss = LOSS(y, model(x, training=False))
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(loss, model.trainable_variables)])

    return gradient


def ratio(model_name, rounds):
    """(plain gradient ms, measure ms / plain) on the model's benchmark batch."""
    keras.utils.set_random_seed(0)
    model = memory.builder(model_name)()
    x, y = memory.make_batch(model_name)
    calls = {"plain": plain_gradient(model),
             "measure": lambda xb, yb: cgh_tf.coherence.measure(model, xb, yb, loss=LOSS).m_coherence}
    result = time_interleaved(calls, x, y, rounds)  # two warm-up calls each, then the rounds
    plain, measured = (result[n][0] for n in ("plain", "measure"))
    return plain * 1e3, measured / plain


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", default="mlp,cnn,transformer,resnet")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, median of {args.rounds} interleaved rounds")
    print("| model | batch | plain gradient ms | measure / plain |")
    print("|---|---|---|---|")
    for model_name in args.models.split(","):
        plain_ms, r = ratio(model_name, args.rounds)
        print(f"| {memory.LABELS[model_name]} | {memory.BATCH[model_name]} | {plain_ms:.1f} | "
              f"{r:.2f} |", flush=True)


if __name__ == "__main__":
    main()
