r"""Does M3 / RM3 / winsorized GD suppress memorisation more as the training set grows?

The papers (arXiv 2003.07422) report that on ImageNet with ResNet-50 SGD fits pristine *and*
corrupted labels while M3 fits only the pristine ones; at 4,000 examples M3 mostly *delays*
memorisation. This experiment grows the training set at fixed label noise (50 %, uniform) and a
fixed number of epochs, and measures per size n how much of the corrupted labels each arm fits.

One run (`run(config, run_dir)`): an MLP (`depth` × `width` ReLU) on `train_size` examples of
`dataset` (MNIST-1D: a generated training set of that size, `cgh_tf.data.load("mnist1d",
train_size=n)`, always the default 1,000 test examples; mnist5k: its first n ≤ 4,000 real digits,
its 1,000 test digits), plain SGD, for `epochs` epochs. At each epoch of `log_epochs` (0 = before
training) it logs, over the whole splits: train accuracy on the corrupted examples vs their noisy
labels (memorisation) and vs their true labels, on the pristine examples, test accuracy, training
loss (noisy labels), the number of applied optimizer *updates* (`optimizer.iterations`: the inner
optimizer's counter, so M3 counts one per 3 batches and RM3 / RA3 skip their first 2 calls) and the
examples consumed. Resumable from a checkpoint at every `checkpoint_every_logs`-th log epoch
(`trainers/beyond_common.py`).

Arms (`ARMS`) and their matched controls (last column; `CONTRASTS` pairs them):

| arm         | optimizer / aggregation                    | updates per epoch | matched control |
|-------------|--------------------------------------------|-------------------|-----------------|
| `sgd`       | SGD, batch B                               | ⌊n / B⌋           | —               |
| `m3`        | M3(SGD): median of the means of 3 consecutive batches of B | ⌊n / 3B⌋ | `sgd_x3` |
| `sgd_x3`    | SGD, batch 3B (the same 3B examples per update, the same updates as M3) | ⌊n / 3B⌋ | — |
| `rm3`       | RM3(SGD): median of the last 3 batch gradients | ⌊n / B⌋ (minus 2 in total) | `ra3` |
| `ra3`       | RA3(SGD): mean of the last 3 (stale gradients, no median) | as RM3  | —               |
| `winsorize` | winsorized SGD (per coordinate, the B per-example gradients clipped to their c-th / (100−c)-th nearest-rank percentiles, then averaged; `cgh_tf.per_example.reduced_per_example_gradients`, the per-example source of `cgh_tf.Model(aggregation="winsorize")`) | ⌊n / B⌋ | `sgd` (the same run with the mean) |

Batches: epoch e is the permutation `default_rng([seed, e])` of the n examples; update k of the
epoch uses its examples [kU, (k+1)U) with U = B × (batches per update), cut into batches of B (the
examples after the last whole update are skipped that epoch). M3's update k and SGD ×3's update k
therefore see exactly the same 3B examples. The same seed gives every arm the same initial weights.

**Suppression** of a robust arm against a reference arm at an epoch = reference's corrupted-label
train accuracy minus the robust arm's, per seed (same seed = same init and permutations), then
mean ± sd over seeds. `trend(...)` fits it against log10(n) by least squares over all (size, seed)
points and extrapolates to ImageNet's n = 1,281,167 with the standard error of that prediction.
"""

import math
import os
import time

import numpy as np

from trainers import beyond_common as common
from trainers import hparams_board

from trainers.config_schema import apply_overrides

DEFAULT_SEEDS = 2
OPTIMIZERS = {"sgd": 1, "m3": 3, "rm3": 1, "ra3": 1}  # name -> batches per optimizer update
AGGREGATIONS = ("mean", "winsorize")
DATASETS = ("mnist1d", "mnist5k")
MNIST5K_TRAIN = 4000
# arm -> (label, changes of the base config; "x3" = 3 × the base batch size)
ARMS = {
    "sgd": ("SGD", {"arm": "sgd"}),
    "m3": ("M3(SGD)", {"arm": "m3", "optimizer": "m3"}),
    "sgd_x3": ("SGD batch ×3 (M3's control)", {"arm": "sgd_x3", "batch_size": "x3"}),
    "rm3": ("RM3(SGD)", {"arm": "rm3", "optimizer": "rm3"}),
    "ra3": ("RA3(SGD) (RM3's control)", {"arm": "ra3", "optimizer": "ra3"}),
    "winsorize": ("winsorized SGD (control: SGD)", {"arm": "winsorize", "aggregation": "winsorize",
                                                    "winsorize_pct": "c"}),
}
ARM_FIELDS = ("arm", "optimizer", "aggregation", "winsorize_pct")  # set per arm, not by --set
# arm -> (optimizer, aggregation) it must have (batch size ×3 is relative to the base: unchecked)
ARM_SETTINGS = {"sgd": ("sgd", "mean"), "m3": ("m3", "mean"), "sgd_x3": ("sgd", "mean"),
                "rm3": ("rm3", "mean"), "ra3": ("ra3", "mean"), "winsorize": ("sgd", "winsorize")}
