r"""Grokking on modular arithmetic, with exact per-example coherence logged along the way.

One run (`run(config, run_dir)`) trains a model on `cgh_tf.modular.make(...)` in the update-level
graph loop (`graph_loop.update_trainer`, `run_logged`; optimizers from `cgh_tf.optimizers.build`:
AdamW, M3(AdamW), RM3(AdamW), RA3(AdamW)) and every
`log_every` optimizer updates logs: train / test accuracy and loss (whole splits), the m-coherence
and α of a fixed train sample and a fixed test sample (m = `coherence_samples` each, exact, per
layer, `cgh_tf.coherence.measure`), and the global weight norm. It checkpoints (model, optimizer,
step, curves) every `checkpoint_every` updates and resumes from there. The updates between two
logs run inside one `tf.function` over a precomputed [updates, batches per update, batch] index
tensor. Declared comparisons: every arm against its matched control, paired by seed.

Models (`model`):
* `"mlp"`: one-hot(a) ‖ one-hot(b) [2p] → `depth` × Dense(width, relu) → Dense(p) logits
  (Liu et al. 2022 "Omnigrok" use an MLP on one-hot operands; so does Gromov 2023).
* `"transformer"`: tokens (a, p+b, "=") → Embedding(2p+1, width) → `depth` blocks: MultiHeadAttention
  (`heads`, residual) → MLP 4·width (relu, residual) → read the "=" position → Dense(p)
  (Nanda et al. 2023: 1 layer, no LayerNorm).

Optimizers (`optimizer`): `"adamw"` (lr, weight_decay, β1 0.9, β2 0.98: Power et al. 2022),
`"m3"` = `cgh_tf.M3(AdamW)` (one update per 3 batches of `batch_size`), `"rm3"` =
`cgh_tf.RM3(AdamW)` (running median of the last 3 batch gradients), `"ra3"` = `cgh_tf.RA3(AdamW)`
(running mean of the last 3: RM3's control for stale gradients). `steps` counts optimizer
*updates* for every arm, so an M3 arm sees 3× the batches; the matched control is AdamW with 3×
the batch (same examples per update, same updates, mean instead of median).

Aggregation of a batch (`aggregation`, as `cgh_tf.Model.compile(aggregation=...)`): `"mean"` (the
plain batch gradient) or `"winsorize"`: winsorized GD (arXiv 2002.10657), per coordinate the
per-example gradients of the batch clipped to their `winsorize_pct`-th and (100 −
`winsorize_pct`)-th percentiles, then averaged (`cgh_tf.aggregators.Winsorize` through
`cgh_tf.per_example.reduced_per_example_gradients`, the per-example source of `cgh_tf.Model`),
handed to the optimizer. Its matched control is the same optimizer with `"mean"` (same batch,
same examples, same number of updates).

Batches: epoch e is the permutation `default_rng([seed, e])` of the training set, cut into
`batch_size` chunks (the last partial one dropped); batch j of the run is a pure function of j, so a
resumed run sees the same batches.
"""

import math
import time

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import graph_loop
from .experiment import Arm, Column, Experiment


