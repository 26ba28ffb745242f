"""Adversarial initialisation (Liu et al. 2019, arXiv 1906.02613): random-label pretraining
(`adversarial_phase1`), then the real labels (`run`), against a fresh start; SGD, M3, RM3 and
their controls (docs/experiments/intro/adversarial_init.md, design §7.1)."""

import os

import numpy as np

from cgh_tf import statistics, workdir_lock

from . import adversarial_phase1 as ap
from . import beyond_common as common
from . import config_schema
from . import curve_stats
from . import graph_loop
from . import probes
from . import update_rules
from .experiment import Column, Experiment

STARTS = ("adversarial", "fresh")
OPTIMIZERS = update_rules.batches_per_update("sgd")
# group -> (optimizer, batch-size multiplier, label)
OPTIMIZER_ARMS = {
    "sgd": ("sgd", 1, "SGD"),
    "m3": ("m3", 1, "M3(SGD)"),
    "sgd_batch3x": ("sgd", 3, "SGD, 3x batch (M3's control)"),
    "rm3": ("rm3", 1, "RM3(SGD)"),
    "ra3": ("ra3", 1, "RA3(SGD) (RM3's control)"),
}


def summarize(curves, fit=0.75):
    """Summary numbers of one phase-2 run; `test_acc_at_fit`: test accuracy at the first logged
    epoch whose train accuracy is ≥ `fit` (`epoch_at_fit`; None if never)."""
    coh, alpha = "coherence/train/m_coherence", "coherence/train/alpha"
    train, test = curves["train_accuracy"][-1], curves["test_accuracy"][-1]
    best_test, best_epoch = curve_stats.best_at(curves, "test_accuracy")
    out = {"test_acc_final": test, "train_acc_final": train,
           "gap_final": None if train is None or test is None else train - test,
           "train_loss_final": curves["train_loss"][-1],
           "max_test_acc": best_test, "epoch_of_max_test_acc": best_epoch,
           "epoch_train_acc_99": curve_stats.first_reaching(curves, "train_accuracy", 0.99,
                                                            "epoch"),
           "epoch_at_fit": curve_stats.first_reaching(curves, "train_accuracy", fit, "epoch"),
           "coh_start": curves[coh][0], "alpha_start": curves[alpha][0],
           "coh_final": curves[coh][-1], "alpha_final": curves[alpha][-1],
           "coh_max": max((v for v in curves[coh] if v is not None), default=None),
           "wnorm_start": curves["weight_norm"][0], "wnorm_final": curves["weight_norm"][-1],
           "test_acc_start": curves["test_accuracy"][0],
           "train_acc_start": curves["train_accuracy"][0]}
    for key in ("test", "train"):
        out[f"{key}_acc_at_fit"] = curve_stats.value_at(curves, f"{key}_accuracy",
                                                        out["epoch_at_fit"], "epoch")
    return out


def run(config, run_dir, echo=print, phase1_dir=None):
    """Train (or resume, or read if finished) one phase-2 run after its phase 1 in `phase1_dir`
    (default `run_dir/phase1`; the experiment's: `shared_phase1_dir`); its results dict."""
    echo = echo or (lambda line: None)
    done = common.finished_or_checked(config, run_dir, check_config)
    if done is not None:
        return done
    phase1 = None
    if config.start == "adversarial":
        phase1_dir = phase1_dir or os.path.join(run_dir, "phase1")
        phase1 = ap.run_phase1(config, phase1_dir, echo, check_config)
    with workdir_lock.hold(run_dir, "adversarial_init phase 2"):
        return graph_loop.train_declared(
            lambda *args: _phase2(*args, phase1, phase1_dir), config, run_dir, echo)


