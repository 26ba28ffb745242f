"""Step time and bytes per replica of every cgh_tf mode under `tf.distribute.MirroredStrategy`.

Run: `python -m benchmarks.distribute [--replicas 2,3 --rounds 5 --steps 3 --models mlp,cnn]`.

R logical CPU devices (`tf.config.set_logical_device_configuration`, which must run before TF
initialises, so each R runs in its own subprocess: `--child R`), one `MirroredStrategy` over them
(its CPU default: ring collectives), global batch 128, float32, random data. Every variant is a
fresh copy of the same model (same seed) built in the strategy's scope; its step is
`strategy.run(model.train_step, ...)` in one `tf.function` (the trainer's `distributed_loop`
path; Keras' `fit` runs the same `train_step`) on one pre-built distributed batch whose
per-replica spec is that of the distributed dataset (`tf.data` batch of 128: shards of unknown
size, as Keras `fit` and the trainer give them; `static` = `drop_remainder=True` with R | 128,
shards of a known size).

| variant                 | model / compile                                                  |
|-------------------------|------------------------------------------------------------------|
| SGD (baseline)          | `keras.Model`, `keras.optimizers.SGD(0.01)`                      |
| M3 in-batch             | `cgh_tf.Model`, `cgh_tf.M3(SGD, groups=3)` (replicas as groups)  |
| M3 in-batch, static     | the same on shards of a static size (R = 2: the all-gather)      |
| RM3                     | `keras.Model`, `cgh_tf.RM3(SGD)`                                 |
| M3 consecutive          | `keras.Model`, `cgh_tf.M3(SGD, groups=3)`, time per batch         |
| coherence_every=1       | `cgh_tf.Model`, SGD, `coherence_every=1`                         |

Time: every step is traced and run twice before timing (RM3's window filled); each round times a
block of `--steps` steps of every variant, interleaved (so load from other processes hits all
alike); the ratio of a round is variant / SGD of that round; the table gives the median over
rounds.

Bytes per replica per step (ring algorithms, float32, P trainable parameters, V variables,
computed from shapes, not measured):

| mode                     | collectives                                                        |
|--------------------------|--------------------------------------------------------------------|
| SGD                      | all-reduce of the gradient: 2(R−1)/R · P · 4                        |
| RM3 / RA3 / M3 consec.   | the same: the wrapper sums once, the inner optimizer's all-reduce is off |
| M3 in-batch, static      | rows: `replica_groups.collective` / `bytes_per_replica` with J = passes_per_replica(R, 3, s), + Keras' all-reduce of the update 2(R−1)/R · P · 4 |
| M3 in-batch, dynamic     | rows: all-reduce 2(R−1)/R · 3 · P · 4, + the update's all-reduce, + the R shard sizes (all-reduce of R values, 2(R−1)/R · R · 4) |
| coherence_every=1        | the gradient's all-reduce, + one all-reduce of S (P), Q per variable (V) and m (1): 2(R−1)/R · (P + V + 1) · 4 |
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 128
GROUPS = 3
LR = 0.01
MODELS = {"mlp": "MLP 784-512-512-10", "cnn": "CNN 32-64-128-10"}
VARIANTS = ["sgd", "m3_in_batch", "m3_in_batch_static", "rm3", "m3_consecutive", "coherence"]
LABELS = {"sgd": "SGD", "m3_in_batch": "M3 in-batch", "m3_in_batch_static": "M3 in-batch, static",
          "rm3": "RM3", "m3_consecutive": "M3 consecutive", "coherence": "coherence_every=1"}


# --------------------------------------------------------------------------- bytes (from shapes)
def ring_all_reduce(replicas, values, value_bytes=4):
    return 2 * (replicas - 1) / replicas * values * value_bytes


def bytes_table(replicas, parameters, variables, static_shard=None):
    """{mode: (bytes per replica per step, what)} for R replicas, P parameters, V variables.

    `static_shard`: the static shard size of the static in-batch row (None: no such row)."""
    from cgh_tf import replica_groups  # pure Python functions

    r, p = replicas, parameters
    update = ring_all_reduce(r, p)
    table = {"SGD": (update, "all-reduce P"),
             "RM3 / RA3 / M3 consecutive": (update, "all-reduce P (inner all-reduce off)")}
    if static_shard is not None:
        j = replica_groups.passes_per_replica(r, GROUPS, static_shard)
        kind = replica_groups.collective(r, GROUPS, j, static=True)
        rows = replica_groups.bytes_per_replica(kind, r, GROUPS, j, p)
        table["M3 in-batch, static shards"] = (
            rows + update, f"{kind.replace('_', '-')} rows (J = {j}) + all-reduce P")
    j = replica_groups.passes_per_replica(r, GROUPS)
    kind = replica_groups.collective(r, GROUPS, j, static=False)
    rows = replica_groups.bytes_per_replica(kind, r, GROUPS, j, p)
    table["M3 in-batch, dynamic shards"] = (
        rows + update + ring_all_reduce(r, r),
        f"{kind.replace('_', '-')} rows [{GROUPS}, P] (J = {j}) + all-reduce P + R sizes")
    table["coherence_every=1"] = (update + ring_all_reduce(r, p + variables + 1),
                                  "all-reduce P + all-reduce S, Q, m (P + V + 1)")
    return table


# --------------------------------------------------------------------------- child: one R
def child(replicas, models, rounds, steps):
    """Times every variant on `replicas` logical CPUs; prints one JSON line per model."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])

    import keras
    import numpy as np

    import cgh_tf
    from benchmarks.optimizers import mlp, small_cnn

    builders = {"mlp": (mlp, (784,)), "cnn": (small_cnn, (28, 28, 1))}
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def distributed_batch(x, y, drop_remainder):
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(
            BATCH, drop_remainder=drop_remainder)
        distributed = strategy.experimental_distribute_dataset(dataset)
        return next(iter(distributed)), distributed.element_spec

    def make_step(build_model, variant, spec):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            base = build_model()
            options = {}
            if variant in ("m3_in_batch", "m3_in_batch_static"):
                cls, optimizer = cgh_tf.Model, cgh_tf.M3(keras.optimizers.SGD(LR), groups=GROUPS)
            elif variant == "coherence":
                cls, optimizer = cgh_tf.Model, keras.optimizers.SGD(LR)
                options["coherence_every"] = 1
            elif variant == "rm3":
                cls, optimizer = keras.Model, cgh_tf.RM3(keras.optimizers.SGD(LR))
            elif variant == "m3_consecutive":
                cls, optimizer = keras.Model, cgh_tf.M3(keras.optimizers.SGD(LR), groups=GROUPS)
            else:
                cls, optimizer = keras.Model, keras.optimizers.SGD(LR)
            model = cls(base.inputs, base.outputs)
            model.compile(optimizer=optimizer, loss=loss, **options)
            model.optimizer.build(model.trainable_variables)
            if isinstance(model, cgh_tf.Model):
                model.make_train_function()

        @tf.function(input_signature=[spec])
        def step(batch):
            outputs = strategy.run(model.train_step, args=(batch,))
            return strategy.reduce("MEAN", outputs["loss"], axis=None)

        return step, model

    for name in models:
        build_model, shape = builders[name]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(BATCH,) + shape).astype("float32")
        y = rng.integers(0, 10, size=BATCH)
        dynamic = distributed_batch(x, y, drop_remainder=False)
        static = distributed_batch(x, y, drop_remainder=True) if BATCH % replicas == 0 else None
        shard = static[1][0]._component_specs[0].shape[0] if static else None
        if shard is None:  # R does not divide the batch: no static shards
            static = None
        variants = [v for v in VARIANTS if v != "m3_in_batch_static" or static is not None]
        built = {}
        for v in variants:
            batch, spec = static if v == "m3_in_batch_static" else dynamic
            built[v] = (*make_step(build_model, v, spec), batch)
        for v, (step, _, batch) in built.items():  # trace, compile, fill RM3's window
            for _ in range(2 * GROUPS):
                float(step(batch))
        ratios = {v: [] for v in variants}
        sgd_times = []
        for _ in range(rounds):
            times = {}
            for v, (step, _, batch) in built.items():
                start = time.perf_counter()
                for _ in range(steps):
                    result = step(batch)
                float(result)
                times[v] = (time.perf_counter() - start) / steps
            sgd_times.append(times["sgd"])
            for v in variants:
                ratios[v].append(times[v] / times["sgd"])
        model = built["sgd"][1]
        print(json.dumps({
            "model": name, "replicas": replicas, "shard": shard,
            "parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
            "variables": len(model.trainable_weights),
            "sgd_ms": statistics.median(sgd_times) * 1e3,
            "ratios": {v: statistics.median(r) for v, r in ratios.items() if v != "sgd"},
        }), flush=True)


