"""Equivalence checks and step-time ratios of cgh_tf on GPUs or a TPU, with XLA.

Run: `python -m benchmarks.accelerator_check [--steps 6] [--rounds 5] [--model resnet18|tiny]`
     `python -m benchmarks.accelerator_check --force_cpu --steps 2 --model tiny`  (CPU smoke test)

Without a GPU (`tf.config.list_logical_devices("GPU")` empty) and without a TPU
(`TPUClusterResolver()` raises, or the TPU it names cannot be initialised) it prints one line
("no GPU or TPU found ...") and exits 0. Otherwise the strategy is `MirroredStrategy` over every
GPU, or `TPUStrategy`; every model is compiled with `jit_compile=True` (on GPUs XLA makes
MirroredStrategy run without merge_call, as TPUStrategy always does: the path the CPU tests can
only simulate).

1. Equivalence. Each mode trains `--steps` steps (rounded up to a multiple of 3, so that
   consecutive M3 and RM3 apply updates) with Keras `fit` on the same random data, once under the
   strategy and once on one device (GPU:0; the host CPU for a TPU); the check prints
   max |ΔW| / max |W| and PASS if it is ≤ 1e-4 (float32; TensorFloat-32 is switched off for the
   checks so that matmuls and convolutions run in full float32).

   | mode                     | model / compile                                          |
   |--------------------------|----------------------------------------------------------|
   | SGD                      | `keras.Model`, `SGD(0.05, momentum=0.9)`                 |
   | M3 in-batch              | `cgh_tf.Model`, `cgh_tf.M3(SGD, groups=3)` (shards of a static size, `drop_remainder=True`) |
   | M3 in-batch, dynamic     | the same on a dataset without `drop_remainder` (GPUs only: TPUs need static shapes) |
   | M3 consecutive           | `keras.Model`, `cgh_tf.M3(SGD, groups=3)`                |
   | RM3                      | `keras.Model`, `cgh_tf.RM3(SGD)`                         |
   | coherence_every=1        | `cgh_tf.Model`, SGD, `coherence_every=1` (also compares the logged `m_coherence`) |

   The checks use a model without BatchNorm (`--model resnet18`: the small CNN of
   `cgh_tf.models` on 32×32×3; `--model tiny`: an MLP 192-8-10 on 8×8×3, for the CPU smoke
   test): BatchNorm normalises each replica's shard with that shard's statistics, so its weights
   legitimately differ from one device.

2. Step time, `--model resnet18`: `cgh_tf.models.resnet18_cifar` on random CIFAR-shaped data
   (32×32×3, 10 classes), global batch 96·R; Keras' own `train_function` on a distributed
   iterator; every variant warmed up (compiled) first, then `--rounds` interleaved blocks of
   `--steps` steps; prints the median over rounds of RM3 / SGD, M3 in-batch / SGD and
   coherence_every=1 / SGD.

Exit status 1 if any check FAILs (or raises), else 0.
"""

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TOLERANCE = 1e-4
LR = 0.05
CLASSES = 10
SHAPES = {"resnet18": ((32, 32, 3), (32, 32, 3)), "tiny": ((8, 8, 3), (8, 8, 3))}  # check, timing


def find_strategy(force_cpu):
    """(strategy, one-device reference device, description) or None if there is no accelerator."""
    import tensorflow as tf

    if force_cpu:
        return tf.distribute.MirroredStrategy(["/cpu:0"]), "/cpu:0", "CPU (--force_cpu), 1 replica"
    resolver = None
    if not tf.config.list_physical_devices("GPU"):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except Exception:  # noqa: BLE001  (ValueError without TPU_NAME, RuntimeError, OpError...)
            resolver = None
    if resolver is not None:
        strategy = tf.distribute.TPUStrategy(resolver)
        return strategy, "/cpu:0", f"TPU, {strategy.num_replicas_in_sync} cores"
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        return None
    strategy = tf.distribute.MirroredStrategy([d.name for d in gpus])
    return strategy, gpus[0].name, f"{len(gpus)} GPU(s): MirroredStrategy"


