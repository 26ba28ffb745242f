"""Grokking on modular arithmetic, with exact per-example coherence logged along the way; every
arm against its matched control (`PAIRS`; docs/experiments/intro/grokking.md, design §7.1)."""

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common
from . import config_schema
from . import curve_stats
from . import graph_loop
from . import models
from . import probes
from . import update_rules
from .experiment import Column, Experiment

MODELS = ("mlp", "transformer")
OPTIMIZERS = update_rules.batches_per_update("adamw")


def check_config(config):
    """ValueError (one line) for a config a run would fail on or silently misread."""
    from cgh_tf import modular

    common.require_one_of(config, "model", MODELS)
    common.require_one_of(config, "operation", modular.OPERATIONS)
    common.require(isinstance(config.train_fraction, float) and 0 < config.train_fraction < 1,
                   f"train_fraction={config.train_fraction!r} must be a float in (0, 1)")
    common.require_one_of(config, "optimizer", OPTIMIZERS)
    update_rules.check_aggregation(config)
    common.require_ints(config, ("p", "width", "depth", "heads", "batch_size", "steps",
                                 "log_every", "checkpoint_every", "print_every_logs",
                                 "coherence_samples"))
    common.require(config.model != "transformer" or config.width % config.heads == 0,
                   f"width={config.width} must be a multiple of heads={config.heads}")


def _setup(config, run_dir, echo):
    import keras
    import tensorflow as tf

    from cgh_tf import modular

    onehot, p = config.model == "mlp", int(config.p)
    data = modular.make(p, config.operation, float(config.train_fraction),
                        seed=int(config.data_seed), encoding="onehot" if onehot else "tokens")
    x_train, y_train = data["x_train"], data["y_train"].astype(np.int32)
    x_test, y_test = data["x_test"], data["y_test"].astype(np.int32)
    init = keras.initializers.VarianceScaling(  # every kernel, seeded by the run's seed
        scale=float(config.init_scale) ** 2, mode="fan_in", distribution="truncated_normal",
        seed=int(config.seed))
    if onehot:
        model = models.mlp(config, (2 * p,), data["num_classes"], initializer=init)
    else:
        model = models.transformer(config, modular.vocabulary_size(p), data["num_classes"], init)
    optimizer, batches_per_update, aggregator = update_rules.build(
        config, OPTIMIZERS, inner="adamw", weight_decay=float(config.weight_decay), beta_1=0.9,
        beta_2=float(config.beta_2))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    m, n = int(config.coherence_samples), len(x_train)
    train_idx = common.sample(n, m, config.seed, 7)
    test_idx = common.sample(len(x_test), m, int(config.seed) + 1000, 7)
    splits = {"train": (tf.constant(x_train), tf.constant(y_train)),
              "test": (tf.constant(x_test), tf.constant(y_test))}
    monitor = {"train": (x_train[train_idx], y_train[train_idx]),
               "test": (x_test[test_idx], y_test[test_idx])}
    evaluate = probes.loss_accuracy(model, loss_fn)
    batches = graph_loop.Batches(n, int(config.batch_size), batches_per_update, config.seed)
    train = graph_loop.update_trainer(model, optimizer, loss_fn, tf.constant(x_train),
                                      tf.constant(y_train), batches.size, batches_per_update,
                                      aggregator)
    total, every = int(config.steps), int(config.log_every)

    def log(step):
        row = {"step": step, **probes.split_metrics(evaluate, splits),
               **probes.sample_coherence(model, monitor, loss_fn),
               "weight_norm": probes.weight_norm(model)}
        if step and (step % (every * int(config.print_every_logs)) == 0 or step == total):
            echo(f"  update {step}/{total}: train acc {row['train_accuracy']:.3f} test acc "
                 f"{row['test_accuracy']:.3f} m-coh train {row['coherence/train/m_coherence']:.2f}"
                 f" test {row['coherence/test/m_coherence']:.2f} |w| {row['weight_norm']:.1f}")
        return row

    return graph_loop.Training(
        model, optimizer, lambda start, stop: train(batches.updates(start, stop)), log,
        log_points=list(range(0, total, every)) + [total],
        checkpoint_points=range(0, total, int(config.checkpoint_every)), summarize=summarize,
        extra=dict(num_train=n, num_test=len(x_test), batches_per_update=batches_per_update),
        unit="update")


