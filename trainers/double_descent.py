r"""Model-wise and epoch-wise double descent, with the coherence of pristine and corrupted examples.

One run (`run(config, run_dir)`): an MLP (`depth` hidden layers of `width` ReLU units; mnist5k's
28×28 images are flattened to 784 inputs) trained with Adam on `cgh_tf.data.load(dataset,
label_noise=...)` (MNIST-1D: 40 inputs; mnist5k: 4,000 / 1,000 real digits), no weight decay,
for `epochs` epochs. At each epoch of `log_epochs` (0 = before training) it logs: test error;
train accuracy on the pristine and on the corrupted examples (vs their noisy labels:
memorisation); training loss; the exact m-coherence / α (per layer) of a fixed sample of m
pristine and of m corrupted training examples (with their training labels); and f^p = ⟨g, g^p⟩ /
⟨g, g⟩ on a fixed mixed training sample (`cgh_tf.coherence.loss_reduction_fractions`).
Resumable from a checkpoint written every `checkpoint_every_logs` log epochs
(`trainers/beyond_common.py`). Batch order: epoch e is the
permutation `default_rng([seed, e])`.
"""

import os
import time

import numpy as np

from trainers import beyond_common as common
from trainers import config_schema
from trainers import hparams_board

DEFAULT_SEEDS = 2


build_model = common.mlp


