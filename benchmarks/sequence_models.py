"""Issue 21's speed figures on sequence models, as ratios in one process (batch 64).

Run: `python -m benchmarks.sequence_models [--rounds 10] [--parts steps,forms,breakdown,measure] [--jit off]`.

* steps: `coherence_every=1` train step / plain Keras train step (both `model.train_step` of a
  compiled model in one `tf.function`, SGD; per round the two back to back, order alternating;
  the median and quartiles of the per-round ratios, and the ratio of the fastest of each) on
  - gqa_decoder: a grouped-query causal decoder block, sequence 64, width 128, 4 query / 2
    key-value heads (Embedding(1000, 128) -> GroupQueryAttention(causal) -> LayerNorm -> FFN 256 ->
    LayerNorm -> pool -> Dense 10), the issue's block;
  - masked_lm: a masked Transformer LM, sequence 64, width 128, 4 heads: Embedding(1000,
    mask_zero=True) -> MultiHeadAttention (causal, padding mask carried by Keras) -> LayerNorm ->
    FFN 256 -> LayerNorm -> Dense(1000) logits per token; ids with zero padding at the end;
  - mlp: MLP 784-512-512-10 (benchmarks/coherence.py), batch 128, the ≤ 1.1 reference.
  Targets (issue 21): ≤ 1.25 on the first two, ≤ 1.1 kept on the MLP.
* forms: the steps part with a third step in every round, `coherence_every=1` with Dense /
  EinsumDense kept to the Gram / tape forms (`layer_rules.materialised.ENABLED` off while it is
  traced): the materialised per-example kernel gradients against the Gram form in one process.
* breakdown: where the coherence step's extra time goes, on the same models: the engine
  (`per_example.gradients_and_sq_norms` in a `tf.function`) / one tape gradient of Keras' batch
  loss, and the engine again with one rule's statistics replaced by zeros (einsum_dense, dense,
  layer_norm, embedding, then all): the drop is that rule's share (interleaved rounds, median and
  min ratios).
* measure: `coherence.measure` (one batch, after a warm-up call) / one plain gradient of the
  batch loss (a `tf.function` of a GradientTape) on a BiLSTM -> BiGRU classifier (sequence 20,
  8 features, 16 units each way, Dense 5), batch 64. Target ≤ 10. The first call's seconds are
  printed too (tracing and the exact fallback's choice).
"""

import argparse
import os
import platform
import statistics
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import cgh_tf  # noqa: E402
from benchmarks import coherence as coherence_bench, keras_steps, transformer_rules  # noqa: E402
from cgh_tf import coherence, layer_rules, per_example  # noqa: E402
from cgh_tf.layer_rules import materialised  # noqa: E402

L = keras.layers
SEQ, WIDTH, VOCAB, BATCH = 64, 128, 1000, 64
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def gqa_decoder():
    inputs = keras.Input((SEQ,), dtype="int32")
    e = L.Embedding(VOCAB, WIDTH)(inputs)
    a = L.GroupQueryAttention(WIDTH // 4, num_query_heads=4, num_key_value_heads=2)(
        e, e, use_causal_mask=True)
    h = L.LayerNormalization()(e + a)
    h = L.LayerNormalization()(h + L.Dense(WIDTH)(L.Dense(2 * WIDTH, activation="relu")(h)))
    return keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling1D()(h)))


