r"""Adversarial initialisation (Liu et al. 2019, arXiv 1906.02613): pretrain on random labels, then
train on the real labels, against a fresh initialisation; SGD, M3, RM3 and their controls.

**Phase 1** (`run_phase1(config, phase1_dir)`, one resumable run per seed, shared by every
phase-2 arm of that seed): `build_model` (an MLP of `depth` × `width` ReLU units; mnist5k's
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

| path (in WORKDIR)                  | content                                                |
|------------------------------------|--------------------------------------------------------|
| `<dataset>/phase1/seed<k>/`        | phase 1: `ckpt/`, `curves.json`, `results.json`,       |
|                                    | `final.weights.h5`, `tensorboard/`                     |
| `<dataset>/<start>_<opt>/seed<k>/` | one phase-2 arm: the same without the weights file     |
| `results.md`, `results.json`, `*.png`, events file | the report, figures, HParams columns |
"""

import os
import time

import numpy as np

from trainers import beyond_common as common
from trainers import config_schema

DEFAULT_SEEDS = 2
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


def paired_differences(runs, key):
    """{(dataset, optimizer group): [adversarial − fresh per seed]} over the seeds that have
    both starts and a value in both."""
    values = {}
    for group, _, seed, result in runs:
        dataset, arm = group.split("/")
        start, opt = arm.split("_", 1)
        values.setdefault((dataset, opt), {}).setdefault(seed, {})[start] = \
            result["summary"].get(key)
    out = {}
    for k, by_seed in values.items():
        diffs = [s["adversarial"] - s["fresh"] for _, s in sorted(by_seed.items())
                 if s.get("adversarial") is not None and s.get("fresh") is not None]
        out[k] = diffs
    return out


# ----------------------------------------------------------------------------------------------
# Model, data, loops
# ----------------------------------------------------------------------------------------------

build_model = common.mlp


def _initial_model(config, ds):
    """The model with its initial weights: a pure function of `config.seed` (phase 1's start
    and phase 2's fresh start are the same weights)."""
    import keras

    keras.utils.set_random_seed(int(config.seed))
    return build_model(config, ds.input_shape, ds.num_classes)


def _load(config):
    from cgh_tf import data

    return data.load(config.dataset, label_noise=1.0, noise_kind="uniform",
                     seed=int(config.data_seed) + int(config.seed),
                     max_train=config.max_train, max_test=config.max_test)


def _train_function(model, optimizer, loss_fn, x, y, batch_size):
    """tf.function idx int32 [batches, batch_size] -> one optimizer.apply per batch."""
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None, batch_size], tf.int32)])
    def train(idx):
        for k in tf.range(tf.shape(idx)[0]):
            with tf.GradientTape() as tape:
                loss = loss_fn(tf.gather(y, idx[k]), model(tf.gather(x, idx[k]), training=True))
            optimizer.apply(tape.gradient(loss, variables), variables)
    return train


def _evaluator(model, loss_fn):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def evaluate(xs, ys):
        logits = model(xs, training=False)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), ys), tf.float32)
        return loss_fn(ys, logits), tf.reduce_mean(correct)
    return evaluate


def _epoch_batches(n, batch_size, count, seed, phase, epoch):
    perm = np.random.default_rng([int(seed), phase, int(epoch)]).permutation(n)
    return perm[:count * batch_size].reshape(count, batch_size).astype(np.int32)


def phase1_config(config):
    """The fields phase 1 depends on (its identity for resume / reuse)."""
    return {k: config[k] for k in PHASE1_FIELDS}


