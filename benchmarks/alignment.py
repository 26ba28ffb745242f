"""Per-example alignment over a sample / a compiled plain gradient over the same sample.

Run: `python -m benchmarks.alignment [--rounds 5] [--batch 128] [--examples 2048] [--models mlp,cnn]
[--forward-mode]`.

On the first `--examples` mnist5k training images, for the MLP (784-256-256-10) and the small CNN
(32-pool-64-pool-128-10) of `cgh_tf.models`, in one process:

- *gradient*: the gradient of the summed loss over the sample, in batches of B, as one compiled
  `tf.function` looping over the stacked batches (the cheapest way to get S = Σ_i g_i);
- *alignment*: `cgh_tf.coherence.alignment(model, x, y, batch_size=B)`: the engine pass (S, Q,
  ‖g_i‖²) and either, on the MLP (every variable a Dense layer's), the products of the factors
  that pass kept (`alignment.FACTORED`), or, on the CNN, the forward-mode pass (all g_i·S), with
  every host round trip it makes. `--forward-mode` turns the factored path off
  (`alignment.FACTOR_VALUES = 0`): the MLP as before it existed.

Both warmed up, then paired rounds (`benchmarks/paired.py`): median seconds, median and quartiles of
the per-round ratios. Target (docs/design.md §4): alignment / gradient ≤ 3.
"""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.paired import paired_ratio  # noqa: E402
from benchmarks.whole_set_coherence import BUILDERS, LOSS  # noqa: E402
from cgh_tf import alignment, coherence, data  # noqa: E402


def plain_gradient(model, x, y, batch_size):
    """A zero-argument call: Σ over the sample's batches of the summed-loss gradient (compiled)."""
    k = len(y) // batch_size
    xs = tf.constant(x[:k * batch_size].reshape((k, batch_size) + x.shape[1:]))
    ys = tf.constant(y[:k * batch_size].reshape(k, batch_size))
    variables = model.trainable_variables

    @tf.function
    def gradient(xs, ys):
        total = [tf.zeros_like(v) for v in variables]
        for i in tf.range(k):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(LOSS.call(ys[i], model(xs[i], training=False)))
            total = [t + g for t, g in zip(total, tape.gradient(loss, variables))]
        return tf.add_n([tf.reduce_sum(t) for t in total])

    return lambda: float(gradient(xs, ys))


def ratio(model_name, examples, batch_size, rounds):
    """(`PairedRatio` alignment / gradient, method) on the first `examples` mnist5k images."""
    train = data.load("mnist5k").train
    x, y = train.x[:examples], train.y[:examples]
    keras.utils.set_random_seed(0)
    model = BUILDERS[model_name](x.shape[1:], 10)
    model.compile(loss=LOSS)
    methods = []
    paired = paired_ratio(plain_gradient(model, x, y, batch_size), lambda: methods.append(
        coherence.alignment(model, x, y, batch_size=batch_size).method), rounds)
    return paired, methods[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--forward-mode", action="store_true",
                        help="no factored path: g_i·S from the forward-mode pass on every model")
    args = parser.parse_args(argv)
    if args.forward_mode:
        alignment.FACTOR_VALUES = 0
    if args.examples % args.batch:
        parser.error("--examples must be a multiple of --batch (the baseline has no remainder)")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, mnist5k train[:{args.examples}], batch {args.batch}, "
          f"{args.rounds} paired rounds, load {os.getloadavg()[0]:.1f}")
    print("| model | gradient over the sample s | alignment s | alignment / gradient: median "
          "[25-75 %] | ratio of min times | CPU time ratio | g_i·S by |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r, method = ratio(name, args.examples, args.batch, args.rounds)
        print(f"| {name} | {r.baseline:.3f} | {r.candidate:.3f} | {r.cells()} | {method} |",
              flush=True)


if __name__ == "__main__":
    main()