def masked_lm():
    inputs = keras.Input((SEQ,), dtype="int32")
    e = L.Embedding(VOCAB, WIDTH, mask_zero=True)(inputs)
    a = L.MultiHeadAttention(4, WIDTH // 4)(e, e, use_causal_mask=True)
    h = L.LayerNormalization()(e + a)
    h = L.LayerNormalization()(h + L.Dense(WIDTH)(L.Dense(2 * WIDTH, activation="relu")(h)))
    return keras.Model(inputs, L.Dense(VOCAB)(h))


def bilstm_bigru():
    inputs = keras.Input((20, 8))
    h = L.Bidirectional(L.LSTM(16, return_sequences=True))(inputs)
    h = L.Bidirectional(L.GRU(16))(h)
    return keras.Model(inputs, L.Dense(5)(h))


def batch_for(name, rng):
    """(x, y): padded ids (a random length ≥ 16 each, zeros after) and next-token-like targets for
    the LM; ids and 10 classes for the decoder; floats for the MLP."""
    if name == "mlp":
        return (tf.constant(rng.standard_normal((128, 784)).astype("float32")),
                tf.constant(rng.integers(0, 10, 128).astype("int32")))
    ids = rng.integers(1, VOCAB, (BATCH, SEQ))
    if name == "masked_lm":
        lengths = rng.integers(16, SEQ + 1, BATCH)
        ids = np.where(np.arange(SEQ)[None] < lengths[:, None], ids, 0)
        return tf.constant(ids.astype("int32")), tf.constant(np.roll(ids, -1, 1).astype("int32"))
    return tf.constant(ids.astype("int32")), tf.constant(rng.integers(0, 10, BATCH).astype("int32"))


BUILDERS = {"gqa_decoder": gqa_decoder, "masked_lm": masked_lm,
            "mlp": lambda: coherence_bench.mlp()}


def train_steps(name, jit, forms=("materialised",)):
    """{"plain": step, "coherence_every=1": step, ...}: compiled train steps of `name`, each traced
    now; one coherence step per form in `forms`: "materialised" (the rules' choice) or "gram"
    (Dense / EinsumDense kept to the Gram / tape forms: `materialised.ENABLED` off while tracing),
    labelled "coherence_every=1" for the first form and "coherence_every=1, <form>" after it."""
    x, y = batch_for(name, np.random.default_rng(0))
    steps = {}
    variants = [("plain", keras.Model, {}, None)] + [
        ("coherence_every=1" + (f", {form}" if i else ""), cgh_tf.Model, {"coherence_every": 1}, form)
        for i, form in enumerate(forms)]
    for label, cls, options, form in variants:
        keras.utils.set_random_seed(0)
        base = BUILDERS[name]()
        model = cls(base.inputs, base.outputs)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS, **options)
        step = keras_steps.compiled_train_step(model, jit)
        saved, materialised.ENABLED = materialised.ENABLED, form != "gram"
        try:
            step.get_concrete_function(x, y)  # the form is chosen while tracing
        finally:
            materialised.ENABLED = saved
        steps[label] = step
    return steps


BREAKDOWN_RULES = (layer_rules.EinsumDenseRule, layer_rules.DenseRule, layer_rules.LayerNormRule,
                   layer_rules.EmbeddingRule)


def breakdown(name, rounds):
    """{variant: (median, min) time / the tape gradient's}: the engine, and the engine without
    each rule's statistics (see the module docstring)."""
    keras.utils.set_random_seed(0)
    model = BUILDERS[name]()
    model.compile(loss=LOSS)
    x, y = batch_for(name, np.random.default_rng(0))
    loss_fn = per_example.per_example_loss_fn(model)

    @tf.function
    def tape_gradient(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=False), training=False)
        grads = tape.gradient(loss, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])

    def engine():
        def run(x, y):
            sums = per_example.gradients_and_sq_norms(model, x, y, loss_fn)
            return tf.reduce_sum(sums.sq_norms) + tf.add_n(
                [tf.reduce_sum(g) for g in sums.grad_sum if g is not None])
        function = tf.function(run)
        function.get_concrete_function(x, y)  # traced now, with the statistics patched or not
        return function

    variants = {"tape gradient": tape_gradient, "engine": engine()}
    for removed in BREAKDOWN_RULES + (None,):
        patched = BREAKDOWN_RULES if removed is None else (removed,)
        saved = {rule: rule.__dict__["statistics"] for rule in patched}
        for rule in patched:
            rule.statistics = staticmethod(transformer_rules.zero_statistics)
        try:
            variants[f"engine, no {removed.name if removed else 'rule'} statistics"] = engine()
        finally:
            for rule, statistics_fn in saved.items():
                rule.statistics = statistics_fn
    times = {label: [] for label in variants}
    for function in variants.values():
        float(function(x, y))
    for _ in range(rounds):
        for label, function in variants.items():
            start = time.perf_counter()
            float(function(x, y))
            times[label].append(time.perf_counter() - start)
    median, low = statistics.median(times["tape gradient"]), min(times["tape gradient"])
    return {label: (statistics.median(t) / median, min(t) / low) for label, t in times.items()}


