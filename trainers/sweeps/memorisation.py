"""Memorisation of noisy labels: SGD vs M3 / RM3 / RA3 / the update-count control, and winsorized
SGD (2003.07422; 2002.10657). Arm conventions in `trainers/sweeps/__init__.py`."""

import copy

import ml_collections

from trainers.sweep import (Arm, Figure, Metric, Sweep, noise_group, noise_panel, sweep_values,
                            with_fields)


METHODS = {  # name -> (label, optimizer.name, batch multiplier)
    "sgd": ("SGD", "sgd", 1),
    "m3": ("M3", "m3", 1),
    "rm3": ("RM3", "rm3", 1),
    "ra3": ("RA3", "ra3", 1),
    "sgd_x3": ("SGD, batch x3 (M3's update count)", "sgd", 3),
}


def optimizer_arm_config(base, method: str) -> ml_collections.ConfigDict:
    """`base` trained with `method` (a key of METHODS): plain SGD inside, coupled L2 for robust ones."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    _, optimizer, multiplier = METHODS[method]
    config = copy.deepcopy(base)
    decay = float(config.optimizer.weight_decay) + float(config.optimizer.l2)
    config.optimizer.name = optimizer
    config.optimizer.momentum = 0.0
    config.optimizer.weight_decay = 0.0 if optimizer != "sgd" else decay
    config.optimizer.l2 = decay if optimizer != "sgd" else 0.0
    config.batch_size = base.batch_size * multiplier
    return config


def winsorized_config(base, pct: float) -> ml_collections.ConfigDict:
    """`base` trained with winsorized SGD at `pct` percent per side (2002.10657).

    Winsorizing needs a static batch size, so these arms drop the last partial batch of every
    epoch (`drop_remainder=True`; with 4000 examples and batch 64: 32 examples an epoch, a
    different 32 every epoch) — the only difference to the SGD arm besides the winsorizing.
    """
    config = optimizer_arm_config(base, "sgd")
    config.drop_remainder = True
    config.optimizer.aggregation = "winsorize"
    config.optimizer.winsorize_pct = float(pct)
    return config


MEMORISATION_METRICS = (
    Metric("pristine", "pristine train acc", ("final", "pristine_train_accuracy")),
    Metric("corrupted", "corrupted train acc (vs noisy label)", ("final", "corrupted_train_accuracy")),
    Metric("test", "test acc", ("final", "test_accuracy")),
    Metric("best_test", "best test acc (any epoch)", ("history", "val_accuracy", "max")),
    Metric("updates", "updates", ("updates",), fmt=".0f"),
)
MEMORISATION_COLUMNS = (("pristine_accuracy", "pristine train accuracy"),
                        ("corrupted_accuracy", "corrupted train accuracy\n(vs noisy label)"),
                        ("val_accuracy", "test accuracy"))


def memorisation(base, seeds, noise_levels=(0.0, 0.25, 0.5),
                 methods=("sgd", "m3", "rm3", "ra3", "sgd_x3"), winsorize_pcts=None,
                 winsorize_noise=0.5, winsorize_max_train=None) -> Sweep:
    """Experiment 2: memorisation of noisy labels by SGD vs M3 / RM3 / RA3 / update-count control.

    winsorize_pcts: the c of the winsorized arms (None: the non-zero values of the sweep of
    `configs/winsorize.py`), trained at `winsorize_noise`. winsorize_max_train: if given, the
    winsorization sweep uses only the first that many training examples (per-example gradients
    are costly) and gets its own SGD arm (c = 0) on the same subset; else the SGD arm of the main
    grid at `winsorize_noise` is its c = 0.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"method={unknown[0]!r} is unknown; allowed: {', '.join(METHODS)}")
    if winsorize_pcts is None:
        winsorize_pcts = tuple(c for c in sweep_values("winsorize", "optimizer.winsorize_pct") if c)
    arms = []
    for noise in noise_levels:
        for method in methods:
            label = METHODS[method][0]
            for seed in seeds:
                config = with_fields(optimizer_arm_config(base, method), label_noise=noise, seed=seed)
                arms.append(Arm(f"{noise_group(noise)}/{method}", label, noise_panel(noise),
                                seed, config, "--" if method == "sgd_x3" else "-"))
    figures = [Figure("memorisation.png", "Memorisation of noisy labels (2003.07422)",
                      MEMORISATION_COLUMNS, groups=tuple(dict.fromkeys(a.group for a in arms)),
                      ylim=(0.0, 1.0))]
    winsor_arms, shown = _winsorization_arms(base, seeds, winsorize_pcts, winsorize_noise,
                                             winsorize_max_train)
    if winsor_arms:
        shown = [a.group for a in arms if a.group == shown] + [a.group for a in winsor_arms]
        figures.append(Figure("winsorization.png", "Winsorized gradient descent (2002.10657)",
                              MEMORISATION_COLUMNS, groups=tuple(dict.fromkeys(shown)),
                              ylim=(0.0, 1.0)))
        arms += winsor_arms
    description = (
        "Accuracy on the pristine and on the corrupted training examples (the latter against "
        "their *noisy* training labels: memorisation) and on the test set, after the last epoch, "
        "and the number of optimizer updates made. `SGD, batch x3` is the control: plain SGD "
        "making the same number of updates as M3 (one per 3 batches' worth of examples). "
        "Winsorized SGD clips every coordinate of the per-example gradients to its c-th and "
        "(100-c)-th percentile over the batch before averaging (c = 0: plain SGD); it drops the "
        "last partial batch of each epoch (static batch size).")
    if winsorize_max_train and winsor_arms:
        description += (f" The winsorization rows use only the first {winsorize_max_train} "
                        f"training examples (to save time), "
                        f"with their own c = 0 row on that subset.")
    return Sweep("memorisation", "Memorisation under label noise", description,
                 tuple(arms), MEMORISATION_METRICS, tuple(figures),
                 comparisons=_comparisons(arms, shown if winsor_arms else ()))


