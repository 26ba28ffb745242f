"""What the conv family's fast per-example-norm rules (`cgh_tf/layer_rules/conv.py`) cost.

Run: `python -m benchmarks.conv_rules [--rounds 20] [--batch 128] [--models cnn,mobile,...]`.

Per model, two `tf.function`s on the same batch, in one process, called interleaved (one call of
each per round, after warm-up), so that load from other processes hits both alike:

| variant | computes |
|---|---|
| plain   | forward + `tape.gradient` of the mean loss w.r.t. all trainable variables |
| fast    | `per_example.gradients_and_sq_norms`: Σ_i g_i and ‖g_{i,v}‖² per example and variable |

Reported: median wall and process-CPU milliseconds per call, and the median over rounds of the
ratio fast / plain within a round, in wall time and in CPU time (all threads; on a shared machine
the CPU ratio is the stable one). `conv forms`: the form each conv kernel took, in model order —
Gram, or materialised G_i by TF's depthwise filter gradient (native), channels-first patches (cf)
or the transposed output gradient (bt); see `cgh_tf/layer_rules/conv.py`.
`--apply` adds an SGD update to both (a train step); `--unknown-batch` traces both with a None
batch size (the materialised form then runs in a while loop over chunks of examples);
`--layout` / `--xla` set `conv.LAYOUT` / `conv.XLA` (default off since 2026-12-07).

| model | layers |
|---|---|
| cnn       | 28×28×1: Conv2D(32,3,relu), MaxPool, Conv2D(64,3,relu), MaxPool, Flatten, Dense(128), Dense(10) |
| mobile    | 32×32×3: Conv2D(32,3,s2,same), DepthwiseConv2D(3,same), Conv2D(64,1), SeparableConv2D(128,3,s2,same), GAP, Dense(10) |
| grouped   | 16×16×16: Conv2D(32,3,groups=4), MaxPool, Conv2D(32,3,groups=8), GAP, Dense(10) (Keras runs grouped convs through XLA on CPU: slow in both variants) |
| text1d    | ids of length 128: Embedding(2000,64), Conv1D(128,5,relu), Conv1D(128,3,causal,dilation 2), GlobalMaxPool, Dense(10) |
| conv1d    | text1d without the Embedding: float inputs [128, 64] |
| conv3d    | 16×16×16×1: Conv3D(16,3,relu), MaxPool3D, Conv3D(32,3,relu), GAP, Dense(10) |
| transpose | 8×8×16: Conv2DTranspose(32,3,s2,same), Conv2DTranspose(16,3,s2,same), Conv2D(1,3,same), Flatten, Dense(10) |
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

from cgh_tf import per_example  # noqa: E402
from cgh_tf.layer_rules import conv  # noqa: E402

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def cnn():
    return keras.Sequential([
        keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
        L.Dense(128, activation="relu"), L.Dense(10)])


def mobile():
    return keras.Sequential([
        keras.Input((32, 32, 3)), L.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        L.DepthwiseConv2D(3, padding="same", activation="relu"), L.Conv2D(64, 1, activation="relu"),
        L.SeparableConv2D(128, 3, strides=2, padding="same", activation="relu"),
        L.GlobalAveragePooling2D(), L.Dense(10)])


def grouped():
    return keras.Sequential([
        keras.Input((16, 16, 16)), L.Conv2D(32, 3, groups=4, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(32, 3, groups=8, activation="relu"), L.GlobalAveragePooling2D(), L.Dense(10)])


def text1d():
    return keras.Sequential([
        keras.Input((128,), dtype="int32"), L.Embedding(2000, 64),
        L.Conv1D(128, 5, activation="relu"),
        L.Conv1D(128, 3, padding="causal", dilation_rate=2, activation="relu"),
        L.GlobalMaxPooling1D(), L.Dense(10)])


def conv1d():
    return keras.Sequential([
        keras.Input((128, 64)), L.Conv1D(128, 5, activation="relu"),
        L.Conv1D(128, 3, padding="causal", dilation_rate=2, activation="relu"),
        L.GlobalMaxPooling1D(), L.Dense(10)])


def conv3d():
    return keras.Sequential([
        keras.Input((16, 16, 16, 1)), L.Conv3D(16, 3, activation="relu"), L.MaxPooling3D(),
        L.Conv3D(32, 3, activation="relu"), L.GlobalAveragePooling3D(), L.Dense(10)])


def transpose():
    return keras.Sequential([
        keras.Input((8, 8, 16)), L.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
        L.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu"),
        L.Conv2D(1, 3, padding="same"), L.Flatten(), L.Dense(10)])


MODELS = {"cnn": cnn, "mobile": mobile, "grouped": grouped, "text1d": text1d, "conv1d": conv1d,
          "conv3d": conv3d,
          "transpose": transpose}


def batch(model, m, rng):
    shape = (m,) + tuple(model.input_shape[1:])
    if model.inputs[0].dtype == "int32":
        x = rng.integers(0, 2000, size=shape).astype("int32")
    else:
        x = rng.normal(size=shape).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, 10, size=m).astype("int32"))


def steps(model, apply, signature=None):
    variables = model.trainable_variables
    loss_fn = per_example.per_example_loss_fn(model, LOSS)
    optimizer = keras.optimizers.SGD(0.01)
    optimizer.build(variables)

    @tf.function(input_signature=signature)
    def plain(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=False)))
        grads = tape.gradient(loss, variables)
        if apply:
            optimizer.apply(grads, variables)
        return loss, grads

    @tf.function(input_signature=signature)
    def fast(x, y):
        sums = per_example.gradients_and_sq_norms(model, x, y, loss_fn)
        m = tf.cast(tf.shape(y)[0], tf.float32)
        grads = [g / m for g in sums.grad_sum]
        if apply:
            optimizer.apply(grads, variables)
        return tf.reduce_mean(sums.losses), grads, sums.sq_norms

    return {"plain": plain, "fast": fast}


def forms(model, x, y, signature=None):
    """The form each conv kernel took, in model order: Gram, or the materialised path (native,
    channels_first = cf, transpose_b = bt), recorded while tracing the engine once (with
    `signature`, as the timed step is traced)."""
    seen = []
    original = conv.kernel_statistic

    def recording(parts, kernel_shape):
        if not any(p.materialise for p in parts):
            seen.append("Gram")
        else:
            seen.append({"native": "native", "gko": "cf", "ok": "bt"}[parts[0].layout()])
        return original(parts, kernel_shape)

    conv.kernel_statistic = recording
    try:
        trace = tf.function(lambda xb, yb: per_example.gradients_and_sq_norms(model, xb, yb, LOSS).sq_norms,
                            input_signature=signature)
        trace.get_concrete_function(*(signature or (x, y)))
    finally:
        conv.kernel_statistic = original
    return ",".join(seen)


def time_interleaved(named, x, y, rounds):
    """Per variant: median wall seconds and median process CPU seconds (all threads) per call; and
    the medians over rounds of fast / plain within the round, for wall and CPU time. The CPU time
    ratio is the robust one on a shared machine (it does not count time spent waiting for a core)."""
    def run(f):
        tf.nest.map_structure(lambda t: tf.convert_to_tensor(t).numpy(), f(x, y))

    for f in named.values():
        for _ in range(3):
            run(f)
    wall = {k: [] for k in named}
    cpu = {k: [] for k in named}
    for _ in range(rounds):
        for k, f in named.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(f)
            wall[k].append(time.perf_counter() - start)
            cpu[k].append(time.process_time() - start_cpu)

    def ratio(times):
        return statistics.median(f / p for f, p in zip(times["fast"], times["plain"]))

    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()},
            ratio(wall), ratio(cpu))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--apply", action="store_true", help="add an SGD update to both steps")
    parser.add_argument("--unknown-batch", action="store_true",
                        help="trace both steps with a None batch size (input_signature)")
    parser.add_argument("--layout", default=conv.LAYOUT, help="conv.LAYOUT for the materialised form")
    parser.add_argument("--xla", action="store_true", help="conv.XLA = True")
    args = parser.parse_args(argv)
    conv.LAYOUT = args.layout
    conv.XLA = args.xla
    rng = np.random.default_rng(0)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras "
          f"{keras.__version__}, batch {args.batch}, median of {args.rounds} interleaved rounds"
          f"{', with SGD apply' if args.apply else ''}"
          f"{', batch size unknown when traced' if args.unknown_batch else ''}; conv.LAYOUT={conv.LAYOUT}, conv.XLA={conv.XLA}; load {os.getloadavg()[0]:.2f}")
    print("| model | conv forms | plain ms | fast ms | fast / plain (wall) | plain CPU ms | fast CPU ms "
          "| fast / plain (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        keras.utils.set_random_seed(0)
        model = MODELS[name]()
        x, y = batch(model, args.batch, rng)
        signature = None
        if args.unknown_batch:
            signature = [tf.TensorSpec([None, *x.shape[1:]], x.dtype), tf.TensorSpec([None], y.dtype)]
        wall, cpu, wall_ratio, cpu_ratio = time_interleaved(steps(model, args.apply, signature), x, y,
                                                            args.rounds)
        print(f"| {name} | {forms(model, x, y, signature)} | {wall['plain'] * 1e3:.1f} | {wall['fast'] * 1e3:.1f} "
              f"| {wall_ratio:.2f} | {cpu['plain'] * 1e3:.1f} | {cpu['fast'] * 1e3:.1f} | {cpu_ratio:.2f} |",
              flush=True)
    print(f"# load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