# --------------------------------------------------------------------------- models and modes
def check_model(name, model_class):
    """(model, input shape) for the equivalence checks: no BatchNorm."""
    from cgh_tf import models

    if name == "tiny":  # Dense only: per-example conv rules under XLA are slow on CPUs
        return models.mlp((8, 8, 3), CLASSES, depth=1, width=8, model_class=model_class), (8, 8, 3)
    return models.small_cnn((32, 32, 3), CLASSES, model_class=model_class), (32, 32, 3)


def timing_model(name, model_class):
    """(model, input shape) for the step times."""
    from cgh_tf import models

    if name == "tiny":
        return check_model(name, model_class)
    return models.resnet18_cifar((32, 32, 3), CLASSES, model_class=model_class), (32, 32, 3)


def compile_mode(model_builder, mode):
    """A compiled model for `mode` (call inside the strategy's scope / device)."""
    import keras

    import cgh_tf

    sgd = keras.optimizers.SGD(LR, momentum=0.9)
    options = {}
    if mode.startswith("M3 in-batch"):
        model_class, optimizer = cgh_tf.Model, cgh_tf.M3(sgd, groups=3)
    elif mode == "M3 consecutive":
        model_class, optimizer = keras.Model, cgh_tf.M3(sgd, groups=3)
    elif mode == "RM3":
        model_class, optimizer = keras.Model, cgh_tf.RM3(sgd)
    elif mode == "coherence_every=1":
        model_class, optimizer = cgh_tf.Model, sgd
        options["coherence_every"] = 1
    else:
        model_class, optimizer = keras.Model, sgd
    keras.utils.set_random_seed(0)
    model, _ = model_builder(model_class)
    model.compile(optimizer=optimizer, jit_compile=True, **options,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def random_data(shape, n, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape).astype("float32"), rng.integers(0, CLASSES, n)


# --------------------------------------------------------------------------- 1. equivalence
def train(model_builder, mode, x, y, batch, context):
    """(initial weights, weights after one epoch over (x, y), last logged m_coherence or None)
    of a fresh model for `mode` built and trained in `context`."""
    import tensorflow as tf

    with context():
        model = compile_mode(model_builder, mode)
        initial = [w.numpy() for w in model.weights]
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
            batch, drop_remainder=not mode.endswith("dynamic"))
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        coherence = history.history.get("m_coherence", [None])[-1]
        return initial, [w.numpy() for w in model.weights], coherence


def equivalence(strategy, device, args):
    """Prints one line per mode; returns the number of failures."""

    import numpy as np
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    steps = 3 * math.ceil(max(args.steps, 1) / 3)
    batch = math.lcm(3, replicas) * max(1, math.ceil(24 / math.lcm(3, replicas)))
    builder = lambda cls: check_model(args.model, cls)  # noqa: E731
    x, y = random_data(SHAPES[args.model][0], steps * batch)
    modes = ["SGD", "M3 in-batch", "M3 in-batch, dynamic", "M3 consecutive", "RM3",
             "coherence_every=1"]
    if isinstance(strategy, tf.distribute.TPUStrategy):
        modes.remove("M3 in-batch, dynamic")
    print(f"# equivalence: {args.model} check model, {steps} steps of global batch {batch}, "
          f"{replicas} replica(s) vs one device ({device}), jit_compile=True, float32, "
          f"tolerance max|ΔW| ≤ {TOLERANCE:g} · max|W|")
    tf.config.experimental.enable_tensor_float_32_execution(False)
    failures = 0
    for mode in modes:
        start = time.perf_counter()
        try:
            _, got, got_coherence = train(builder, mode, x, y, batch, strategy.scope)
            initial, want, want_coherence = train(builder, mode, x, y, batch,
                                                  lambda: tf.device(device))
            delta = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
            scale = max(float(np.max(np.abs(b))) for b in want)
            moved = max(float(np.max(np.abs(b - a))) for a, b in zip(initial, want))
            ok = delta <= TOLERANCE * scale and moved > 0
            extra = ""
            if want_coherence is not None:
                coherence_delta = abs(got_coherence - want_coherence) / max(abs(want_coherence),
                                                                            1e-12)
                ok = ok and coherence_delta <= TOLERANCE
                extra = f", m_coherence {got_coherence:.6g} vs {want_coherence:.6g}"
            line = (f"max|ΔW| = {delta:.3g} (max|W| = {scale:.3g}, moved {moved:.3g} from the "
                    f"initial weights){extra}")
        except Exception as error:  # noqa: BLE001  (report and go on with the other modes)
            ok, line = False, f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        failures += not ok
        seconds = time.perf_counter() - start
        print(f"{'PASS' if ok else 'FAIL'}  {mode:22}  {line} [{seconds:.0f} s]", flush=True)
    tf.config.experimental.enable_tensor_float_32_execution(True)
    return failures