# (arm, matched control) per noise level: the median beyond update count / beyond staleness
MATCHED = (("m3", "sgd_x3"), ("rm3", "ra3"), ("m3", "sgd"), ("rm3", "sgd"))


def _comparisons(arms, winsor_groups):
    """Each robust arm against its matched control at every noise level, and every winsorized
    arm against the c = 0 arm it is shown with (the first of `winsor_groups`)."""
    groups = list(dict.fromkeys(a.group for a in arms))
    pairs = [(f"{n}/{a}", f"{n}/{c}") for n in dict.fromkeys(g.split("/")[0] for g in groups)
             for a, c in MATCHED if f"{n}/{a}" in groups and f"{n}/{c}" in groups]
    winsor_groups = list(dict.fromkeys(winsor_groups))
    pairs += [(g, winsor_groups[0]) for g in winsor_groups[1:]]
    return tuple(pairs)


def _winsorization_arms(base, seeds, pcts, noise, max_train):
    """(arms, group of the c = 0 arm of the main grid to show with them, or None)."""
    if not pcts:
        return [], None
    group = noise_group(noise)
    panel = noise_panel(noise)
    runs = [(f"winsor{pct:g}", f"winsorized SGD, c={pct:g}%", winsorized_config(base, pct), ":")
            for pct in pcts]
    baseline = f"{group}/sgd"
    if max_train:
        group, panel, baseline = f"{group}_n{max_train}", f"{panel}, {max_train} examples", None
        plain = optimizer_arm_config(base, "sgd")
        plain.drop_remainder = True  # the same batches as the winsorized arms
        runs.insert(0, ("winsor0", "SGD (c=0)", plain, "-"))
    arms = []
    for name, label, config, style in runs:
        for seed in seeds:
            fields = {"label_noise": noise, "seed": seed}
            if max_train:
                fields["max_train"] = max_train
            arms.append(Arm(f"{group}/{name}", label, panel, seed, with_fields(config, **fields), style))
    return arms, baseline
