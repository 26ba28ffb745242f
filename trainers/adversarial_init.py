r"""Adversarial initialisation (Liu et al. 2019, arXiv 1906.02613): pretrain on random labels, then
train on the real labels, against a fresh initialisation; SGD, M3, RM3 and their controls.

**Phase 1** (`run_phase1(config, phase1_dir)`, one resumable run per seed, shared by every
phase-2 arm of that seed: the experiment's named hook, since it stops at a target accuracy):
`common.mlp` (an MLP of `depth` × `width` ReLU units; mnist5k's
images flattened), initialised by `keras.utils.set_random_seed(seed)`, trained with Adam on the
training set with **100 % random labels** (`cgh_tf.data.load(label_noise=1.0,
noise_kind="uniform", seed=data_seed + seed)`: every label redrawn uniformly over the classes, so
≈ 1/K keep their real value, Zhang et al. 2017) until the accuracy on those labels is ≥
`phase1_target` (checked after every epoch, `phase1_stop`) or `phase1_max_epochs`. It records the
epoch and accuracy reached and why it stopped, and writes the final weights
(`final.weights.h5`).

**Phase 2** (`run(config, run_dir)`, one resumable run per start × optimizer × seed): the same
architecture starting from phase 1's final weights (`start="adversarial"`) or from the very
weights phase 1 started from (`start="fresh"`: same seed, same initialiser), trained on the
**real** labels for `epochs` epochs with the same batch size, learning rate and batch order in
both starts and a fresh optimizer state. Optimizers (`optimizer`, all over plain SGD, no momentum,
no weight decay): `"sgd"`; `"m3"` = `cgh_tf.M3(SGD)` (one update per 3 consecutive batches);
`"rm3"` = `cgh_tf.RM3(SGD)`; `"ra3"` = `cgh_tf.RA3(SGD)` (RM3's control). M3's matched control is
`"sgd"` with 3× the batch (same examples per update, same number of updates). Every arm sees the
same number of batches of `batch_size` per epoch: ⌊n / (b · batch_size)⌋ · b with b the batches
per update (3 for M3, else 1), so an epoch ends on an update. Epoch e's batches are the
permutation `default_rng([seed, 2, e])` (phase 1: `[seed, 1, e]`).

Logged at every epoch of `log_epochs` (0 = the start of phase 2): train accuracy and loss on the
real labels (whole training set), test accuracy, the exact m-coherence and α (per layer) of a
fixed sample of m = `coherence_samples` training examples with their **real** labels
(`cgh_tf.coherence.measure`, inference mode), and the global weight norm ‖w‖.

Both phases train in the update-level graph loop (`graph_loop.update_trainer`); phase 2 is
logged, checkpointed and resumed by `graph_loop.run_logged`. Declared: adversarial − fresh start
per optimizer, paired by seed (rule: Liu et al.'s lower test accuracy); `analyses`: the phase-1
table.

| path (in WORKDIR)                  | content                                                |
|------------------------------------|--------------------------------------------------------|
| `<dataset>/phase1/seed<k>/`        | phase 1: `ckpt/`, `curves.json`, `results.json`,       |
|                                    | `final.weights.h5`                                     |
| `<dataset>/<start>_<opt>/seed<k>/` | one phase-2 arm: the same without the weights file     |
"""

import os
import time

import numpy as np

from cgh_tf import statistics, workdir_lock

from . import beyond_common as common
from . import config_schema
from . import graph_loop
from .experiment import Arm, Column, Experiment

STARTS = ("adversarial", "fresh")
OPTIMIZERS = {"sgd": 1, "m3": 3, "rm3": 1, "ra3": 1}  # name -> batches per update
PHASE1_FIELDS = ("dataset", "max_train", "max_test", "data_seed", "seed", "width", "depth",
                 "phase1_learning_rate",
                 "phase1_batch_size", "phase1_target", "phase1_max_epochs",
                 "phase1_checkpoint_every")