# --------------------------------------------------------------------------- parent
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="2,3", help="comma-separated replica counts")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated subset of mlp,cnn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3,
                        help="steps per timed block (multiple of 3)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = args.models.split(",")
    if args.child:
        child(args.child, models, args.rounds, args.steps)
        return

    import keras
    import tensorflow as tf

    results = []
    for replicas in [int(r) for r in args.replicas.split(",")]:
        command = [sys.executable, "-m", "benchmarks.distribute", "--child", str(replicas),
                   "--models", args.models, "--rounds", str(args.rounds),
                   "--steps", str(args.steps)]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        results += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, MirroredStrategy over R logical CPUs, global batch {BATCH}, "
          f"median of {args.rounds} interleaved rounds x {args.steps} steps")
    timed = [v for v in VARIANTS if v != "sgd"]
    print("| model | R | SGD ms | " + " | ".join(f"{LABELS[v]} / SGD" for v in timed) + " |")
    print("|---|---|---|" + "---|" * len(timed))
    for r in results:
        cells = " | ".join(f"{r['ratios'][v]:.2f}" if v in r["ratios"] else "–" for v in timed)
        print(f"| {MODELS[r['model']]} | {r['replicas']} | {r['sgd_ms']:.1f} | {cells} |")

    print()
    print("# bytes per replica per step (ring, float32, from shapes); k = 3 groups")
    print("| model | P | R | mode | bytes | MB | collectives |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        table = bytes_table(r["replicas"], r["parameters"], r["variables"], r["shard"])
        for mode, (size, what) in table.items():
            print(f"| {MODELS[r['model']]} | {r['parameters']:,} | {r['replicas']} | {mode} | "
                  f"{size:,.0f} | {size / 2**20:.2f} | {what} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
