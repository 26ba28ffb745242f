"""Early stopping with label noise: does the coherence of training gradients say when to stop?
The rules are `stopping_rules` (docs/experiments/intro/early_stopping.md, design §7.1)."""

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import factories
from . import figures as plots
from . import graph_loop
from . import per_example_runs
from . import probes
from . import stopping_rules
from .experiment import Column, Experiment

DATASETS = ("mnist5k", "mnist1d", "digits")  # embedded datasets (no download)
OPTIMIZERS = ("adam", "sgd")


def log_steps(config, steps_per_epoch):
    """Sorted global steps to log at: 0, `early_logs_per_epoch` per epoch (rounded to steps) for
    the first `early_epochs` epochs, then every epoch up to `epochs`."""
    epochs, early = int(config.epochs), min(int(config.early_epochs), int(config.epochs))
    per = int(config.early_logs_per_epoch)
    steps = {round(k * steps_per_epoch / per) for k in range(early * per + 1)}
    steps |= {e * steps_per_epoch for e in range(early, epochs + 1)}
    return sorted(steps)


def _setup(config, run_dir, echo):
    import tensorflow as tf

    from cgh_tf import data, optimizers

    ds = data.load(config.dataset, label_noise=float(config.label_noise),
                   noise_kind=config.noise_kind, seed=int(config.data_seed),
                   max_train=config.max_train, max_test=config.max_test)
    x_all, y_all = common.arrays(ds.train)
    train_idx, val_idx = common.split_indices(len(x_all), config.validation_fraction,
                                              config.data_seed)
    x, y, corrupted = x_all[train_idx], y_all[train_idx], ds.train.corrupted[train_idx]
    x_val, y_val = x_all[val_idx], y_all[val_idx]
    y_val_clean = ds.train.original_y[val_idx].astype(np.int32)
    x_test, y_test = common.arrays(ds.test)
    if corrupted.sum() == 0 or corrupted.all():
        raise ValueError(f"label_noise={config.label_noise!r} leaves no corrupted or no pristine "
                         "training example")
    run = per_example_runs.build(
        config, x, y, ds.input_shape, ds.num_classes,
        optimizer=optimizers.build(config.optimizer, float(config.learning_rate)))
    model, loss_fn, n = run.model, run.loss_fn, len(x)
    m = int(config.coherence_samples)
    samples = {"train": common.sample(n, m, config.data_seed, 1),
               "pristine": common.sample(~corrupted, m, config.data_seed, 2),
               "corrupted": common.sample(corrupted, m, config.data_seed, 3)}
    mixed = samples["train"]
    xt, yt = tf.constant(x), tf.constant(y)
    steps_per_epoch = run.train_epoch.batches_per_epoch
    schedule = log_steps(config, steps_per_epoch)
    x_eval, y_eval = (np.concatenate(a) for a in ((x, x_val, x_test), (y, y_val, y_test)))

    def log(step):
        pred, pred_val, pred_test = np.split(run.predict(x_eval, y_eval)[0], [n, n + len(x_val)])
        row = {"step": step, "epoch": step / steps_per_epoch,
               "train_loss": float(loss_fn(yt, model(xt, training=False))),
               "train_accuracy": probes.accuracy(pred, y),
               "test_accuracy": probes.accuracy(pred_test, y_test),
               "validation_accuracy": probes.accuracy(pred_val, y_val),
               "validation_clean_accuracy": probes.accuracy(pred_val, y_val_clean),
               **probes.label_accuracies(pred, y, corrupted),
               **probes.sample_coherence(
                   model, {name: (x[idx], y[idx]) for name, idx in samples.items()}, loss_fn),
               "f_pristine": probes.fraction_pristine(model, x[mixed], y[mixed],
                                                      ~corrupted[mixed], loss_fn)}
        echo(f"  {run_dir} epoch {row['epoch']:.2f}: test {row['test_accuracy']:.3f} val "
             f"{row['validation_accuracy']:.3f} corrupted {row['corrupted_accuracy']:.3f} "
             f"m-coh. train {row[stopping_rules.TRAIN_SAMPLE_KEY]:.2f} f^p {row['f_pristine']:.3f}")
        return row

    def summarize(curves):
        summary = stopping_rules.stopping_summary(curves, float(config.coherence_drop),
                                                  float(config.plateau_fraction),
                                                  float(config.onset_rise))
        return {**summary, **{f"last/{key}": curves[key][-1] for key in LAST}}

    return graph_loop.Training(
        model, run.optimizer, log=log, summarize=summarize,
        extra=dict(num_train=n, num_validation=int(len(val_idx)),
                   num_corrupted=int(corrupted.sum()),
                   num_validation_corrupted=int(ds.train.corrupted[val_idx].sum()),
                   steps_per_epoch=steps_per_epoch),
        **graph_loop.step_schedule(run.train_epoch, config, n, schedule,
                                   schedule[::int(config.checkpoint_every_logs)]))


