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
epochs (`trainers/beyond_common.py`); batch order: epoch e is the permutation
`default_rng([seed, e])`.

The experiment (`reproduce`): a cross of a width sweep at a fixed depth and a depth sweep at a
fixed width (`configs/depth_width.py`), real and random labels, `DEFAULT_SEEDS` seeds; the report
gives mean ± sd over seeds, the Pearson and Spearman correlations of the gap (and of the test
accuracy) with the m-coherence after one epoch on real labels across the models, and figures.
"""

import math
import os
import time

import numpy as np

from trainers import beyond_common as common
from trainers import config_schema
from trainers import hparams_board

DEFAULT_SEEDS = 2
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
    """The training of one run (`run` below: finished runs and bad configs are handled there)."""
    config_dict = config.to_dict()
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
    model, optimizer, loss_fn, train_epoch, evaluate = _trainer(config, ds, n)
    model.set_weights(fresh.get_weights())
    for variable in optimizer.variables:  # a fresh Adam: step 0, zero moments
        if not variable.path.endswith("learning_rate"):
            variable.assign(tf.zeros_like(variable))
    sample = common.sample(n, config.coherence_samples, config.data_seed, 1)
    m = len(sample)
    xt, yt, xs = tf.constant(x), tf.constant(y), tf.constant(x_test)
    num_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))

    coherence_epochs = {int(e) for e in config.coherence_epochs}

    def log(epoch, curves):
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
        common.append(curves, row)
        return row

    def show(row):
        coh = row.get("coherence/m_coherence")
        echo(f"  {config.dataset} d{config.depth} w{config.width} {config.labels} seed "
             f"{config.seed} epoch {row['epoch']}: train acc {row['train_accuracy']:.3f} test acc "
             f"{row['test_accuracy']:.3f}" + (f" m-coh {coh:.2f}" if coh is not None else ""))

    ckpt = common.Checkpointer(run_dir, model, optimizer)
    epoch, curves = ckpt.restore(config_dict)
    log_epochs, last = _log_epochs(config), _epochs(config)
    if curves is None:
        epoch, curves = 0, {}
        if 0 in log_epochs:
            show(log(0, curves))
    while epoch < last:
        train_epoch(tf.constant(np.random.default_rng([int(config.seed), epoch]).permutation(n)),
                    xt, yt)
        epoch += 1
        if epoch in log_epochs:
            row = log(epoch, curves)
            if log_epochs.index(epoch) % int(config.checkpoint_every_logs) == 0 or epoch == last:
                ckpt.save(epoch, curves, config_dict)
            show(row)
    summary = summarize(curves, num_params)
    hparams_board.write_session(os.path.join(run_dir, "tensorboard"), hparams=_hparams(config),
                                metrics=summary, curves=curves)
    return common.finish(run_dir, config_dict, curves, summary, started, num_train=n,
                         coherence_sample=sample.tolist())


_TRAINERS = {}  # architecture and batch -> (model, optimizer, loss, train_epoch, evaluate)


def _trainer(config, ds, n):
    """The model, its Adam and the compiled train / evaluate functions of one architecture, built
    and traced once per process and reused by every seed and label kind of it (`run` resets the
    weights and the optimizer state): tracing is most of a small run's time. The cache holds one
    architecture at a time (a sweep runs an architecture's arms consecutively)."""
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
    batch = int(config.batch_size)
    num_batches = -(-n // batch)

    @tf.function(reduce_retracing=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    @tf.function
    def train_epoch(perm, xt, yt):  # one call per epoch: the batch loop runs inside the graph
        for k in tf.range(num_batches):
            idx = perm[k * batch:(k + 1) * batch]
            train_step(tf.gather(xt, idx), tf.gather(yt, idx))

    @tf.function(reduce_retracing=True)
    def evaluate(xs_, ys_):
        logits = model(xs_, training=False)
        return (loss_fn(ys_, logits),
                tf.argmax(logits, -1, output_type=tf.int32))

    _TRAINERS[key] = (model, optimizer, loss_fn, train_epoch, evaluate)
    return _TRAINERS[key]


_DATA = {}  # (dataset, random, data_seed, max_train) -> Dataset: loaded once per process


def _load(dataset, random, data_seed, max_train):
    from cgh_tf import data

    key = (dataset, random, data_seed, max_train)
    if key not in _DATA:
        _DATA[key] = data.load(dataset, label_noise=1.0 if random else 0.0, noise_kind="uniform",
                               seed=data_seed, max_train=max_train)
    return _DATA[key]


def _hparams(config):
    return {"dataset": config.dataset, "labels": config.labels, "depth": int(config.depth),
            "width": int(config.width), "seed": int(config.seed),
            "epochs": _epochs(config), "coherence_samples": int(config.coherence_samples)}


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------

def _need(ok, message):
    if not ok:
        raise ValueError(message)


def _is_int(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_config(config):
    """ValueError (one line) for a run config a run would fail on or silently misread."""
    from configs import depth_width as dw_config

    allowed = sorted({d for per in dw_config.DATASET_CHANGES.values() for d in per})
    _need(config.dataset in allowed, f"dataset={config.dataset!r} is not supported; allowed: "
          f"{', '.join(allowed)}")
    _need(config.labels in LABELS, f"labels={config.labels!r} is unknown; allowed: "
          f"{', '.join(LABELS)}")
    for field in ("width", "depth", "batch_size", "epochs", "random_epochs", "coherence_samples",
                  "checkpoint_every_logs"):
        _need(_is_int(config[field], 1), f"{field}={config[field]!r} must be an int >= 1")
    _need(config.coherence_samples >= 2, f"coherence_samples={config.coherence_samples!r} must "
          "be >= 2 (m-coherence of a single example is 1 by definition)")
    _need(isinstance(config.learning_rate, (int, float)) and not isinstance(
        config.learning_rate, bool) and config.learning_rate > 0,
        f"learning_rate={config.learning_rate!r} must be a number > 0")
    for field in ("log_epochs", "coherence_epochs"):
        _need(isinstance(config[field], (tuple, list)) and all(
            _is_int(e, 0) for e in config[field]),
            f"{field}={config[field]!r} must be a tuple of ints >= 0")
    _need({0, 1} <= set(config.coherence_epochs),
          f"coherence_epochs={tuple(config.coherence_epochs)!r} must contain 0 and 1 (the "
          "experiment compares the m-coherence at initialisation and after one epoch)")
    _need(config.max_train is None or _is_int(config.max_train, 2),
          f"max_train={config.max_train!r} must be None or an int >= 2")
    _need(config.max_train is None or config.coherence_samples <= config.max_train,
          f"coherence_samples={config.coherence_samples} must be <= max_train={config.max_train}")


def _check_sweep(config):
    for field in ("widths", "depths"):
        _need(isinstance(config[field], (tuple, list)) and len(config[field]) >= 1 and all(
            _is_int(v, 1) for v in config[field]) and len(set(config[field])) == len(
            config[field]), f"{field}={config[field]!r} must be a non-empty tuple of distinct "
            "ints >= 1")
    for field in ("fixed_depth", "fixed_width"):
        _need(_is_int(config[field], 1), f"{field}={config[field]!r} must be an int >= 1")
    _need(isinstance(config.grid, bool), f"grid={config.grid!r} must be True or False")


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


def sweep_config(scale, dataset, overrides):
    """base ← `SCALES[scale]` ← `DATASET_CHANGES[scale][dataset]` ← `overrides` (with the
    sweep fields); a value of the wrong type is a one-line ValueError (`apply_overrides`)."""
    from configs import depth_width as dw_config

    return common.scaled_config(dw_config, scale, dataset, overrides)


def arms(scale="small", seeds=DEFAULT_SEEDS, overrides=None):
    """[(group, label, seed, config)]: per dataset, model of the sweep, label kind and seed; every
    config checked before anything is loaded.

    Datasets: `DATASETS[scale]`, or only `overrides["dataset"]`; config = base ← `SCALES[scale]`
    ← `DATASET_CHANGES[scale][dataset]` ← `overrides`; the sweep fields are then removed."""
    import ml_collections

    from configs import depth_width as dw_config

    if scale not in dw_config.SCALES:
        raise ValueError(f"scale={scale!r} is unknown for depth_width; allowed: "
                         f"{', '.join(dw_config.SCALES)}")
    _need(_is_int(seeds, 1), f"seeds={seeds!r} must be an int >= 1")
    overrides = dict(overrides or {})
    for field in ("width", "depth", "labels", "seed"):
        _need(field not in overrides, f"{field} is set by the sweep and cannot be overridden; "
              "set widths / depths / fixed_width / fixed_depth instead" if field in (
                  "width", "depth") else f"{field} is set per arm and cannot be overridden")
    datasets = ((overrides["dataset"],) if "dataset" in overrides
                else dw_config.DATASETS[scale])
    out = []
    for dataset in datasets:
        _need(dataset in dw_config.DATASET_CHANGES[scale], f"dataset={dataset!r} is not "
              f"available at scale {scale!r}; allowed: "
              f"{', '.join(dw_config.DATASET_CHANGES[scale])}")
        base = sweep_config(scale, dataset, overrides)
        _check_sweep(base)
        run_base = ml_collections.ConfigDict({k: v for k, v in base.items()
                                              if k not in dw_config.SWEEP_FIELDS})
        for depth, width, _ in models(base):
            for labels in LABELS:
                config = config_schema.apply_overrides(run_base, {"depth": depth, "width": width,
                                                            "labels": labels})
                check_config(config)
                for seed in range(seeds):
                    out.append((group_name(dataset, depth, width, labels),
                                f"{dataset}, depth {depth}, width {width}, {labels} labels", seed,
                                config_schema.apply_overrides(config, {"seed": seed})))
    return out


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

def _ranks(values):
    """Ranks 1..n, ties get the mean of their ranks."""
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


def pearson(x, y):
    """Pearson's r of the pairs where both are numbers; None if < 3 pairs or a constant side."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
             and math.isfinite(float(a)) and math.isfinite(float(b))]
    if len(pairs) < 3:
        return None
    a, b = np.array(pairs, dtype=np.float64).T
    da, db = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    return None if denominator == 0 else float(np.sum(da * db)) / denominator


def spearman(x, y):
    """Spearman's ρ (Pearson's r of the ranks, ties averaged) of the complete pairs."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None
             and math.isfinite(float(a)) and math.isfinite(float(b))]
    if len(pairs) < 3:
        return None
    a, b = np.array(pairs, dtype=np.float64).T
    return pearson(_ranks(a), _ranks(b))


def describe(r, expected_sign):
    """Words for a correlation: strength and whether its sign is the one CGH predicts."""
    if r is None:
        return "not computable"
    size = abs(r)
    strength = ("negligible" if size < 0.1 else "weak" if size < 0.3 else "moderate"
                if size < 0.7 else "strong")
    if size < 0.1:
        return strength
    agrees = (r > 0) == (expected_sign > 0)
    return f"{strength}, {'in the direction CGH predicts' if agrees else 'OPPOSITE to CGH'}"


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

KEYS = ("m_coherence_init", "m_coherence_epoch1", "alpha_init", "alpha_epoch1", "train_accuracy",
        "test_accuracy", "gap", "train_loss", "num_params", "epochs")
CORRELATED = (  # (summary key, name, sign CGH predicts for its correlation with m-coherence)
    ("gap", "generalisation gap (train − test acc.)", -1),
    ("test_accuracy", "test accuracy", +1),
)


def _mean(values):
    return common.mean_sd(values)[0]


def _model_table(runs):
    """{dataset: [(depth, width, sweeps, {labels: [results]})]} in sweep order."""
    out = {}
    for _, _, _, result in runs:
        c = result["config"]
        models_ = out.setdefault(c["dataset"], {})
        models_.setdefault((c["depth"], c["width"]), {}).setdefault(c["labels"], []).append(result)
    return out


def correlations(points):
    """{subset: {key: {pearson, spearman, n}}} for the models (mean over seeds) and the runs.

    points: [(sweeps, m-coherence after 1 epoch, {key: value})] per model or per run."""
    out = {}
    for subset in ("all", "width", "depth"):
        chosen = [p for p in points if subset == "all" or subset in p[0]]
        out[subset] = {}
        for key, _, _ in CORRELATED:
            x = [p[1] for p in chosen]
            y = [p[2].get(key) for p in chosen]
            n = sum(a is not None and b is not None for a, b in zip(x, y))
            out[subset][key] = {"pearson": pearson(x, y), "spearman": spearman(x, y), "n": n}
    return out


def _fmt(r):
    return "n/a" if r is None else f"{r:+.2f}"


INVOCATIONS = "invocations.json"  # every reproduce call on a workdir: wall time, load, runs trained


def report(workdir, runs, command, seconds, sweep_configs, invocations=None):
    """results.md, results.json, figures and the HParams column config for `runs`.

    sweep_configs: {dataset: the config with the sweep fields}; invocations: the reproduce calls
    on this workdir so far (`INVOCATIONS`: wall seconds, load average, runs trained / reused)."""
    groups = common.by_group(runs)
    summary = {"experiment": "depth_width", "command": command, "seconds": seconds,
               "invocations": invocations, "groups": {}, "correlations": {}, "models": {}}
    for group, results in groups.items():
        summary["groups"][group] = {
            key: dict(zip(("mean", "sd", "n"), common.mean_sd([r["summary"][key]
                                                               for r in results])),
                      values=[r["summary"][key] for r in results]) for key in KEYS}
    table = _model_table(runs)
    lines = ["# Depth and width: m-coherence vs generalisation", "",
             f"Command: `{command}`", ""]
    for dataset, by_model in table.items():
        sweep = sweep_configs[dataset]
        model_sweeps = {(d, w): s for d, w, s in models(sweep)}
        c = next(iter(next(iter(by_model.values())).values()))[0]["config"]
        kind = ("full grid" if sweep.grid else
                f"cross: width sweep {tuple(sweep.widths)} at depth {sweep.fixed_depth} + depth "
                f"sweep {tuple(sweep.depths)} at width {sweep.fixed_width}")
        lines += [f"## {dataset}", "",
                  f"MLPs ({kind}), ReLU, Adam lr {c['learning_rate']}, batch {c['batch_size']}, "
                  f"no weight decay. Real labels: {c['epochs']} epochs (fixed budget); 100 % "
                  f"uniformly random labels: {c['random_epochs']} epoch(s). Exact per-example "
                  f"m-coherence of the same m = {c['coherence_samples']} training examples "
                  "(their training labels) at initialisation and after one epoch. "
                  "Mean ± sample sd over seeds.", ""]
        header = ("| depth | width | params | m-coh. init, real | m-coh. init, random | "
                  "m-coh. 1 ep., real | m-coh. 1 ep., random | train acc (real) | "
                  "test acc (real) | gap (real) | train acc (random, 1 ep.) |")
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        points_model, points_run, model_rows = [], [], []
        for (depth, width), per_labels in by_model.items():
            real, rnd = per_labels.get("real", []), per_labels.get("random", [])

            def col(results, key, fmt=".2f"):
                return common.cell([r["summary"][key] for r in results], fmt)

            params = (real or rnd)[0]["summary"]["num_params"]
            lines.append(f"| {depth} | {width} | {params} | {col(real, 'm_coherence_init')} | "
                         f"{col(rnd, 'm_coherence_init')} | {col(real, 'm_coherence_epoch1')} | "
                         f"{col(rnd, 'm_coherence_epoch1')} | "
                         f"{col(real, 'train_accuracy', '.3f')} | "
                         f"{col(real, 'test_accuracy', '.3f')} | {col(real, 'gap', '.3f')} | "
                         f"{col(rnd, 'train_accuracy', '.3f')} |")
            sweeps = model_sweeps.get((depth, width), ())
            if real:
                means = {key: _mean([r["summary"][key] for r in real]) for key in KEYS}
                points_model.append((sweeps, means["m_coherence_epoch1"], means))
                points_run += [(sweeps, r["summary"]["m_coherence_epoch1"], r["summary"])
                               for r in real]
            model_rows.append({"depth": depth, "width": width, "sweeps": list(sweeps),
                               **{f"{labels}/{key}": _mean([r["summary"][key] for r in rs])
                                  for labels, rs in per_labels.items() for key in KEYS}})
        summary["models"][dataset] = model_rows
        corr = {"models": correlations(points_model), "runs": correlations(points_run)}
        summary["correlations"][dataset] = corr
        lines += ["", "Correlation across the sweep of the m-coherence after one epoch (real "
                  "labels) with the generalisation numbers (real labels, last epoch). CGH "
                  "predicts a negative correlation with the gap and a positive one with the "
                  "test accuracy. `models`: one point per model (mean over seeds); `runs`: one "
                  "point per seed.", "",
                  "| quantity | points | subset | n | Pearson r | Spearman ρ | reading |",
                  "|---|---|---|---|---|---|---|"]
        for key, name, sign in CORRELATED:
            for level in ("models", "runs"):
                for subset in ("all", "width", "depth"):
                    v = corr[level][subset][key]
                    label = {"all": "whole sweep", "width": "width sweep",
                             "depth": "depth sweep"}[subset]
                    lines.append(f"| {name} | {level} | {label} | {v['n']} | "
                                 f"{_fmt(v['pearson'])} | {_fmt(v['spearman'])} | "
                                 f"{describe(v['pearson'], sign)} |")
        lines += [""] + _findings(by_model, corr, model_sweeps) + [""]
    figures = plot(workdir, table, sweep_configs, summary["correlations"])
    summary["figures"] = figures
    sessions = [(_hparams(_config_of(r)), r["summary"]) for _, _, _, r in runs]
    hparams_board.write_experiment(workdir, sessions)
    for k, inv in enumerate(invocations or (), 1):
        lines.append(f"- Invocation {k} ({inv['started']} UTC): wall time "
                     f"{inv['wall_seconds']:.0f} s, {inv['trained_runs']} runs trained, "
                     f"{inv['reused_runs']} finished runs reused; 1-minute load average at its "
                     f"start / end: {inv['load_start']:.2f} / {inv['load_end']:.2f} (2-core "
                     "machine shared with other jobs).")
    common.write_json(os.path.join(workdir, "results.json"), summary)
    common.write_results_md(workdir, lines, runs, figures, summary, per="run group")
    return summary


def _config_of(result):
    import ml_collections

    return ml_collections.ConfigDict(result["config"])


def _findings(by_model, corr, model_sweeps):
    """Computed sentences: real vs random coherence, and the sign of the correlations."""
    lines = []
    compare = {"m_coherence_init": "at initialisation", "m_coherence_epoch1": "after one epoch"}
    for key, when in compare.items():
        higher, total = 0, 0
        for per_labels in by_model.values():
            real = _mean([r["summary"][key] for r in per_labels.get("real", [])])
            rnd = _mean([r["summary"][key] for r in per_labels.get("random", [])])
            if real is not None and rnd is not None:
                total += 1
                higher += real > rnd
        lines.append(f"- m-coherence {when}: real labels > random labels for {higher} of "
                     f"{total} models.")
    real = [(_mean([r["summary"]["gap"] for r in p.get("real", [])]),
             _mean([r["summary"]["train_accuracy"] for r in p.get("real", [])]),
             _mean([r["summary"]["test_accuracy"] for r in p.get("real", [])]))
            for p in by_model.values()]
    gaps, trains, tests = zip(*real) if real else ((), (), ())
    lines.append(f"- Across the models, the gap correlates with the train accuracy (Pearson "
                 f"{_fmt(pearson(trains, gaps))}) and with the test accuracy (Pearson "
                 f"{_fmt(pearson(tests, gaps))}): a gap that follows the train accuracy measures "
                 "how far each model got in the fixed budget as much as how it generalises.")
    gap = corr["models"]["all"]["gap"]
    lines.append(f"- Gap vs m-coherence after one epoch, whole sweep (models): Pearson "
                 f"{_fmt(gap['pearson'])}, Spearman {_fmt(gap['spearman'])} — "
                 f"{describe(gap['pearson'], -1)} (Pearson), {describe(gap['spearman'], -1)} "
                 "(Spearman).")
    return lines


def plot(workdir, table, sweep_configs, correlations_):
    plt = common.pyplot()

    figures = []
    style = {"real": ("o-", "C0"), "random": ("s--", "C3")}
    for dataset, by_model in table.items():
        sweep = sweep_configs[dataset]
        for axis, fixed_name in (("width", "depth"), ("depth", "width")):
            fixed = sweep.fixed_depth if axis == "width" else sweep.fixed_width
            values = [v for v in (sweep.widths if axis == "width" else sweep.depths)]
            keys = [(fixed, v) if axis == "width" else (v, fixed) for v in values]
            keys = [k for k in keys if k in by_model]
            xs = [k[1] if axis == "width" else k[0] for k in keys]
            fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
            for ax, key, title in ((axes[0], "m_coherence_init", "m-coherence at init"),
                                   (axes[1], "m_coherence_epoch1", "m-coherence after 1 epoch")):
                for labels in LABELS:
                    vals = [[r["summary"][key] for r in by_model[k].get(labels, [])]
                            for k in keys]
                    _band(ax, xs, vals, style[labels], f"{labels} labels")
                ax.set_title(title, fontsize=9)
                ax.set_ylabel(f"m-coherence (m={_m(by_model)})", fontsize=8)
            for key, fmt, name in (("train_accuracy", "^-", "train acc"),
                                   ("test_accuracy", "o-", "test acc"),
                                   ("gap", "s--", "gap (train - test)")):
                vals = [[r["summary"][key] for r in by_model[k].get("real", [])] for k in keys]
                _band(axes[2], xs, vals, (fmt, None), name)
            axes[2].set_title("real labels, end of the fixed budget", fontsize=9)
            for ax in axes:
                if axis == "width":
                    ax.set_xscale("log", base=2)
                ax.set_xlabel(f"{axis} ({fixed_name} {fixed})", fontsize=8)
                ax.tick_params(labelsize=7)
                ax.legend(fontsize=7)
            fig.suptitle(f"{dataset}: {axis} sweep at {fixed_name} {fixed} (mean; band: min-max "
                         "over seeds)", fontsize=10)
            fig.tight_layout()
            name = f"depth_width_{dataset}_{axis}.png"
            fig.savefig(os.path.join(workdir, name), dpi=90)
            plt.close(fig)
            figures.append(name)
        # scatter: gap vs m-coherence after one epoch (real labels), one point per model
        fig, ax = plt.subplots(figsize=(5.5, 4.2))
        model_sweeps = {(d, w): s for d, w, s in models(sweep)}
        for (depth, width), per_labels in by_model.items():
            real = per_labels.get("real", [])
            if not real:
                continue
            xs = [r["summary"]["m_coherence_epoch1"] for r in real]
            ys = [r["summary"]["gap"] for r in real]
            sweeps = model_sweeps.get((depth, width), ())
            color = ("C2" if sweeps == ("depth", "width") else "C0" if "width" in sweeps
                     else "C1" if "depth" in sweeps else "C7")
            ax.scatter([_nan(v) for v in xs], [_nan(v) for v in ys], s=10, color=color,
                       alpha=0.4)
            mx, my = _mean(xs), _mean(ys)
            if mx is not None and my is not None:
                ax.scatter([mx], [my], s=40, color=color, edgecolor="k")
                ax.annotate(f"d{depth} w{width}", (mx, my), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        for color, name in (("C0", "width sweep"), ("C1", "depth sweep"), ("C2", "both")):
            ax.scatter([], [], color=color, label=name)
        gap = correlations_[dataset]["models"]["all"]["gap"]
        ax.set_title(f"{dataset}: gap vs m-coherence after 1 epoch (real labels)\nmodels: "
                     f"Pearson {_fmt(gap['pearson'])}, Spearman {_fmt(gap['spearman'])} "
                     f"(n={gap['n']})", fontsize=9)
        ax.set_xlabel(f"m-coherence after 1 epoch (m={_m(by_model)})", fontsize=8)
        ax.set_ylabel("generalisation gap (train - test acc.), end of budget", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        name = f"depth_width_{dataset}_scatter.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)
    return figures


def _m(by_model):
    return next(iter(next(iter(by_model.values())).values()))[0]["config"]["coherence_samples"]


def _nan(v):
    return np.nan if v is None else float(v)


def _band(ax, xs, vals, style, label):
    fmt, color = style
    mean = [np.nanmean([_nan(v) for v in vs]) if vs else np.nan for vs in vals]
    lo = [np.nanmin([_nan(v) for v in vs]) if vs else np.nan for vs in vals]
    hi = [np.nanmax([_nan(v) for v in vs]) if vs else np.nan for vs in vals]
    line, = ax.plot(xs, mean, fmt, color=color, label=label, ms=4)
    ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())


def reproduce(workdir, scale="small", seeds=DEFAULT_SEEDS, overrides=None, command="",
              echo=print):
    echo = echo or (lambda line: None)
    started_all, load_start = time.time(), os.getloadavg()[0]
    plan = arms(scale, seeds, overrides)  # checks every config before any data is loaded
    os.makedirs(workdir, exist_ok=True)
    sweep_configs = {dataset: sweep_config(scale, dataset, dict(overrides or {}))
                     for dataset in dict.fromkeys(c.dataset for *_, c in plan)}
    runs, seconds, trained = [], {}, 0
    for i, (group, label, seed, config) in enumerate(plan, 1):
        started = time.time()
        run_dir = os.path.join(workdir, group, f"seed{seed}")
        trained += common.finished_result(run_dir, config.to_dict()) is None
        result = run(config, run_dir, echo=echo)
        seconds[group] = round(seconds.get(group, 0.0) + time.time() - started, 1)
        s = result["summary"]
        echo(f"[{i}/{len(plan)}] {group}/seed{seed}: {time.time() - started:.0f} s; m-coh. init "
             f"{_fmt_num(s['m_coherence_init'])} 1 ep. {_fmt_num(s['m_coherence_epoch1'])}; "
             f"train acc {s['train_accuracy']:.3f} test acc {s['test_accuracy']:.3f} gap "
             f"{s['gap']:.3f}")
        runs.append((group, label, seed, result))
    invocations = common.read_json(os.path.join(workdir, INVOCATIONS)) or []
    invocations.append({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started_all)),
                        "command": command, "wall_seconds": round(time.time() - started_all, 1),
                        "load_start": load_start, "load_end": os.getloadavg()[0],
                        "trained_runs": int(trained), "reused_runs": len(plan) - int(trained)})
    common.write_json(os.path.join(workdir, INVOCATIONS), invocations)
    return report(workdir, runs, command, seconds, sweep_configs, invocations)


def _fmt_num(v):
    return "n/a" if v is None else f"{v:.2f}"


run = common.resumable(_train, check_config)
