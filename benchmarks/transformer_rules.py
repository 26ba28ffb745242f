"""Per-example gradient norms on a Transformer encoder block: cost of the fast rules.

Run: `python -m benchmarks.transformer_rules [--rounds 15] [--threads 1]`.

Model: Embedding(1000, 128) -> MultiHeadAttention(4 heads × 32) + residual -> LayerNorm ->
Dense(512, relu) -> Dense(128) + residual -> LayerNorm -> mean over positions -> Dense(10);
sequence 64, batch 64, float32, SGD. Every step is one `tf.function`, timed interleaved (one call of
each variant per round, median over rounds) in one process:

| variant | what one call does |
|---|---|
| plain | forward, backward (tape on the mean loss), SGD update |
| norms | `per_example.gradients_and_sq_norms` (one forward, one backward, the rules' statistics), SGD update with Σ_i g_i / m, m-coherence |
| norms, Gram only / materialised only | the same, with the choice forced one way for every Dense / EinsumDense kernel with T > 1 (Gram with the tape's Σ_i g_i, or materialised with the rule's: `forced_form`) |
| norms, XLA-compiled Gram | `base.gram_sq_norm` replaced by the same code under `tf.function(jit_compile=True)` (candidate) |
| norms, XLA-compiled statistics | every rule's `statistics` run under `tf.function(jit_compile=True)`, one cluster per layer (candidate) |
| norms without <rule> statistics | the rule's statistics replaced by zeros: the difference to "norms" is what that rule's statistics cost |
| cgh_tf.Model coherence_every=1 | `model.train_step` of a compiled `cgh_tf.Model` (metrics, m-coherence and α every step) vs the same with a plain `keras.Model` |
"""

import argparse
import contextlib
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cgh_tf  # noqa: E402
from cgh_tf import keras_internals, layer_rules, per_example  # noqa: E402
from cgh_tf.layer_rules import base, einsum_dense, materialised  # noqa: E402
from benchmarks import keras_steps  # noqa: E402

SEQ, WIDTH, HEADS, VOCAB, BATCH, CLASSES = 64, 128, 4, 1000, 64, 10
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def encoder_block():
    ids = keras.Input((SEQ,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, WIDTH)(ids)
    a = keras.layers.MultiHeadAttention(HEADS, WIDTH // HEADS)(h, h)
    h = keras.layers.LayerNormalization()(h + a)
    f = keras.layers.Dense(4 * WIDTH, activation="relu")(h)
    h = keras.layers.LayerNormalization()(h + keras.layers.Dense(WIDTH)(f))
    out = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(ids, out)


def time_interleaved(named_steps, x, y, rounds):
    """{name: (median wall seconds, median process CPU seconds)}: one call of each variant per
    round after two warm-up calls. CPU time (all threads) is the steadier measure when other
    processes share the cores; wall time is what a user waits."""
    for step in named_steps.values():
        for _ in range(2):
            float(step(x, y))
    wall = {name: [] for name in named_steps}
    cpu = {name: [] for name in named_steps}
    for _ in range(rounds):
        for name, step in named_steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            float(step(x, y))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in named_steps}


def plain_step(model, optimizer):
    loss_fn = per_example.per_example_loss_fn(model, LOSS)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, model(x, training=False)))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    return step


def norms_step(model, optimizer):
    loss_fn = per_example.per_example_loss_fn(model, LOSS)

    @tf.function
    def step(x, y):
        r = per_example.gradients_and_sq_norms(model, x, y, loss_fn)
        m = tf.cast(tf.shape(r.losses)[0], r.sq_norms.dtype)
        total = sum(tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in r.grad_sum)
        coherence = tf.cast(total, r.sq_norms.dtype) / tf.reduce_sum(r.sq_norms)
        optimizer.apply([tf.convert_to_tensor(g) / tf.cast(m, g.dtype) for g in r.grad_sum],
                        model.trainable_variables)
        return tf.reduce_mean(r.losses) + 0.0 * coherence

    return step


@contextlib.contextmanager
def forced_form(gram):
    """Every Dense / EinsumDense kernel with T > 1 takes the Gram form with the tape's Σ_i g_i
    (True) or the materialised form with the rule's Σ_i g_i (False: `materialised.GRAM_SHARE` 0;
    `base.prefer_gram` False for a kernel over the memory budget)."""
    previous = base.prefer_gram, materialised.ENABLED, materialised.GRAM_SHARE
    base.prefer_gram = lambda *args, **kwargs: gram
    materialised.ENABLED, materialised.GRAM_SHARE = not gram, 0.0
    try:
        yield
    finally:
        base.prefer_gram, materialised.ENABLED, materialised.GRAM_SHARE = previous


@tf.function(jit_compile=True)
def xla_gram_sq_norm(a, b):
    """`base.gram_sq_norm` compiled by XLA on its own (a candidate, not in the package): on this
    CPU TF's batched matmul runs the [m, T, T] Grams (inner dimension = features ≫ T) at about
    half the rate XLA's does."""
    return tf.reduce_sum(tf.matmul(a, a, transpose_b=True) * tf.matmul(b, b, transpose_b=True), [1, 2])


@contextlib.contextmanager
def xla_gram():
    previous = base.gram_sq_norm
    base.gram_sq_norm = xla_gram_sq_norm
    try:
        yield
    finally:
        base.gram_sq_norm = previous


@contextlib.contextmanager
def xla_statistics():
    """Every rule's statistics compiled by XLA, one cluster per layer (a candidate for the engine)."""
    saved = {rule: rule.__dict__["statistics"] for rule in layer_rules.RULES}
    for rule in layer_rules.RULES:
        def compiled(layer, calls, _statistics=rule.statistics):
            return tf.function(lambda: _statistics(layer, calls), jit_compile=True)()
        rule.statistics = staticmethod(compiled)
    try:
        yield
    finally:
        for rule, statistics_fn in saved.items():
            rule.statistics = statistics_fn


