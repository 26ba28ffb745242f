r"""Reproduce one experiment of the papers with one command: all arms, all seeds, figures and tables.

    python -m trainers.reproduce --experiment=memorisation --workdir=workdirs/memorisation
    python -m trainers.reproduce --experiment=real_vs_random --workdir=DIR --seeds=3
    python -m trainers.reproduce --experiment=memorisation --workdir=DIR --scale=cifar10 --dry_run
    python -m trainers.reproduce --experiment=easy_hard --workdir=DIR --set=num_epochs=5

Experiments by name: `trainers/catalog.py` (declared experiments run by `trainers/runner.py`;
the papers' sweeps in `trainers/sweeps/`, each arm one `trainers.train` run; the experiments not
yet ported to a declaration, with their own `reproduce`). Every arm runs in its own sub-workdir,
so an interrupted reproduce run, started again, skips the finished arms and resumes the
interrupted one from its last checkpoint. Every experiment is planned first: all its arms'
configs are checked before anything is written, and `--dry_run` stops there for every experiment.

| path (in WORKDIR)            | content                                                          |
|------------------------------|------------------------------------------------------------------|
| `<arm>/seed<k>/`             | a trainer workdir (`trainers/outputs.py`): TensorBoard logs, checkpoints, `results.json`, `curves.png`, `hparams/` (its HParams session) |
| `results.json`               | per arm group and metric: per-seed values, mean, sample sd, n (`trainers/report.py`) |
| `results.md`                 | the table of those means ± sd, the command, links to the figures |
| `*.png`                      | the experiment's figures (mean over seeds, min–max band)         |
| `timings.json`               | wall-clock seconds per arm of this invocation and in total       |
| `plan.json` (`--dry_run`)    | the config of every arm, nothing trained                         |

`tensorboard --logdir=WORKDIR` shows every arm side by side, and each as one row of the HParams
dashboard (`trainers/hparams_board.py`). Flags, the same for every experiment: `--seeds` (number
of seeds, default 3 or the experiment's own if larger), `--scale` (small / cifar10 / imagenet /
full; each experiment says which it has), `--set=FIELD=VALUE` (repeatable; sets a field of every
arm's base config, e.g. `--set=num_epochs=5 --set=max_train=1000`), `--dry_run` (validate every
arm, write plan.json, print the arms' grid and an estimated time (`trainers/dry_run.py`), train
nothing), `--progress` (the runs' own progress output).
"""

import ast
import os
import shlex
import sys
import time

from absl import app, flags, logging

from cgh_tf import workdir_lock

from . import catalog
from . import config_schema
from . import outputs
from .dry_run import lines as dry_run_lines
from . import report
from . import runner
from . import train

TIMINGS_FILE = "timings.json"
PLAN_FILE = runner.PLAN_FILE


def _read_json(path: str):
    import json

    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _is_finished(result: dict, config) -> bool:
    """True if `result` (a results.json dict) is a complete run of exactly `config`."""
    if (config_schema.comparable(result.get("config") or {})
            != config_schema.comparable(outputs.json_roundtrip(config.to_dict()))):
        return False
    if result.get("mode") == "easy_hard":
        return all(result.get(part, {}).get("epochs_completed") == config.num_epochs
                   for part in ("easy", "hard"))
    return result.get("epochs_completed") == config.num_epochs


def load_arm_result(experiment, arm_dir: str):
    """The arm's `results.json` dict, with the histories of `experiment.sub_runs` merged in.

    A sub-run `s` (e.g. the `easy/` workdir of an easy/hard arm) contributes its history keys as
    `"s/<key>"`. None if the arm has no results.json. This dict is what the report aggregates.
    """
    result = _read_json(os.path.join(arm_dir, outputs.RESULTS_FILE))
    if result is None or not experiment.sub_runs:
        return result
    history = dict(result.get("history", {}))
    for sub in experiment.sub_runs:
        sub_result = _read_json(os.path.join(arm_dir, sub, outputs.RESULTS_FILE))
        for key, values in (sub_result or {}).get("history", {}).items():
            history[f"{sub}/{key}"] = values
    return {**result, "history": history}


def run_arm(experiment, arm, arm_dir: str, progress: bool = False) -> tuple:
    """Train (or resume, or skip if finished) one arm; return `(result, seconds, skipped)`.

    `result` is `load_arm_result` of the arm after training.
    """

    started = time.time()
    previous = _read_json(os.path.join(arm_dir, outputs.RESULTS_FILE))
    skipped = previous is not None and _is_finished(previous, arm.config)
    if skipped:
        logging.info("arm %s: finished earlier, reusing %s", arm.path, arm_dir)
    else:
        logging.info("arm %s: training into %s", arm.path, arm_dir)
        train.train_and_evaluate(arm.config, arm_dir, progress=progress)
    return load_arm_result(experiment, arm_dir), time.time() - started, skipped


