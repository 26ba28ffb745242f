"""Whole-training-set coherence: `measure()` over every training example / one epoch of training.

Run: `python -m benchmarks.whole_set_coherence [--rounds 5] [--batch 128] [--models mlp,cnn]`.

On mnist5k (4,000 training images, `cgh_tf.data.load("mnist5k")`), for the MLP (784-256-256-10)
and the small CNN (32-pool-64-pool-128-10) of `cgh_tf.models`, in one process:

- *epoch*: one epoch of `model.fit(x, y, batch_size=B, shuffle=True)` with SGD (the compiled Keras
  train step; the baseline an experiment pays anyway);
- *measure*: `cgh_tf.coherence.measure(model, x, y, batch_size=B)` over the same 4,000 examples
  (m = n, as the papers measured), at the same batch size B.

Both are warmed up (their first call traces and compiles), then timed in interleaved rounds (one of
each per round, so load from other processes hits both alike); the table gives the medians and the
ratio. Target (docs/design.md §4): measure / epoch ≤ 1.3.
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cgh_tf import coherence, data, models  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BUILDERS = {
    "mlp": lambda shape, classes: models.mlp(shape, classes, depth=2, width=256),
    "cnn": lambda shape, classes: models.small_cnn(shape, classes),
}


def timed_rounds(calls, rounds):
    """{name: median seconds} of the zero-argument `calls`, one warm-up call each, then
    `rounds` interleaved rounds."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def ratio(model_name, batch_size, rounds):
    """(epoch seconds, measure seconds) on mnist5k's training set."""
    train = data.load("mnist5k").train
    keras.utils.set_random_seed(0)
    model = BUILDERS[model_name](train.x.shape[1:], 10)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    calls = {
        "epoch": lambda: model.fit(train.x, train.y, batch_size=batch_size, epochs=1, verbose=0),
        "measure": lambda: coherence.measure(model, train.x, train.y, batch_size=batch_size),
    }
    times = timed_rounds(calls, rounds)
    return times["epoch"], times["measure"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, mnist5k train (4,000), batch {args.batch}, "
          f"median of {args.rounds} interleaved rounds")
    print("| model | epoch of fit s | measure over the set s | measure / epoch |")
    print("|---|---|---|---|")
    for name in args.models.split(","):
        epoch, measured = ratio(name, args.batch, args.rounds)
        print(f"| {name} | {epoch:.3f} | {measured:.3f} | {measured / epoch:.2f} |", flush=True)


if __name__ == "__main__":
    main()