# (name, reference, robust, relative): reference − robust corrupted acc (relative: / reference's)
CONTRASTS = (
    ("SGD − M3", "sgd", "m3", False),
    ("(SGD − M3) / SGD (relative)", "sgd", "m3", True),
    ("SGD×3 − M3 (median beyond update count)", "sgd_x3", "m3", False),
    ("SGD − RM3", "sgd", "rm3", False),
    ("RA3 − RM3 (median beyond staleness)", "ra3", "rm3", False),
    ("SGD − winsorized", "sgd", "winsorize", False),
)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    need(config.dataset in DATASETS, f"dataset={config.dataset!r} is not available for scale; "
         f"allowed: {', '.join(DATASETS)}")
    for field in ("train_size", "width", "depth", "batch_size", "epochs", "checkpoint_every_logs"):
        need(is_int(config[field]) and config[field] >= 1,
             f"{field}={config[field]!r} must be an int >= 1")
    need(config.dataset != "mnist1d" or config.train_size % 10 == 0,
         f"train_size={config.train_size!r} must be a multiple of 10 for mnist1d (generated "
         "with train_size / 10 examples per class)")
    need(config.dataset != "mnist5k" or config.train_size <= MNIST5K_TRAIN,
         f"train_size={config.train_size!r} must be <= {MNIST5K_TRAIN} for mnist5k (all its "
         "training digits)")
    need(isinstance(config.label_noise, (int, float)) and 0 < config.label_noise < 1,
         f"label_noise={config.label_noise!r} must be in (0, 1): the experiment compares "
         "pristine and corrupted examples")
    need(config.noise_kind in data.LABEL_NOISE_KINDS, f"noise_kind={config.noise_kind!r} is "
         f"unknown; allowed: {', '.join(data.LABEL_NOISE_KINDS)}")
    need(config.optimizer in OPTIMIZERS, f"optimizer={config.optimizer!r} is unknown; allowed: "
         f"{', '.join(OPTIMIZERS)}")
    need(config.aggregation in AGGREGATIONS, f"aggregation={config.aggregation!r} is unknown; "
         f"allowed: {', '.join(AGGREGATIONS)}")
    need(config.arm in ARM_SETTINGS, f"arm={config.arm!r} is unknown; allowed: "
         f"{', '.join(ARM_SETTINGS)}")
    need((config.optimizer, config.aggregation) == ARM_SETTINGS[config.arm],
         f"arm={config.arm!r} needs optimizer={ARM_SETTINGS[config.arm][0]!r} and "
         f"aggregation={ARM_SETTINGS[config.arm][1]!r}, got {config.optimizer!r} and "
         f"{config.aggregation!r}")
    pct = config.winsorize_pct
    need(isinstance(pct, (int, float)) and not isinstance(pct, bool) and 0 <= pct < 50,
         f"winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")
    need(config.aggregation == "winsorize" or pct == 0,
         f"winsorize_pct={pct!r} has no effect with aggregation={config.aggregation!r}; set "
         "aggregation='winsorize' or winsorize_pct=0")
    need(isinstance(config.learning_rate, (int, float)) and config.learning_rate > 0,
         f"learning_rate={config.learning_rate!r} must be a number > 0")
    per_update = int(config.batch_size) * OPTIMIZERS[config.optimizer]
    need(per_update <= config.train_size,
         f"batch_size={config.batch_size} × {OPTIMIZERS[config.optimizer]} batches per update "
         f"({config.optimizer}) exceeds train_size={config.train_size}: no update in an epoch")
    need(len(config.log_epochs) > 0 and all(is_int(e) and e >= 0 for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be a non-empty list of ints >= 0")


def log_epochs(config):
    """Sorted epochs to log at: `log_epochs` up to `epochs` plus `epochs` itself."""
    return sorted({int(e) for e in config.log_epochs if e <= int(config.epochs)}
                  | {int(config.epochs)})


build_model = common.mlp


def build_optimizer(config):
    """(optimizer, batches per update, aggregator or None for the plain mean)."""
    import keras

    import cgh_tf
    from cgh_tf import aggregators

    check_config(config)
    inner = keras.optimizers.SGD(float(config.learning_rate))  # no momentum (authors' M3 / RM3)
    wrap = {"sgd": lambda o: o, "m3": lambda o: cgh_tf.M3(o, groups=3),
            "rm3": lambda o: cgh_tf.RM3(o, window=3), "ra3": lambda o: cgh_tf.RA3(o, window=3)}
    aggregator = (None if config.aggregation == "mean"
                  else aggregators.get("winsorize", float(config.winsorize_pct)))
    return wrap[config.optimizer](inner), OPTIMIZERS[config.optimizer], aggregator


def load_data(config):
    from cgh_tf import data

    if config.dataset == "mnist1d":
        return data.load("mnist1d", train_size=int(config.train_size),
                         label_noise=float(config.label_noise), noise_kind=config.noise_kind,
                         seed=int(config.data_seed))
    return data.load(config.dataset, max_train=int(config.train_size),
                     label_noise=float(config.label_noise), noise_kind=config.noise_kind,
                     seed=int(config.data_seed))


def epoch_permutation(seed, epoch, n):
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n).astype(np.int32)


def _train_epoch_function(model, optimizer, loss_fn, aggregator, x, y, n, batch, per_update):
    """tf.function perm int32 [n] -> one epoch: ⌊n / U⌋ updates of U = batch × per_update
    examples, each as `per_update` optimizer.apply calls on consecutive batches (static shape, so
    the winsorized aggregation takes its XLA network)."""
    import tensorflow as tf

    from cgh_tf import per_example

    variables = model.trainable_variables
    per = batch * per_update
    updates = n // per

    def gradients(xb, yb):
        if aggregator is not None:
            return per_example.reduced_per_example_gradients(
                model, xb, yb, aggregator.reduce, loss_fn=loss_fn, training=True,
                reduce_outer=aggregator.reduce_outer)
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        return tape.gradient(loss, variables)

    @tf.function(input_signature=[tf.TensorSpec([n], tf.int32)])
    def train_epoch(perm):
        for k in tf.range(updates):
            for g in range(per_update):
                idx = tf.reshape(perm[k * per + g * batch:k * per + (g + 1) * batch], [batch])
                optimizer.apply(gradients(tf.gather(x, idx), tf.gather(y, idx)), variables)
    return train_epoch, updates


def _predict_function(model):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def predict(xs, ys):
        logits = model(xs, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=ys, logits=logits)
        return tf.argmax(logits, -1, output_type=tf.int32), losses

    def run(xs, ys, chunk=16384):
        preds, losses = [], []
        for i in range(0, len(xs), chunk):
            p, l = predict(tf.constant(xs[i:i + chunk]), tf.constant(ys[i:i + chunk]))
            preds.append(p.numpy())
            losses.append(l.numpy())
        return np.concatenate(preds), np.concatenate(losses)
    return run


def _accuracy(pred, labels, mask):
    return float(np.mean(pred[mask] == labels[mask])) if mask.any() else None


def hparams_of(config):
    c = config if isinstance(config, dict) else config.to_dict()
    return {"arm": c["arm"], "dataset": c["dataset"], "train_size": c["train_size"],
            "optimizer": c["optimizer"], "aggregation": c["aggregation"],
            "winsorize_pct": c["winsorize_pct"], "batch_size": c["batch_size"],
            "label_noise": c["label_noise"], "noise_kind": c["noise_kind"],
            "width": c["width"], "depth": c["depth"], "learning_rate": c["learning_rate"],
            "epochs": c["epochs"], "seed": c["seed"]}


def _train(config, run_dir, echo):
    """The training of one run (`run` below: finished runs and bad configs are handled there)."""
    config_dict = config.to_dict()
    import keras
    import tensorflow as tf

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    ds = load_data(config)
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    corrupted, original_y = ds.train.corrupted, ds.train.original_y.astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    n, batch = len(x), int(config.batch_size)
    model = build_model(config, ds.input_shape, ds.num_classes)
    optimizer, per_update, aggregator = build_optimizer(config)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_epoch, updates_per_epoch = _train_epoch_function(
        model, optimizer, loss_fn, aggregator, tf.constant(x), tf.constant(y), n, batch,
        per_update)
    predict = _predict_function(model)
    name = os.path.basename(os.path.dirname(run_dir)) + "/" + os.path.basename(run_dir)

    def log(epoch, curves):
        pred, losses = predict(x, y)
        pred_test, _ = predict(x_test, y_test)
        row = {"epoch": epoch, "step": epoch, "updates": int(optimizer.iterations.numpy()),
               "examples": epoch * updates_per_epoch * batch * per_update,
               "train_loss": float(np.mean(losses)),
               "pristine_accuracy": _accuracy(pred, y, ~corrupted),
               "corrupted_accuracy": _accuracy(pred, y, corrupted),
               "corrupted_true_accuracy": _accuracy(pred, original_y, corrupted),
               "test_accuracy": float(np.mean(pred_test == y_test))}
        common.append(curves, row)
        return row

    ckpt = common.Checkpointer(run_dir, model, optimizer)
    epoch, curves = ckpt.restore(config_dict)
    epochs_to_log = log_epochs(config)
    if curves is None:
        epoch, curves = 0, {}
        if 0 in epochs_to_log:
            log(0, curves)
    else:
        echo(f"  resumed {run_dir} at epoch {epoch}")
    while epoch < int(config.epochs):
        train_epoch(tf.constant(epoch_permutation(config.seed, epoch, n)))
        epoch += 1
        if epoch in epochs_to_log:
            row = log(epoch, curves)
            echo(f"  {name} n={n} epoch {epoch}/{config.epochs}: updates {row['updates']} "
                 f"corrupted acc {row['corrupted_accuracy']:.3f} pristine "
                 f"{row['pristine_accuracy']:.3f} test {row['test_accuracy']:.3f}")
            if (epochs_to_log.index(epoch) % int(config.checkpoint_every_logs) == 0
                    or epoch == int(config.epochs)):
                ckpt.save(epoch, curves, config_dict)
    summary = summarize(curves)
    hparams_board.write_session(os.path.join(run_dir, "tensorboard"), hparams_of(config_dict),
                                summary, curves)
    return common.finish(run_dir, config_dict, curves, summary, started, num_train=n,
                         num_test=len(x_test), num_corrupted=int(corrupted.sum()),
                         batches_per_update=per_update, updates_per_epoch=updates_per_epoch)


def summarize(curves):
    """Last logged values, plus the best test accuracy over the logged epochs and its epoch."""
    summary = {key: curves[key][-1] for key in curves if key not in ("epoch", "step")}
    tests = [np.nan if v is None else v for v in curves["test_accuracy"]]
    best = int(np.nanargmax(tests))
    summary["best_test_accuracy"] = curves["test_accuracy"][best]
    summary["epoch_of_best_test"] = curves["epoch"][best]
    return summary


# ----------------------------------------------------------------------------------------------
# Suppression and its trend against log(n)
# ----------------------------------------------------------------------------------------------

def suppression(reference, robust, key="corrupted_accuracy", epoch=None, relative=False):
    """Per seed (paired by seed): reference's `key` − robust's `key` at `epoch` (None: last);
    with `relative`, divided by reference's `key` (left out where that is 0).

    reference, robust: {seed: result}. Seeds missing from either side, or without a value at
    that epoch, are left out. Returns {seed: difference}."""
    out = {}
    for seed in sorted(set(reference) & set(robust)):
        a, b = (_value_at(reference[seed]["curves"], key, epoch),
                _value_at(robust[seed]["curves"], key, epoch))
        if a is not None and b is not None and not (relative and a == 0):
            out[seed] = (a - b) / a if relative else a - b
    return out


def _value_at(curves, key, epoch):
    if epoch is None:
        return curves[key][-1]
    for e, v in zip(curves["epoch"], curves[key]):
        if e == epoch:
            return v
    return None


T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
        17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 22: 2.074, 24: 2.064, 26: 2.056, 28: 2.048,
        30: 2.042}  # 97.5 % quantile of Student's t by degrees of freedom (others: 1.96 or nearest)


