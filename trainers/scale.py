r"""Does M3 / RM3 / winsorized GD suppress memorisation more as the training set grows?

The papers (arXiv 2003.07422) report that on ImageNet with ResNet-50 SGD fits pristine *and*
corrupted labels while M3 fits only the pristine ones; at 4,000 examples M3 mostly *delays*
memorisation. This experiment grows the training set n at fixed label noise (50 %, uniform) and a
fixed number of epochs, and measures per n how much of the corrupted labels each arm fits.

One run: an MLP (`depth` × `width` ReLU) on `train_size` examples of `dataset` (MNIST-1D: a
generated training set of that size, always the default 1,000 test examples; mnist5k: its first
n ≤ 4,000 digits), SGD without momentum through `cgh_tf.optimizers.build`, `epochs` epochs in the
update-level graph loop (`graph_loop.update_trainer`, `epoch_updates`: update k of epoch e
uses examples [kU, (k+1)U) of the permutation `default_rng([seed, e])`, U = B × batches per
update, so M3's update k and SGD ×3's update k see the same 3B examples). At each epoch of
`log_epochs` it logs, over the whole splits: corrupted-example train accuracy vs the noisy labels
(memorisation) and vs the true labels, pristine train accuracy, test accuracy, training loss, the
applied optimizer updates (the inner optimizer's `iterations`) and the examples consumed.

| arm         | optimizer / aggregation                                   | matched control |
|-------------|-----------------------------------------------------------|-----------------|
| `sgd`       | SGD, batch B                                              | —               |
| `m3`        | M3(SGD): median of the means of 3 consecutive batches     | `sgd_x3`        |
| `sgd_x3`    | SGD, batch 3B (M3's examples and number of updates)       | —               |
| `rm3`       | RM3(SGD): median of the last 3 batch gradients            | `ra3`           |
| `ra3`       | RA3(SGD): mean of the last 3 (staleness without a median) | —               |
| `winsorize` | winsorized SGD (per coordinate, per-example gradients clipped at the c-th percentiles) | `sgd` |

Comparisons (arm − control, paired by seed = same init and batch order, per n) and the declared
rules: a robust arm suppresses memorisation if the 95 % CI of its corrupted accuracy minus its
matched control's excludes 0 and is negative. `analyses` fits suppression (control − arm) against
log10 n over all (n, seed) points (`trend`, `verdict`).
"""

import math
import time

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import graph_loop
from .experiment import Arm, Column, Experiment

MNIST5K_TRAIN = 4000
OPTIMIZERS = {"sgd": 1, "m3": 3, "rm3": 1, "ra3": 1}  # name -> batches per optimizer update
AGGREGATIONS = ("mean", "winsorize")
DATASETS = ("mnist1d", "mnist5k")
# arm -> (label, changes of the base config; "x3" = 3 × the base batch, "c" = WINSORIZE_PCT)
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
ARM_SETTINGS = {"sgd": ("sgd", "mean"), "m3": ("m3", "mean"), "sgd_x3": ("sgd", "mean"),
                "rm3": ("rm3", "mean"), "ra3": ("ra3", "mean"), "winsorize": ("sgd", "winsorize")}
# (arm, control, matched): compared per size; rules on the matched pairs
PAIRS = (("m3", "sgd_x3", True), ("m3", "sgd", False), ("rm3", "ra3", True),
         ("rm3", "sgd", False), ("winsorize", "sgd", True))


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    check_setting(config)
    check_arm(config)


