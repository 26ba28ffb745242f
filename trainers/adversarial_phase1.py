"""Phase 1 of `adversarial_init` (`run_phase1`): one resumable run per dataset and seed, shared by
its adversarial arms, training the seeded MLP on 100 % random labels until `phase1_target` (or
`phase1_max_epochs`); what both phases share (data, initial model, batches); the phase-1 table.
"""

import os

import numpy as np

from cgh_tf import statistics, workdir_lock

from . import beyond_common as common
from . import graph_loop
from . import models
from . import probes

WEIGHTS_FILE = "final.weights.h5"  # phase 1's final weights, which phase 2 starts from
PHASE1_FIELDS = ("dataset", "max_train", "max_test", "data_seed", "seed", "width", "depth",
                 "phase1_learning_rate", "phase1_batch_size", "phase1_target",
                 "phase1_max_epochs", "phase1_checkpoint_every")  # phase 1's identity


def phase1_stop(accuracy, epoch, target, max_epochs):
    """Why phase 1 stops after `epoch` epochs at random-label accuracy `accuracy`: "target"
    (accuracy ≥ target; checked first), "max_epochs" (epoch ≥ max_epochs), or None (go on)."""
    if accuracy is not None and accuracy >= target:
        return "target"
    if epoch >= max_epochs:
        return "max_epochs"
    return None


def batches_per_epoch(n, batch_size, per_update):
    """Batches of one epoch: the largest multiple of `per_update` full batches that fits in n."""
    return (n // (batch_size * per_update)) * per_update


def checked_batches(n, batch_size, per_update, field):
    count = batches_per_epoch(n, batch_size, per_update)
    if count == 0:
        raise ValueError(f"{field}={batch_size} leaves no full batch"
                         f"{'' if per_update == 1 else f' group of {per_update}'} in the "
                         f"{n} training examples")
    return count


def initial_model(config, ds):
    """The MLP with its initial weights, a pure function of `config.seed` (both phases')."""
    import keras

    keras.utils.set_random_seed(int(config.seed))
    return models.mlp(config, ds.input_shape, ds.num_classes)


def load(config):
    from cgh_tf import data

    return data.load(config.dataset, label_noise=1.0, noise_kind="uniform",
                     seed=int(config.data_seed) + int(config.seed),
                     max_train=config.max_train, max_test=config.max_test)


def advancer(train, n, batch_size, count, per_update, seed, phase):
    """`advance(start, stop)` in epochs of `phase` (1 or 2) of the `graph_loop.update_trainer`
    `train`: an epoch is `count` batches (`per_update` an update) of `default_rng([seed, phase,
    epoch])`'s order."""

    def advance(start, stop):
        for epoch in range(start, stop):
            perm = np.random.default_rng([int(seed), phase, int(epoch)]).permutation(n)
            train(graph_loop.epoch_updates(perm[:count * batch_size], batch_size, per_update))

    return advance


def shared_phase1_dir(run_dir):
    """`<workdir>/<dataset>/phase1/seed<k>` of the phase-2 run `<workdir>/<dataset>/<arm>/seed<k>`
    (one phase 1 per dataset and seed)."""
    return os.path.join(os.path.dirname(os.path.dirname(run_dir)), "phase1",
                        os.path.basename(run_dir))


def run_phase1(config, phase1_dir, echo, check_config):
    """Train (or resume, or reuse if finished) phase 1 of `config`'s seed; its results dict.
    `check_config(config)`: the experiment's check (one line, before any work)."""
    import ml_collections

    p1 = ml_collections.ConfigDict({k: config[k] for k in PHASE1_FIELDS})
    done = common.finished_or_checked(p1, phase1_dir, lambda _: check_config(config))
    if done is not None and _readable(os.path.join(phase1_dir, WEIGHTS_FILE)):
        return done  # else (missing, damaged) rebuilt from phase 1's last checkpoint
    with workdir_lock.hold(phase1_dir, "adversarial_init phase 1"):
        return graph_loop.train_declared(_phase1, p1, phase1_dir, echo or (lambda line: None))


def _readable(path) -> bool:
    """True if `path` opens as an HDF5 file (a weights file cut or emptied does not)."""
    import h5py

    try:
        h5py.File(path, "r").close()
    except OSError:  # incl. FileNotFoundError
        return False
    return True


def _phase1(config, run_dir, echo):
    import keras
    import tensorflow as tf

    from cgh_tf import optimizers

    ds = load(config)
    x, y_random = common.arrays(ds.train)
    y_real = ds.train.original_y.astype(np.int32)
    x_test, y_test = common.arrays(ds.test)
    model = initial_model(config, ds)
    optimizer = optimizers.build("adam", float(config.phase1_learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    n, batch = len(x), int(config.phase1_batch_size)
    xt, yt = tf.constant(x), tf.constant(y_random)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, xt, yt, batch)
    evaluate = probes.loss_accuracy(model, loss_fn)
    count = checked_batches(n, batch, 1, "phase1_batch_size")
    target, max_epochs = float(config.phase1_target), int(config.phase1_max_epochs)
    every = int(config.phase1_checkpoint_every)

    def log(epoch):
        loss, acc = evaluate(xt, yt)
        _, real = evaluate(xt, tf.constant(y_real))
        _, test = evaluate(tf.constant(x_test), tf.constant(y_test))
        row = {"epoch": epoch, "step": epoch, "random_label_loss": float(loss),
               "random_label_accuracy": float(acc), "real_label_accuracy": float(real),
               "test_accuracy": float(test), "weight_norm": probes.weight_norm(model)}
        if epoch and (epoch % every == 0 or phase1_stop(float(acc), epoch, target, max_epochs)):
            echo(f"  phase 1 epoch {epoch}: random-label train acc "
                 f"{row['random_label_accuracy']:.3f} |w| {row['weight_norm']:.1f}")
        return row

    def stopped_by(curves):
        return phase1_stop(curves["random_label_accuracy"][-1], curves["epoch"][-1], target,
                           max_epochs)

    def summarize(curves):  # after the last epoch: the final weights, then the summary
        staged = os.path.join(run_dir, f".staged-{os.getpid()}.{WEIGHTS_FILE}")
        model.save_weights(staged)  # then renamed: a kill never leaves a part under the name
        os.replace(staged, os.path.join(run_dir, WEIGHTS_FILE))
        stop, last = stopped_by(curves), {k: v[-1] for k, v in curves.items()}
        return {"phase1_epochs": int(last["epoch"]), "phase1_stopped_by": stop,
                "phase1_reached_target": stop == "target",
                "phase1_random_label_accuracy": last["random_label_accuracy"],
                "phase1_real_label_accuracy": last["real_label_accuracy"],
                "phase1_test_accuracy": last["test_accuracy"],
                "phase1_wnorm_init": curves["weight_norm"][0],
                "phase1_wnorm_final": last["weight_norm"],
                "labels_kept": float(np.mean(y_random == y_real))}

    return graph_loop.Training(
        model, optimizer, advancer(train, n, batch, count, 1, config.seed, 1), log,
        range(max_epochs + 1), range(every, max_epochs + 1, every), summarize,
        until=lambda curves: stopped_by(curves) is not None)


PHASE1_TABLE = (("phase1_epochs", "epochs", ".0f"),
                ("phase1_random_label_accuracy", "train acc (random labels)", ".3f"),
                ("phase1_real_label_accuracy", "train acc (real labels)", ".3f"),
                ("phase1_test_accuracy", "test acc", ".3f"),
                ("phase1_wnorm_final", "‖w‖ final", ".1f"))


def table(runs):
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
