"""Per-example filter gradients of one convolution: the formulations `cgh_tf/layer_rules/conv.py`
chooses between, against the batch's ordinary filter gradient, in one process.

Run: `python -m benchmarks.filter_grads [--rounds 5] [--batch 128] [--size 28] [--channels 32]`.

Each variant is a `tf.function` returning the per-example squared norms and Σ_i G_i of a 3×3
'same' conv C → C on [m, size, size, C] (the BN ResNet block's inner convs by default), timed
interleaved (one call of each per round, median), after two warm-up calls:

| variant | how G_i is formed |
|---|---|
| batch filter gradient | none: TF's `Conv2DBackpropFilter` of the whole batch (the plain step's cost, the baseline) |
| map | TF's filter gradient per example, `tf.map_fn` (`per_example_filter_grads`; the path without XLA) |
| grouped, XLA | one XLA convolution with the examples as feature groups (`grouped_filter_grads`; the path inside a whole-step XLA compile) |
| patches, XLA | channels-first im2col patches from slices, then a batched matmul (the path of smaller convs under XLA) |
| map, XLA | the `tf.map_fn` loop compiled by XLA (why the whole-step XLA path does not take it) |
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.coherence import time_interleaved  # noqa: E402
from cgh_tf.layer_rules import conv  # noqa: E402

KERNEL, STRIDES = (3, 3), (1, 1)


def norms_and_sum(g):
    """G [m, ...] → (‖G_i‖² [m], Σ_i G_i)."""
    return tf.reduce_sum(tf.square(tf.reshape(g, [tf.shape(g)[0], -1])), axis=1), tf.reduce_sum(g, 0)


def variants(channels):
    shape = [*KERNEL, channels, channels]

    def batch_filter_gradient(x, y):
        return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=shape, out_backprop=y,
                                               strides=[1, 1, 1, 1], padding="SAME")

    def mapped(x, y):
        return norms_and_sum(conv.per_example_filter_grads(x, y, KERNEL, STRIDES, "same"))

    def grouped(x, y):
        return norms_and_sum(conv.grouped_filter_grads(x, y, KERNEL, STRIDES, "same"))

    def from_patches(x, y):
        p = conv.patches(x, y.shape[1:3], KERNEL, STRIDES, (1, 1), "same")
        return norms_and_sum(tf.matmul(p, conv.grouped_outputs(y, 2, 1)))

    return {"batch filter gradient": tf.function(batch_filter_gradient),
            "map": tf.function(mapped),
            "grouped, XLA": tf.function(grouped, jit_compile=True),
            "patches, XLA": tf.function(from_patches, jit_compile=True),
            "map, XLA": tf.function(mapped, jit_compile=True)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=32)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, args.channels)
    x = tf.constant(rng.normal(size=shape).astype("float32"))
    y = tf.constant(rng.normal(size=shape).astype("float32"))
    steps = variants(args.channels)
    result = time_interleaved({name: _first(step) for name, step in steps.items()}, x, y,
                              args.rounds)
    base = result["batch filter gradient"][0]
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}; 3×3 conv "
          f"{args.channels} → {args.channels} on {args.size}×{args.size}, batch {args.batch}, "
          f"median of {args.rounds} interleaved rounds")
    print("| variant | ms | / batch filter gradient |")
    print("|---|---|---|")
    for name, (seconds, _) in result.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.2f} |", flush=True)


def _first(step):
    """A callable returning one scalar (what `time_interleaved` waits for)."""
    return lambda x, y: tf.reduce_sum(tf.nest.flatten(step(x, y))[0])


if __name__ == "__main__":
    main()