def run(experiment, workdir: str, command: str, progress: bool = False, echo=print) -> dict:
    """Run every arm of `experiment` under `workdir`, then write the tables and figures.

    Returns the experiment summary (the content of `WORKDIR/results.json`). `echo` gets one line
    per arm (None: silent).
    """
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock.hold(workdir, f"sweep {experiment.name}"):  # one sweep per workdir
        return _run_arms(experiment, workdir, command, progress, echo)


def _run_arms(experiment, workdir, command, progress, echo) -> dict:
    """`run`'s loop over the arms and its report (under the workdir's lock)."""
    started = time.time()
    results, timings = {}, {}
    for index, arm in enumerate(experiment.arms, 1):
        result, seconds, skipped = run_arm(experiment, arm, os.path.join(workdir, arm.path),
                                           progress)
        results[arm.path] = result
        timings[arm.path] = {"seconds": round(seconds, 2), "skipped": skipped}
        if echo:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in result["final"].items()
                              if k.endswith("test_accuracy") and v is not None)
            echo(f"[{index}/{len(experiment.arms)}] {arm.path}: "
                 f"{'finished earlier' if skipped else f'{seconds:.0f} s'}; {shown}")
    summary = report.write_all(workdir, experiment, results, command)
    timings_total = {"arms": timings, "total_seconds": round(time.time() - started, 2)}
    outputs.write_json(os.path.join(workdir, TIMINGS_FILE), timings_total)
    return summary


def write_plan(experiment, workdir: str) -> str:
    """Validate every arm's config of a sweep (no data, no training) and write `WORKDIR/plan.json`."""
    for arm in experiment.arms:
        config_schema.validate(arm.config)
    return runner.write_plan(experiment.name, experiment.arms, workdir)


def parse_overrides(items) -> dict:
    """["num_epochs=5", "model.kwargs.width=64", "dataset=mnist"] -> {field: Python value}.

    Values are Python literals where they parse as one (5, 0.1, None, (30, 60)), else strings.
    """
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


def command_line(argv) -> str:
    """The command as typed, for results.md (module form)."""
    return "python -m trainers.reproduce " + " ".join(shlex.quote(a) for a in argv[1:])


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_enum("experiment", None, list(catalog.NAMES), "Experiment to run.")
    flags.DEFINE_string("workdir", None, "Directory of the experiment (arms in sub-directories).")
    flags.DEFINE_integer("seeds", None, "Number of seeds (default: 3, or the experiment's own if "
                         "larger).", lower_bound=1)
    flags.DEFINE_enum("scale", "small", list(catalog.SCALES),
                      "Dataset / model / hyperparameters (each experiment lists the ones it has).")
    flags.DEFINE_multi_string("set", [], "FIELD=VALUE for the base config of every arm.")
    flags.DEFINE_boolean("dry_run", False, "Only validate every arm's config, write plan.json and "
                         "print the arms and an estimated time.")
    flags.DEFINE_boolean("progress", False, "Show the progress output of every arm.")
    flags.mark_flags_as_required(["experiment", "workdir"])


def reproduce(name, workdir, scale="small", seeds=None, set_items=(), dry_run=False,
              progress=False, command="", echo=print):
    """Plan experiment `name` (every arm's config checked; ValueError before anything is
    written); with `dry_run` write `WORKDIR/plan.json` and return None, else run it and return
    its results.json dict. The one path of every experiment."""
    overrides = parse_overrides(set_items)
    arms, handle = catalog.plan(name, scale, seeds, overrides)
    if dry_run:
        echo(f"{len(arms)} arms validated; configs in {runner.write_plan(name, arms, workdir)}")
        for line in dry_run_lines(arms, workdir):
            echo(line)
        return None
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return catalog.execute(name, arms, handle, workdir, command, progress, echo=echo)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        summary = reproduce(FLAGS.experiment, FLAGS.workdir, FLAGS.scale, FLAGS.seeds, FLAGS.set,
                            FLAGS.dry_run, FLAGS.progress, command_line(sys.argv))
    except (ValueError, *train.RUN_ERRORS) as error:  # incl. ConfigError, a busy workdir
        sys.exit(f"error: {error}")
    if summary is None:
        return
    print()
    with open(os.path.join(FLAGS.workdir, report.RESULTS_MD)) as f:
        print(f.read())
    print("figures: " + ", ".join(os.path.join(FLAGS.workdir, name)
                                  for name in summary["figures"]))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