def trend(sizes, values, at):
    """Least-squares fit values = a + b·log10(n) over the points (sizes[i], values[i]).

    Returns a dict: slope b (per decade of n) and its standard error, intercept, the fitted value
    at n = `at` and the standard error of that fitted mean (s·sqrt(1/N + (x0 − x̄)² / Sxx)), the
    95 % t interval of it, residual dof, R², and the decades from the largest size to `at`.
    None when fewer than 3 points or fewer than 2 distinct sizes."""
    x = np.log10(np.asarray(sizes, dtype=float))
    v = np.asarray(values, dtype=float)
    if len(x) < 3 or len(np.unique(x)) < 2:
        return None
    xm = x.mean()
    sxx = float(np.sum((x - xm) ** 2))
    slope = float(np.sum((x - xm) * (v - v.mean())) / sxx)
    intercept = float(v.mean() - slope * xm)
    resid = v - (intercept + slope * x)
    dof = len(x) - 2
    s2 = float(np.sum(resid ** 2) / dof)
    x0 = math.log10(at)
    pred = intercept + slope * x0
    se_pred = math.sqrt(s2 * (1.0 / len(x) + (x0 - xm) ** 2 / sxx))
    sst = float(np.sum((v - v.mean()) ** 2))
    t = T975[max(k for k in T975 if k <= dof)] if dof <= 30 else 1.96
    return {"slope_per_decade": slope, "slope_se": math.sqrt(s2 / sxx), "intercept": intercept,
            "at": at, "predicted": pred, "predicted_se": se_pred,
            "predicted_95": (pred - t * se_pred, pred + t * se_pred), "dof": dof,
            "r2": (1.0 - float(np.sum(resid ** 2)) / sst) if sst > 0 else None,
            "points": len(x), "decades_extrapolated": x0 - float(x.max())}


