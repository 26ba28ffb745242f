"""Every experiment by name, each planned and run through one path (`trainers.reproduce`).

| kind       | experiments                                   | planned by                  | run by      |
|------------|-----------------------------------------------|-----------------------------|-------------|
| declared   | `DECLARED`: modules with an `EXPERIMENT` (`experiment.Experiment`) | `runner.plan` | `runner.run` |
| sweep      | the papers' sweeps (`trainers/sweeps/`, Keras `fit` per arm) | `sweeps.build`, configs validated | `reproduce.run` |

`plan` validates every arm of any of them (one-line ValueError, nothing written, nothing trained),
so `--dry_run` means the same for every experiment. Default seeds: `DEFAULT_SEEDS` (3) unless an
experiment declares more.
"""

import importlib

from . import config_schema
from . import runner
from . import sweep
from . import sweeps

DEFAULT_SEEDS = 3
DECLARED = {"double_descent": ".double_descent", "scale": ".scale", "grokking": ".grokking",
            "depth_width": ".depth_width", "real_vs_random_arch": ".real_vs_random_arch",
            "early_stopping": ".early_stopping", "adversarial_init": ".adversarial_init",
            "noise_structure": ".noise_structure", "loss_fractions": ".loss_fractions",
            "winsorize_controls": ".winsorize_controls"}
NAMES = tuple(sweeps.EXPERIMENTS) + tuple(DECLARED)
SCALES = tuple(dict.fromkeys(sweep.SCALES + ("small", "full")))


def _module(table, name):
    return importlib.import_module(table[name], __package__)


def kind(name):
    """"declared" or "sweep"; ValueError for an unknown name."""
    for label, table in (("declared", DECLARED), ("sweep", sweeps.EXPERIMENTS)):
        if name in table:
            return label
    raise ValueError(f"experiment={name!r} is unknown; allowed: {', '.join(NAMES)}")


def declared(name):
    """The `Experiment` of a declared experiment."""
    return _module(DECLARED, name).EXPERIMENT


def plan(name, scale="small", seeds=None, overrides=None):
    """`(arms, handle)`: every arm of experiment `name` with its config checked; `handle` is what
    `execute` runs (the Experiment or the Sweep)."""
    which = kind(name)
    if seeds is not None:
        runner.check_seeds(seeds)
    if which == "declared":
        experiment = declared(name)
        return runner.plan(experiment, scale, seeds, overrides), experiment
    built = sweeps.build(name, scale, seeds or max(DEFAULT_SEEDS, sweeps.EXPERIMENTS[name][1]),
                         overrides)
    for arm in built.arms:
        config_schema.validate(arm.config)
    return list(built.arms), built


def execute(name, arms, handle, workdir, command, progress=False, echo=print):
    """Run what `plan` planned; returns the experiment's results.json dict."""
    which = kind(name)
    if which == "declared":
        return runner.run(handle, arms, workdir, command, echo=echo, progress=progress)
    from . import reproduce

    return reproduce.run(handle, workdir, command, progress, echo=echo)  # holds the lock
