"""Whole-training-set coherence: `measure()` over every training example / one epoch of training.

Run: `python -m benchmarks.whole_set_coherence [--rounds 5] [--batch 128] [--models mlp,cnn]`.

On mnist5k (4,000 training images, `cgh_tf.data.load("mnist5k")`), for the MLP (784-256-256-10)
and the small CNN (32-pool-64-pool-128-10) of `cgh_tf.models`, in one process:

- *epoch*: one epoch of `model.fit(x, y, batch_size=B, shuffle=True)` with SGD (the compiled Keras
  train step; the baseline an experiment pays anyway);
- *measure*: `cgh_tf.coherence.measure(model, x, y, batch_size=B)` over the same 4,000 examples
  (m = n, as the papers measured), at the same batch size B.

Both are warmed up (their first call traces and compiles), then timed in paired rounds
(`benchmarks/paired.py`: the two back to back, order alternating); the table gives the median
seconds and the median and quartiles of the per-round ratios measure / epoch. Target
(docs/design.md §4): measure / epoch ≤ 1.3.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.paired import paired_ratio  # noqa: E402
from cgh_tf import coherence, data, models  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BUILDERS = {
    "mlp": lambda shape, classes: models.mlp(shape, classes, depth=2, width=256),
    "cnn": lambda shape, classes: models.small_cnn(shape, classes),
}


def ratio(model_name, batch_size, rounds):
    """`PairedRatio` measure / epoch on mnist5k's training set."""
    train = data.load("mnist5k").train
    keras.utils.set_random_seed(0)
    model = BUILDERS[model_name](train.x.shape[1:], 10)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    return paired_ratio(
        lambda: model.fit(train.x, train.y, batch_size=batch_size, epochs=1, verbose=0),
        lambda: coherence.measure(model, train.x, train.y, batch_size=batch_size), rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, mnist5k train (4,000), batch {args.batch}, "
          f"{args.rounds} paired rounds, load {os.getloadavg()[0]:.1f}")
    print("| model | epoch of fit s | measure over the set s | measure / epoch: median [25-75 %] "
          "| ratio of min times | CPU time ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = ratio(name, args.batch, args.rounds)
        print(f"| {name} | {r.baseline:.3f} | {r.candidate:.3f} | {r.cells()} |", flush=True)


if __name__ == "__main__":
    main()