def build_model(config, vocab_or_inputs, num_classes):
    import keras

    init = keras.initializers.VarianceScaling(scale=float(config.init_scale) ** 2,
                                              mode="fan_in", distribution="truncated_normal",
                                              seed=int(config.seed))
    if config.model == "mlp":
        inputs = keras.Input((vocab_or_inputs,), name="onehot")
        h = inputs
        for i in range(int(config.depth)):
            h = keras.layers.Dense(config.width, activation="relu", kernel_initializer=init,
                                   name=f"hidden{i + 1}")(h)
        outputs = keras.layers.Dense(num_classes, kernel_initializer=init, name="out")(h)
        return keras.Model(inputs, outputs, name="grok_mlp")
    if config.model == "transformer":
        d = int(config.width)
        inputs = keras.Input((3,), dtype="int32", name="tokens")
        x = keras.layers.Embedding(vocab_or_inputs, d, name="embed",
                                   embeddings_initializer=keras.initializers.RandomNormal(
                                       stddev=float(config.init_scale) / math.sqrt(d),
                                       seed=int(config.seed)))(inputs)
        for i in range(int(config.depth)):
            attn = keras.layers.MultiHeadAttention(int(config.heads), d // int(config.heads),
                                                   kernel_initializer=init, name=f"attn{i + 1}")
            x = keras.layers.Add(name=f"res_attn{i + 1}")([x, attn(x, x)])
            h = keras.layers.Dense(4 * d, activation="relu", kernel_initializer=init,
                                   name=f"mlp_in{i + 1}")(x)
            h = keras.layers.Dense(d, kernel_initializer=init, name=f"mlp_out{i + 1}")(h)
            x = keras.layers.Add(name=f"res_mlp{i + 1}")([x, h])
        last = keras.layers.Flatten(name="flatten")(
            keras.layers.Cropping1D((2, 0), name="equals_position")(x))
        outputs = keras.layers.Dense(num_classes, kernel_initializer=init, name="unembed")(last)
        return keras.Model(inputs, outputs, name="grok_transformer")
    raise ValueError(f"model={config.model!r} is unknown; allowed: mlp, transformer")


MODELS = ("mlp", "transformer")
OPTIMIZERS = {"adamw": 1, "m3": 3, "rm3": 1, "ra3": 1}  # name -> batches per optimizer update
AGGREGATIONS = ("mean", "winsorize")


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    need = common.require

    from cgh_tf import modular

    common.require_one_of(config, "model", MODELS)
    common.require_one_of(config, "operation", modular.OPERATIONS)
    need(isinstance(config.train_fraction, float) and 0 < config.train_fraction < 1,
         f"train_fraction={config.train_fraction!r} must be a float in (0, 1)")
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    common.require_one_of(config, "aggregation", AGGREGATIONS)
    pct = config.winsorize_pct
    need(isinstance(pct, (int, float)) and 0 <= pct < 50,
         f"winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")
    need(config.aggregation == "winsorize" or pct == 0,
         f"winsorize_pct={pct!r} has no effect with aggregation={config.aggregation!r}; set "
         "aggregation='winsorize' or winsorize_pct=0")
    for field in ("p", "width", "depth", "heads", "batch_size", "steps", "log_every",
                  "checkpoint_every", "print_every_logs", "coherence_samples"):
        need(config_schema.is_int(config[field], 1),
             f"{field}={config[field]!r} must be an int >= 1")
    need(config.model != "transformer" or config.width % config.heads == 0,
         f"width={config.width} must be a multiple of heads={config.heads}")


def build_optimizer(config):
    """(optimizer, batches per update, aggregator or None for the plain mean): AdamW (β1 0.9) or
    M3 / RM3 / RA3 wrapping it, through `cgh_tf.optimizers.build`."""
    from cgh_tf import aggregators, optimizers

    check_config(config)
    optimizer = optimizers.build(config.optimizer, float(config.learning_rate), inner="adamw",
                                 groups=3, window=3, weight_decay=float(config.weight_decay),
                                 beta_1=0.9, beta_2=float(config.beta_2))
    aggregator = (None if config.aggregation == "mean"
                  else aggregators.get("winsorize", float(config.winsorize_pct)))
    return optimizer, OPTIMIZERS[config.optimizer], aggregator


def _data(config):
    from cgh_tf import modular

    encoding = "onehot" if config.model == "mlp" else "tokens"
    data = modular.make(int(config.p), config.operation, float(config.train_fraction),
                        seed=int(config.data_seed), encoding=encoding)
    width = 2 * int(config.p) if encoding == "onehot" else modular.vocabulary_size(int(config.p))
    return data, width