def check_setting(config):
    """The checks of every field but the arm's (`check_arm`): shared with the experiments that
    train through `train_memorisation` with arms of their own."""
    from cgh_tf import data

    need, is_int = common.require, config_schema.is_int
    need(config.dataset in DATASETS, f"dataset={config.dataset!r} is not available for scale; "
         f"allowed: {', '.join(DATASETS)}")
    for field in ("train_size", "width", "depth", "batch_size", "epochs", "checkpoint_every_logs"):
        need(is_int(config[field], 1), f"{field}={config[field]!r} must be an int >= 1")
    need(config.dataset != "mnist1d" or config.train_size % 10 == 0,
         f"train_size={config.train_size!r} must be a multiple of 10 for mnist1d (generated "
         "with train_size / 10 examples per class)")
    need(config.dataset != "mnist5k" or config.train_size <= MNIST5K_TRAIN,
         f"train_size={config.train_size!r} must be <= {MNIST5K_TRAIN} for mnist5k")
    need(isinstance(config.label_noise, (int, float)) and 0 < config.label_noise < 1,
         f"label_noise={config.label_noise!r} must be in (0, 1): the experiment compares "
         "pristine and corrupted examples")
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    need(isinstance(config.learning_rate, (int, float)) and config.learning_rate > 0,
         f"learning_rate={config.learning_rate!r} must be a number > 0")
    need(len(config.log_epochs) > 0 and all(is_int(e, 0) for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be a non-empty list of ints >= 0")


def check_arm(config):
    """The arm's fields: optimizer, aggregation and winsorize_pct as `ARM_SETTINGS` says."""
    need = common.require
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    common.require_one_of(config, "aggregation", AGGREGATIONS)
    common.require_one_of(config, "arm", ARM_SETTINGS)
    need((config.optimizer, config.aggregation) == ARM_SETTINGS[config.arm],
         f"arm={config.arm!r} needs optimizer={ARM_SETTINGS[config.arm][0]!r} and "
         f"aggregation={ARM_SETTINGS[config.arm][1]!r}, got {config.optimizer!r} and "
         f"{config.aggregation!r}")
    pct = config.winsorize_pct
    need(isinstance(pct, (int, float)) and not isinstance(pct, bool) and 0 <= pct < 50,
         f"winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")
    need(config.aggregation == "winsorize" or pct == 0,
         f"winsorize_pct={pct!r} has no effect with aggregation={config.aggregation!r}")
    need(config.batch_size * OPTIMIZERS[config.optimizer] <= config.train_size,
         f"batch_size={config.batch_size} × {OPTIMIZERS[config.optimizer]} batches per update "
         f"({config.optimizer}) exceeds train_size={config.train_size}: no update in an epoch")


def build_optimizer(config, model=None, ds=None):
    """(optimizer, batches per update, aggregator or None for the plain mean, calibration {}).
    (`train_memorisation`'s `build`: the model and the Dataset are for arms that calibrate.)"""
    from cgh_tf import aggregators, optimizers

    aggregator = (None if config.aggregation == "mean"
                  else aggregators.get("winsorize", float(config.winsorize_pct)))
    optimizer = optimizers.build(config.optimizer, float(config.learning_rate), groups=3, window=3)
    return optimizer, OPTIMIZERS[config.optimizer], aggregator, {}


def load_data(config):
    from cgh_tf import data

    size = ({"train_size": int(config.train_size)} if config.dataset == "mnist1d"
            else {"max_train": int(config.train_size)})
    return data.load(config.dataset, label_noise=float(config.label_noise),
                     noise_kind=config.noise_kind, seed=int(config.data_seed), **size)


def _accuracy(pred, labels, mask):
    return float(np.mean(pred[mask] == labels[mask])) if mask.any() else None


def _train(config, run_dir, echo):
    """One run (finished runs and bad configs are handled by `common.resumable`)."""
    return train_memorisation(config, run_dir, echo)


def train_memorisation(config, run_dir, echo, build=build_optimizer, measure=None,
                       summarize_more=None):
    """One update-level memorisation run (the module docstring), shared by the experiments that
    differ only in their arms and extra measurements.

    build(config, model, ds) -> (optimizer, batches per update, aggregator or None, calibration
    dict: its numbers go to the run's summary), called on the freshly initialised model before
    any checkpoint is restored (so a resumed run calibrates as the first invocation did); measure(model, ds, epoch) -> dict of
    extra scalars logged with every row (ds: the `cgh_tf.data.Dataset`); summarize_more(curves) ->
    dict of extra summary numbers."""
    import keras
    import tensorflow as tf

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    ds = load_data(config)
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    corrupted, original_y = ds.train.corrupted, ds.train.original_y.astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    n, batch = len(x), int(config.batch_size)
    model = common.mlp(config, ds.input_shape, ds.num_classes)
    optimizer, per_update, aggregator, calibration = build(config, model, ds)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, tf.constant(x), tf.constant(y),
                                      batch, per_update, aggregator)
    updates_per_epoch = n // (batch * per_update)
    predict = graph_loop.predictor(model)

    def log(epoch):
        pred, losses = predict(x, y)
        pred_test, _ = predict(x_test, y_test)
        row = {"epoch": epoch, "step": epoch, "updates": int(optimizer.iterations.numpy()),
               "examples": epoch * updates_per_epoch * batch * per_update,
               "train_loss": float(np.mean(losses)),
               "pristine_accuracy": _accuracy(pred, y, ~corrupted),
               "corrupted_accuracy": _accuracy(pred, y, corrupted),
               "corrupted_true_accuracy": _accuracy(pred, original_y, corrupted),
               "test_accuracy": float(np.mean(pred_test == y_test))}
        if measure is not None:
            row.update(measure(model, ds, epoch))
        if echo and epoch:
            echo(f"  {run_dir} epoch {epoch}/{config.epochs}: updates {row['updates']} "
                 f"corrupted acc {row['corrupted_accuracy']:.3f} test {row['test_accuracy']:.3f}")
        return row

    curves = graph_loop.run_logged_epochs(
        run_dir, config.to_dict(), model, optimizer,
        lambda perm: train(graph_loop.epoch_updates(perm, batch, per_update)), log,
        epochs=config.epochs,
        log_epochs=graph_loop.capped_log_epochs(config.log_epochs, config.epochs),
        checkpoint_every=config.checkpoint_every_logs, seed=config.seed, n=n, echo=echo)
    more = summarize_more(curves) if summarize_more else {}
    return common.finish(run_dir, config.to_dict(), curves,
                         {**summarize(curves), **calibration, **more}, started,
                         num_train=n, num_test=len(x_test), num_corrupted=int(corrupted.sum()),
                         batches_per_update=per_update, updates_per_epoch=updates_per_epoch)


def summarize(curves):
    """Last logged values, plus the best test accuracy over the logged epochs and its epoch."""
    summary = {key: curves[key][-1] for key in curves if key not in ("epoch", "step")}
    tests = [np.nan if v is None else v for v in curves["test_accuracy"]]
    best = int(np.nanargmax(tests))
    summary["best_test_accuracy"] = curves["test_accuracy"][best]
    summary["epoch_of_best_test"] = curves["epoch"][best]
    return summary


def trend(sizes, values, at):
    """`statistics.linear_fit` of values against log10(n) over the points (sizes[i], values[i]),
    extrapolated to n = `at`, with the slope per decade and the decades from the largest size to
    `at`; None when fewer than 3 points or fewer than 2 distinct sizes."""
    x = np.log10(np.asarray(sizes, dtype=np.float64))
    fit = statistics.linear_fit(x, values, math.log10(at))
    if fit is None:
        return None
    return {**fit, "slope_per_decade": fit["slope"], "predicted_95": fit["predicted_interval"],
            "at": at, "decades_extrapolated": math.log10(at) - float(x.max())}


def verdict(fit):
    """A computed phrase for a trend: grows / shrinks when |slope| > 2 SE, else no clear trend."""
    if fit is None:
        return "not enough sizes to fit a trend"
    b, se = fit["slope_per_decade"], fit["slope_se"]
    if se == 0:
        return f"slope {b:+.3f} per decade (no residual spread: SE 0, not a real uncertainty)"
    if abs(b) > 2 * se:
        direction = "grows" if b > 0 else "shrinks"
        return f"{direction} with n (slope {b:+.3f} ± {se:.3f} per decade, |t| = {abs(b) / se:.1f})"
    return (f"shows no clear trend with n (slope {b:+.3f} ± {se:.3f} per decade, "
            f"|t| = {abs(b) / se:.1f} < 2)")


def arms(scale="small", seeds=3, overrides=None, arm_names=None, sizes=None):
    """Arms `<dataset>/n<size>/<arm>` (panel `<dataset>/n<size>`), every config checked.

    Datasets: `DATASETS[scale]` of the config module, or only `overrides["dataset"]`; sizes:
    `sizes` / `overrides["sizes"]`, else only `overrides["train_size"]`, else `SIZES[scale][dataset]`;
    arms: `arm_names` / `overrides["arms"]` (a subset of `ARMS`) or all."""
    from configs import scale as scale_config

    overrides = dict(overrides or {})
    sizes, arm_names = overrides.pop("sizes", sizes), overrides.pop("arms", arm_names)
    for name in arm_names or ():
        if name not in ARMS:
            raise ValueError(f"arm {name!r} is unknown; allowed: {', '.join(ARMS)}")
    for field in ARM_FIELDS:
        if field in overrides:
            raise ValueError(f"{field} is set by each arm ({', '.join(ARMS)}); it cannot be "
                             "overridden with --set")
    out = []
    for dataset, base in common.dataset_bases(scale_config, scale, overrides, "scale"):
        for size in (tuple(sizes) if sizes else (overrides["train_size"],)
                     if "train_size" in overrides else scale_config.SIZES[scale][dataset]):
            for arm, (label, _) in ARMS.items():
                if arm_names is not None and arm not in arm_names:
                    continue
                config = arm_config(config_schema.apply_overrides(base, {"train_size": size}),
                                    arm, scale_config.WINSORIZE_PCT)
                panel = f"{dataset}/n{size:07d}"
                out += [Arm(f"{panel}/{arm}", label, panel, seed,
                            config_schema.apply_overrides(config, {"seed": seed}))
                        for seed in range(seeds)]
    return out


def arm_config(base, arm, winsorize_pct):
    """`base` with the changes of `ARMS[arm]` ("x3": 3 × the base batch; "c": `winsorize_pct`),
    checked (`check_config`)."""
    changes = {k: (3 * base.batch_size if v == "x3" else winsorize_pct if v == "c" else v)
               for k, v in ARMS[arm][1].items()}
    config = config_schema.apply_overrides(base, changes)
    check_config(config)
    return config


def _pairs(arms_):
    """(arm group, control group, matched) of every PAIRS entry planned at a (dataset, size)."""
    groups = set(a.group for a in arms_)
    panels = dict.fromkeys(a.panel for a in arms_)
    return [(f"{p}/{a}", f"{p}/{c}", matched) for p in panels for a, c, matched in PAIRS
            if f"{p}/{a}" in groups and f"{p}/{c}" in groups]


def comparisons(arms_):
    return [(a, c) for a, c, _ in _pairs(arms_)]


def rules(arms_):
    return [statistics.PairedRule(f"{a} suppresses memorisation vs {c}", "corrupted_accuracy",
                                  a, c, prediction="lower")
            for a, c, matched in _pairs(arms_) if matched]


def _suppression_points(runs, dataset, arm, control):
    """[(n, control − arm corrupted train accuracy)] per size and seed present in both."""
    values = {}
    for a, r in runs:
        if a.panel.startswith(dataset + "/"):
            values[(a.config.train_size, a.group.rsplit("/", 1)[1], a.seed)] = (
                r["summary"]["corrupted_accuracy"])
    return [(n, values[(n, control, s)] - v) for (n, name, s), v in values.items()
            if name == arm and (n, control, s) in values and v is not None
            and values[(n, control, s)] is not None]


def analyses(runs):
    """Per dataset: suppression (control − arm, corrupted train acc at the last epoch) against
    log10 n, fitted over all (n, seed) points and extrapolated to ImageNet's n; its verdict."""
    from configs import scale as scale_config

    target = scale_config.IMAGENET_TRAIN_SIZE
    lines, out = [], {}
    for dataset in dict.fromkeys(a.panel.split("/")[0] for a, _ in runs):
        fits = {f"{c} − {a}": trend(*zip(*points), target) if points else None
                for a, c, _ in PAIRS
                for points in [_suppression_points(runs, dataset, a, c)]}
        sgd = [(a.config.train_size, r["summary"]["corrupted_accuracy"]) for a, r in runs
               if a.panel.startswith(dataset + "/") and a.group.endswith("/sgd")]
        fits["SGD corrupted accuracy"] = trend(*zip(*sgd), target) if sgd else None
        out[dataset] = fits
        lines += [f"## {dataset}: suppression against log10(n)", "",
                  "Least squares over all (n, seed) points of control − arm corrupted train "
                  f"accuracy (last epoch), extrapolated to n = {target:,} (fitted mean ± SE "
                  "[95 % Student t]); trend verdict: |slope| > 2 SE.", "",
                  "| quantity | slope per decade ± SE | R² | at ImageNet's n | verdict |",
                  "|---|---|---|---|---|"]
        for name, fit in fits.items():
            if fit is None:
                lines.append(f"| {name} | n/a | n/a | n/a | {verdict(fit)} |")
                continue
            lo, hi = fit["predicted_95"]
            r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.2f}"
            lines.append(f"| {name} | {fit['slope_per_decade']:+.3f} ± {fit['slope_se']:.3f} | "
                         f"{r2} | {fit['predicted']:+.2f} ± {fit['predicted_se']:.2f} "
                         f"[{lo:+.2f}, {hi:+.2f}] | {verdict(fit)} |")
        lines.append("")
    return lines, {"trend": out}