# group -> (optimizer, batch-size multiplier, label)
OPTIMIZER_ARMS = {
    "sgd": ("sgd", 1, "SGD"),
    "m3": ("m3", 1, "M3(SGD)"),
    "sgd_batch3x": ("sgd", 3, "SGD, 3x batch (M3's control)"),
    "rm3": ("rm3", 1, "RM3(SGD)"),
    "ra3": ("ra3", 1, "RA3(SGD) (RM3's control)"),
}


# ----------------------------------------------------------------------------------------------
# Pure helpers (tested against hand-computed examples)
# ----------------------------------------------------------------------------------------------

def phase1_stop(accuracy, epoch, target, max_epochs):
    """Why phase 1 stops after `epoch` epochs with train accuracy `accuracy` on the random
    labels: "target" (accuracy ≥ target; checked first), "max_epochs" (epoch ≥ max_epochs), or
    None (go on)."""
    if accuracy is not None and accuracy >= target:
        return "target"
    if epoch >= max_epochs:
        return "max_epochs"
    return None


def batches_per_epoch(n, batch_size, per_update):
    """Batches of one epoch: the largest multiple of `per_update` full batches that fits in n."""
    return (n // (batch_size * per_update)) * per_update


def _checked_batches(n, batch_size, per_update, field):
    count = batches_per_epoch(n, batch_size, per_update)
    if count == 0:
        raise ValueError(f"{field}={batch_size} leaves no full batch"
                         f"{'' if per_update == 1 else f' group of {per_update}'} in the "
                         f"{n} training examples")
    return count


def first_epoch(curves, key, threshold):
    for e, v in zip(curves["epoch"], curves[key]):
        if v is not None and v >= threshold:
            return e
    return None


def summarize(curves, fit=0.75):
    """Summary numbers of one phase-2 run from its curves (recomputable without training).

    `test_acc_at_fit`: test accuracy at the first logged epoch whose train accuracy is ≥ `fit`
    (`epoch_at_fit`), so starts that fit at different speeds are compared at equal fit; None if
    never reached."""
    coh, alpha = "coherence/train/m_coherence", "coherence/train/alpha"
    train, test = curves["train_accuracy"][-1], curves["test_accuracy"][-1]
    tests = [np.nan if v is None else v for v in curves["test_accuracy"]]
    best = int(np.nanargmax(tests)) if not np.all(np.isnan(tests)) else None
    out = {"test_acc_final": test, "train_acc_final": train,
           "gap_final": None if train is None or test is None else train - test,
           "train_loss_final": curves["train_loss"][-1],
           "max_test_acc": None if best is None else tests[best],
           "epoch_of_max_test_acc": None if best is None else curves["epoch"][best],
           "epoch_train_acc_99": first_epoch(curves, "train_accuracy", 0.99),
           "epoch_at_fit": first_epoch(curves, "train_accuracy", fit),
           "coh_start": curves[coh][0], "alpha_start": curves[alpha][0],
           "coh_final": curves[coh][-1], "alpha_final": curves[alpha][-1],
           "coh_max": max((v for v in curves[coh] if v is not None), default=None),
           "wnorm_start": curves["weight_norm"][0], "wnorm_final": curves["weight_norm"][-1],
           "test_acc_start": curves["test_accuracy"][0],
           "train_acc_start": curves["train_accuracy"][0]}
    at_fit = None if out["epoch_at_fit"] is None else curves["epoch"].index(out["epoch_at_fit"])
    out["test_acc_at_fit"] = None if at_fit is None else curves["test_accuracy"][at_fit]
    out["train_acc_at_fit"] = None if at_fit is None else curves["train_accuracy"][at_fit]
    return out


# ----------------------------------------------------------------------------------------------
# Model, data, loops
# ----------------------------------------------------------------------------------------------

def _initial_model(config, ds):
    """The model with its initial weights: a pure function of `config.seed` (phase 1's start
    and phase 2's fresh start are the same weights)."""
    import keras

    keras.utils.set_random_seed(int(config.seed))
    return common.mlp(config, ds.input_shape, ds.num_classes)


def _load(config):
    from cgh_tf import data

    return data.load(config.dataset, label_noise=1.0, noise_kind="uniform",
                     seed=int(config.data_seed) + int(config.seed),
                     max_train=config.max_train, max_test=config.max_test)


def _evaluator(model, loss_fn):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def evaluate(xs, ys):
        logits = model(xs, training=False)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ys), tf.float32)
        return loss_fn(ys, logits), tf.reduce_mean(correct)
    return evaluate