def summarize(curves, memorised=0.99, grokked=0.95, onset=0.1):
    """Milestones t_mem (train acc ≥ `memorised`), t_onset / t_grok (test acc ≥ `onset` /
    `grokked`), coherence and ‖w‖ there; `corr_*`: Pearson r of the train / test sample's
    m-coherence and the test accuracy over the logs from t_mem on."""
    tr, te = "coherence/train/m_coherence", "coherence/test/m_coherence"
    t_mem = curve_stats.first_reaching(curves, "train_accuracy", memorised)
    t_onset = curve_stats.first_reaching(curves, "test_accuracy", onset)
    t_grok = curve_stats.first_reaching(curves, "test_accuracy", grokked)
    out = {"t_mem": t_mem, "t_onset": t_onset, "t_grok": t_grok,
           "test_acc_final": curves["test_accuracy"][-1],
           "train_acc_final": curves["train_accuracy"][-1]}
    for name, key in (("train", tr), ("test", te)):
        out[f"coh_{name}_init"] = curves[key][0]
        for label, step in (("mem", t_mem), ("onset", t_onset), ("grok", t_grok)):
            out[f"coh_{name}_at_{label}"] = curve_stats.value_at(curves, key, step)
        out[f"coh_{name}_final"] = curves[key][-1]
        pairs = [(c, a) for s, c, a in zip(curves["step"], curves[key], curves["test_accuracy"])
                 if t_mem is not None and s >= t_mem and c is not None]
        out[f"corr_{name}"] = (float(np.corrcoef(np.array(pairs).T)[0, 1])
                               if len(pairs) > 2 and np.std([a for _, a in pairs]) > 0 else None)
    for label, step in (("init", 0), ("mem", t_mem), ("grok", t_grok)):
        out[f"wnorm_at_{label}"] = curve_stats.value_at(curves, "weight_norm", step)
    out["wnorm_final"] = curves["weight_norm"][-1]
    return out


# group -> (label, changes of the base config; "transformer" = the scale's TRANSFORMER fields)
ARMS = {
    "mlp_adamw": ("MLP, AdamW wd 1", {}),
    "mlp_adamw_wd0": ("MLP, AdamW wd 0", {"weight_decay": 0.0}),
    "mlp_m3": ("MLP, M3(AdamW) wd 1", {"optimizer": "m3"}),
    "mlp_adamw_x3": ("MLP, AdamW wd 1, batch x3 (M3's examples/update)", {"batch_size": 1536}),
    "mlp_rm3": ("MLP, RM3(AdamW) wd 1", {"optimizer": "rm3"}),
    "mlp_ra3": ("MLP, RA3(AdamW) wd 1 (RM3's control: mean of the last 3)", {"optimizer": "ra3"}),
    "mlp_winsorize": ("MLP, winsorized AdamW (c = 1 %: 1 example per side) wd 1, batch 128",
                      {"batch_size": 128, "aggregation": "winsorize", "winsorize_pct": 1.0}),
    "mlp_adamw_b128": ("MLP, AdamW wd 1, batch 128 (winsorized GD's matched control)",
                       {"batch_size": 128}),
    "mlp_subtract": ("MLP, AdamW wd 1, a − b", {"operation": "subtract"}),
    "transformer_adamw": ("Transformer (1 layer), AdamW wd 1", "transformer"),
}


