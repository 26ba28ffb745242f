r"""Reproduce one experiment of the papers with one command: all arms, all seeds, figures and tables.

    python -m trainers.reproduce --experiment=memorisation --workdir=workdirs/memorisation
    python -m trainers.reproduce --experiment=real_vs_random --workdir=DIR --seeds=3
    python -m trainers.reproduce --experiment=memorisation --workdir=DIR --scale=cifar10 --dry_run
    python -m trainers.reproduce --experiment=easy_hard --workdir=DIR --set=num_epochs=5

Experiments and arms: the papers' sweeps in `trainers/sweeps/` (one module per experiment); the
experiments with their own resumable loops (early_stopping, adversarial_init, depth_width,
real_vs_random_arch, scale, grokking, double_descent) in `trainers/beyond.py`. Every arm is one
`trainers.train` run in its own sub-workdir, so an interrupted reproduce run, started again, skips
the finished arms and resumes the interrupted one from its last epoch checkpoint.

| path (in WORKDIR)            | content                                                          |
|------------------------------|------------------------------------------------------------------|
| `<arm>/seed<k>/`             | a trainer workdir (`trainers/outputs.py`): TensorBoard logs, checkpoints, `results.json`, `curves.png`, `hparams/` (its HParams session) |
| `results.json`               | per arm group and metric: per-seed values, mean, sample sd, n (`trainers/report.py`) |
| `results.md`                 | the table of those means ± sd, the command, links to the figures |
| `*.png`                      | the experiment's figures (mean over seeds, min–max band)         |
| `timings.json`               | wall-clock seconds per arm of this invocation and in total       |
| `plan.json` (`--dry_run`)    | the config of every arm, nothing trained                         |

`tensorboard --logdir=WORKDIR` shows every arm side by side, and each as one row of the HParams
dashboard (`trainers/hparams_board.py`). Flags: `--seeds` (number of seeds,
default per experiment), `--scale` (small / cifar10 / imagenet), `--set=FIELD=VALUE` (repeatable;
sets a field of every arm's base config, e.g. `--set=num_epochs=5 --set=max_train=1000`),
`--dry_run`, `--progress`.
"""

import ast
import os
import shlex
import sys
import time

from absl import app, flags, logging

from cgh_tf import workdir_lock
from trainers import config_schema
from trainers import outputs
from trainers import sweep
from trainers import sweeps
from trainers import train
from trainers import report
from trainers import beyond  # grokking, double_descent (issue 14): their own loops

TIMINGS_FILE = "timings.json"
PLAN_FILE = "plan.json"


def _read_json(path: str):
    import json

    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _is_finished(result: dict, config) -> bool:
    """True if `result` (a results.json dict) is a complete run of exactly `config`."""
    if result.get("config") != outputs.json_roundtrip(config.to_dict()):
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
    """Validate every arm's config (no data, no training) and write them to `WORKDIR/plan.json`."""
    plan = {}
    for arm in experiment.arms:
        config_schema.validate(arm.config)
        plan[arm.path] = {"label": arm.label, "panel": arm.panel,
                          "config": outputs.json_roundtrip(arm.config.to_dict())}
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, PLAN_FILE)
    outputs.write_json(path, {"experiment": experiment.name, "arms": plan})
    return path


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
    flags.DEFINE_enum("experiment", None, list(sweeps.EXPERIMENTS) + list(beyond.EXPERIMENTS),
                      "Experiment to run.")
    flags.DEFINE_string("workdir", None, "Directory of the experiment (arms in sub-directories).")
    flags.DEFINE_integer("seeds", None, "Number of seeds (default: the experiment's own).",
                         lower_bound=1)
    flags.DEFINE_enum("scale", "small", list(dict.fromkeys(sweep.SCALES + beyond.SCALES)),
                      "Dataset / model / hyperparameters (full: grokking / double_descent only).")
    flags.DEFINE_multi_string("set", [], "FIELD=VALUE for the base config of every arm.")
    flags.DEFINE_boolean("dry_run", False, "Only validate the arms' configs and write plan.json.")
    flags.DEFINE_boolean("progress", False, "Show the Keras progress bar of every arm.")
    flags.mark_flags_as_required(["experiment", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.experiment in beyond.EXPERIMENTS:
        if FLAGS.scale not in beyond.SCALES:
            sys.exit(f"error: --scale={FLAGS.scale} is not available for {FLAGS.experiment}; "
                     f"allowed: {', '.join(beyond.SCALES)}")
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        try:
            summary = beyond.run(FLAGS.experiment, FLAGS.workdir, FLAGS.scale, FLAGS.seeds,
                                 parse_overrides(FLAGS.set), command_line(sys.argv))
        except (ValueError, *train.RUN_ERRORS) as error:
            sys.exit(f"error: {error}")
        with open(os.path.join(FLAGS.workdir, report.RESULTS_MD)) as f:
            print(f.read())
        print("figures: " + ", ".join(os.path.join(FLAGS.workdir, n) for n in summary["figures"]))
        return
    try:
        experiment = sweeps.build(FLAGS.experiment, FLAGS.scale, FLAGS.seeds,
                                   parse_overrides(FLAGS.set))
        if FLAGS.dry_run:
            print(f"{len(experiment.arms)} arms validated; configs in "
                  f"{write_plan(experiment, FLAGS.workdir)}")
            return
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        summary = run(experiment, FLAGS.workdir, command_line(sys.argv), FLAGS.progress)
    except (ValueError, *train.RUN_ERRORS) as error:  # incl. config_schema.ConfigError
        sys.exit(f"error: {error}")
    print()
    with open(os.path.join(FLAGS.workdir, report.RESULTS_MD)) as f:
        print(f.read())
    print("figures: " + ", ".join(os.path.join(FLAGS.workdir, name)
                                  for name in summary["figures"]))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