def _train(config, run_dir, echo):
    """The training of one run (`run` below: finished runs and bad configs are handled there)."""
    config_dict = config.to_dict()
    import keras
    import tensorflow as tf

    from cgh_tf import coherence, data

    started = time.time()
    keras.utils.set_random_seed(int(config.seed))
    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=int(config.data_seed))
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    corrupted = ds.train.corrupted
    x_test, y_test = ds.test.x.astype(np.float32), ds.test.y.astype(np.int32)
    model = build_model(config, ds.input_shape, ds.num_classes)
    optimizer = keras.optimizers.Adam(float(config.learning_rate))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    m = int(config.coherence_samples)
    samples = {"pristine": common.sample(~corrupted, m, config.data_seed, 1),
               "corrupted": common.sample(corrupted, m, config.data_seed, 2)}
    mixed = common.sample(len(x), int(config.fraction_samples), config.data_seed, 3)
    n, batch = len(x), int(config.batch_size)
    xt, yt = tf.constant(x), tf.constant(y)

    @tf.function(reduce_retracing=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    num_batches = -(-n // batch)

    @tf.function
    def train_epoch(perm):  # one call per epoch: the batch loop runs inside the graph
        for k in tf.range(num_batches):
            idx = perm[k * batch:(k + 1) * batch]
            train_step(tf.gather(xt, idx), tf.gather(yt, idx))

    @tf.function(reduce_retracing=True)
    def predict(xs):
        return tf.argmax(model(xs, training=False), -1, output_type=tf.int32)

    def log(epoch, curves):
        pred_train, pred_test = predict(xt).numpy(), predict(tf.constant(x_test)).numpy()
        logits = model(xt, training=False)
        row = {"epoch": epoch, "step": epoch,
               "train_loss": float(loss_fn(yt, logits)),
               "test_error": float(np.mean(pred_test != y_test)),
               "pristine_accuracy": float(np.mean(pred_train[~corrupted] == y[~corrupted])),
               "corrupted_accuracy": float(np.mean(pred_train[corrupted] == y[corrupted])),
               "corrupted_true_accuracy": float(np.mean(
                   pred_train[corrupted] == ds.train.original_y[corrupted]))}
        for name, idx in samples.items():
            stats = coherence.measure(model, x[idx], y[idx], loss=loss_fn, per_layer=True,
                                      batch_size=m)
            row.update(common.coherence_row(f"coherence/{name}", stats))
        f_p, _ = coherence.loss_reduction_fractions(model, x[mixed], y[mixed], ~corrupted[mixed],
                                                    loss=loss_fn, batch_size=len(mixed))
        row["f_pristine"] = f_p
        row["weight_norm"] = common.weight_norm(model)
        common.append(curves, row)
        return row

    ckpt = common.Checkpointer(run_dir, model, optimizer)
    epoch, curves = ckpt.restore(config_dict)
    log_epochs = _log_epochs(config)
    if curves is None:
        epoch, curves = 0, {}
        if 0 in log_epochs:
            log(0, curves)
    while epoch < int(config.epochs):
        train_epoch(tf.constant(np.random.default_rng([int(config.seed), epoch]).permutation(n)))
        epoch += 1
        if epoch in log_epochs:
            log(epoch, curves)
            if (log_epochs.index(epoch) % int(config.checkpoint_every_logs) == 0
                    or epoch == int(config.epochs)):
                ckpt.save(epoch, curves, config_dict)
    summary = {key: curves[key][-1] for key in curves if key not in ("epoch", "step")}
    errors = curves["test_error"]
    best = int(np.nanargmin(np.array([np.nan if e is None else e for e in errors])))
    summary["min_test_error"] = errors[best]
    summary["epoch_of_min_test_error"] = curves["epoch"][best]
    summary["num_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return common.finish(run_dir, config_dict, curves, summary, started, num_train=n,
                         num_corrupted=int(corrupted.sum()))


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------

def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    need = common.require

    need(config.dataset in data.DATASETS, f"dataset={config.dataset!r} is unknown; allowed: "
         f"{', '.join(data.DATASETS)}")
    need(isinstance(config.label_noise, (int, float)) and 0 < config.label_noise < 1,
         f"label_noise={config.label_noise!r} must be in (0, 1): the experiment compares "
         "pristine and corrupted examples")
    for field in ("width", "depth", "batch_size", "epochs", "coherence_samples",
                  "fraction_samples", "checkpoint_every_logs"):
        need(isinstance(config[field], int) and config[field] >= 1,
             f"{field}={config[field]!r} must be an int >= 1")
    need(all(isinstance(e, int) and e >= 0 for e in config.log_epochs),
         f"log_epochs={tuple(config.log_epochs)!r} must be ints >= 0")


def _log_epochs(config):
    """Sorted epochs to log at: `log_epochs` up to `epochs` (later ones are dropped, so that
    `--set=epochs=N` needs no new list) plus `epochs` itself."""
    return sorted({int(e) for e in config.log_epochs if e <= int(config.epochs)}
                  | {int(config.epochs)})


def arms(scale="small", seeds=DEFAULT_SEEDS, overrides=None, widths=None):
    """[(group, label, seed, config)]: one group per dataset and width; every config checked.

    Datasets: `DATASETS[scale]`, or only `overrides["dataset"]`; widths: `WIDTHS[scale][dataset]`
    unless `widths` is given; config = base ← `SCALES[scale]` ← `DATASET_CHANGES[scale][dataset]`
    ← `overrides`."""
    from configs import double_descent as dd_config

    if scale not in dd_config.SCALES:
        raise ValueError(f"scale={scale!r} is unknown for double_descent; allowed: "
                         f"{', '.join(dd_config.SCALES)}")
    overrides = dict(overrides or {})
    datasets = ((overrides["dataset"],) if "dataset" in overrides
                else dd_config.DATASETS[scale])
    out = []
    for dataset in datasets:
        if dataset not in dd_config.WIDTHS[scale]:
            raise ValueError(f"dataset={dataset!r} has no width sweep at scale {scale!r}; "
                             f"allowed: {', '.join(dd_config.WIDTHS[scale])}")
        base = common.scaled_config(dd_config, scale, dataset, overrides)
        for width in widths or dd_config.WIDTHS[scale][dataset]:
            config = config_schema.apply_overrides(base, {"width": width})
            check_config(config)
            for seed in range(seeds):
                out.append((f"{dataset}/width{width:04d}", f"{dataset}, width {width}", seed,
                            config_schema.apply_overrides(config, {"seed": seed})))
    return out


TABLE = (  # (summary key, header, format)
    ("num_params", "parameters", ".0f"),
    ("test_error", "test error (last epoch)", ".3f"),
    ("min_test_error", "min test error (any logged epoch)", ".3f"),
    ("epoch_of_min_test_error", "epoch of that min", ".0f"),
    ("pristine_accuracy", "pristine train acc", ".3f"),
    ("corrupted_accuracy", "corrupted train acc (vs noisy label)", ".3f"),
    ("coherence/pristine/m_coherence", "m-coh. pristine", ".2f"),
    ("coherence/corrupted/m_coherence", "m-coh. corrupted", ".2f"),
    ("f_pristine", "f^p", ".3f"),
)


def report(workdir, runs, command, seconds):
    groups = common.by_group(runs)
    summary = {"experiment": "double_descent", "command": command, "groups": {},
               "seconds": seconds}
    for group, results in groups.items():
        summary["groups"][group] = {
            key: dict(zip(("mean", "sd", "n"), common.mean_sd([r["summary"][key] for r in results])),
                      values=[r["summary"][key] for r in results]) for key, _, _ in TABLE}
    figures = plot(workdir, runs)
    summary["figures"] = figures
    lines = ["# Double descent: test error and coherence of pristine / corrupted examples", "",
             f"Command: `{command}`", ""]
    for dataset in dict.fromkeys(r["config"]["dataset"] for *_, r in runs):
        c = next(r["config"] for *_, r in runs if r["config"]["dataset"] == dataset)
        lines += [f"{dataset}: MLP with {c['depth']} hidden layer(s), Adam lr "
                  f"{c['learning_rate']}, batch {c['batch_size']}, {c['epochs']} epochs, "
                  f"{c['label_noise']:.0%} label noise ({c['noise_kind']}); m = "
                  f"{c['coherence_samples']} pristine / corrupted examples; f^p on "
                  f"{c['fraction_samples']} mixed training examples.", ""]
    lines += ["Mean ± sample sd over seeds; values at the last epoch unless stated.", ""]
    lines += ["| run | " + " | ".join(h for _, h, _ in TABLE) + " |",
              "|---" * (len(TABLE) + 1) + "|"]
    for group, results in groups.items():
        lines.append(f"| {group} | " + " | ".join(
            common.cell([r["summary"][k] for r in results], fmt) for k, _, fmt in TABLE) + " |")
    common.write_results_md(workdir, lines, runs, figures, summary, per="width")
    common.write_json(os.path.join(workdir, "results.json"), summary)  # with the seconds
    hparams_board.write_sweep(workdir, [
        (os.path.join(workdir, group, f"seed{seed}"), r["config"], {"group": group}, r["summary"],
         r["curves"]) for group, _, seed, r in runs])
    return summary


def plot(workdir, runs):
    plt = common.pyplot()

    groups = common.by_group(runs)
    datasets = list(dict.fromkeys(g.split("/")[0] for g in groups))
    columns = (("test_error", "test error"), ("corrupted_accuracy",
                                              "corrupted train acc (noisy label)"),
               ("coherence/pristine/m_coherence", "m-coh. pristine sample"),
               ("coherence/corrupted/m_coherence", "m-coh. corrupted sample"),
               ("f_pristine", "f^p"))
    figures = []
    for dataset in datasets:
        names = [g for g in groups if g.startswith(dataset + "/")]
        widths = [groups[g][0]["config"]["width"] for g in names]
        # model-wise: last-epoch value vs width
        fig, axes = plt.subplots(1, len(columns), figsize=(3.3 * len(columns), 2.8))
        for ax, (key, title) in zip(axes, columns):
            vals = [[r["summary"][key] for r in groups[g]] for g in names]
            mean = [np.nanmean([np.nan if v is None else v for v in vs]) for vs in vals]
            lo = [np.nanmin([np.nan if v is None else v for v in vs]) for vs in vals]
            hi = [np.nanmax([np.nan if v is None else v for v in vs]) for vs in vals]
            ax.plot(widths, mean, "o-")
            ax.fill_between(widths, lo, hi, alpha=0.25)
            if key == "test_error":
                best = [np.nanmean([r["summary"]["min_test_error"] for r in groups[g]])
                        for g in names]
                ax.plot(widths, best, "s--", ms=3, label="min over epochs")
                ax.legend(fontsize=7)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("hidden width", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
        fig.suptitle(f"Model-wise double descent, {dataset} (last epoch; band: min-max over "
                     f"seeds)", fontsize=10)
        fig.tight_layout()
        name = f"double_descent_{dataset}_width.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)
        # epoch-wise: curves per width vs epoch
        fig, axes = plt.subplots(1, len(columns), figsize=(3.3 * len(columns), 2.8))
        cmap = plt.get_cmap("viridis")
        for i, g in enumerate(names):
            epochs = np.array(groups[g][0]["curves"]["epoch"], dtype=float)
            for ax, (key, title) in zip(axes, columns):
                mean, _, _ = common.series(groups[g], key)
                ax.plot(np.maximum(epochs, 0.5), mean, color=cmap(i / max(1, len(names) - 1)),
                        label=f"w={widths[i]}")
        for ax, (key, title) in zip(axes, columns):
            ax.set_xscale("log")
            ax.set_xlabel("epoch (0 plotted at 0.5)", fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=6, ncol=2)
        fig.suptitle(f"Epoch-wise curves per width, {dataset} (mean over seeds)", fontsize=10)
        fig.tight_layout()
        name = f"double_descent_{dataset}_epoch.png"
        fig.savefig(os.path.join(workdir, name), dpi=90)
        plt.close(fig)
        figures.append(name)
    return figures


def _describe(s):
    """The progress line of a finished run (`common.run_plan`)."""
    return (f"test error {s['test_error']:.3f} (min {s['min_test_error']:.3f}) corrupted acc "
            f"{s['corrupted_accuracy']:.3f} m-coh. pristine "
            f"{s['coherence/pristine/m_coherence']:.2f} corrupted "
            f"{s['coherence/corrupted/m_coherence']:.2f} f^p {s['f_pristine']:.3f}")


def reproduce(workdir, scale="small", seeds=DEFAULT_SEEDS, overrides=None, command="",
              echo=print, widths=None):
    echo = echo or (lambda line: None)
    plan = arms(scale, seeds, overrides, widths)  # every config checked before the workdir exists
    runs, seconds = common.run_plan(workdir, plan, run, _describe, echo)
    return report(workdir, runs, command, seconds)


run = common.resumable(_train, check_config)