def arms(scale="small", seeds=3, overrides=None, groups=None):
    """The arms of `ARMS` (or only `groups` / `overrides["groups"]`), every config checked."""
    from configs import grokking as grok_config

    overrides = dict(overrides or {})
    groups = common.chosen(overrides, "groups", groups, ARMS, "arm")
    base = config_schema.apply_overrides(grok_config.get_config(), grok_config.SCALES[scale])
    out = []
    for group in (g for g in ARMS if g in groups):
        label, changes = ARMS[group]
        config = config_schema.apply_overrides(
            base, grok_config.TRANSFORMER[scale] if changes == "transformer" else changes)
        out += common.seeded_arms(group, label, "", config_schema.apply_overrides(
            config, overrides), seeds, check_config)
    return out


COLUMNS = tuple(Column(key, header, fmt) for key, header, fmt in (  # keys of summarize()
    ("t_mem", "t_mem: updates to train acc ≥ 0.99", ".0f"),
    ("t_onset", "t_onset: updates to test acc ≥ 0.1", ".0f"),
    ("t_grok", "t_grok: updates to test acc ≥ 0.95", ".0f"),
    ("train_acc_final", "train acc (last)", ".3f"),
    ("test_acc_final", "test acc (last)", ".3f"),
    ("coh_train_init", "m-coh. train sample, init", ".3f"),
    ("coh_train_at_mem", "m-coh. train at t_mem", ".3f"),
    ("coh_train_at_onset", "m-coh. train at t_onset", ".3f"),
    ("coh_train_at_grok", "m-coh. train at t_grok", ".3f"),
    ("coh_train_final", "m-coh. train (last)", ".3f"),
    ("corr_train", "corr(m-coh. train, test acc) after t_mem", ".2f"),
    ("coh_test_at_mem", "m-coh. test at t_mem", ".3f"),
    ("coh_test_at_onset", "m-coh. test at t_onset", ".3f"),
    ("coh_test_at_grok", "m-coh. test at t_grok", ".3f"),
    ("coh_test_final", "m-coh. test (last)", ".3f"),
    ("corr_test", "corr(m-coh. test, test acc) after t_mem", ".2f"),
    ("wnorm_at_mem", "‖w‖ at t_mem", ".1f"),
    ("wnorm_at_grok", "‖w‖ at t_grok", ".1f"),
    ("wnorm_final", "‖w‖ (last)", ".1f"),
))


# (arm, matched control): the arm differs from its control in one respect only
PAIRS = (("mlp_m3", "mlp_adamw_x3"), ("mlp_rm3", "mlp_ra3"), ("mlp_winsorize", "mlp_adamw_b128"),
         ("mlp_adamw_wd0", "mlp_adamw"), ("mlp_m3", "mlp_adamw"))


def comparisons(arms_):
    return common.planned_pairs(arms_, PAIRS)


def rules(arms_):
    """Matched pairs: does the arm change the update count to grok (t_grok)? No direction is
    predicted (the papers make no claim about grokking)."""
    return [statistics.PairedRule(f"{a} changes t_grok vs {c}", "t_grok", a, c)
            for a, c in comparisons(arms_) if (a, c) in PAIRS[:3]]


def figures(workdir, runs):
    from . import figures as plots

    keys = (("train_accuracy", "train acc. (fraction)"), ("test_accuracy", "test acc. (fraction)"),
            ("coherence/train/m_coherence", "m-coherence, train sample"),
            ("coherence/test/m_coherence", "m-coherence, test sample"),
            ("weight_norm", "‖w‖ (L2 norm of all weights)"))
    return [plots.curves_per_group(workdir, "grokking_curves.png", runs, keys, x="step",
                                   x_label="optimizer updates",
                                   title="Grokking: accuracy, m-coherence and weight norm")]


run = graph_loop.declared_run(_setup, check_config)

EXPERIMENT = Experiment(
    name="grokking", title="Grokking: coherence through the test-accuracy jump", arms=arms,
    run_arm=run, columns=COLUMNS, loop="graph", comparisons=comparisons,
    compared=("t_mem", "t_grok", "test_acc_final", "coh_train_final"), rules=rules,
    figures=figures, progress=("t_mem", "t_grok", "test_acc_final"))