LAST = ("test_accuracy", "pristine_accuracy", "corrupted_accuracy", "train_loss",
        stopping_rules.TRAIN_SAMPLE_KEY, "coherence/pristine/alpha", "coherence/corrupted/alpha",
        "f_pristine")  # their last values are in the summary as last/<key>


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    common.require_one_of(config, "dataset", DATASETS)
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    common.require_each(config, ("noise_levels",), lambda v: isinstance(v, (tuple, list)) and len(
        v) >= 1 and all(config_schema.is_number(p) and 0 < p < 1 for p in v),
        "a non-empty tuple of numbers in (0, 1)")
    common.require_label_noise(config)
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    common.require_positive(config, ("learning_rate",))
    common.require_ints(config, ("width", "depth", "batch_size", "epochs", "early_logs_per_epoch",
                                 "coherence_samples", "checkpoint_every_logs"))
    common.require_ints(config, ("early_epochs", "seed", "data_seed"), 0)
    common.require_optional_ints(config, ("max_train", "max_test"), 2)
    common.require_fractions(config, ("validation_fraction", "coherence_drop",
                                      "plateau_fraction", "onset_rise"))
    n = factories.dataset_sizes(config)[0]
    held_out = common.held_out_count(n, config.validation_fraction)
    common.require(n - held_out >= 2 and held_out >= 1,
                   f"validation_fraction={config.validation_fraction!r} leaves {n - held_out} "
                   f"training / {held_out} validation examples of {n}; both need ≥ 2 / ≥ 1")


def arms(scale="small", seeds=3, overrides=None):
    """One arm per dataset (`common.dataset_bases`) and level of `noise_levels`."""
    from configs import early_stopping as es_config

    overrides = dict(overrides or {})
    if "label_noise" in overrides:
        raise ValueError(f"label_noise={overrides['label_noise']!r} is set per run from "
                         "noise_levels; set noise_levels=(p,) instead")
    out = []
    for dataset, base in common.dataset_bases(es_config, scale, overrides, "early_stopping"):
        check_config(base)
        for noise in base.noise_levels:
            out += common.seeded_arms(
                f"{dataset}/noise{round(noise * 100):02d}", f"{noise:.0%} noise", dataset,
                config_schema.apply_overrides(base, {"label_noise": float(noise)}), seeds,
                check_config)
    return out


COLUMNS = tuple(Column(f"test_accuracy/{rule}", f"test acc at pick: {rule}")
                for rule in stopping_rules.RULES) + (
    Column("epoch/memorisation_onset", "memorisation onset (epoch)", ".2f"),
    Column("epoch/coherence_drop", "c1 pick (epoch)", ".2f"),
    Column("gap/coherence_drop_minus_onset", "c1 − onset (epochs)", ".2f"),
    Column("epoch/validation", "b pick (epoch)", ".2f"),
    Column("coherence_drop_fired", "c1 fired (share of seeds)", ".2f"),
)
# within each arm, paired by seed: each rule's test accuracy at its pick against the others'
CONTRASTS = (("test_accuracy/validation", "test_accuracy/final"),
             ("test_accuracy/coherence_drop", "test_accuracy/final"),
             ("test_accuracy/coherence_drop", "test_accuracy/validation"),
             ("test_accuracy/coherence_plateau", "test_accuracy/validation"))


def rules(arms_):
    """Per noise level: stopping early is worth something (b vs a, predicted higher); coherence
    is a stopping signal at least as good as a noisy validation split (c1 vs b)."""
    out = []
    for group in dict.fromkeys(a.group for a in arms_):
        out += [statistics.PairedRule(f"{group}: validation stopping beats training to the end",
                                      "test_accuracy/validation", group, group, "higher",
                                      control_metric="test_accuracy/final"),
                statistics.PairedRule(f"{group}: coherence stopping (c1) vs validation stopping",
                                      "test_accuracy/coherence_drop", group, group,
                                      control_metric="test_accuracy/validation")]
    return out


def analyses(runs):
    """Per noise level: does rule c1 find the memorisation onset (`stopping_rules.verdict`)."""
    lines = ["Does the training-sample coherence tell when memorisation begins?", ""]
    verdicts = {g: stopping_rules.verdict(r) for g, r in common.by_group(runs).items()}
    return lines + [f"- {g}: {v}" for g, v in verdicts.items()] + [""], {"onset": verdicts}


def setting(runs):
    r0, c = runs[0][1], runs[0][1]["config"]
    return [f"{c['dataset']}: MLP {c['depth']} × {c['width']} ReLU, {c['optimizer']} lr "
            f"{c['learning_rate']}, batch {c['batch_size']}, {c['epochs']} epochs "
            f"({r0['steps_per_epoch']} steps each), label noise {c['noise_kind']!r} at "
            f"{', '.join(f'{p:.0%}' for p in c['noise_levels'])}; {r0['num_train']} training / "
            f"{r0['num_validation']} validation examples (held out of the noisy training set: "
            f"same noise); m = {c['coherence_samples']}. " + stopping_rules.describe(c), ""]


def figures(workdir, runs):
    keys = (("test_accuracy", "test acc. (fraction)"),
            ("validation_accuracy", "noisy-validation acc. (fraction)"),
            ("corrupted_accuracy", "corrupted train acc. (noisy label)"),
            ("pristine_accuracy", "pristine train acc. (fraction)"),
            ("coherence/train/m_coherence", "m-coherence, mixed train sample"),
            ("f_pristine", "f^p (fraction)"))
    return [plots.curves_per_group(workdir, f"early_stopping_{dataset}.png", chosen, keys,
                                   x="epoch", x_label="epoch", title=f"Early stopping, {dataset}",
                                   row_of=lambda a: a.group)
            for dataset, chosen in plots.per_dataset(runs)]


run = graph_loop.declared_run(_setup, check_config)

EXPERIMENT = Experiment(
    name="early_stopping", default_seeds=5,
    title="Early stopping under label noise: test accuracy of stopping rules, and coherence",
    arms=arms, run_arm=run, columns=COLUMNS, loop="graph", contrasts=CONTRASTS, rules=rules,
    analyses=analyses, setting=setting, figures=figures,
    progress=("test_accuracy/final", "test_accuracy/validation", "test_accuracy/coherence_drop",
              "epoch/memorisation_onset"))