def verdict(fit):
    """A computed phrase for a trend: grows / shrinks when |slope| > 2 SE, else no clear trend."""
    if fit is None:
        return "not enough sizes to fit a trend"
    b, se = fit["slope_per_decade"], fit["slope_se"]
    if se == 0 or not math.isfinite(b / se if se else float("inf")):
        return f"slope {b:+.3f} per decade (no residual spread: SE 0, not a real uncertainty)"
    if abs(b) > 2 * se:
        direction = "grows" if b > 0 else "shrinks"
        return f"{direction} with n (slope {b:+.3f} ± {se:.3f} per decade, |t| = {abs(b) / se:.1f})"
    return (f"shows no clear trend with n (slope {b:+.3f} ± {se:.3f} per decade, "
            f"|t| = {abs(b) / se:.1f} < 2)")


# ----------------------------------------------------------------------------------------------
# The experiment: arms, report, figures
# ----------------------------------------------------------------------------------------------

def arms(scale="small", seeds=DEFAULT_SEEDS, overrides=None, arm_names=None, sizes=None):
    """[(group, label, seed, config)]: group = "<dataset>/n<size>/<arm>"; every config checked
    before any data is loaded.

    Datasets: `DATASETS[scale]` of the config module, or only `overrides["dataset"]`; sizes:
    `sizes`, else only `overrides["train_size"]`, else `SIZES[scale][dataset]`; arms: `arm_names`
    (a subset of `ARMS`) or all; config = base ← `SCALES[scale]` ←
    `DATASET_CHANGES[scale][dataset]` ← `overrides` ← the arm's changes."""
    from configs import scale as scale_config

    if scale not in scale_config.SCALES:
        raise ValueError(f"scale={scale!r} is unknown for scale; allowed: "
                         f"{', '.join(scale_config.SCALES)}")
    overrides = dict(overrides or {})
    for name in arm_names or ():
        if name not in ARMS:
            raise ValueError(f"arm {name!r} is unknown; allowed: {', '.join(ARMS)}")
    for field in ARM_FIELDS:
        if field in overrides:
            raise ValueError(f"{field} is set by each arm ({', '.join(ARMS)}); it cannot be "
                             "overridden with --set")
    datasets = ((overrides["dataset"],) if "dataset" in overrides
                else scale_config.DATASETS[scale])
    out = []
    for dataset in datasets:
        if dataset not in scale_config.SIZES[scale]:
            raise ValueError(f"dataset={dataset!r} has no size sweep at scale {scale!r}; "
                             f"allowed: {', '.join(scale_config.SIZES[scale])}")
        base = common.scaled_config(scale_config, scale, dataset, overrides)
        sweep = (tuple(sizes) if sizes else (overrides["train_size"],)
                 if "train_size" in overrides else scale_config.SIZES[scale][dataset])
        for size in sweep:
            for arm, (label, changes) in ARMS.items():
                if arm_names is not None and arm not in arm_names:
                    continue
                changes = {k: (3 * base.batch_size if v == "x3" else
                               scale_config.WINSORIZE_PCT if v == "c" else v)
                           for k, v in changes.items()}
                config = apply_overrides(base, {**changes, "train_size": size})
                check_config(config)
                for seed in range(seeds):
                    out.append((f"{dataset}/n{size:07d}/{arm}", label, seed,
                                apply_overrides(config, {"seed": seed})))
    return out