class Batches:
    """Index tensors of the training batches: batch j is a pure function of (seed, j)."""

    def __init__(self, n, batch_size, batches_per_update, seed):
        self.n, self.seed, self.per_update = n, int(seed), batches_per_update
        self.full = batch_size >= n
        self.size = n if self.full else batch_size
        self.per_epoch = 1 if self.full else n // batch_size
        self._perm = {}

    def batch(self, j):
        """int32 [size]: the example indices of batch j."""
        if self.full:
            return np.arange(self.n, dtype=np.int32)
        epoch, k = divmod(j, self.per_epoch)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perm[epoch][k * self.size:(k + 1) * self.size].astype(np.int32)

    def updates(self, first, last):
        """int32 [last − first, batches per update, size]: the batches of updates first..last−1."""
        b = self.per_update
        return np.stack([self.batch(j) for j in range(first * b, last * b)]).reshape(
            last - first, b, self.size)


def _logger(model, loss_fn, splits, monitor):
    """log(step) -> row: whole-split accuracy / loss, coherence of the monitor samples
    (per layer, exact), weight norm."""
    import keras
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def evaluate(xs, ys):
        logits = model(xs, training=False)
        losses = keras.losses.sparse_categorical_crossentropy(ys, logits, from_logits=True)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ys), tf.float32)
        return tf.reduce_mean(losses), tf.reduce_mean(correct)

    def log(step):
        row = {"step": step}
        for name, (xs, ys) in splits.items():
            loss, acc = evaluate(xs, ys)
            row[f"{name}_loss"], row[f"{name}_accuracy"] = float(loss), float(acc)
        row.update(common.sample_coherence(model, monitor, loss_fn))
        row["weight_norm"] = common.weight_norm(model)
        return row
    return log


def _train(config, run_dir, echo):
    """One run (finished runs and bad configs are handled by `common.resumable`)."""
    import keras
    import tensorflow as tf

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    data, input_width = _data(config)
    x_train, y_train = data["x_train"], data["y_train"].astype(np.int32)
    x_test, y_test = data["x_test"], data["y_test"].astype(np.int32)
    model = build_model(config, input_width, data["num_classes"])
    optimizer, batches_per_update, aggregator = build_optimizer(config)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    m, n = int(config.coherence_samples), len(x_train)
    train_idx = common.sample(n, m, config.seed, 7)
    test_idx = common.sample(len(x_test), m, int(config.seed) + 1000, 7)
    log_row = _logger(model, loss_fn,
                      {"train": (tf.constant(x_train), tf.constant(y_train)),
                       "test": (tf.constant(x_test), tf.constant(y_test))},
                      {"train": (x_train[train_idx], y_train[train_idx]),
                       "test": (x_test[test_idx], y_test[test_idx])})
    batches = Batches(n, int(config.batch_size), batches_per_update, config.seed)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, tf.constant(x_train),
                                      tf.constant(y_train), batches.size, batches_per_update,
                                      aggregator)
    total, every = int(config.steps), int(config.log_every)

    def log(step):
        row = log_row(step)
        if echo and step and (step % (every * int(config.print_every_logs)) == 0 or step == total):
            echo(f"  update {step}/{total}: train acc {row['train_accuracy']:.3f} test acc "
                 f"{row['test_accuracy']:.3f} m-coh train {row['coherence/train/m_coherence']:.2f}"
                 f" test {row['coherence/test/m_coherence']:.2f} |w| {row['weight_norm']:.1f}")
        return row

    curves = graph_loop.run_logged(
        run_dir, config.to_dict(), model, optimizer,
        lambda start, stop: train(batches.updates(start, stop)), log, total=total,
        log_points=list(range(0, total, every)) + [total],
        checkpoint_points=range(0, total, int(config.checkpoint_every)), echo=echo, unit="update")
    return common.finish(run_dir, config.to_dict(), curves, summarize(curves), started,
                         num_train=n, num_test=len(x_test), batches_per_update=batches_per_update)


def first_step(curves, key, threshold):
    for s, v in zip(curves["step"], curves[key]):
        if v is not None and v >= threshold:
            return s
    return None


def value_at(curves, key, step):
    if step is None:
        return None
    for s, v in zip(curves["step"], curves[key]):
        if s == step:
            return v
    return None


