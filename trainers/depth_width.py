r"""Depth and width of an MLP: m-coherence at initialisation / after one epoch vs generalisation.

Claim tested: the Coherent Gradients hypothesis (CGH) accounts for how depth and width affect
generalisation — models whose per-example gradients are more coherent on real data should
generalise better (smaller train − test gap), and real labels should be more coherent than random
ones at every depth and width.

One run (`run(config, run_dir)`): an MLP (`depth` hidden layers of `width` ReLU units; mnist5k's
28×28 images are flattened to 784 inputs) trained with Adam, no weight decay, on the real labels
(`labels="real"`, `epochs` epochs: the fixed budget) or on 100 % uniformly random labels
(`labels="random"`, `random_epochs` epochs). At each epoch of `log_epochs` (0 = at
initialisation; the last epoch is always logged) it logs the training loss, the train accuracy
(vs the training labels), the test accuracy and the gap (train − test accuracy); at the epochs of
`coherence_epochs` also the exact m-coherence / α (total and per layer) of one fixed sample of m =
`coherence_samples` training examples with their training labels (per-example gradients,
`cgh_tf.coherence.measure`; the same example indices in every run). At other epochs those
columns are None, never 0. Resumable from a checkpoint written every `checkpoint_every_logs` log
epochs (`graph_loop.run_logged_epochs`; epoch e is the permutation `default_rng([seed, e])`).
The model, its Adam and the traced functions are built once per architecture and reused by its
seeds and label kinds (weights set from a freshly seeded model, Adam state zeroed, the training
data assigned to the same variables): bit-identical to fresh runs, without most of the tracing.

The experiment: a cross of a width sweep at a fixed depth and a depth sweep at a fixed width
(`configs/depth_width.py`), real and random labels. Declared: real − random m-coherence per model,
paired by seed (rule: real higher after one epoch), and the correlations across models of the
m-coherence after one epoch (real labels) with the gap (CGH: negative) and the test accuracy
(CGH: positive), Pearson with a Fisher-z 95 % CI (`CORRELATION_RULES`).
"""

import time

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import graph_loop
from .experiment import Arm, Column, Experiment

LABELS = ("real", "random")


build_model = common.mlp


def _log_epochs(config):
    """Sorted epochs to log at: `log_epochs` and `coherence_epochs` up to the run's last epoch
    (later ones are dropped, so that `--set=epochs=N` needs no new list) plus the last epoch."""
    last = _epochs(config)
    return sorted({int(e) for e in tuple(config.log_epochs) + tuple(config.coherence_epochs)
                   if e <= last} | {last})


def _epochs(config):
    return int(config.epochs if config.labels == "real" else config.random_epochs)


def value_at(curves, key, epoch):
    """The logged value of `key` at `epoch`, or None if that epoch was not logged / measured."""
    if key not in curves or epoch not in curves.get("epoch", []):
        return None
    return curves[key][curves["epoch"].index(epoch)]


def summarize(curves, num_params):
    """The run's summary numbers from its curves (None where nothing was measured)."""
    last = {key: curves[key][-1] for key in ("train_accuracy", "test_accuracy", "gap",
                                             "train_loss")}
    return {**last,
            "epochs": curves["epoch"][-1],
            "m_coherence_init": value_at(curves, "coherence/m_coherence", 0),
            "m_coherence_epoch1": value_at(curves, "coherence/m_coherence", 1),
            "alpha_init": value_at(curves, "coherence/alpha", 0),
            "alpha_epoch1": value_at(curves, "coherence/alpha", 1),
            "num_params": num_params}


