"""Every declared experiment by name: the module `trainers/<name>.py` and its `EXPERIMENT`."""

import importlib

from . import runner

NAMES = ("memorisation", "real_vs_random", "early_stopping", "adversarial_init", "depth_width",
         "real_vs_random_arch", "scale", "grokking", "double_descent", "easy_hard",
         "alignment_order", "label_noise_detection", "noise_structure", "loss_fractions",
         "winsorize_controls")
SCALES = ("small", "full", "cifar10", "imagenet")   # every experiment's `scales` is a subset


def declared(name):
    """The `Experiment` of experiment `name`; ValueError (one line) for an unknown name."""
    if name not in NAMES:
        raise ValueError(f"experiment={name!r} is unknown; allowed: {', '.join(NAMES)}")
    return importlib.import_module(f".{name}", __package__).EXPERIMENT


def plan(name, scale="small", seeds=None, overrides=None):
    """`(arms, experiment)`: every arm of experiment `name` with its config checked."""
    experiment = declared(name)
    return runner.plan(experiment, scale, seeds, overrides), experiment