def _parse_group(group):
    dataset, size, arm = group.split("/")
    return dataset, int(size[1:]), arm


def _organise(runs):
    """{dataset: {size: {arm: {seed: result}}}}"""
    out = {}
    for group, _, seed, result in runs:
        dataset, size, arm = _parse_group(group)
        out.setdefault(dataset, {}).setdefault(size, {}).setdefault(arm, {})[seed] = result
    return out


TABLE = (  # (summary key, header, format)
    ("updates", "updates", ".0f"),
    ("corrupted_accuracy", "corrupted train acc (noisy label)", ".3f"),
    ("corrupted_true_accuracy", "corrupted train acc (true label)", ".3f"),
    ("pristine_accuracy", "pristine train acc", ".3f"),
    ("test_accuracy", "test acc (last)", ".3f"),
    ("best_test_accuracy", "best test acc (logged epochs)", ".3f"),
)


def _contrast_rows(by_size, epoch=None):
    """{contrast name: {size: {seed: difference}}} at `epoch` (None: last)."""
    out = {}
    for name, ref, rob, relative in CONTRASTS:
        out[name] = {size: suppression(arms_[ref], arms_[rob], epoch=epoch, relative=relative)
                     for size, arms_ in sorted(by_size.items()) if ref in arms_ and rob in arms_}
    return out