def _phase2(config, run_dir, echo, phase1, phase1_dir):
    import keras
    import tensorflow as tf

    ds = ap.load(config)
    x, y = ds.train.x.astype(np.float32), ds.train.original_y.astype(np.int32)  # real labels
    x_test, y_test = common.arrays(ds.test)
    model = ap.initial_model(config, ds)
    if phase1 is not None:
        model.load_weights(os.path.join(phase1_dir, ap.WEIGHTS_FILE))
    keras.utils.set_random_seed(int(config.seed))
    optimizer, per_update, _ = update_rules.build(config, OPTIMIZERS)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    n, batch = len(x), int(config.batch_size)
    xt, yt = tf.constant(x), tf.constant(y)
    xs, ys = tf.constant(x_test), tf.constant(y_test)
    sample = common.sample(n, int(config.coherence_samples), config.data_seed, 3)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, xt, yt, batch, per_update)
    evaluate = probes.loss_accuracy(model, loss_fn)
    count = ap.checked_batches(n, batch, per_update, "batch_size")

    def log(epoch):
        row = {"epoch": epoch, "step": epoch,
               **probes.split_metrics(evaluate, {"train": (xt, yt), "test": (xs, ys)}),
               **probes.sample_coherence(model, {"train": (x[sample], y[sample])}, loss_fn),
               "weight_norm": probes.weight_norm(model)}
        if epoch:
            echo(f"  {config.start}/{config.optimizer} epoch {epoch}/{config.epochs}: train acc "
                 f"{row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} m-coh. "
                 f"{row['coherence/train/m_coherence']:.2f} |w| {row['weight_norm']:.1f}")
        return row

    def summarize_phase2(curves):
        summary = summarize(curves, float(config.compare_train_acc))
        if phase1 is not None:
            summary.update({k: v for k, v in phase1["summary"].items()
                            if not isinstance(v, (str, bool))})
        return {**summary, "num_params": curve_stats.params(model),
                "updates_per_epoch": count // per_update}

    logs = sorted(set(graph_loop.capped_log_epochs(config.log_epochs, config.epochs)) | {0})
    return graph_loop.Training(
        model, optimizer, ap.advancer(train, n, batch, count, per_update, config.seed, 2), log,
        logs, logs[::int(config.checkpoint_every_logs)], summarize_phase2,
        extra=dict(num_train=n, num_test=len(x_test),
                   phase1=None if phase1 is None else phase1["summary"]), total=int(config.epochs))


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require
    common.require_one_of(config, "dataset", data.DATASETS)
    common.require_one_of(config, "start", STARTS)
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    for field, what in (("compare_train_acc", ""), ("phase1_target", " (train accuracy on the "
                                                    "random labels)")):
        need(config_schema.is_number(config[field]) and 0 < config[field] <= 1,
             f"{field}={config[field]!r} must be in (0, 1]{what}")
    common.require_positive(config, ("learning_rate", "phase1_learning_rate"))
    common.require_ints(config, ("width", "depth", "batch_size", "phase1_batch_size", "epochs",
                                 "phase1_max_epochs", "phase1_checkpoint_every",
                                 "coherence_samples", "checkpoint_every_logs"))
    common.require_optional_ints(config, ("max_train", "max_test"), 1)
    common.require_ints(config, ("seed", "data_seed"), 0)
    common.require_int_list(config, "log_epochs")


def arms(scale="small", seeds=3, overrides=None, optimizers=None):
    """Arms "<dataset>/<start>_<optimizer arm>" (panel: the optimizer arm) per dataset
    (`common.dataset_bases`); `optimizers` / `overrides["optimizers"]`: only these arms."""
    from configs import adversarial_init as ai_config

    overrides = dict(overrides or {})
    names = common.chosen(overrides, "optimizers", optimizers, OPTIMIZER_ARMS, "optimizer arm")
    common.refuse_overrides(overrides, ("start", "optimizer"), f"set by the arms "
                            f"({', '.join(STARTS)} x {', '.join(OPTIMIZER_ARMS)})")
    out = []
    for dataset, base in common.dataset_bases(ai_config, scale, overrides, "adversarial_init"):
        for start in STARTS:
            for name in names:
                optimizer, factor, label = OPTIMIZER_ARMS[name]
                out += common.seeded_arms(
                    f"{dataset}/{start}_{name}", f"{start} start", label,
                    config_schema.apply_overrides(base, {
                        "start": start, "optimizer": optimizer,
                        "batch_size": int(base.batch_size) * factor}), seeds, check_config)
    return out


COLUMNS = (
    Column("test_acc_final", "test acc"), Column("train_acc_final", "train acc"),
    Column("gap_final", "gap (train − test)"), Column("max_test_acc", "max test acc (logged)"),
    Column("test_acc_at_fit", "test acc at train acc ≥ fit"),
    Column("epoch_at_fit", "epoch of that", ".0f"),
    Column("epoch_train_acc_99", "epoch train acc ≥ 0.99", ".0f"),
    Column("coh_start", "m-coh. start", ".2f"), Column("alpha_start", "α start", ".4f"),
    Column("coh_final", "m-coh. last", ".2f"), Column("wnorm_start", "‖w‖ start", ".1f"),
    Column("wnorm_final", "‖w‖ last", ".1f"),
)
COMPARED = ("test_acc_final", "gap_final", "test_acc_at_fit", "train_acc_final", "coh_start",
            "wnorm_start")


def comparisons(arms_):
    """Adversarial − fresh start per dataset and optimizer arm (same seed: same initial weights
    before phase 1, same phase-2 batches)."""
    groups = dict.fromkeys(a.group for a in arms_)
    return [(g, g.replace("/adversarial_", "/fresh_")) for g in groups
            if "/adversarial_" in g and g.replace("/adversarial_", "/fresh_") in groups]


def rules(arms_):
    """Liu et al. 2019: the adversarial start generalises worse (lower final test accuracy)."""
    return [statistics.PairedRule(f"{a.replace('/adversarial_', '/')}: adversarial start lowers "
                                  "test accuracy", "test_acc_final", a, c, prediction="lower")
            for a, c in comparisons(arms_)]


def figures(workdir, runs):
    from . import figures as plots

    keys = (("test_accuracy", "test acc. (fraction)"),
            ("train_accuracy", "train acc., real labels (fraction)"),
            ("coherence/train/m_coherence", "m-coherence, real-label sample"),
            ("weight_norm", "‖w‖ (L2 norm of all weights)"))
    return [plots.curves_per_group(
        workdir, f"adversarial_init_{dataset}_curves.png", chosen, keys, x="epoch",
        x_label="phase-2 epoch", row_of=lambda a: a.panel,
        title=f"Phase 2 on real labels, {dataset}: adversarial vs fresh start")
        for dataset, chosen in plots.per_dataset(runs)]


EXPERIMENT = Experiment(
    name="adversarial_init", default_seeds=5,
    title="Adversarial initialisation: random-label pretraining, then real labels",
    arms=arms, run_arm=lambda config, run_dir, echo=None: run(
        config, run_dir, echo, phase1_dir=ap.shared_phase1_dir(run_dir)),
    columns=COLUMNS, loop="graph", comparisons=comparisons, compared=COMPARED, rules=rules,
    analyses=ap.table, figures=figures,
    progress=("test_acc_final", "train_acc_final", "coh_start", "wnorm_start"))