def paired_ratios(steps, x, y, rounds):
    """Per-round ratios of each non-plain step / the plain step, all timed back to back in each
    round (their order reversed every other round), so that load from other processes, which
    drifts over seconds, hits them alike: {label: (median ratio, (25 %, 75 %) quantiles, ratio of
    min times)} and the plain step's median seconds."""
    for step in steps.values():
        for _ in range(2):
            float(step(x, y))
    times = {label: [] for label in steps}
    order = list(steps.items())
    for i in range(rounds):
        for label, step in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            float(step(x, y))
            times[label].append(time.perf_counter() - start)
    plain = np.asarray(times["plain"])
    out = {}
    for label, seconds in times.items():
        if label != "plain":
            ratios = np.asarray(seconds) / plain
            out[label] = (float(np.median(ratios)), tuple(np.quantile(ratios, [0.25, 0.75])),
                          min(seconds) / plain.min())
    return out, statistics.median(times["plain"])


def measure_ratio(rounds):
    """(measure / plain gradient, first measure call in s) on the BiLSTM -> BiGRU model."""
    keras.utils.set_random_seed(0)
    model = bilstm_bigru()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 20, 8)).astype("float32")
    y = rng.integers(0, 5, BATCH)

    @tf.function
    def plain(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(LOSS.call(y, model(x)))
        return tape.gradient(loss, model.trainable_variables)

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coherence.measure(model, x, y, loss=LOSS)
    first = time.perf_counter() - start
    plain(x, y)
    times = {"measure": [], "plain": []}
    for _ in range(rounds):
        for name, run in (("measure", lambda: coherence.measure(model, x, y, loss=LOSS)),
                          ("plain", lambda: [g.numpy() for g in plain(x, y)])):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return medians["measure"] / medians["plain"], medians, first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--parts", default="steps,measure")
    parser.add_argument("--models", default="gqa_decoder,masked_lm,mlp")
    parser.add_argument("--jit", default="off", help="comma-separated subset of off,on")
    args = parser.parse_args(argv)
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, median of {args.rounds} interleaved rounds")
    rng = np.random.default_rng(0)
    if "steps" in args.parts or "forms" in args.parts:
        forms = ("materialised", "gram") if "forms" in args.parts else ("materialised",)
        print("| model | XLA | variant | plain ms | / plain: median of rounds [25-75 %] "
              "| ratio of min times |\n|---|---|---|---|---|---|")
        for name in args.models.split(","):
            x, y = batch_for(name, rng)
            for jit in args.jit.split(","):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ratios, plain = paired_ratios(train_steps(name, jit == "on", forms), x, y,
                                                  args.rounds)
                for label, (ratio, (low, high), of_mins) in ratios.items():
                    print(f"| {name} | {jit} | {label} | {plain * 1e3:.1f} | {ratio:.2f} "
                          f"[{low:.2f}-{high:.2f}] | {of_mins:.2f} |", flush=True)
    if "breakdown" in args.parts:
        print("| model | variant | / tape gradient (median) | (min) |\n|---|---|---|---|")
        for name in args.models.split(","):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ratios = breakdown(name, args.rounds)
            for label, (median, low) in ratios.items():
                print(f"| {name} | {label} | {median:.2f} | {low:.2f} |", flush=True)
    if "measure" in args.parts:
        ratio, medians, first = measure_ratio(args.rounds)
        print(f"BiLSTM -> BiGRU, batch {BATCH}: measure {medians['measure'] * 1e3:.1f} ms, plain "
              f"gradient {medians['plain'] * 1e3:.1f} ms, ratio {ratio:.1f} (first measure call "
              f"{first:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