def run_phase1(config, phase1_dir, echo=print):
    """Train (or resume, or reuse if finished) phase 1 of `config`'s seed; its results dict."""
    import ml_collections

    echo = echo or (lambda line: None)
    p1 = ml_collections.ConfigDict(phase1_config(config))
    done = common.finished_or_checked(p1, phase1_dir, lambda _: check_config(config))
    if done is not None and os.path.exists(os.path.join(phase1_dir, "final.weights.h5")):
        return done
    import keras
    import tensorflow as tf

    from trainers import hparams_board

    started = time.time()
    ds = _load(config)
    x, y_random = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    y_real = ds.train.original_y.astype(np.int32)
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    model = _initial_model(config, ds)
    optimizer = keras.optimizers.Adam(float(config.phase1_learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    n, batch = len(x), int(config.phase1_batch_size)
    xt, yt = tf.constant(x), tf.constant(y_random)
    train = _train_function(model, optimizer, loss_fn, xt, yt, batch)
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
    p1_dict = p1.to_dict()
    epoch, curves = ckpt.restore(p1_dict)
    if curves is None:
        epoch, curves = 0, {}
        row = log(0, curves)
    else:
        row = {k: v[-1] for k, v in curves.items()}
        echo(f"  phase 1 resumed {phase1_dir} at epoch {epoch}")
    stop = phase1_stop(row["random_label_accuracy"], epoch, float(config.phase1_target),
                       int(config.phase1_max_epochs))
    every = int(config.phase1_checkpoint_every)
    while stop is None:
        train(tf.constant(_epoch_batches(n, batch, count, config.seed, 1, epoch)))
        epoch += 1
        row = log(epoch, curves)
        stop = phase1_stop(row["random_label_accuracy"], epoch, float(config.phase1_target),
                           int(config.phase1_max_epochs))
        if epoch % every == 0 or stop is not None:
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
    hparams_board.write_session(
        os.path.join(phase1_dir, "tensorboard"),
        hparams={"phase": "phase1", "dataset": config.dataset, "seed": int(config.seed),
                 "width": int(config.width), "depth": int(config.depth)},
        metrics={k: v for k, v in summary.items() if not isinstance(v, (str, bool))},
        curves=curves)
    return common.finish(phase1_dir, p1_dict, curves, summary, started)


def build_optimizer(config):
    import keras

    import cgh_tf

    inner = keras.optimizers.SGD(float(config.learning_rate))
    wrap = {"sgd": lambda o: o, "m3": lambda o: cgh_tf.M3(o, groups=3),
            "rm3": lambda o: cgh_tf.RM3(o, window=3), "ra3": lambda o: cgh_tf.RA3(o, window=3)}
    return wrap[config.optimizer](inner), OPTIMIZERS[config.optimizer]


def run(config, run_dir, echo=print, phase1_dir=None):
    """Train (or resume, or skip if finished) one phase-2 run; returns its results dict.

    phase1_dir: where phase 1 of this seed lives (default `run_dir/phase1`); `reproduce` passes
    one directory per dataset and seed, shared by every arm."""
    echo = echo or (lambda line: None)
    config_dict = config.to_dict()
    done = common.finished_or_checked(config, run_dir, check_config)
    if done is not None:
        return done
    import keras
    import tensorflow as tf

    from cgh_tf import coherence
    from trainers import hparams_board

    phase1 = None
    if config.start == "adversarial":
        phase1_dir = phase1_dir or os.path.join(run_dir, "phase1")
        phase1 = run_phase1(config, phase1_dir, echo)
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
    train = _train_function(model, optimizer, loss_fn, xt, yt, batch)
    evaluate = _evaluator(model, loss_fn)
    count = _checked_batches(n, batch, per_update, "batch_size")

    def log(epoch, curves):
        loss, acc = evaluate(xt, yt)
        test_loss, test = evaluate(xs, ys)
        row = {"epoch": epoch, "step": epoch, "train_loss": float(loss),
               "train_accuracy": float(acc), "test_loss": float(test_loss),
               "test_accuracy": float(test)}
        stats = coherence.measure(model, x[sample], y[sample], loss=loss_fn, per_layer=True,
                                  batch_size=len(sample))
        row.update(common.coherence_row("coherence/train", stats))
        row["weight_norm"] = common.weight_norm(model)
        common.append(curves, row)
        return row

    ckpt = common.Checkpointer(run_dir, model, optimizer)
    epoch, curves = ckpt.restore(config_dict)
    logs = log_epochs(config)
    if curves is None:
        epoch, curves = 0, {}
        log(0, curves)
    else:
        echo(f"  resumed {run_dir} at epoch {epoch}")
    total = int(config.epochs)
    while epoch < total:
        train(tf.constant(_epoch_batches(n, batch, count, config.seed, 2, epoch)))
        epoch += 1
        if epoch in logs:
            row = log(epoch, curves)
            echo(f"  {config.start}/{config.optimizer} epoch {epoch}/{total}: train acc "
                 f"{row['train_accuracy']:.3f} test acc {row['test_accuracy']:.3f} m-coh. "
                 f"{row['coherence/train/m_coherence']:.2f} |w| {row['weight_norm']:.1f}")
            if logs.index(epoch) % int(config.checkpoint_every_logs) == 0 or epoch == total:
                ckpt.save(epoch, curves, config_dict)
    summary = summarize(curves, float(config.compare_train_acc))
    if phase1 is not None:
        summary.update({k: v for k, v in phase1["summary"].items()
                        if not isinstance(v, (str, bool))})
    summary["num_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    summary["updates_per_epoch"] = count // per_update
    hparams_board.write_session(
        os.path.join(run_dir, "tensorboard"),
        hparams={"start": config.start, "optimizer": config.optimizer,
                 "batch_size": batch, "dataset": config.dataset, "width": int(config.width),
                 "depth": int(config.depth), "learning_rate": float(config.learning_rate),
                 "epochs": total, "seed": int(config.seed)},
        metrics=summary, curves=curves)
    return common.finish(run_dir, config_dict, curves, summary, started, num_train=n,
                         num_test=len(x_test),
                         phase1=None if phase1 is None else phase1["summary"])


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------

def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    need(config.dataset in data.DATASETS, f"dataset={config.dataset!r} is unknown; allowed: "
         f"{', '.join(data.DATASETS)}")
    need(config.start in STARTS, f"start={config.start!r} is unknown; allowed: "
         f"{', '.join(STARTS)}")
    need(config.optimizer in OPTIMIZERS, f"optimizer={config.optimizer!r} is unknown; allowed: "
         f"{', '.join(OPTIMIZERS)}")
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
        need(isinstance(config[field], int) and not isinstance(config[field], bool)
             and config[field] >= 1, f"{field}={config[field]!r} must be an int >= 1")
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


def arms(scale="small", seeds=DEFAULT_SEEDS, overrides=None, optimizers=None):
    """[(group, label, seed, config)]: group "<dataset>/<start>_<optimizer arm>"; every config
    checked before any data is loaded.

    Datasets: `DATASETS[scale]`, or only `overrides["dataset"]`; optimizer arms:
    `OPTIMIZER_ARMS` (or the names in `optimizers`); config = base ← `SCALES[scale]` ←
    `DATASET_CHANGES[scale][dataset]` ← `overrides` ← the arm's start / optimizer / batch."""
    from configs import adversarial_init as ai_config

    if scale not in ai_config.SCALES:
        raise ValueError(f"scale={scale!r} is unknown for adversarial_init; allowed: "
                         f"{', '.join(ai_config.SCALES)}")
    overrides = dict(overrides or {})
    for field in ("start", "optimizer"):
        if field in overrides:
            raise ValueError(f"{field} is set by the arms ({', '.join(STARTS)} x "
                             f"{', '.join(OPTIMIZER_ARMS)}); do not override it")
    names = tuple(optimizers or OPTIMIZER_ARMS)
    for name in names:
        if name not in OPTIMIZER_ARMS:
            raise ValueError(f"optimizer arm {name!r} is unknown; allowed: "
                             f"{', '.join(OPTIMIZER_ARMS)}")
    datasets = (overrides["dataset"],) if "dataset" in overrides else ai_config.DATASETS[scale]
    out = []
    for dataset in datasets:
        if dataset not in ai_config.DATASET_CHANGES[scale]:
            raise ValueError(f"dataset={dataset!r} has no settings at scale {scale!r}; "
                             f"allowed: {', '.join(ai_config.DATASET_CHANGES[scale])}")
        base = common.scaled_config(ai_config, scale, dataset, overrides)
        for start in STARTS:
            for name in names:
                optimizer, factor, label = OPTIMIZER_ARMS[name]
                config = config_schema.apply_overrides(base, {
                    "start": start, "optimizer": optimizer,
                    "batch_size": int(base.batch_size) * factor})
                check_config(config)
                for seed in range(seeds):
                    out.append((f"{dataset}/{start}_{name}", f"{dataset}, {start}, {label}",
                                seed, config_schema.apply_overrides(config, {"seed": seed})))
    return out


TABLE = (  # (summary key, header, format)
    ("test_acc_final", "test acc", ".3f"),
    ("train_acc_final", "train acc", ".3f"),
    ("gap_final", "gap (train − test)", ".3f"),
    ("max_test_acc", "max test acc (logged)", ".3f"),
    ("test_acc_at_fit", "test acc at train acc ≥ fit", ".3f"),
    ("train_acc_at_fit", "train acc there", ".3f"),
    ("epoch_at_fit", "epoch of that", ".0f"),
    ("epoch_train_acc_99", "epoch train acc ≥ 0.99", ".0f"),
    ("coh_start", "m-coh. start", ".2f"),
    ("alpha_start", "α start", ".4f"),
    ("coh_max", "m-coh. max", ".2f"),
    ("coh_final", "m-coh. last", ".2f"),
    ("wnorm_start", "‖w‖ start", ".1f"),
    ("wnorm_final", "‖w‖ last", ".1f"),
)
DIFF_TABLE = (("test_acc_final", "Δ test acc", ".3f"), ("gap_final", "Δ gap", ".3f"),
              ("test_acc_at_fit", "Δ test acc at equal fit", ".3f"),
              ("train_acc_final", "Δ train acc", ".3f"), ("coh_start", "Δ m-coh. start", ".2f"),
              ("wnorm_start", "Δ ‖w‖ start", ".1f"))
PHASE1_TABLE = (("phase1_epochs", "epochs", ".0f"),
                ("phase1_random_label_accuracy", "train acc (random labels)", ".3f"),
                ("phase1_real_label_accuracy", "train acc (real labels)", ".3f"),
                ("phase1_test_accuracy", "test acc", ".3f"),
                ("phase1_wnorm_init", "‖w‖ init", ".1f"),
                ("phase1_wnorm_final", "‖w‖ final", ".1f"))


def report(workdir, runs, command, seconds, phase1_runs=()):
    """results.json, results.md, PNGs and the HParams columns; runs = [(group, label, seed,
    result)], phase1_runs = [(dataset, seed, phase-1 result)]."""
    from trainers import hparams_board

    for *_, r in runs:  # summary numbers recomputed from the curves: no retraining
        r["summary"] = {**r["summary"],
                        **summarize(r["curves"], float(r["config"]["compare_train_acc"]))}
    groups = common.by_group(runs)
    labels = {g: l for g, l, *_ in runs}
    summary = {"experiment": "adversarial_init", "command": command, "groups": {},
               "differences": {}, "phase1": {}, "seconds": seconds}
    for group, results in groups.items():
        summary["groups"][group] = {"label": labels[group], "metrics": {
            key: dict(zip(("mean", "sd", "n"), common.mean_sd([r["summary"][key]
                                                              for r in results])),
                      values=[r["summary"][key] for r in results]) for key, _, _ in TABLE}}
    for key, _, _ in DIFF_TABLE:
        for (dataset, opt), diffs in paired_differences(runs, key).items():
            entry = summary["differences"].setdefault(f"{dataset}/{opt}", {})
            entry[key] = dict(zip(("mean", "sd", "n"), common.mean_sd(diffs)), values=diffs)
    for dataset, seed, result in phase1_runs:
        summary["phase1"].setdefault(dataset, {})[f"seed{seed}"] = result["summary"]
    figures = plot(workdir, runs)
    summary["figures"] = figures
    common.write_json(os.path.join(workdir, "results.json"), summary)
    sessions = [(_hparams(r["config"]), r["summary"]) for *_, r in runs]
    hparams_board.write_experiment(workdir, sessions)
    lines = ["# Adversarial initialisation: random-label pretraining, then real labels", "",
             f"Command: `{command}`", ""]
    for dataset in dict.fromkeys(r["config"]["dataset"] for *_, r in runs):
        c = next(r["config"] for *_, r in runs if r["config"]["dataset"] == dataset)
        batch = min(r["config"]["batch_size"] for *_, r in runs
                    if r["config"]["dataset"] == dataset)
        lines += [f"**{dataset}**: MLP {c['depth']} × {c['width']} ReLU. Phase 1: Adam lr "
                  f"{c['phase1_learning_rate']}, batch {c['phase1_batch_size']}, 100 % random "
                  f"labels, until train acc ≥ {c['phase1_target']} or "
                  f"{c['phase1_max_epochs']} epochs. Phase 2 (real labels, same for both "
                  f"starts): plain SGD lr {c['learning_rate']}, batch {batch} (the 3x-batch "
                  f"control: {3 * batch}), {c['epochs']} epochs, fresh optimizer state; "
                  f"m-coherence of a fixed sample of m = {c['coherence_samples']} training "
                  "examples with real labels; "
                  f"'fit' = train acc ≥ {c['compare_train_acc']} (first logged epoch).",
                  ""]
        p1 = [r for d, _, r in phase1_runs if d == dataset]
        if p1:
            lines += ["Phase 1 (per seed, shared by every adversarial arm):", "",
                      "| | " + " | ".join(h for _, h, _ in PHASE1_TABLE) + " | stopped by |",
                      "|---" * (len(PHASE1_TABLE) + 2) + "|",
                      f"| {dataset} | " + " | ".join(
                          common.cell([r["summary"][k] for r in p1], fmt)
                          for k, _, fmt in PHASE1_TABLE) + " | " + ", ".join(
                          r["summary"]["phase1_stopped_by"] for r in p1) + " |", ""]
    lines += ["Phase 2, mean ± sample sd over seeds, at the last epoch unless stated; 'start' = "
              "epoch 0 of phase 2.", "",
              "| arm | " + " | ".join(h for _, h, _ in TABLE) + " |",
              "|---" * (len(TABLE) + 1) + "|"]
    for group, results in groups.items():
        lines.append(f"| {group} | " + " | ".join(
            common.cell([r["summary"][k] for r in results], fmt, n_total=len(results))
            for k, _, fmt in TABLE) + " |")
    lines += ["", "Adversarial − fresh, paired by seed (mean ± sd of the per-seed differences):",
              "", "| dataset / optimizer | " + " | ".join(h for _, h, _ in DIFF_TABLE) + " |",
              "|---" * (len(DIFF_TABLE) + 1) + "|"]
    for name, entry in summary["differences"].items():
        lines.append(f"| {name} | " + " | ".join(
            common.cell(entry[k]["values"], fmt) for k, _, fmt in DIFF_TABLE) + " |")
    timed = runs + [(f"{d}/phase1", None, s, r) for d, s, r in phase1_runs]
    common.write_results_md(workdir, lines, timed, figures, summary, per="arm (phase 1 apart)")
    return summary


def _hparams(config):
    return {"start": config["start"], "optimizer": config["optimizer"],
            "batch_size": config["batch_size"], "dataset": config["dataset"],
            "width": config["width"], "depth": config["depth"],
            "learning_rate": float(config["learning_rate"]), "epochs": config["epochs"],
            "seed": config["seed"]}


def plot(workdir, runs):
    plt = common.pyplot()

    groups = common.by_group(runs)
    datasets = list(dict.fromkeys(g.split("/")[0] for g in groups))
    columns = (("test_accuracy", "test acc"), ("train_accuracy", "train acc (real labels)"),
               ("coherence/train/m_coherence", "m-coh. real-label train sample"),
               ("weight_norm", "‖w‖"))
    colors = {"adversarial": "tab:red", "fresh": "tab:blue"}
    figures = []
    for dataset in datasets:
        opts = list(dict.fromkeys(g.split("/")[1].split("_", 1)[1] for g in groups
                                  if g.startswith(dataset + "/")))
        fig, axes = plt.subplots(len(opts), len(columns),
                                 figsize=(3.3 * len(columns), 2.3 * len(opts)), squeeze=False)
        for row, opt in enumerate(opts):
            for start in STARTS:
                group = f"{dataset}/{start}_{opt}"
                if group not in groups:
                    continue
                epochs = np.array(groups[group][0]["curves"]["epoch"], dtype=float)
                for col, (key, title) in enumerate(columns):
                    ax = axes[row][col]
                    mean, lo, hi = common.series(groups[group], key)
                    ax.plot(epochs, mean, "o-", ms=2, color=colors[start], label=start)
                    ax.fill_between(epochs, lo, hi, color=colors[start], alpha=0.2)
                    if row == 0:
                        ax.set_title(title, fontsize=9)
                    if col == 0:
                        ax.set_ylabel(OPTIMIZER_ARMS[opt][2], fontsize=7)
                    ax.tick_params(labelsize=7)
            if row == len(opts) - 1:
                for ax in axes[row]:
                    ax.set_xlabel("phase-2 epoch", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Phase 2 on real labels, {dataset}: adversarial (random-label pretrained) "
                     "vs fresh start (mean over seeds, band min-max)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        name = f"adversarial_init_{dataset}_curves.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)
    return figures


def reproduce(workdir, scale="small", seeds=DEFAULT_SEEDS, overrides=None, command="",
              echo=print, optimizers=None):
    """Every arm (phase 1 once per dataset and seed; finished runs skipped, interrupted ones
    resumed), then the report."""
    echo = echo or (lambda line: None)
    plan = arms(scale, seeds, overrides, optimizers)  # every config checked: no data yet
    os.makedirs(workdir, exist_ok=True)
    runs, seconds, phase1_runs = [], {}, {}
    for i, (group, label, seed, config) in enumerate(plan, 1):
        started = time.time()
        phase1_dir = os.path.join(workdir, config.dataset, "phase1", f"seed{seed}")
        if config.start == "adversarial" and (config.dataset, seed) not in phase1_runs:
            p1 = run_phase1(config, phase1_dir, echo)
            phase1_runs[(config.dataset, seed)] = p1
            s = p1["summary"]
            echo(f"phase 1 {config.dataset}/seed{seed}: {s['phase1_epochs']} epochs "
                 f"({s['phase1_stopped_by']}), random-label train acc "
                 f"{s['phase1_random_label_accuracy']:.3f}, |w| {s['phase1_wnorm_final']:.1f}")
        result = run(config, os.path.join(workdir, group, f"seed{seed}"), echo=echo,
                     phase1_dir=phase1_dir)
        seconds[group] = round(seconds.get(group, 0.0) + time.time() - started, 1)
        s = result["summary"]
        echo(f"[{i}/{len(plan)}] {group}/seed{seed}: {time.time() - started:.0f} s; test acc "
             f"{s['test_acc_final']:.3f} train acc {s['train_acc_final']:.3f} m-coh. start "
             f"{s['coh_start']:.2f} |w| start {s['wnorm_start']:.1f}")
        runs.append((group, label, seed, result))
    p1_list = [(d, s, r) for (d, s), r in phase1_runs.items()]
    return report(workdir, runs, command, seconds, p1_list)