def report(workdir, runs, command, seconds):
    from configs import scale as scale_config

    data = _organise(runs)
    labels = {g.split("/")[-1]: l for g, l, *_ in runs}
    summary = {"experiment": "scale", "command": command, "seconds": seconds, "datasets": {}}
    lines = ["# Memorisation suppression vs training-set size (M3, RM3, winsorized GD)", "",
             f"Command: `{command}`", "",
             "Mean ± sample sd over seeds. Corrupted train accuracy is measured against the "
             "*noisy* labels (memorisation); suppression = the reference arm's corrupted accuracy "
             "− the robust arm's, per seed (same seed = same initial weights and batch order), at "
             "the last epoch unless stated. The winsorized arm's matched control is the SGD arm "
             "(same batch, same updates, mean instead of the winsorized mean).", ""]
    sessions = []
    for _, _, _, result in runs:
        sessions.append((hparams_of(result["config"]), result["summary"]))
    for dataset, by_size in data.items():
        c = next(iter(next(iter(next(iter(by_size.values())).values())).values()))["config"]
        sizes = sorted(by_size)
        any_result = {size: next(iter(next(iter(by_size[size].values())).values()))
                      for size in sizes}
        entry = {"sizes": sizes, "groups": {}, "suppression": {}, "trend": {}}
        lines += [f"## {dataset}", "",
                  f"MLP {c['depth']} × {c['width']} ReLU, SGD lr {c['learning_rate']} (no "
                  f"momentum), batch B = {c['batch_size']} (SGD ×3: {3 * c['batch_size']}), "
                  f"{c['epochs']} epochs at every size, {c['label_noise']:.0%} label noise "
                  f"({c['noise_kind']}); winsorized arm c = {scale_config.WINSORIZE_PCT} %; "
                  f"training sizes n = {', '.join(f'{s:,}' for s in sizes)}; test set "
                  f"{any_result[sizes[0]]['num_test']:,} examples (the same for every size). "
                  "Corrupted examples per size: " + ", ".join(
                      f"{any_result[s]['num_corrupted']:,} of {s:,}" for s in sizes) + ".", ""]
        lines += ["| n | arm | " + " | ".join(h for _, h, _ in TABLE) + " |",
                  "|---|---" + "|---" * len(TABLE) + "|"]
        for size in sizes:
            for arm, by_seed in by_size[size].items():
                results = [by_seed[s] for s in sorted(by_seed)]
                group = f"{dataset}/n{size:07d}/{arm}"
                entry["groups"][group] = {
                    key: dict(zip(("mean", "sd", "n"), common.mean_sd(
                        [r["summary"][key] for r in results])),
                        values=[r["summary"][key] for r in results]) for key, _, _ in TABLE}
                lines.append(f"| {size:,} | {labels.get(arm, arm)} | " + " | ".join(
                    common.cell([r["summary"][k] for r in results], fmt) for k, _, fmt in TABLE)
                    + " |")
        contrasts = _contrast_rows(by_size)
        lines += ["", f"Suppression at the last epoch ({c['epochs']}), corrupted train accuracy "
                  "(reference − robust), mean ± sd over seeds, and its least-squares trend "
                  f"against log10(n) over all (size, seed) points, extrapolated to ImageNet's "
                  f"n = {scale_config.IMAGENET_TRAIN_SIZE:,} (± the standard error of the fitted "
                  "mean; [95 % t interval]):", "",
                  "| contrast | " + " | ".join(f"n = {s:,}" for s in sizes)
                  + " | slope per decade ± SE | R² | at 1.28M ± SE [95 %] |",
                  "|---" * (len(sizes) + 4) + "|"]
        for name, per_size in contrasts.items():
            points = [(s, d) for s in sizes for d in per_size.get(s, {}).values()]
            fit = trend([p[0] for p in points], [p[1] for p in points],
                        scale_config.IMAGENET_TRAIN_SIZE)
            entry["suppression"][name] = {str(s): list(per_size.get(s, {}).values())
                                          for s in sizes}
            entry["trend"][name] = fit
            cells = [common.cell(list(per_size.get(s, {}).values())) for s in sizes]
            if fit is None:
                tail = ["n/a", "n/a", "n/a"]
            else:
                lo, hi = fit["predicted_95"]
                tail = [f"{fit['slope_per_decade']:+.3f} ± {fit['slope_se']:.3f}",
                        "n/a" if fit["r2"] is None else f"{fit['r2']:.2f}",
                        f"{fit['predicted']:+.2f} ± {fit['predicted_se']:.2f} "
                        f"[{lo:+.2f}, {hi:+.2f}]"]
            lines.append(f"| {name} | " + " | ".join(cells + tail) + " |")
        # suppression SGD − M3 over the logged epochs (equal epochs, every size)
        epochs = any_result[sizes[0]]["curves"]["epoch"]
        lines += ["", "SGD − M3 corrupted train accuracy at equal epochs (mean ± sd over seeds):",
                  "", "| epoch | " + " | ".join(f"n = {s:,}" for s in sizes) + " |",
                  "|---" * (len(sizes) + 1) + "|"]
        entry["suppression_by_epoch"] = {}
        for e in epochs:
            if e == 0:
                continue
            row = _contrast_rows(by_size, epoch=e)["SGD − M3"]
            entry["suppression_by_epoch"][str(e)] = {str(s): list(row.get(s, {}).values())
                                                     for s in sizes}
            lines.append(f"| {e:.0f} | " + " | ".join(common.cell(list(row.get(s, {}).values()))
                                                 for s in sizes) + " |")
        main = entry["trend"]["SGD − M3"]
        sgd_fit = [(s, by_size[s]["sgd"][seed]["summary"]["corrupted_accuracy"])
                   for s in sizes if "sgd" in by_size[s] for seed in by_size[s]["sgd"]]
        sgd_trend = trend([p[0] for p in sgd_fit], [p[1] for p in sgd_fit],
                          scale_config.IMAGENET_TRAIN_SIZE)
        entry["trend"]["SGD corrupted accuracy"] = sgd_trend
        lines += ["", "**Answer (computed from the table above).** Suppression SGD − M3 at "
                  f"{c['epochs']} epochs " + verdict(main) + "."]
        if main is not None:
            lo, hi = main["predicted_95"]
            lines += [f"Extrapolated linearly in log10(n) to n = "
                      f"{scale_config.IMAGENET_TRAIN_SIZE:,} ({main['decades_extrapolated']:.1f} "
                      f"decades beyond the largest size here, from {main['points']} points over "
                      f"{math.log10(sizes[-1] / sizes[0]):.1f} decades): "
                      f"{main['predicted']:+.2f} ± {main['predicted_se']:.2f} (95 %: "
                      f"[{lo:+.2f}, {hi:+.2f}]); a difference of accuracies cannot leave "
                      "[−1, 1], so a linear trend is at best a local description. SGD's own "
                      "corrupted accuracy " + verdict(sgd_trend) + " — a fixed-size model seeing "
                      "each example the same number of times memorises a smaller share of a "
                      "larger set, which moves the suppression by itself. An extrapolation over "
                      "more than 1.5 decades from one MLP, one synthetic (or small real) dataset "
                      "and one epoch budget is weak evidence about ResNet-50 on ImageNet "
                      "(different architecture, data, augmentation, learning-rate schedule and "
                      "≈ 90 epochs)."]
        lines += ["", "Every contrast at the last epoch, by the same rule (|slope| > 2 SE):", ""]
        lines += [f"- {name}: " + verdict(entry["trend"][name]) + "." for name, *_ in CONTRASTS]
        summary["datasets"][dataset] = entry
        lines.append("")
    figures = plot(workdir, runs)
    summary["figures"] = figures
    hparams_board.write_experiment(workdir, sessions)
    common.write_json(os.path.join(workdir, "results.json"), summary)
    common.write_results_md(workdir, lines, runs, figures, summary, per="size and arm group")
    return summary


