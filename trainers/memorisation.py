"""Memorisation of noisy labels: SGD vs M3 / RM3 / RA3 / the update-count control, and winsorized
SGD (2003.07422; 2002.10657), each arm a Keras `fit` run (`fit_arm.py`); rules at 50 % noise.
Conventions (momentum, weight decay, batches): docs/experiments/intro/memorisation.md."""

import copy

from cgh_tf import models
from cgh_tf.statistics import PairedRule

from . import figures as fig
from . import fit_arm
from .experiment import Arm
from .fit_arm import Reading, noise_group, noise_panel, with_fields

METHODS = {  # name -> (label, optimizer.name, batch multiplier)
    "sgd": ("SGD", "sgd", 1),
    "m3": ("M3", "m3", 1),
    "rm3": ("RM3", "rm3", 1),
    "ra3": ("RA3", "ra3", 1),
    "sgd_x3": ("SGD, batch x3 (M3's update count)", "sgd", 3),
}
SMALL = {"num_epochs": 30}   # the small scale's change to configs/default.py (< 10 min budget)
SMALL_WINSORIZE_PCTS = (2.0, 4.0, 8.0)
RULE_NOISE = 0.5
MATCHED = (("m3", "sgd_x3"), ("rm3", "ra3"), ("m3", "sgd"), ("rm3", "sgd"))
RULES = (("m3_vs_update_count_control", "m3", "sgd_x3"), ("rm3_vs_ra3", "rm3", "ra3"),
         ("m3_vs_sgd", "m3", "sgd"))

READINGS = (
    Reading("pristine", "pristine train acc", ("final", "pristine_train_accuracy")),
    Reading("corrupted", "corrupted train acc (vs noisy label)",
            ("final", "corrupted_train_accuracy")),
    Reading("test", "test acc", ("final", "test_accuracy")),
    Reading("best_test", "best test acc (any epoch)", ("history", "val_accuracy", "max")),
    Reading("updates", "updates", ("updates",), ".0f"),
)


def arm_config(base, method, winsorize_pct=None):
    """`base` with `method` of METHODS (plain SGD inside, coupled L2 for the robust ones); with
    `winsorize_pct`, winsorized at that % per side (the last partial batch dropped)."""
    _, optimizer, multiplier = METHODS[method]
    config = copy.deepcopy(base)
    decay = float(config.optimizer.weight_decay) + float(config.optimizer.l2)
    config.optimizer.name = optimizer
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.0 if optimizer != "sgd" else decay
    config.optimizer.l2 = decay if optimizer != "sgd" else 0.0
    config.batch_size = base.batch_size * multiplier
    if winsorize_pct is not None:
        config.drop_remainder = True
        config.optimizer.aggregation = "winsorize"
        config.optimizer.winsorize_pct = float(winsorize_pct)
    return config


def arms(scale="small", seeds=3, overrides=None, noise_levels=(0.0, 0.25, 0.5),
         methods=tuple(METHODS), winsorize_pcts=None):
    """The arms over `fit_arm.base_config("default", scale, SMALL, overrides)`; winsorize_pcts:
    the c of the winsorized arms at `RULE_NOISE` (None: `SMALL_WINSORIZE_PCTS`, none for a
    model in `cgh_tf.models.BATCH_STATISTICS`)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"method={unknown[0]!r} is unknown; allowed: {', '.join(METHODS)}")
    base = fit_arm.base_config("default", scale, SMALL, overrides)
    runs = [(noise, f"{noise_group(noise)}/{method}", METHODS[method][0],
             arm_config(base, method), "--" if method == "sgd_x3" else "-")
            for noise in noise_levels for method in methods]
    if winsorize_pcts is None:  # none on a BatchNormalization net (its examples interact)
        winsorize_pcts = () if base.model.name in models.BATCH_STATISTICS else SMALL_WINSORIZE_PCTS
    runs += [(RULE_NOISE, f"{noise_group(RULE_NOISE)}/winsor{pct:g}",
              f"winsorized SGD, c={pct:g}%", arm_config(base, "sgd", pct), ":")
             for pct in winsorize_pcts]
    return [Arm(group, label, noise_panel(noise), seed,
                with_fields(config, label_noise=noise, seed=seed), style)
            for noise, group, label, config, style in runs for seed in range(seeds)]


def comparisons(planned):
    """Per noise level: every robust arm against its matched controls, winsorized ones vs SGD."""
    groups = list(dict.fromkeys(a.group for a in planned))
    pairs = [(f"{n}/{a}", f"{n}/{c}") for n in dict.fromkeys(g.split("/")[0] for g in groups)
             for a, c in MATCHED if f"{n}/{a}" in groups and f"{n}/{c}" in groups]
    return pairs + [(g, f"{g.split('/')[0]}/sgd") for g in groups
                    if "/winsor" in g and f"{g.split('/')[0]}/sgd" in groups]


def rules(planned):
    """At 50 % noise: corrupted train accuracy of each robust arm below its control."""
    groups = {a.group for a in planned}
    n = noise_group(RULE_NOISE)
    pairs = [(name, f"{n}/{a}", f"{n}/{c}") for name, a, c in RULES]
    pairs += [(f"{g.split('/')[1]}_vs_sgd", g, f"{n}/sgd") for g in sorted(groups)
              if g.startswith(f"{n}/winsor")]
    return [PairedRule(name, "corrupted", arm, control, prediction="lower")
            for name, arm, control in pairs if arm in groups and control in groups]


def setting(runs):
    return [f"Setting (first arm): {fit_arm.describe(runs[0][1]['config'])} (SGD×3: 3× the "
            "batch), uniform label noise at the arm's rate. Accuracy of the corrupted training "
            "examples is measured against their *noisy* training labels (memorisation); "
            "winsorized SGD clips every coordinate of the per-example gradients to its c-th and "
            "(100 − c)-th percentile over the batch before averaging.", ""]


def figures(workdir, runs):
    """memorisation.png (a row per noise level) and winsorization.png (SGD and winsorized arms)."""
    keys = (("pristine_accuracy", "pristine train acc"),
            ("corrupted_accuracy", "corrupted train acc (noisy label)"),
            ("val_accuracy", "test acc"))
    main = [(a, r) for a, r in runs if "/winsor" not in a.group]
    files = [fig.curves_per_group(workdir, "memorisation.png", main, keys, x="epoch",
                                  x_label="epoch", title="Memorisation of noisy labels "
                                  "(2003.07422)", row_of=lambda arm: arm.panel)]
    winsor = [(a, r) for a, r in runs if "/winsor" in a.group]
    if winsor:
        sgd = [(a, r) for a, r in runs if a.group == f"{winsor[0][0].group.split('/')[0]}/sgd"]
        files.append(fig.curves_per_group(workdir, "winsorization.png", sgd + winsor, keys,
                                          x="epoch", x_label="epoch", title="Winsorized SGD "
                                          "(2002.10657)", row_of=lambda arm: arm.panel))
    return files


EXPERIMENT = fit_arm.experiment(
    READINGS, name="memorisation",
    title="Memorisation under label noise: robust aggregation vs matched controls", arms=arms,
    comparisons=comparisons, rules=rules, figures=figures, setting=setting,
    progress=("pristine", "corrupted", "test"))