def _train(config, run_dir, echo):
    """One run (finished runs and bad configs are handled by `common.resumable`)."""
    import keras
    import tensorflow as tf

    from cgh_tf import coherence

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    random = config.labels == "random"
    ds = _load(config.dataset, random, int(config.data_seed), config.max_train)
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    n = len(x)
    fresh = build_model(config, ds.input_shape, ds.num_classes)  # this seed's initial weights
    model, optimizer, loss_fn, xt, yt, train_epoch, evaluate = _trainer(config, ds, n)
    model.set_weights(fresh.get_weights())
    xt.assign(x)
    yt.assign(y)
    for variable in optimizer.variables:  # a fresh Adam: step 0, zero moments
        if not variable.path.endswith("learning_rate"):
            variable.assign(tf.zeros_like(variable))
    sample = common.sample(n, config.coherence_samples, config.data_seed, 1)
    m = len(sample)
    xs = tf.constant(x_test)
    num_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))

    coherence_epochs = {int(e) for e in config.coherence_epochs}

    def log(epoch):
        train_loss, pred_train = evaluate(xt, yt)
        _, pred_test = evaluate(xs, tf.constant(y_test))
        train_acc = float(np.mean(pred_train.numpy() == y))
        test_acc = float(np.mean(pred_test.numpy() == y_test))
        row = {"epoch": epoch, "step": epoch, "train_loss": float(train_loss),
               "train_accuracy": train_acc, "test_accuracy": test_acc,
               "gap": train_acc - test_acc}
        if random:  # accuracy of the fit against the real labels of the training examples
            row["train_true_accuracy"] = float(np.mean(pred_train.numpy() == ds.train.original_y))
        if epoch in coherence_epochs:
            stats = coherence.measure(model, x[sample], y[sample], loss=loss_fn, per_layer=True,
                                      batch_size=m)
            row.update(common.coherence_row("coherence", stats))
        if echo:
            echo(f"  {run_dir} epoch {epoch}: train acc {train_acc:.3f} test acc {test_acc:.3f}")
        return row

    curves = graph_loop.run_logged_epochs(
        run_dir, config.to_dict(), model, optimizer, train_epoch, log, epochs=_epochs(config),
        log_epochs=_log_epochs(config), checkpoint_every=config.checkpoint_every_logs,
        seed=config.seed, n=n, echo=echo)
    return common.finish(run_dir, config.to_dict(), curves, summarize(curves, num_params), started,
                         num_train=n, coherence_sample=sample.tolist())


_TRAINERS = {}  # architecture -> (model, optimizer, loss, x, y variables, train_epoch, evaluate)