def summarize(curves, memorised=0.99, grokked=0.95, onset=0.1):
    """Milestones of one run and the coherence / weight norm at each of them.

    t_mem: first logged update with train acc ≥ `memorised`; t_onset: first with test acc ≥
    `onset` (the start of the jump); t_grok: first with test acc ≥ `grokked`. `corr_*`: Pearson
    correlation, over the logs from t_mem on, between the train (test) sample's m-coherence and
    the test accuracy.
    """
    tr, te = "coherence/train/m_coherence", "coherence/test/m_coherence"
    t_mem = first_step(curves, "train_accuracy", memorised)
    t_onset = first_step(curves, "test_accuracy", onset)
    t_grok = first_step(curves, "test_accuracy", grokked)
    out = {"t_mem": t_mem, "t_onset": t_onset, "t_grok": t_grok,
           "test_acc_final": curves["test_accuracy"][-1],
           "train_acc_final": curves["train_accuracy"][-1]}
    for name, key in (("train", tr), ("test", te)):
        out[f"coh_{name}_init"] = curves[key][0]
        for label, step in (("mem", t_mem), ("onset", t_onset), ("grok", t_grok)):
            out[f"coh_{name}_at_{label}"] = value_at(curves, key, step)
        out[f"coh_{name}_final"] = curves[key][-1]
        pairs = [(c, a) for s, c, a in zip(curves["step"], curves[key], curves["test_accuracy"])
                 if t_mem is not None and s >= t_mem and c is not None]
        out[f"corr_{name}"] = (float(np.corrcoef(np.array(pairs).T)[0, 1])
                               if len(pairs) > 2 and np.std([a for _, a in pairs]) > 0 else None)
    for label, step in (("init", 0), ("mem", t_mem), ("grok", t_grok)):
        out[f"wnorm_at_{label}"] = value_at(curves, "weight_norm", step)
    out["wnorm_final"] = curves["weight_norm"][-1]
    return out


# group -> (label, changes of the base config; "transformer" = the scale's TRANSFORMER fields)
ARMS = {
    "mlp_adamw": ("MLP, AdamW wd 1", {}),
    "mlp_adamw_wd0": ("MLP, AdamW wd 0", {"weight_decay": 0.0}),
    "mlp_m3": ("MLP, M3(AdamW) wd 1", {"optimizer": "m3"}),
    "mlp_adamw_x3": ("MLP, AdamW wd 1, batch x3 (M3's examples/update)", {"batch_size": 1536}),
    "mlp_rm3": ("MLP, RM3(AdamW) wd 1", {"optimizer": "rm3"}),
    "mlp_ra3": ("MLP, RA3(AdamW) wd 1 (RM3's control: mean of the last 3)", {"optimizer": "ra3"}),
    "mlp_winsorize": ("MLP, winsorized AdamW (c = 1 %: 1 example per side) wd 1, batch 128",
                      {"batch_size": 128, "aggregation": "winsorize", "winsorize_pct": 1.0}),
    "mlp_adamw_b128": ("MLP, AdamW wd 1, batch 128 (winsorized GD's matched control)",
                       {"batch_size": 128}),
    "mlp_subtract": ("MLP, AdamW wd 1, a − b", {"operation": "subtract"}),
    "transformer_adamw": ("Transformer (1 layer), AdamW wd 1", "transformer"),
}
def arms(scale="small", seeds=3, overrides=None, groups=None):
    """The arms of `ARMS` (or only `groups` / `overrides["groups"]`), every config checked."""
    from configs import grokking as grok_config

    overrides = dict(overrides or {})
    groups = overrides.pop("groups", groups)
    for group in groups or ():
        if group not in ARMS:
            raise ValueError(f"arm {group!r} is unknown; allowed: {', '.join(ARMS)}")
    base = config_schema.apply_overrides(grok_config.get_config(), grok_config.SCALES[scale])
    out = []
    for group, (label, changes) in ARMS.items():
        if groups is not None and group not in groups:
            continue
        if changes == "transformer":
            changes = grok_config.TRANSFORMER[scale]
        config = config_schema.apply_overrides(base, changes)
        if scale == "full" and group == "mlp_adamw_x3":
            config.batch_size = 3 * base.batch_size
        config = config_schema.apply_overrides(config, overrides)
        check_config(config)  # every arm, before any training
        out += [Arm(group, label, "", seed, config_schema.apply_overrides(config, {"seed": seed}))
                for seed in range(seeds)]
    return out


