"""Do pristine examples dominate the early loss reduction beyond the gradient-blind null? f^p of
a fixed mixed sample against Q_p/Q at every early step and epoch end of plain SGD (2002.10657).
docs/experiments/intro/loss_fractions.md; design §7.1."""

import numpy as np

from cgh_tf import statistics
from configs import loss_fractions as lf_config

from . import beyond_common as common
from . import config_schema
from . import curve_stats
from . import figures as fig
from . import graph_loop
from . import memorisation_run
from . import per_example_runs
from . import probes
from .experiment import Column, Experiment

SAMPLE_SALT = 3  # `common.sample` salt of the fixed mixed sample


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import data

    is_int = config_schema.is_int
    memorisation_run.check_data(config)
    common.require_one_of(config, "noise_kind", data.LABEL_NOISE_KINDS)
    common.require_ints(config, ("width", "depth", "batch_size", "epochs",
                                 "fraction_samples", "checkpoint_every_logs"))
    common.require_ints(config, ("every_step_until",), 0)
    common.require_label_noise(config)
    common.require_positive(config, ("learning_rate",))
    first, last = tuple(config.early_window)
    common.require(is_int(first, 0) and is_int(last, first) and last <= config.every_step_until,
                   f"early_window={tuple(config.early_window)!r} must be (first, last) steps "
                   f"with 0 <= first <= last <= every_step_until={config.every_step_until}")


def fractions_row(model, x, y, pristine, loss):
    """{f_pristine, fp_null, fp_minus_null, count_share} of one sample (x, y arrays; pristine
    [m] bool): f^p, Q_p/Q, their difference and n_p/n, in inference mode."""
    from cgh_tf import nulls

    f_p = probes.fraction_pristine(model, x, y, pristine, loss)
    null = nulls.fp_null_of_model(model, x, y, pristine, loss=loss, batch_size=len(x))
    return {"f_pristine": f_p, "fp_null": null, "fp_minus_null": f_p - null,
            "count_share": nulls.count_share(pristine)}


def _setup(config, run_dir, echo):
    ds = memorisation_run.load_data(config)
    x, y, corrupted = *common.arrays(ds.train), ds.train.corrupted
    run = per_example_runs.build(config, x, y, ds.input_shape, ds.num_classes)
    per_epoch, n = run.train_epoch.batches_per_epoch, len(x)
    idx = common.sample(n, config.fraction_samples, config.data_seed, SAMPLE_SALT)

    def log(step):
        pred, losses = run.predict(x, y)
        return {"step": step, "epoch": step / per_epoch, "train_loss": float(np.mean(losses)),
                **probes.label_accuracies(pred, y, corrupted),
                **fractions_row(run.model, x[idx], y[idx], ~corrupted[idx], run.loss_fn)}

    epoch_ends = [e * per_epoch for e in range(1, int(config.epochs) + 1)]
    return graph_loop.Training(
        run.model, run.optimizer, log=log, total=epoch_ends[-1],
        summarize=lambda curves: summarize(curves, config.early_window),
        extra=dict(num_train=n, num_corrupted=int(corrupted.sum()), sample_size=len(idx),
                   steps_per_epoch=per_epoch),
        **graph_loop.step_schedule(
            run.train_epoch, config, n, set(range(int(config.every_step_until) + 1))
            | set(epoch_ends), epoch_ends[::int(config.checkpoint_every_logs)]))


def summarize(curves, window):
    """Means over the steps of `window` (inclusive) of f^p, Q_p/Q, f^p − Q_p/Q; count share; the
    last logged values."""
    first, last = window
    steps = np.asarray(curves["step"])
    chosen = (steps >= first) & (steps <= last)

    def early(key):
        values = [v for v, keep in zip(curves[key], chosen) if keep and v is not None]
        return float(np.mean(values)) if values else None

    return {**curve_stats.last_values(curves), "fp_early": early("f_pristine"),
            "null_early": early("fp_null"), "fp_minus_null_early": early("fp_minus_null"),
            "fp_step0": curves["f_pristine"][0], "null_step0": curves["fp_null"][0]}


def arms(scale_name="small", seeds=3, overrides=None):
    """Arms `<dataset>/noise<pp>` per dataset and noise level (`NOISE_LEVELS`)."""
    overrides = dict(overrides or {})
    common.refuse_overrides(overrides, ("label_noise",), "set by each arm "
                            f"({', '.join(map(str, lf_config.NOISE_LEVELS))})")
    return [arm for dataset, base in common.dataset_bases(lf_config, scale_name, overrides,
                                                          "loss_fractions")
            for noise in lf_config.NOISE_LEVELS
            for arm in common.seeded_arms(
                f"{dataset}/noise{round(noise * 100):02d}",
                f"{dataset}, {noise:.0%} {base.noise_kind} noise", dataset,
                config_schema.apply_overrides(base, {"label_noise": noise}), seeds, check_config)]


def rules(arms_):
    return [statistics.PairedRule(
        f"{group}: pristine examples dominate early loss reduction beyond the null",
        "fp_early", group, group, prediction="higher", control_metric="null_early")
        for group in dict.fromkeys(a.group for a in arms_)]


def setting(runs):
    from cgh_tf import nulls

    lines = []
    for arm, r in {a.group: (a, r) for a, r in runs}.values():
        c = r["config"]
        lines.append(
            f"{arm.label}: n = {r['num_train']:,}, {r['num_corrupted']:,} labels changed "
            f"(expected share {nulls.changed_fraction(c['label_noise'], 10, c['noise_kind']):.3f}"
            f"); MLP {c['depth']} × {c['width']}, SGD lr {c['learning_rate']}, batch "
            f"{c['batch_size']} ({r['steps_per_epoch']} steps per epoch), {c['epochs']} epochs; "
            f"fixed mixed sample of m = {r['sample_size']}; early window: steps "
            f"{c['early_window'][0]}–{c['early_window'][1]} (every step logged to "
            f"{c['every_step_until']}).")
    return lines + [""]


def figures(workdir, runs):
    keys = (("f_pristine", "f^p (pristine share of loss reduction)"),
            ("fp_null", "Q_p/Q (f^p's gradient-blind null)"),
            ("fp_minus_null", "f^p − Q_p/Q"), ("count_share", "count share n_p/n"),
            ("corrupted_accuracy", "corrupted train acc. (noisy label)"))
    return [fig.curves_per_group(workdir, "loss_fractions_vs_step.png", runs, keys, x="step",
                                 x_label="step (0 plotted at 0.5; log)", log_x=10,
                                 title="Pristine share of the loss reduction and its null",
                                 row_of=lambda a: a.panel)]


EXPERIMENT = Experiment(
    name="loss_fractions", default_seeds=5,
    title="Pristine share of the early loss reduction, f^p, against its null Q_p/Q",
    arms=arms, run_arm=graph_loop.declared_run(_setup, check_config), loop="graph",
    scales=("small",),
    columns=(Column("fp_early", "f^p (early window mean)"),
             Column("null_early", "Q_p/Q (early window mean)"),
             Column("fp_minus_null_early", "f^p − Q_p/Q (early window)"),
             Column("count_share", "count share n_p/n"),
             Column("fp_step0", "f^p (step 0)"), Column("null_step0", "Q_p/Q (step 0)"),
             Column("f_pristine", "f^p (last)"), Column("fp_null", "Q_p/Q (last)"),
             Column("corrupted_accuracy", "corrupted train acc (last)")),
    contrasts=(("fp_early", "null_early"), ("fp_early", "count_share")),
    rules=rules, setting=setting, figures=figures,
    progress=("fp_early", "null_early", "fp_minus_null_early"))