# --------------------------------------------------------------------------- 2. step time
def step_times(strategy, args):
    """Prints the median step-time ratios against SGD; returns the number of failures."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    batch = 96 * replicas
    builder = lambda cls: timing_model(args.model, cls)  # noqa: E731
    label = "ResNet-18 (CIFAR)" if args.model == "resnet18" else "tiny MLP"
    x, y = random_data(SHAPES[args.model][1], batch)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    dataset = dataset.cache().repeat().prefetch(2)
    modes = ["SGD", "RM3", "M3 in-batch", "coherence_every=1"]
    functions, failures = {}, 0
    for mode in modes:
        try:
            with strategy.scope():
                model = compile_mode(builder, mode)
                model.optimizer.build(model.trainable_variables)
            model.make_train_function()
            iterator = iter(strategy.experimental_distribute_dataset(dataset))
            function = model.train_function
            for _ in range(3):  # compile; RM3's window
                logs = function(iterator)
            float(logs["loss"])
            functions[mode] = (function, iterator)
        except Exception as error:  # noqa: BLE001
            failures += 1
            print(f"FAIL  step time {mode}: {type(error).__name__}: "
                  f"{str(error).strip().splitlines()[0][:300]}", flush=True)
    if "SGD" not in functions:
        return failures
    ratios = {mode: [] for mode in functions if mode != "SGD"}
    sgd_times = []
    for _ in range(args.rounds):
        times = {}
        for mode, (function, iterator) in functions.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = function(iterator)
            float(logs["loss"])
            times[mode] = (time.perf_counter() - start) / args.steps
        sgd_times.append(times["SGD"])
        for mode in ratios:
            ratios[mode].append(times[mode] / times["SGD"])
    print(f"# step time: {label}, global batch {batch}, {replicas} replica(s), jit_compile=True, "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps")
    print("| SGD ms | " + " | ".join(f"{m} / SGD" for m in ratios) + " |")
    print("|---" * (len(ratios) + 1) + "|")
    print(f"| {statistics.median(sgd_times) * 1e3:.1f} | "
          + " | ".join(f"{statistics.median(r):.2f}" for r in ratios.values()) + " |", flush=True)
    return failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6,
                        help="training steps per equivalence check (rounded up to a multiple of "
                             "3) and per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--model", choices=["resnet18", "tiny"], default="resnet18")
    parser.add_argument("--force_cpu", action="store_true",
                        help="run everything on the CPU (one replica): a smoke test")
    args = parser.parse_args(argv)
    found = find_strategy(args.force_cpu)
    if found is None:
        print("accelerator_check: no GPU or TPU found (tf.config.list_logical_devices('GPU') is "
              "empty and TPUClusterResolver() finds no TPU); nothing to check.")
        return 0
    import keras
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # Keras' fit per check: tf.function retracing warnings
    strategy, device, description = found
    print(f"# {description}; TF {tf.__version__}, Keras {keras.__version__}")
    failures = equivalence(strategy, device, args)
    failures += step_times(strategy, args)
    print(f"accelerator_check: {'all checks PASS' if not failures else f'{failures} FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