COLUMNS = tuple(Column(key, header, fmt) for key, header, fmt in (  # keys of summarize()
    ("t_mem", "t_mem: updates to train acc ≥ 0.99", ".0f"),
    ("t_onset", "t_onset: updates to test acc ≥ 0.1", ".0f"),
    ("t_grok", "t_grok: updates to test acc ≥ 0.95", ".0f"),
    ("train_acc_final", "train acc (last)", ".3f"),
    ("test_acc_final", "test acc (last)", ".3f"),
    ("coh_train_init", "m-coh. train sample, init", ".3f"),
    ("coh_train_at_mem", "m-coh. train at t_mem", ".3f"),
    ("coh_train_at_onset", "m-coh. train at t_onset", ".3f"),
    ("coh_train_at_grok", "m-coh. train at t_grok", ".3f"),
    ("coh_train_final", "m-coh. train (last)", ".3f"),
    ("corr_train", "corr(m-coh. train, test acc) after t_mem", ".2f"),
    ("coh_test_at_mem", "m-coh. test at t_mem", ".3f"),
    ("coh_test_at_onset", "m-coh. test at t_onset", ".3f"),
    ("coh_test_at_grok", "m-coh. test at t_grok", ".3f"),
    ("coh_test_final", "m-coh. test (last)", ".3f"),
    ("corr_test", "corr(m-coh. test, test acc) after t_mem", ".2f"),
    ("wnorm_at_mem", "‖w‖ at t_mem", ".1f"),
    ("wnorm_at_grok", "‖w‖ at t_grok", ".1f"),
    ("wnorm_final", "‖w‖ (last)", ".1f"),
))


# (arm, matched control): the arm differs from its control in one respect only
PAIRS = (("mlp_m3", "mlp_adamw_x3"), ("mlp_rm3", "mlp_ra3"), ("mlp_winsorize", "mlp_adamw_b128"),
         ("mlp_adamw_wd0", "mlp_adamw"), ("mlp_m3", "mlp_adamw"))


def comparisons(arms_):
    groups = {a.group for a in arms_}
    return [(a, c) for a, c in PAIRS if a in groups and c in groups]


def rules(arms_):
    """Matched pairs: does the arm change the update count to grok (t_grok)? No direction is
    predicted (the papers make no claim about grokking)."""
    return [statistics.PairedRule(f"{a} changes t_grok vs {c}", "t_grok", a, c)
            for a, c in comparisons(arms_) if (a, c) in PAIRS[:3]]


def figures(workdir, runs):
    from . import figures as fig

    keys = (("train_accuracy", "train acc. (fraction)"), ("test_accuracy", "test acc. (fraction)"),
            ("coherence/train/m_coherence", "m-coherence, train sample"),
            ("coherence/test/m_coherence", "m-coherence, test sample"),
            ("weight_norm", "‖w‖ (L2 norm of all weights)"))
    return [fig.curves_per_group(workdir, "grokking_curves.png", runs, keys, x="step",
                                 x_label="optimizer updates",
                                 title="Grokking: accuracy, m-coherence and weight norm")]


run = common.resumable(_train, check_config)

PROGRESS = ("t_mem", "t_grok", "test_acc_final")

EXPERIMENT = Experiment(
    name="grokking", title="Grokking: coherence through the test-accuracy jump", arms=arms,
    run_arm=run, columns=COLUMNS, loop="graph", comparisons=comparisons,
    compared=("t_mem", "t_grok", "test_acc_final", "coh_train_final"), rules=rules,
    figures=figures, progress=PROGRESS)
