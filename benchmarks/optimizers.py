"""Step-time overhead of the robust optimizers relative to the SGD they wrap.

Run: `python -m benchmarks.optimizers [--repeats 5 --steps 24 --jit both]`.

For each model (MLP 784-512-512-10, small CNN: conv3x3(16)-pool-conv3x3(32)-pool-dense on 28x28x1), batch 128,
float32, one process, the same pre-built batches for every optimizer:

| column      | meaning                                                                     | target |
|-------------|-----------------------------------------------------------------------------|--------|
| sgd ms      | median time of one train step (forward, backward, update) with plain SGD    |        |
| RM3 / SGD   | RM3(SGD) step time / SGD step time                                          | <= 1.05 |
| M3 / SGD    | M3(SGD, groups=3) in consecutive mode, time per *batch* / SGD time per batch | <= 1.10 |
| M3 in-batch | `cgh_tf.Model` train step with M3 on a batch of 3 x 128 (3 groups of 128),  | <= 1.10 |
|  / SGD      | divided by 3 SGD steps on the same 384 examples (Keras `train_step`s both)  |        |
| floor / SGD | SGD on a fused median of the gradient and two buffers + one buffer copy,    |        |
|             | no bookkeeping (`FloorOptimizer`): the arithmetic RM3 cannot avoid         |        |

Every optimizer's `tf.function` is traced and run before timing (warm-up excluded). Each repeat
times `--steps` steps of every optimizer in interleaved order (SGD, RM3, M3, SGD, ...) so that
load from other processes hits all of them alike; the table shows the median over repeats.
`jit` = whether the step is compiled with XLA (Keras' `jit_compile="auto"` means off on CPU).
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cgh_tf  # noqa: E402
from cgh_tf import robust  # noqa: E402
from cgh_tf.optimizers import M3, RA3, RM3  # noqa: E402

BATCH = 128
LR = 0.01


def mlp():
    return keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(512, activation="relu"),
        keras.layers.Dense(10),
    ], name="mlp")


def small_cnn():
    """The CNN of issue 11: Conv2D(32)-pool-Conv2D(64)-pool-Dense(128)-Dense(10), 225k parameters."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ], name="small_cnn")


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(LR),
    "rm3": lambda: RM3(keras.optimizers.SGD(LR)),
    "m3": lambda: M3(keras.optimizers.SGD(LR)),
    "ra3": lambda: RA3(keras.optimizers.SGD(LR)),
}


def make_batches(input_shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (tf.constant(rng.normal(size=(BATCH,) + input_shape).astype("float32")),
         tf.constant(rng.integers(0, 10, size=BATCH)))
        for _ in range(steps)
    ]


def make_step(build_model, make_optimizer, jit):
    """A compiled train step for a fresh copy of the model with the given optimizer."""
    keras.utils.set_random_seed(0)
    model = build_model()
    optimizer = make_optimizer()
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


class FloorOptimizer:
    """The arithmetic RM3 cannot avoid, without its bookkeeping: SGD on the fused median of the
    gradient and two buffers (`robust.fused_medians`), then the gradient copied into one buffer;
    no finiteness check, no counters, no conditional update. Its step time / SGD's is a floor for
    RM3. Has the two methods `make_step` calls."""

    def __init__(self):
        self.sgd = keras.optimizers.SGD(LR)

    def build(self, variables):
        self.sgd.build(variables)
        self.buffers = [[tf.Variable(tf.zeros_like(v)) for v in variables] for _ in range(2)]

    def apply(self, grads, variables):
        medians = robust.fused_medians(
            [[g, a.read_value(), b.read_value()] for g, a, b in zip(grads, *self.buffers)])
        self.sgd.apply(medians, variables)
        for g, a in zip(grads, self.buffers[0]):
            a.assign(g)


def make_keras_train_step(build_model, model_class, make_optimizer, jit):
    """`model.train_step` of a compiled `model_class` copy of the model, as one tf.function."""
    keras.utils.set_random_seed(0)
    base = build_model()
    model = model_class(base.inputs, base.outputs)
    model.compile(optimizer=make_optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.build(model.trainable_variables)
    if hasattr(model, "_cgh_state"):
        model.make_train_function()

    @tf.function(jit_compile=jit)
    def step(x, y):
        return model.train_step((x, y))["loss"]

    return step


def in_batch_ratio(build_model, input_shape, jit, repeats, steps):
    """(M3 in cgh_tf.Model on 3B examples) / (3 Keras SGD steps of B examples), median of repeats."""
    batches = make_batches(input_shape, steps)
    triples = [(tf.concat([x for x, _ in batches[i:i + 3]], 0),
                tf.concat([y for _, y in batches[i:i + 3]], 0)) for i in range(0, steps, 3)]
    sgd = make_keras_train_step(build_model, keras.Model, OPTIMIZERS["sgd"], jit)
    m3 = make_keras_train_step(build_model, cgh_tf.Model, OPTIMIZERS["m3"], jit)
    time_steps(sgd, batches[:3])
    time_steps(m3, triples[:1])
    ratios = []
    for _ in range(repeats):
        ratios.append(time_steps(m3, triples) / (3 * time_steps(sgd, batches)))
    return statistics.median(ratios)


def time_steps(step, batches):
    start = time.perf_counter()
    for x, y in batches:
        loss = step(x, y)
    loss.numpy()  # wait for the last step
    return (time.perf_counter() - start) / len(batches)


def benchmark(build_model, input_shape, jit, repeats, steps):
    batches = make_batches(input_shape, steps)
    steps_by_name = {name: make_step(build_model, make, jit) for name, make in OPTIMIZERS.items()}
    steps_by_name["floor"] = make_step(build_model, FloorOptimizer, jit)
    for step in steps_by_name.values():  # warm-up: trace, compile, fill RM3's window
        time_steps(step, batches[:6])
    times = {name: [] for name in steps_by_name}
    for _ in range(repeats):
        for name, step in steps_by_name.items():
            times[name].append(time_steps(step, batches))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=24, help="steps per timed repeat (multiple of 3)")
    parser.add_argument("--jit", choices=["off", "on", "both"], default="both")
    args = parser.parse_args(argv)
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.jit]
    models = [("MLP 784-512-512-10", mlp, (784,)), ("CNN 32-64-128-10", small_cnn, (28, 28, 1))]

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"TF {tf.__version__}, Keras {keras.__version__}, batch {BATCH}, "
          f"median of {args.repeats} x {args.steps} steps")
    header = (f"| {'model':24} | jit | sgd ms | RM3 / SGD | RA3 / SGD | M3 / SGD "
              "| M3 in-batch / SGD | floor / SGD |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for label, build_model, shape in models:
        for jit in jits:
            t = benchmark(build_model, shape, jit, args.repeats, args.steps)
            in_batch = in_batch_ratio(build_model, shape, jit, args.repeats, args.steps)
            print(f"| {label:24} | {'on ' if jit else 'off'} | {t['sgd'] * 1e3:6.2f} | "
                  f"{t['rm3'] / t['sgd']:9.3f} | {t['ra3'] / t['sgd']:9.3f} | "
                  f"{t['m3'] / t['sgd']:8.3f} | "
                  f"{in_batch:17.3f} | {t['floor'] / t['sgd']:11.3f} |", flush=True)


if __name__ == "__main__":
    main()
