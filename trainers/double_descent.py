"""Model-wise and epoch-wise double descent, with the coherence of pristine and corrupted examples:
one arm per dataset and MLP width (docs/experiments/intro/double_descent.md, design §7.1)."""

import numpy as np

from . import beyond_common as common
from . import config_schema
from . import curve_stats
from . import figures as plots
from . import graph_loop
from . import per_example_runs
from . import probes
from .experiment import Column, Experiment


def _setup(config, run_dir, echo):
    import keras
    import tensorflow as tf

    from cgh_tf import data

    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=int(config.data_seed))
    (x, y), (x_test, y_test) = common.arrays(ds.train), common.arrays(ds.test)
    corrupted = ds.train.corrupted
    run = per_example_runs.build(config, x, y, ds.input_shape, ds.num_classes,
                                 optimizer=keras.optimizers.Adam(float(config.learning_rate)))
    model, loss_fn = run.model, run.loss_fn
    m = int(config.coherence_samples)
    samples = {"pristine": common.sample(~corrupted, m, config.data_seed, 1),
               "corrupted": common.sample(corrupted, m, config.data_seed, 2)}
    mixed = common.sample(len(x), int(config.fraction_samples), config.data_seed, 3)
    xt, yt = tf.constant(x), tf.constant(y)

    def log(epoch):
        (pred_train, _), (pred_test, _) = run.predict(x, y), run.predict(x_test, y_test)
        return {"epoch": epoch, "step": epoch,
                "train_loss": float(loss_fn(yt, model(xt, training=False))),
                "test_error": float(np.mean(pred_test != y_test)),
                **probes.label_accuracies(pred_train, y, corrupted, ds.train.original_y),
                **probes.sample_coherence(
                    model, {name: (x[idx], y[idx]) for name, idx in samples.items()}, loss_fn),
                "f_pristine": probes.fraction_pristine(model, x[mixed], y[mixed],
                                                       ~corrupted[mixed], loss_fn),
                "weight_norm": probes.weight_norm(model)}

    def summarize(curves):
        best = curve_stats.best_at(curves, "test_error", highest=False)
        return {**curve_stats.last_values(curves), "num_params": curve_stats.params(model),
                **dict(zip(("min_test_error", "epoch_of_min_test_error"), best))}

    return graph_loop.Training(
        model, run.optimizer, log=log, summarize=summarize,
        extra={"num_train": len(x), "num_corrupted": int(corrupted.sum())},
        **graph_loop.epoch_schedule(run.train_epoch, config, len(x)))


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    common.require_one_of(config, "dataset", data.DATASETS)
    common.require_label_noise(config)
    common.require_ints(config, ("width", "depth", "batch_size", "epochs", "coherence_samples",
                                 "fraction_samples", "checkpoint_every_logs"))
    common.require_int_list(config, "log_epochs")


def arms(scale="small", seeds=3, overrides=None, widths=None):
    """One arm per dataset (`common.dataset_bases`) and width (`widths` / `overrides["widths"]`,
    else `WIDTHS[scale][dataset]`)."""
    from configs import double_descent as dd_config

    overrides = dict(overrides or {})
    widths = overrides.pop("widths", widths)
    out = []
    for dataset, base in common.dataset_bases(dd_config, scale, overrides, "double_descent"):
        for width in widths or dd_config.WIDTHS[scale][dataset]:
            out += common.seeded_arms(f"{dataset}/width{width:04d}", f"{dataset}, width {width}",
                                      dataset, config_schema.apply_overrides(
                                          base, {"width": width}), seeds, check_config)
    return out


COLUMNS = (
    Column("num_params", "parameters", ".0f"),
    Column("test_error", "test error (last epoch)"),
    Column("min_test_error", "min test error (any logged epoch)"),
    Column("epoch_of_min_test_error", "epoch of that min", ".0f"),
    Column("pristine_accuracy", "pristine train acc"),
    Column("corrupted_accuracy", "corrupted train acc (vs noisy label)"),
    Column("coherence/pristine/m_coherence", "m-coh. pristine", ".2f"),
    Column("coherence/corrupted/m_coherence", "m-coh. corrupted", ".2f"),
    Column("f_pristine", "f^p"),
)


def setting(runs):
    lines = []
    for dataset, chosen in plots.per_dataset(runs):
        c = chosen[0][1]["config"]
        lines += [f"{dataset}: MLP with {c['depth']} hidden layer(s), Adam lr "
                  f"{c['learning_rate']}, batch {c['batch_size']}, {c['epochs']} epochs, "
                  f"{c['label_noise']:.0%} label noise ({c['noise_kind']}); m = "
                  f"{c['coherence_samples']} pristine / corrupted examples; f^p on "
                  f"{c['fraction_samples']} mixed training examples. Values at the last epoch "
                  "unless stated.", ""]
    return lines


def figures(workdir, runs):
    """Per dataset: the model-wise figure (last epoch vs width) and the epoch-wise one."""
    keys = (("test_error", "test error (fraction)"),
            ("corrupted_accuracy", "corrupted train acc. (noisy label)"),
            ("coherence/pristine/m_coherence", "m-coherence, pristine sample"),
            ("coherence/corrupted/m_coherence", "m-coherence, corrupted sample"),
            ("f_pristine", "f^p (fraction)"))
    return [file for dataset, chosen in plots.per_dataset(runs) for file in (
        plots.summary_vs_axis(workdir, f"double_descent_{dataset}_width.png", chosen, keys,
                              axis="width", x_label="hidden width (units, log2)", log_x=2,
                              title=f"Model-wise double descent, {dataset} (last epoch)"),
        plots.curves_per_group(workdir, f"double_descent_{dataset}_epoch.png", chosen, keys,
                               x="epoch", x_label="epoch (0 plotted at 0.5; log)", log_x=10,
                               title=f"Epoch-wise curves per width, {dataset}"))]


run = graph_loop.declared_run(_setup, check_config)

EXPERIMENT = Experiment(
    name="double_descent", default_seeds=5,
    title="Double descent: test error and coherence of pristine / corrupted examples",
    arms=arms, run_arm=run, columns=COLUMNS, loop="graph",
    contrasts=(("coherence/pristine/m_coherence", "coherence/corrupted/m_coherence"),),
    figures=figures, setting=setting,
    progress=("test_error", "min_test_error", "corrupted_accuracy",
              "coherence/pristine/m_coherence", "coherence/corrupted/m_coherence", "f_pristine"))