ARM_STYLE = {"sgd": ("C0", "-"), "m3": ("C3", "-"), "sgd_x3": ("C0", "--"), "rm3": ("C2", "-"),
             "ra3": ("C2", "--"), "winsorize": ("C4", "-")}


def _nan(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot(workdir, runs):
    plt = common.pyplot()

    from configs import scale as scale_config

    data = _organise(runs)
    figures = []
    columns = (("corrupted_accuracy", "corrupted train acc (noisy label)"),
               ("pristine_accuracy", "pristine train acc"), ("test_accuracy", "test acc"))
    for dataset, by_size in data.items():
        sizes = sorted(by_size)
        fig, axes = plt.subplots(len(sizes), len(columns), figsize=(3.6 * len(columns),
                                                                    2.5 * len(sizes)),
                                 squeeze=False)
        for row, size in enumerate(sizes):
            for col, (key, title) in enumerate(columns):
                ax = axes[row][col]
                for arm, by_seed in by_size[size].items():
                    curves = [by_seed[s]["curves"] for s in sorted(by_seed)]
                    epochs = _nan(curves[0]["epoch"])
                    arr = np.array([_nan(cv[key]) for cv in curves])
                    color, ls = ARM_STYLE.get(arm, ("k", ":"))
                    ax.plot(epochs, np.nanmean(arr, 0), color=color, ls=ls, label=arm)
                    ax.fill_between(epochs, np.nanmin(arr, 0), np.nanmax(arr, 0), color=color,
                                    alpha=0.12)
                ax.set_ylim(-0.02, 1.02)
                ax.tick_params(labelsize=7)
                if row == 0:
                    ax.set_title(title, fontsize=9)
                if col == 0:
                    ax.set_ylabel(f"n = {size:,}", fontsize=9)
                if row == len(sizes) - 1:
                    ax.set_xlabel("epoch", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{dataset}: accuracy vs epoch per training-set size (mean; band: min-max "
                     "over seeds)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        name = f"scale_{dataset}_curves.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)

        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        ax = axes[0]
        arms_seen = list(dict.fromkeys(a for s in sizes for a in by_size[s]))
        for arm in arms_seen:
            vals = [[r["summary"]["corrupted_accuracy"] for r in by_size[s][arm].values()]
                    for s in sizes if arm in by_size[s]]
            xs = [s for s in sizes if arm in by_size[s]]
            color, ls = ARM_STYLE.get(arm, ("k", ":"))
            ax.errorbar(xs, [np.mean(v) for v in vals],
                        yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals],
                        color=color, ls=ls, marker="o", ms=3, label=arm, capsize=2)
        ax.set_xscale("log")
        ax.set_xlabel("training examples n", fontsize=8)
        ax.set_title("corrupted train acc at the last epoch", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1]
        contrasts = _contrast_rows(by_size)
        target = scale_config.IMAGENET_TRAIN_SIZE
        for i, (name_, per_size) in enumerate(contrasts.items()):
            color = f"C{i}"
            if "relative" in name_:  # a ratio: not on the axis of the differences
                continue
            pts = [(s, d) for s in sizes for d in per_size.get(s, {}).values()]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, s=10)
            means = [np.mean(list(per_size[s].values())) for s in sizes if per_size.get(s)]
            ax.plot([s for s in sizes if per_size.get(s)], means, color=color, label=name_)
            fit = trend([p[0] for p in pts], [p[1] for p in pts], target)
            if fit is not None and name_ == "SGD − M3":
                grid = np.logspace(math.log10(sizes[0]), math.log10(target), 50)
                xg = np.log10(grid)
                xs = np.log10([p[0] for p in pts])
                sxx = np.sum((xs - xs.mean()) ** 2)
                resid = np.array([p[1] for p in pts]) - (fit["intercept"]
                                                         + fit["slope_per_decade"] * xs)
                s2 = np.sum(resid ** 2) / fit["dof"]
                se = np.sqrt(s2 * (1 / len(xs) + (xg - xs.mean()) ** 2 / sxx))
                line = fit["intercept"] + fit["slope_per_decade"] * xg
                ax.plot(grid, line, color=color, ls=":", lw=1)
                ax.fill_between(grid, line - 2 * se, line + 2 * se, color=color, alpha=0.12)
        ax.axvline(target, color="k", lw=0.5, ls=":")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("training examples n (dotted: ImageNet 1.28M)", fontsize=8)
        ax.set_title("suppression (ref − robust corrupted acc); SGD − M3 fit ± 2 SE", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[2]
        cmap = plt.get_cmap("viridis")
        epochs = [e for e in next(iter(next(iter(by_size[sizes[0]].values())).values()))
                  ["curves"]["epoch"]]
        for i, s in enumerate(sizes):
            if "sgd" not in by_size[s] or "m3" not in by_size[s]:
                continue
            vals = [np.mean(list(suppression(by_size[s]["sgd"], by_size[s]["m3"],
                                             epoch=e).values()) or [np.nan]) for e in epochs]
            ax.plot(epochs, vals, color=cmap(i / max(1, len(sizes) - 1)), marker="o", ms=3,
                    label=f"n = {s:,}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title("SGD − M3 corrupted train acc at equal epochs", fontsize=9)
        ax.legend(fontsize=7)
        for ax in axes:
            ax.tick_params(labelsize=7)
        fig.suptitle(f"{dataset}: memorisation suppression vs training-set size", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        name = f"scale_{dataset}_suppression.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)
    return figures


def _describe(s):
    """The progress line of a finished run (`common.run_plan`)."""
    return (f"updates {s['updates']:.0f} corrupted acc {s['corrupted_accuracy']:.3f} pristine "
            f"{s['pristine_accuracy']:.3f} test {s['test_accuracy']:.3f}")


def reproduce(workdir, scale="small", seeds=DEFAULT_SEEDS, overrides=None, command="",
              echo=print, arm_names=None, sizes=None):
    """Run every arm at every size (skipping finished runs, resuming interrupted ones), then
    report. `arm_names` / `sizes`: only these (tests, partial sweeps)."""
    echo = echo or (lambda line: None)
    plan = arms(scale, seeds, overrides, arm_names, sizes)  # every config checked first
    runs, seconds = common.run_plan(workdir, plan, run, _describe, echo)
    return report(workdir, runs, command, seconds)


run = common.resumable(_train, check_config)