def _trainer(config, ds, n):
    """The model, its Adam, training-data variables and the traced train / evaluate functions of
    one architecture, built once per process and reused by every seed and label kind of it (`run`
    resets the weights and the optimizer state and assigns the data): tracing is most of a small
    run's time. The cache holds one architecture at a time."""
    import keras
    import tensorflow as tf

    key = (config.dataset, int(config.depth), int(config.width), float(config.learning_rate),
           int(config.batch_size), n, tuple(ds.input_shape), ds.num_classes)
    if key in _TRAINERS:
        return _TRAINERS[key]
    _TRAINERS.clear()
    model = build_model(config, ds.input_shape, ds.num_classes)
    optimizer = keras.optimizers.Adam(float(config.learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    xt = tf.Variable(np.zeros((n, *ds.input_shape), np.float32), trainable=False)
    yt = tf.Variable(np.zeros((n,), np.int32), trainable=False)
    train_epoch = graph_loop.epoch_trainer(model, optimizer, loss_fn, xt, yt,
                                           int(config.batch_size))

    @tf.function(reduce_retracing=True)
    def evaluate(xs_, ys_):
        logits = model(xs_, training=False)
        return (loss_fn(ys_, logits),
                tf.argmax(logits, -1, output_type=tf.int32))

    _TRAINERS[key] = (model, optimizer, loss_fn, xt, yt, train_epoch, evaluate)
    return _TRAINERS[key]


_DATA = {}  # (dataset, random, data_seed, max_train) -> Dataset: loaded once per process


def _load(dataset, random, data_seed, max_train):
    from cgh_tf import data

    key = (dataset, random, data_seed, max_train)
    if key not in _DATA:
        _DATA[key] = data.load(dataset, label_noise=1.0 if random else 0.0, noise_kind="uniform",
                               seed=data_seed, max_train=max_train)
    return _DATA[key]


def check_config(config):
    """ValueError (one line) for a run config a run would fail on or silently misread."""
    from configs import depth_width as dw_config

    need, is_int = common.require, config_schema.is_int
    allowed = sorted({d for per in dw_config.DATASET_CHANGES.values() for d in per})
    need(config.dataset in allowed, f"dataset={config.dataset!r} is not supported; allowed: "
          f"{', '.join(allowed)}")
    common.require_one_of(config, "labels", LABELS)
    for field in ("width", "depth", "batch_size", "epochs", "random_epochs", "coherence_samples",
                  "checkpoint_every_logs"):
        need(is_int(config[field], 1), f"{field}={config[field]!r} must be an int >= 1")
    need(config.coherence_samples >= 2, f"coherence_samples={config.coherence_samples!r} must "
          "be >= 2 (m-coherence of a single example is 1 by definition)")
    need(isinstance(config.learning_rate, (int, float)) and not isinstance(
        config.learning_rate, bool) and config.learning_rate > 0,
        f"learning_rate={config.learning_rate!r} must be a number > 0")
    for field in ("log_epochs", "coherence_epochs"):
        need(isinstance(config[field], (tuple, list)) and all(
            is_int(e, 0) for e in config[field]),
            f"{field}={config[field]!r} must be a tuple of ints >= 0")
    need({0, 1} <= set(config.coherence_epochs),
          f"coherence_epochs={tuple(config.coherence_epochs)!r} must contain 0 and 1 (the "
          "experiment compares the m-coherence at initialisation and after one epoch)")
    need(config.max_train is None or is_int(config.max_train, 2),
          f"max_train={config.max_train!r} must be None or an int >= 2")
    need(config.max_train is None or config.coherence_samples <= config.max_train,
          f"coherence_samples={config.coherence_samples} must be <= max_train={config.max_train}")


def _check_sweep(config):
    need, is_int = common.require, config_schema.is_int
    for field in ("widths", "depths"):
        need(isinstance(config[field], (tuple, list)) and len(config[field]) >= 1 and all(
            is_int(v, 1) for v in config[field]) and len(set(config[field])) == len(
            config[field]), f"{field}={config[field]!r} must be a non-empty tuple of distinct "
            "ints >= 1")
    for field in ("fixed_depth", "fixed_width"):
        need(is_int(config[field], 1), f"{field}={config[field]!r} must be an int >= 1")
    need(isinstance(config.grid, bool), f"grid={config.grid!r} must be True or False")


def models(config):
    """[(depth, width, sweeps)] of the sweep, sweeps ⊆ {"width", "depth"} (the sweeps the model
    belongs to; in the grid, rows at `fixed_depth` / columns at `fixed_width` are the sweeps).

    Cross: the width sweep at `fixed_depth` then the depth sweep at `fixed_width`, their common
    model once; grid: every (depth, width) pair."""
    out = {}
    pairs = ([(d, w) for d in config.depths for w in config.widths] if config.grid else
             [(config.fixed_depth, w) for w in config.widths]
             + [(d, config.fixed_width) for d in config.depths])
    for depth, width in pairs:
        sweeps = out.setdefault((int(depth), int(width)), set())
        if depth == config.fixed_depth and width in config.widths:
            sweeps.add("width")
        if width == config.fixed_width and depth in config.depths:
            sweeps.add("depth")
    return [(d, w, tuple(sorted(s))) for (d, w), s in out.items()]


def group_name(dataset, depth, width, labels):
    return f"{dataset}/d{depth}_w{width:04d}/{labels}"


def arms(scale="small", seeds=3, overrides=None):
    """Per dataset, model of the sweep (tags: the sweeps it belongs to), label kind and seed;
    every config checked before anything is loaded; the sweep fields are removed from the runs'
    configs."""
    import ml_collections

    from configs import depth_width as dw_config

    overrides = dict(overrides or {})
    for field in ("width", "depth", "labels", "seed"):
        common.require(field not in overrides, f"{field} is set by the sweep and cannot be "
                       "overridden; set widths / depths / fixed_width / fixed_depth instead"
                       if field in ("width", "depth") else f"{field} is set per arm and cannot "
                       "be overridden")
    out = []
    for dataset, base in common.dataset_bases(dw_config, scale, overrides, "depth_width"):
        _check_sweep(base)
        run_base = ml_collections.ConfigDict({k: v for k, v in base.items()
                                              if k not in dw_config.SWEEP_FIELDS})
        for depth, width, sweeps in models(base):
            for labels in LABELS:
                config = config_schema.apply_overrides(run_base, {"depth": depth, "width": width,
                                                                  "labels": labels})
                check_config(config)
                out += [Arm(group_name(dataset, depth, width, labels),
                            f"{labels} labels", dataset, seed,
                            config_schema.apply_overrides(config, {"seed": seed}), tags=sweeps)
                        for seed in range(seeds)]
    return out


def comparisons(arms_):
    """Real vs random labels, per model."""
    groups = dict.fromkeys(a.group for a in arms_)
    return [(g, g[:-len("real")] + "random") for g in groups
            if g.endswith("/real") and g[:-len("real")] + "random" in groups]


def rules(arms_):
    return [statistics.PairedRule(f"{a.rsplit('/', 1)[0]}: real labels more coherent",
                                  "m_coherence_epoch1", a, c, prediction="higher")
            for a, c in comparisons(arms_)]


# (name, x, y, prediction): across models of a dataset (mean over seeds, real labels)
CORRELATION_RULES = (
    statistics.CorrelationRule("coherence predicts a smaller gap", "m_coherence_epoch1", "gap",
                               prediction="negative"),
    statistics.CorrelationRule("coherence predicts test accuracy", "m_coherence_epoch1",
                               "test_accuracy", prediction="positive"),
)


def _ranks(values):
    """Ranks 1..n of the values, ties get the mean of their ranks (for Spearman's ρ)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[order[j + 1]] == values[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _model_means(runs, dataset, subset):
    """{key: [mean over seeds per model]} of the real-label runs of `dataset` in sweep `subset`."""
    by_model = {}
    for a, r in runs:
        if a.panel == dataset and a.config.labels == "real" and (subset == "all"
                                                                 or subset in a.tags):
            by_model.setdefault(a.group, []).append(r["summary"])
    keys = ("m_coherence_epoch1", "gap", "test_accuracy", "train_accuracy")
    return {k: [statistics.summarize([s[k] for s in ss]).mean for ss in by_model.values()]
            for k in keys}


def analyses(runs):
    """Per dataset and sweep subset, the declared correlations across models (Pearson with its
    Fisher-z CI; Spearman's ρ beside it) and their verdicts."""
    lines, out = [], {}
    for dataset in dict.fromkeys(a.panel for a, _ in runs):
        lines += [f"## {dataset}: m-coherence after one epoch vs generalisation, across models",
                  "", "One point per model (mean over seeds, real labels). Rules declared before "
                  "the runs: an effect if the 95 % Fisher-z CI of Pearson r excludes 0.", "",
                  "| rule | sweep | verdict | Spearman ρ |", "|---|---|---|---|"]
        out[dataset] = {}
        for subset in ("all", "width", "depth"):
            means = _model_means(runs, dataset, subset)
            for rule in CORRELATION_RULES:
                verdict = rule.evaluate(means[rule.x], means[rule.y])
                pairs = [(a, b) for a, b in zip(means[rule.x], means[rule.y])
                         if a is not None and b is not None]
                rho = (statistics.correlation(*map(_ranks, zip(*pairs))).r
                       if len(pairs) >= 3 else None)
                out[dataset][f"{subset}/{rule.name}"] = {**verdict.statistic, "spearman": rho}
                lines.append(f"| {rule.name} | {subset} | {verdict.text} | "
                             f"{'n/a' if rho is None else f'{rho:+.2f}'} |")
        means = _model_means(runs, dataset, "all")
        lines += ["", "The gap against the train accuracy across models (does the gap measure "
                  "how far a model got in the budget?): "
                  + statistics.correlation(means["train_accuracy"], means["gap"]).text(), ""]
    return lines, {"correlations": out}


def figures(workdir, runs):
    from . import figures as fig

    keys = (("m_coherence_init", "m-coherence at init"),
            ("m_coherence_epoch1", "m-coherence after 1 epoch"),
            ("test_accuracy", "test acc. (fraction)"), ("gap", "train − test acc. (fraction)"))
    files = []
    for dataset in dict.fromkeys(a.panel for a, _ in runs):
        for axis, log_x in (("width", 2), ("depth", None)):
            chosen = [(a, r) for a, r in runs if a.panel == dataset and axis in a.tags]
            if chosen:
                files.append(fig.summary_vs_axis(
                    workdir, f"depth_width_{dataset}_{axis}.png", chosen, keys, axis=axis,
                    x_label=f"{axis} (hidden {'units' if axis == 'width' else 'layers'})",
                    log_x=log_x, series=lambda a: a.label,
                    title=f"{dataset}: {axis} sweep, real vs random labels"))
    return files


run = common.resumable(_train, check_config)

PROGRESS = ("m_coherence_epoch1", "train_accuracy", "test_accuracy", "gap")

EXPERIMENT = Experiment(
    name="depth_width", title="Depth and width: m-coherence vs generalisation", arms=arms,
    run_arm=run, loop="graph",
    columns=(Column("num_params", "params", ".0f"),
             Column("m_coherence_init", "m-coh. init", ".2f"),
             Column("m_coherence_epoch1", "m-coh. 1 epoch", ".2f"),
             Column("train_accuracy", "train acc"), Column("test_accuracy", "test acc"),
             Column("gap", "gap (train − test)")),
    comparisons=comparisons, compared=("m_coherence_init", "m_coherence_epoch1"), rules=rules,
    analyses=analyses, figures=figures, progress=PROGRESS)