def _epoch_updates(n, batch_size, count, per_update, seed, phase, epoch):
    """int32 [count / per_update, per_update, B]: the batches of `epoch` of `phase` (1 or 2),
    from the permutation `default_rng([seed, phase, epoch])`."""
    perm = np.random.default_rng([int(seed), phase, int(epoch)]).permutation(n)
    return graph_loop.epoch_updates(perm[:count * batch_size], batch_size, per_update)


def phase1_config(config):
    """The fields phase 1 depends on (its identity for resume / reuse)."""
    return {k: config[k] for k in PHASE1_FIELDS}


def shared_phase1_dir(run_dir):
    """`<workdir>/<dataset>/phase1/seed<k>` of the phase-2 run `<workdir>/<dataset>/<arm>/seed<k>`:
    one phase 1 per dataset and seed, shared by every adversarial arm."""
    return os.path.join(os.path.dirname(os.path.dirname(run_dir)), "phase1",
                        os.path.basename(run_dir))


def run_phase1(config, phase1_dir, echo=print):
    """Train (or resume, or reuse if finished) phase 1 of `config`'s seed: the named hook for
    what a declaration cannot say (it stops at a target accuracy and is shared by arms); its
    results dict."""
    import ml_collections

    p1 = ml_collections.ConfigDict(phase1_config(config))
    done = common.finished_or_checked(p1, phase1_dir, lambda _: check_config(config))
    if done is not None and os.path.exists(os.path.join(phase1_dir, "final.weights.h5")):
        return done
    with workdir_lock.hold(phase1_dir, "adversarial_init phase 1"):
        return _train_phase1(config, p1.to_dict(), phase1_dir, echo or (lambda line: None))


