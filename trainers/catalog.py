"""Every experiment by name: a module of `trainers/` that declares an `EXPERIMENT`
(`experiment.Experiment`), planned by `runner.plan` and run by `runner.run` through one path
(`trainers.reproduce`). `plan` validates every arm (one-line ValueError, nothing written, nothing
trained), so `--dry_run` means the same for every experiment. Default seeds: the experiment's own
(`Experiment.default_seeds`, 3 or more).
"""

import importlib

from . import runner

DECLARED = {"memorisation": ".memorisation", "real_vs_random": ".real_vs_random",
            "early_stopping": ".early_stopping", "adversarial_init": ".adversarial_init",
            "depth_width": ".depth_width", "real_vs_random_arch": ".real_vs_random_arch",
            "scale": ".scale", "grokking": ".grokking", "double_descent": ".double_descent",
            "easy_hard": ".easy_hard", "alignment_order": ".alignment_order",
            "label_noise_detection": ".label_noise_detection",
            "noise_structure": ".noise_structure", "loss_fractions": ".loss_fractions",
            "winsorize_controls": ".winsorize_controls"}
NAMES = tuple(DECLARED)
SCALES = ("small", "full", "cifar10", "imagenet")   # every experiment's `scales` is a subset


def declared(name):
    """The `Experiment` of experiment `name`; ValueError (one line) for an unknown name."""
    if name not in DECLARED:
        raise ValueError(f"experiment={name!r} is unknown; allowed: {', '.join(NAMES)}")
    return importlib.import_module(DECLARED[name], __package__).EXPERIMENT


def plan(name, scale="small", seeds=None, overrides=None):
    """`(arms, experiment)`: every arm of experiment `name` with its config checked."""
    experiment = declared(name)
    return runner.plan(experiment, scale, seeds, overrides), experiment
