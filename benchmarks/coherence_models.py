"""Issue 10's speed table: `coherence_every=1` train step / plain Keras train step, four models.

Run: `python -m benchmarks.coherence_models [--rounds 10] [--jit off,on] [--models mlp,cnn,...]`.

Both sides are `model.train_step` of a compiled model (SGD, loss tracker included) wrapped in one
`tf.function` (`jit_compile` as the `--jit` column says), on one fixed random batch, timed
interleaved (one step of each side per round; median over rounds), after two warm-up steps each.

| model       | builder                                                        | batch |
|-------------|----------------------------------------------------------------|-------|
| mlp         | MLP 784-512-512-10 (benchmarks/coherence.py)                   | 128   |
| cnn         | Conv2D(32)-pool-Conv2D(64)-pool-Dense(128)-Dense(10) (benchmarks/optimizers.py) | 128 |
| transformer | encoder block, sequence 64, width 128, 4 heads, vocabulary 1,000 (benchmarks/transformer_rules.py) | 64 |
| resnet      | BatchNorm ResNet block on 28×28×1 (benchmarks/memory.py)       | 128   |
| resnet_frozen | the same with BatchNorm frozen (`trainable=False`, fine-tuning) | 128 |

Target (issue 10): ≤ 1.25 (goal 1.10). The ResNet block computes differently in training and
inference mode, so its inference-mode metric is a second pass (cgh_tf/training.py); the column
`coherence_training=True` shows the same model with the metric taken from the update's own
training-mode pass (BatchNorm with batch statistics; documented in `cgh_tf.Model.compile`).
With the BatchNorm layers frozen (`resnet_frozen`) both modes compute the same, so the metric
comes from the update's pass without that option.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cgh_tf  # noqa: E402
from benchmarks import keras_steps, memory  # noqa: E402
from benchmarks.coherence import time_interleaved  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
MODELS = ("mlp", "cnn", "transformer", "resnet", "resnet_frozen")
VARIANTS = {
    "plain": (keras.Model, {}),
    "coherence_every=1": (cgh_tf.Model, {"coherence_every": 1}),
    "coherence_training=True": (cgh_tf.Model, {"coherence_every": 1, "coherence_training": True}),
}


def train_step(model_name, model_class, options, jit):
    """A tf.function (x, y) -> loss running `train_step` of a fresh compiled copy of the model."""
    keras.utils.set_random_seed(0)
    base = memory.builder(model_name)()
    model = model_class(base.inputs, base.outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS, **options)
    return keras_steps.compiled_train_step(model, jit)


def variants_for(model_name):
    """The training-mode column only where it differs: models with BatchNorm / Dropout."""
    return [v for v in VARIANTS if v != "coherence_training=True" or model_name == "resnet"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jit", default="off,on", help="comma-separated subset of off,on")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, median of {args.rounds} interleaved rounds")
    print("| model | batch | XLA | plain ms | coherence_every=1 / plain | "
          "coherence_training=True / plain |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for model_name in args.models.split(","):
        x, y = memory.make_batch(model_name, rng)
        for jit in args.jit.split(","):
            steps = {v: train_step(model_name, *VARIANTS[v], jit == "on")
                     for v in variants_for(model_name)}
            result = time_interleaved(steps, x, y, args.rounds)
            plain = result["plain"][0]
            ratios = [f"{result[v][0] / plain:.2f}" if v in result else "–" for v in list(VARIANTS)[1:]]
            print(f"| {memory.LABELS[model_name]} | {memory.BATCH[model_name]} | {jit} | "
                  f"{plain * 1e3:.1f} | " + " | ".join(ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