def _train_phase1(config, p1_dict, phase1_dir, echo):
    import keras
    import tensorflow as tf

    from cgh_tf import optimizers

    started = time.time()
    ds = _load(config)
    x, y_random = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    y_real = ds.train.original_y.astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    model = _initial_model(config, ds)
    optimizer = optimizers.build("adam", float(config.phase1_learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    n, batch = len(x), int(config.phase1_batch_size)
    xt, yt = tf.constant(x), tf.constant(y_random)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, xt, yt, batch)
    evaluate = _evaluator(model, loss_fn)
    count = _checked_batches(n, batch, 1, "phase1_batch_size")

    def log(epoch, curves):
        loss, acc = evaluate(xt, yt)
        _, real = evaluate(xt, tf.constant(y_real))
        _, test = evaluate(tf.constant(x_test), tf.constant(y_test))
        row = {"epoch": epoch, "step": epoch, "random_label_loss": float(loss),
               "random_label_accuracy": float(acc), "real_label_accuracy": float(real),
               "test_accuracy": float(test), "weight_norm": common.weight_norm(model)}
        common.append(curves, row)
        return row

    ckpt = common.Checkpointer(phase1_dir, model, optimizer)
    epoch, curves = ckpt.restore(p1_dict)
    if curves is None:
        epoch, curves = 0, {}
        row = log(0, curves)
    else:
        row = {k: v[-1] for k, v in curves.items()}
        echo(f"  phase 1 resumed {phase1_dir} at epoch {epoch}")
    stop = phase1_stop(row["random_label_accuracy"], epoch, float(config.phase1_target),
                       int(config.phase1_max_epochs))
    while stop is None:
        train(_epoch_updates(n, batch, count, 1, config.seed, 1, epoch))
        epoch += 1
        row = log(epoch, curves)
        stop = phase1_stop(row["random_label_accuracy"], epoch, float(config.phase1_target),
                           int(config.phase1_max_epochs))
        if epoch % int(config.phase1_checkpoint_every) == 0 or stop is not None:
            ckpt.save(epoch, curves, p1_dict)
            echo(f"  phase 1 epoch {epoch}: random-label train acc "
                 f"{row['random_label_accuracy']:.3f} |w| {row['weight_norm']:.1f}")
    model.save_weights(os.path.join(phase1_dir, "final.weights.h5"))
    summary = {"phase1_epochs": epoch, "phase1_stopped_by": stop,
               "phase1_reached_target": stop == "target",
               "phase1_random_label_accuracy": row["random_label_accuracy"],
               "phase1_real_label_accuracy": row["real_label_accuracy"],
               "phase1_test_accuracy": row["test_accuracy"],
               "phase1_wnorm_init": curves["weight_norm"][0],
               "phase1_wnorm_final": row["weight_norm"],
               "labels_kept": float(np.mean(y_random == y_real))}
    return common.finish(phase1_dir, p1_dict, curves, summary, started)


def build_optimizer(config):
    """(plain SGD or M3 / RM3 / RA3 over it, through `cgh_tf.optimizers.build`; batches per
    update)."""
    from cgh_tf import optimizers

    return (optimizers.build(config.optimizer, float(config.learning_rate), groups=3, window=3),
            OPTIMIZERS[config.optimizer])


def run(config, run_dir, echo=print, phase1_dir=None):
    """Train (or resume, or skip if finished) one phase-2 run; returns its results dict.

    phase1_dir: where phase 1 of this seed lives (default `run_dir/phase1`; the experiment
    passes `shared_phase1_dir(run_dir)`, one per dataset and seed)."""
    echo = echo or (lambda line: None)
    done = common.finished_or_checked(config, run_dir, check_config)
    if done is not None:
        return done
    phase1 = None
    if config.start == "adversarial":
        phase1_dir = phase1_dir or os.path.join(run_dir, "phase1")
        phase1 = run_phase1(config, phase1_dir, echo)
    with workdir_lock.hold(run_dir, "adversarial_init phase 2"):
        return _train_phase2(config, run_dir, echo, phase1, phase1_dir)


def _train_phase2(config, run_dir, echo, phase1, phase1_dir):
    import keras
    import tensorflow as tf

    from cgh_tf import coherence

    started = time.time()
    ds = _load(config)
    x, y = ds.train.x.astype(np.float32), ds.train.original_y.astype(np.int32)  # real labels
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    model = _initial_model(config, ds)
    if phase1 is not None:
        model.load_weights(os.path.join(phase1_dir, "final.weights.h5"))
    keras.utils.set_random_seed(int(config.seed))
    optimizer, per_update = build_optimizer(config)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    n, batch = len(x), int(config.batch_size)
    xt, yt = tf.constant(x), tf.constant(y)
    xs, ys = tf.constant(x_test), tf.constant(y_test)
    sample = common.sample(n, int(config.coherence_samples), config.data_seed, 3)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, xt, yt, batch, per_update)
    evaluate = _evaluator(model, loss_fn)
    count = _checked_batches(n, batch, per_update, "batch_size")

    def advance(start, stop):
        for epoch in range(start, stop):
            train(_epoch_updates(n, batch, count, per_update, config.seed, 2, epoch))

    def log(epoch):
        loss, acc = evaluate(xt, yt)
        test_loss, test = evaluate(xs, ys)
        row = {"epoch": epoch, "step": epoch, "train_loss": float(loss),
               "train_accuracy": float(acc), "test_loss": float(test_loss),
               "test_accuracy": float(test)}
        stats = coherence.measure(model, x[sample], y[sample], loss=loss_fn, per_layer=True,
                                  batch_size=len(sample))
        row.update(common.coherence_row("coherence/train", stats))
        row["weight_norm"] = common.weight_norm(model)
        if epoch:
            echo(f"  {config.start}/{config.optimizer} epoch {epoch}/{config.epochs}: train acc "
                 f"{row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} m-coh. "
                 f"{row['coherence/train/m_coherence']:.2f} |w| {row['weight_norm']:.1f}")
        return row

    logs = log_epochs(config)
    curves = graph_loop.run_logged(
        run_dir, config.to_dict(), model, optimizer, advance, log, total=int(config.epochs),
        log_points=logs, checkpoint_points=logs[::int(config.checkpoint_every_logs)], echo=echo)
    summary = summarize(curves, float(config.compare_train_acc))
    if phase1 is not None:
        summary.update({k: v for k, v in phase1["summary"].items()
                        if not isinstance(v, (str, bool))})
    summary["num_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    summary["updates_per_epoch"] = count // per_update
    return common.finish(run_dir, config.to_dict(), curves, summary, started, num_train=n,
                         num_test=len(x_test),
                         phase1=None if phase1 is None else phase1["summary"])


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------

def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    common.require_one_of(config, "dataset", data.DATASETS)
    common.require_one_of(config, "start", STARTS)
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    need(isinstance(config.compare_train_acc, (int, float)) and 0 < config.compare_train_acc <= 1,
         f"compare_train_acc={config.compare_train_acc!r} must be in (0, 1]")
    for field in ("learning_rate", "phase1_learning_rate"):
        need(isinstance(config[field], (int, float)) and config[field] > 0,
             f"{field}={config[field]!r} must be a number > 0")
    need(isinstance(config.phase1_target, (int, float)) and 0 < config.phase1_target <= 1,
         f"phase1_target={config.phase1_target!r} must be in (0, 1] (train accuracy on the "
         "random labels)")
    for field in ("width", "depth", "batch_size", "phase1_batch_size", "epochs",
                  "phase1_max_epochs", "phase1_checkpoint_every", "coherence_samples",
                  "checkpoint_every_logs"):
        need(config_schema.is_int(config[field], 1),
             f"{field}={config[field]!r} must be an int >= 1")
    for field in ("max_train", "max_test"):
        need(config[field] is None or (isinstance(config[field], int) and config[field] >= 1),
             f"{field}={config[field]!r} must be None or an int >= 1")
    for field in ("seed", "data_seed"):
        need(isinstance(config[field], int) and config[field] >= 0,
             f"{field}={config[field]!r} must be an int >= 0")
    need(all(isinstance(e, int) and e >= 0 for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be ints >= 0")


def log_epochs(config):
    """Sorted epochs to log at: `log_epochs` up to `epochs` plus 0 and `epochs` itself."""
    return sorted({int(e) for e in config.log_epochs if e <= int(config.epochs)}
                  | {0, int(config.epochs)})


def arms(scale="small", seeds=3, overrides=None, optimizers=None):
    """Arms "<dataset>/<start>_<optimizer arm>" (panel: the optimizer arm); every config checked
    before any data is loaded; `optimizers` / `overrides["optimizers"]`: only these arms.

    Datasets: `DATASETS[scale]`, or only `overrides["dataset"]`; optimizer arms:
    `OPTIMIZER_ARMS` (or the names in `optimizers`); config = base ← `SCALES[scale]` ←
    `DATASET_CHANGES[scale][dataset]` ← `overrides` ← the arm's start / optimizer / batch."""
    from configs import adversarial_init as ai_config

    overrides = dict(overrides or {})
    optimizers = overrides.pop("optimizers", optimizers)
    for field in ("start", "optimizer"):
        if field in overrides:
            raise ValueError(f"{field} is set by the arms ({', '.join(STARTS)} x "
                             f"{', '.join(OPTIMIZER_ARMS)}); do not override it")
    names = tuple(optimizers or OPTIMIZER_ARMS)
    for name in names:
        if name not in OPTIMIZER_ARMS:
            raise ValueError(f"optimizer arm {name!r} is unknown; allowed: "
                             f"{', '.join(OPTIMIZER_ARMS)}")
    out = []
    for dataset, base in common.dataset_bases(ai_config, scale, overrides, "adversarial_init"):
        for start in STARTS:
            for name in names:
                optimizer, factor, label = OPTIMIZER_ARMS[name]
                config = config_schema.apply_overrides(base, {
                    "start": start, "optimizer": optimizer,
                    "batch_size": int(base.batch_size) * factor})
                check_config(config)
                out += [Arm(f"{dataset}/{start}_{name}", f"{start} start", label, seed,
                            config_schema.apply_overrides(config, {"seed": seed}))
                        for seed in range(seeds)]
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
PHASE1_TABLE = (("phase1_epochs", "epochs", ".0f"),
                ("phase1_random_label_accuracy", "train acc (random labels)", ".3f"),
                ("phase1_real_label_accuracy", "train acc (real labels)", ".3f"),
                ("phase1_test_accuracy", "test acc", ".3f"),
                ("phase1_wnorm_final", "‖w‖ final", ".1f"))


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


def analyses(runs):
    """The phase-1 table (one phase 1 per dataset and seed, read from the adversarial arms)."""
    phase1 = {}
    for a, r in runs:
        if r.get("phase1"):
            phase1.setdefault(a.config.dataset, {})[a.seed] = r["phase1"]
    lines = ["Phase 1 (per seed, shared by every adversarial arm):", "",
             "| dataset | " + " | ".join(h for _, h, _ in PHASE1_TABLE) + " | stopped by |",
             "|---" * (len(PHASE1_TABLE) + 2) + "|"]
    for dataset, by_seed in phase1.items():
        lines.append(f"| {dataset} | " + " | ".join(
            statistics.summarize([s[k] for s in by_seed.values()]).text(fmt)
            for k, _, fmt in PHASE1_TABLE) + " | " + ", ".join(
            s["phase1_stopped_by"] for s in by_seed.values()) + " |")
    return lines + [""], {"phase1": {d: {f"seed{k}": s for k, s in v.items()}
                                     for d, v in phase1.items()}}


def figures(workdir, runs):
    from . import figures as fig

    keys = (("test_accuracy", "test acc. (fraction)"),
            ("train_accuracy", "train acc., real labels (fraction)"),
            ("coherence/train/m_coherence", "m-coherence, real-label sample"),
            ("weight_norm", "‖w‖ (L2 norm of all weights)"))
    return [fig.curves_per_group(
        workdir, f"adversarial_init_{dataset}_curves.png",
        [(a, r) for a, r in runs if a.config.dataset == dataset], keys, x="epoch",
        x_label="phase-2 epoch", row_of=lambda a: a.panel,
        title=f"Phase 2 on real labels, {dataset}: adversarial vs fresh start")
        for dataset in dict.fromkeys(a.config.dataset for a, _ in runs)]


PROGRESS = ("test_acc_final", "train_acc_final", "coh_start", "wnorm_start")

EXPERIMENT = Experiment(
    name="adversarial_init",
    title="Adversarial initialisation: random-label pretraining, then real labels",
    arms=arms, run_arm=lambda config, run_dir, echo=None: run(
        config, run_dir, echo, phase1_dir=shared_phase1_dir(run_dir)),
    columns=COLUMNS, loop="graph", comparisons=comparisons, compared=COMPARED, rules=rules,
    analyses=analyses, figures=figures, progress=PROGRESS)
