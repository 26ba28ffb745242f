r"""Reproduce one experiment with one command: all arms, all seeds, figures, tables and verdicts.

    python -m trainers.reproduce --experiment=memorisation --workdir=workdirs/memorisation
    python -m trainers.reproduce --experiment=scale --workdir=DIR --set=dataset=mnist5k --dry_run

The same flags for every experiment (`trainers/catalog.py`); a run started again reads finished
arms and resumes the interrupted one; WORKDIR's files: docs/design.md §7.0.
"""

import ast
import os
import shlex
import sys

from absl import app, flags

from . import catalog, console, dry_run as planning, runner, train


def parse_overrides(items) -> dict:
    """["num_epochs=5", "dataset=mnist"] -> {field: value}: a Python literal where one parses
    (5, 0.1, None, (30, 60)), else the string."""
    overrides = {}
    for item in items or ():
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise ValueError(f"--set={item!r} must look like FIELD=VALUE, e.g. --set=num_epochs=5")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        overrides[field.strip()] = value
    return overrides


def command_line(argv, module="trainers.reproduce") -> str:
    """The command as typed, for results.md (module form)."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in argv[1:])


def reproduce(name, workdir, scale="small", seeds=None, set_items=(), dry_run=False,
              progress=False, command="", echo=print):
    """Plan experiment `name` (ValueError before anything is written); with `dry_run` write
    `WORKDIR/plan.json` and return None, else run it and return its results.json dict."""
    overrides = parse_overrides(set_items)
    arms, experiment = catalog.plan(name, scale, seeds, overrides)
    if dry_run:
        return planning.report(experiment, arms, workdir, scale == "small" and not overrides, echo)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return runner.run(experiment, arms, workdir, command, echo=echo, progress=progress)


def main(argv):
    del argv  # console.parse_flags refused arguments that are not flags
    options = flags.FLAGS
    try:
        summary = reproduce(options.experiment, options.workdir, options.scale, options.seeds,
                            options.set, options.dry_run, options.progress, command_line(sys.argv))
    except (ValueError, *train.RUN_ERRORS) as error:  # incl. ConfigError, a busy workdir
        sys.exit(f"error: {error}")
    if summary is None:
        return
    print()
    with open(os.path.join(options.workdir, runner.RESULTS_MD)) as f:
        print(f.read())
    print("figures: " + ", ".join(os.path.join(options.workdir, name)
                                  for name in summary["figures"]))


if __name__ == "__main__":
    flags.DEFINE_enum("experiment", None, list(catalog.NAMES), "Experiment to run.")
    flags.DEFINE_string("workdir", None, "Directory of the experiment (arms in sub-directories).")
    flags.DEFINE_integer("seeds", None, "Number of seeds (default: the experiment's own, 3 or "
                         "more).", lower_bound=1)
    flags.DEFINE_enum("scale", "small", list(catalog.SCALES),
                      "Dataset / model / hyperparameters (each experiment lists the ones it has).")
    flags.DEFINE_multi_string("set", [], "FIELD=VALUE (repeatable) for the base config of every "
                              "arm; VALUE a Python literal where one parses, else a string.")
    flags.DEFINE_boolean("dry_run", False, "Only validate every arm's config, write plan.json and "
                         "print the arms and an estimated time.")
    flags.DEFINE_boolean("progress", False, "Show the progress output of every arm.")
    flags.mark_flags_as_required(["experiment", "workdir"])
    app.run(main, flags_parser=console.parse_flags)