def zero_statistics(layer, calls):
    """A rule's statistics replaced by zeros (timing only): squared norms [m] of zeros for every
    weight the first call read, and a zero Σ_i g_i for a weight read with tape_sum=False (a
    materialised kernel: its whole form, the matmul that replaced the tape's weight gradient
    included, then drops out)."""
    m = tf.shape(calls[0].output_grads[0])[0]
    return {var_id: base.Statistic(tf.zeros([m], tf.float32),
                                   None if tape_sum else tf.zeros_like(value))
            for var_id, (_, value, tape_sum) in calls[0].weights.items()}


@contextlib.contextmanager
def without_statistics(rule):
    """`rule.statistics` returns zeros (`zero_statistics`), so its cost drops out."""
    previous = rule.__dict__["statistics"]
    rule.statistics = staticmethod(zero_statistics)
    try:
        yield
    finally:
        rule.statistics = previous


def ruled_layers(model):
    return [(layer, rule) for layer in keras_internals.flatten_layers(model, include_self=False)
            for rule in [layer_rules.rule_for(layer)] if rule is not None and layer.trainable_weights]


def choices(model):
    """Rows (layer path, rule, T, fan_in, fan_out, blocks, kernel form) of the block's layers."""
    paths = {p.path.split("/")[-1]: p.path for p in per_example.explain(model)}
    rows = []
    for layer, rule in ruled_layers(model):
        t, fan_in, fan_out, blocks = SEQ, "-", "-", "-"
        if isinstance(layer, keras.layers.EinsumDense):
            specs = einsum_dense.layer_specs(layer)
            sizes = dict(zip(specs.kernel, layer.kernel.shape))
            ins, out = specs.inputs, specs.outputs
            fan_in = int(np.prod([sizes[c] for c in specs.kernel if c in ins and c not in out]))
            fan_out = int(np.prod([sizes[c] for c in specs.kernel if c in out and c not in ins]))
            blocks = int(np.prod([sizes[c] for c in specs.kernel if c in ins and c in out]))
        elif isinstance(layer, keras.layers.Dense):
            fan_in, fan_out, blocks = *layer.kernel.shape, 1
            t = 1 if layer is model.layers[-1] else SEQ
        if fan_in == "-":
            form = {"embedding": "id-equality ⊙ Gram of b", "layer_norm": "Σ_pos b ⊙ x̂"}.get(rule.name, "")
        elif t == 1:
            form = "‖a‖²‖b‖²"
        else:
            form = ("materialised, the rule's Σ_i g_i"
                    if materialised.chosen(t, fan_in, fan_out, BATCH, "float32", blocks)
                    else "Gram" if base.prefer_gram(t, fan_in, fan_out) else "materialised")
        rows.append((paths.get(layer.name, layer.name), rule.name, t, fan_in, fan_out, blocks, form))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0,
                        help="TF intra- and inter-op threads (0: TF's default); 1 makes CPU time a "
                             "steadier measure of work on a loaded machine")
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, VOCAB, size=(BATCH, SEQ)), tf.int32)
    y = tf.constant(rng.integers(0, CLASSES, size=BATCH))
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}, "
          f"encoder block seq {SEQ} width {WIDTH} heads {HEADS} vocab {VOCAB} batch {BATCH}, "
          f"median of {args.rounds} interleaved rounds, threads {args.threads or 'default'}")
    keras.utils.set_random_seed(0)
    model = encoder_block()
    print("\n| layer | rule | T | fan_in | fan_out | blocks | kernel form |\n|---|---|---|---|---|---|---|")
    for row in choices(model):
        print("| " + " | ".join(str(c) for c in row) + " |")

    def fresh(step_factory):
        keras.utils.set_random_seed(0)
        m = encoder_block()
        return step_factory(m, keras.optimizers.SGD(0.01))

    steps = {"plain": fresh(plain_step), "norms": fresh(norms_step)}
    # Variants whose rule code is patched must be traced while patched: trace them here.
    for label, context in (("norms, Gram only", lambda: forced_form(True)),
                           ("norms, materialised only", lambda: forced_form(False)),
                           ("norms, XLA-compiled Gram", xla_gram),
                           ("norms, XLA-compiled statistics", xla_statistics)):
        step = fresh(norms_step)
        with context():
            step.get_concrete_function(x, y)
        steps[label] = step
    for rule in dict.fromkeys(rule for _, rule in ruled_layers(model)):
        step = fresh(norms_step)
        with without_statistics(rule):
            step.get_concrete_function(x, y)
        steps[f"norms without {rule.name} statistics"] = step
    steps["keras train_step (keras.Model)"] = keras_steps.train_step(encoder_block, keras.Model, {})
    steps["keras train_step (cgh_tf.Model coherence_every=1)"] = keras_steps.train_step(
        encoder_block, cgh_tf.Model, {"coherence_every": 1})

    result = time_interleaved(steps, x, y, args.rounds)
    print(f"\n{os.getloadavg()[0]:.1f} load average during the run (1 min)")
    print("\n| variant | wall ms | wall / plain | CPU ms | CPU / plain |\n|---|---|---|---|---|")
    for name, (wall, cpu) in result.items():
        ref = result["keras train_step (keras.Model)" if name.startswith("keras train_step (cgh") else "plain"]
        print(f"| {name} | {wall * 1e3:.1f} | {wall / ref[0]:.2f} | {cpu * 1e3:.1f} | {cpu / ref[1]:.2f} |",
              flush=True)
    print("(the cgh_tf.Model row is relative to the keras.Model train_step row)")


if __name__ == "__main__":
    main()