def setting(runs):
    """The setting, with the corrupted examples per (true, noisy) label pair at each n."""
    first = runs[0][1]["config"]
    per_n = {}
    for a, r in runs:
        per_n.setdefault((a.panel, r["num_corrupted"]), None)
    density = ", ".join(f"{p.split('/')[1]}: {c:,} corrupted, ≈ {c / 90:.1f} per pair"
                        for p, c in per_n)
    return [f"MLP {first['depth']} × {first['width']} ReLU, SGD lr {first['learning_rate']} (no "
            f"momentum), batch B = {first['batch_size']} (SGD ×3: 3B), {first['epochs']} epochs "
            f"at every n, {first['label_noise']:.0%} label noise ({first['noise_kind']}). "
            "Corrupted train accuracy is against the *noisy* labels (memorisation). Examples "
            "per (true, noisy) label pair (90 pairs of 10 classes): " + density + ".", ""]


def figures(workdir, runs):
    from . import figures as fig

    keys = (("corrupted_accuracy", "corrupted train acc. (noisy label, fraction)"),
            ("pristine_accuracy", "pristine train acc. (fraction)"),
            ("test_accuracy", "test acc. (fraction)"))
    files = []
    for dataset in dict.fromkeys(a.panel.split("/")[0] for a, _ in runs):
        chosen = [(a, r) for a, r in runs if a.panel.startswith(dataset + "/")]
        files.append(fig.curves_per_group(
            workdir, f"scale_{dataset}_curves.png", chosen, keys, x="epoch", x_label="epoch",
            title=f"{dataset}: accuracy vs epoch per arm and n", row_of=lambda a: a.panel))
        files.append(fig.summary_vs_axis(
            workdir, f"scale_{dataset}_suppression.png", chosen, keys, axis="train_size",
            x_label="training examples n (log10)", log_x=10, series=lambda a: a.label,
            title=f"{dataset}: last-epoch accuracy vs training-set size"))
    return files


run = common.resumable(_train, check_config)

PROGRESS = ("updates", "corrupted_accuracy", "pristine_accuracy", "test_accuracy")

EXPERIMENT = Experiment(
    name="scale", title="Memorisation suppression vs training-set size (M3, RM3, winsorized GD)",
    arms=arms, run_arm=run, loop="graph",
    columns=(Column("updates", "updates", ".0f"),
             Column("corrupted_accuracy", "corrupted train acc (noisy label)"),
             Column("corrupted_true_accuracy", "corrupted train acc (true label)"),
             Column("pristine_accuracy", "pristine train acc"),
             Column("test_accuracy", "test acc (last)"),
             Column("best_test_accuracy", "best test acc (logged epochs)")),
    comparisons=comparisons, compared=("corrupted_accuracy", "pristine_accuracy", "test_accuracy"),
    rules=rules, analyses=analyses, setting=setting, figures=figures,
    progress=PROGRESS)
