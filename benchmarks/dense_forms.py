"""A Dense layer on sequences: the weight gradient plus the Gram form of the per-example norms
against materialising every example's gradient, which lets the tape skip the weight gradient (the
rule's choice where the Gram form costs at least `materialised.GRAM_SHARE` of the materialised
multiply-adds: `cgh_tf/layer_rules/materialised.py`), in one process.

Run: `python -m benchmarks.dense_forms [--rounds 15] [--batch 64] [--positions 64]`.

a [m, T, i] (layer input), b [m, T, o] (output gradient), float32; each variant one `tf.function`,
timed interleaved (one call of each per round, median), after two warm-up calls:

| variant | computes |
|---|---|
| weight gradient | Σ_{i,t} a_t ⊗ b_t as one matmul (the plain step's share) |
| weight gradient + Gram | the same plus `base.gram_sq_norm` (Σ_{s,t}(a_s·a_t)(b_s·b_t) per example): the Gram form |
| materialised | G_i = Σ_t a_t ⊗ b_t per example (batched matmul), then Σ_i G_i and ‖G_i‖² (`materialised.statistic`) |
| materialised, XLA | the same compiled by XLA |

The extra cost of a form is its time minus the weight gradient's. Shapes: the Transformer encoder
block of benchmarks/transformer_rules.py (128 → 512, 512 → 128, 128 → 128) and the sequence
models of benchmarks/sequence_models.py (128 → 256, 256 → 128, 128 → 1000); the column "Gram /
materialised multiply-adds" is T(i + o) / (i·o), which the choice compares with GRAM_SHARE.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.transformer_rules import time_interleaved  # noqa: E402
from cgh_tf.layer_rules import base, materialised as materialised_form  # noqa: E402

SHAPES = [(128, 512), (512, 128), (128, 128), (128, 256), (256, 128), (128, 1000)]


def weight_gradient(a, b):
    return tf.matmul(tf.reshape(a, [-1, a.shape[-1]]), tf.reshape(b, [-1, b.shape[-1]]),
                     transpose_a=True)


def variants():
    def gradient_only(a, b):
        return tf.reduce_sum(weight_gradient(a, b))

    def gradient_and_gram(a, b):
        return tf.reduce_sum(weight_gradient(a, b)) + tf.reduce_sum(base.gram_sq_norm(a, b))

    def materialised(a, b):
        statistic = materialised_form.statistic([tf.einsum("mti,mto->mio", a, b)], [True])
        return tf.reduce_sum(statistic.grad_sum) + tf.reduce_sum(statistic.sq_norms)

    return {"weight gradient": tf.function(gradient_only),
            "weight gradient + Gram": tf.function(gradient_and_gram),
            "materialised": tf.function(materialised),
            "materialised, XLA": tf.function(materialised, jit_compile=True)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--positions", type=int, default=64)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    steps = variants()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}; m = {args.batch}, "
          f"T = {args.positions}, wall ms, median of {args.rounds} interleaved rounds")
    print("| i → o | Gram / materialised multiply-adds | " + " | ".join(steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for fan_in, fan_out in SHAPES:
        a = tf.constant(rng.normal(size=(args.batch, args.positions, fan_in)).astype("float32"))
        b = tf.constant(rng.normal(size=(args.batch, args.positions, fan_out)).astype("float32"))
        result = time_interleaved(steps, a, b, args.rounds)
        share = args.positions * (fan_in + fan_out) / (fan_in * fan_out)
        print(f"| {fan_in} → {fan_out} | {share:.2f} | " + " | ".join(
            f"{result[name][0] * 1e3:.1f}" for name in steps) + " |", flush=True)


if __name__ == "__main__":
    main()
