r"""Train a classifier from a config with Keras `fit`; resumable, deterministic, atomic outputs.

    python -m trainers.train --config=configs/default.py --workdir=/tmp/run \
        --config.num_epochs=2 --config.optimizer.name=rm3

Every config field can be overridden by a `--config.FIELD=VALUE` flag (see `configs/default.py`).
Starting the same command again after an interruption (even `kill -9`) resumes from the newest
checkpoint and ends with a `results.json` byte-identical to that of an uninterrupted run.

TensorBoard scalars (one point per epoch, `WORKDIR/tensorboard`):

| run          | tag                        | what                                                   |
|--------------|----------------------------|--------------------------------------------------------|
| `train`      | `epoch_loss`, `epoch_accuracy` | running mean over the epoch's batches (training mode) |
| `validation` | `epoch_loss`, `epoch_accuracy` | test split, inference mode                          |
| `train`      | `epoch_pristine_accuracy`  | inference-mode accuracy on training examples whose label was kept |
| `train`      | `epoch_corrupted_accuracy` | ... on corrupted examples, against their *noisy* training label (memorisation) |
| `train`      | `epoch_learning_rate`      | learning rate of the epoch                             |
| `train`      | `epoch_m_coherence`, `epoch_alpha`, `epoch_m_coherence/<layer>` | mean over the epoch's measured training batches (`coherence.every > 0`); none for an epoch without one |
| `train`      | `epoch_coherence/<sample>/m_coherence`, `.../alpha`, `.../<layer>/m_coherence` | fixed monitor samples train / test / pristine / corrupted at epoch end (`coherence.monitor_samples > 0`; also `coherence.csv`) |
| `train`      | `epoch_f_pristine`, `epoch_f_corrupt` | loss-reduction fractions of the monitor's training sample (label noise > 0) |
| `learning_times` | `learning_times/<group>/first_correct_step` (histogram), `.../fraction_correct` | per-example learning times (`learning_times.every_steps > 0`; also `learning_times.csv`) |
| `steps`      | `loss`, `coherence/<sample>/...`, `f_pristine`, `f_corrupt` | at step 0, every `coherence.monitor_every_steps` batches and every epoch end, x = global step (`step_history` of results.json) |

Every value of the epoch logs is also in `results.json` (`history`). A NaN value means "no value"
(`m_coherence` of an epoch without a measured step, when `coherence.every` exceeds the steps per
epoch; a batch whose per-example gradients all vanish): it gets no TensorBoard scalar, no entry in
the checkpoint's history, `null` in `results.json`, and `curves.png` skips it (never 0).

The fields and their defaults are in `configs/default.py` (the schema in
`trainers/config_schema.py`); one run is `trainers/single_run.py`.

`distribution` other than "none" trains under a tf.distribute strategy with
`trainers/distributed_loop.py` instead of Keras `fit` (same callbacks, same `results.json`); in a
multi-worker cluster only the chief writes the workdir (README "Running on several machines").

The other files of the workdir are described in `trainers/outputs.py`, the checkpoints in
`trainers/run_state.py`. A config error (unknown field or name, bad number, an unwritable workdir,
a workdir holding a different run) exits with status 1 and one line naming the field or path,
before any data is loaded and anything is written. `--dry_run` stops after those checks and
prints what the run would train and an estimated time (`trainers/dry_run.py`), writing nothing.
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags
import tensorflow as tf

from cgh_tf import checkpoints, workdir_lock
from trainers import config_schema
from trainers import distributed_loop
from trainers import single_run
from trainers.config_schema import ConfigError, setting


# Besides ConfigError, what a run reports as one line and exit status 1 (the binaries catch these).
RUN_ERRORS = (workdir_lock.WorkdirBusy, checkpoints.CheckpointSaveError,
              distributed_loop.PeerFailure)


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
    """Run (or resume, or just re-report) the experiment of `config` in `workdir`; return the results.

    Returns the dict written to `results.json`.
    """
    config_schema.validate(config)
    check_workdir(workdir)
    strategy = distributed_loop.build_strategy(config.distribution,
                                               setting(config, "collective_timeout"))
    if not distributed_loop.is_chief(strategy):  # writes nothing: no lock
        with distributed_loop.peers_fail_loudly(strategy):
            return single_run.run(config, workdir, progress, strategy=strategy)[0]
    # a workdir of another run is refused untouched, before the lock file
    single_run.check_workdir_holds_config(workdir, config)
    with workdir_lock.hold(workdir, f"trainer ({setting(config, 'mode')})"):
        with distributed_loop.peers_fail_loudly(strategy):
            return single_run.run(config, workdir, progress, strategy=strategy)[0]


def check_workdir(workdir: str) -> None:
    """ConfigError (one line) unless `workdir` is, or can be created as, a writable directory."""
    path = os.path.abspath(workdir)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not os.path.isdir(existing) else "is not writable"
        raise ConfigError(f"--workdir={workdir}: {existing} {what}; choose a writable directory")


def dry_run(config, workdir: str, echo=print) -> None:
    """Check `config` and `workdir` as a run would (reading only), then print what the run would
    train and its estimated time (`trainers/dry_run.py`); writes nothing, trains nothing."""
    from trainers import dry_run as planning
    from trainers import experiment, factories, input_pipeline

    config_schema.validate(config)
    check_workdir(workdir)
    if setting(config, "mode") != "easy_hard":
        single_run.check_workdir_holds_config(workdir, config)
    train, test = factories.dataset_sizes(config)
    steps = input_pipeline.steps_per_epoch(train, config.batch_size, config.drop_remainder)
    config_schema.check_batches_split(config, train)  # a run checks it once the data is loaded
    echo(f"config valid; nothing written. {config.dataset} ({train} train / {test} test "
         f"examples), {config.model.name}, optimizer {config.optimizer.name}: "
         f"{config.num_epochs} epochs × {steps} batches of {config.batch_size}"
         + (" (mode easy_hard: a probe, then the easy and the hard part)"
            if setting(config, "mode") == "easy_hard" else ""))
    arm = experiment.Arm("run", "", "", config.seed, config)
    echo(planning.estimate([arm], None).source)


def run_or_exit(config, workdir, progress=True) -> dict:
    """`train_and_evaluate` with deterministic ops; a `ConfigError`, a busy workdir
    (`cgh_tf.workdir_lock`), a failed checkpoint save or a dead or hung peer worker
    (`distributed_loop.PeerFailure`) exits with status 1 and its one line."""
    tf.config.experimental.enable_op_determinism()
    try:
        return train_and_evaluate(config, workdir, progress=progress)
    except distributed_loop.PeerFailure as error:
        print(f"error: {error}", file=sys.stderr, flush=True)  # one line, as below
        os._exit(1)  # after aborted collectives TF's runtime cannot shut down cleanly (errors at exit)
    except (ConfigError, *RUN_ERRORS) as error:
        sys.exit(f"error: {error}")  # one line (absl's logging.error printed it a second time)


def _define_flags():
    """Flags of this binary (defined only when it runs, so other binaries can import this module)."""
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard, results.")
    flags.DEFINE_boolean("progress", True, "Show the Keras progress bar (else one line per epoch).")
    flags.DEFINE_boolean("dry_run", False, "Only check the config and workdir and print what "
                         "would run and an estimated time; write nothing, train nothing.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.dry_run:
        try:
            dry_run(flags.FLAGS.config, flags.FLAGS.workdir)
        except ConfigError as error:
            sys.exit(f"error: {error}")
        return
    run_or_exit(flags.FLAGS.config, flags.FLAGS.workdir, progress=flags.FLAGS.progress)


def parse_flags(argv):
    """absl's flag parsing, with a bad `--config.FIELD=VALUE` (unknown field, wrong type) as one
    line naming the flag and what is allowed (ml_collections raises it as a Python error), and a
    `--config` file that is missing or fails to load as one line naming it."""
    try:
        parsed = app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        text = _one_line(error)
        named = re.match(r"the config has no field '?(\w+)", text)
        flag = next((a.split("=")[0] for a in argv[1:] if named and a.startswith("--config.")
                     and a.split("=")[0].split(".")[-1] == named.group(1)), "--config")
        sys.exit(f"error: {flag}: {text}")
    except Exception as error:  # noqa: BLE001 -- the config file did not load (missing, its code failed)
        sys.exit(_config_file_error(argv, error))
    try:
        getattr(flags.FLAGS.config, "seed", None)  # ml_collections defers a load error to here
    except OSError as error:
        sys.exit(_config_file_error(argv, error))
    return parsed


def _config_file_error(argv, error) -> str:
    """One line for a `--config` file that did not load (ml_collections raises it, or defers it
    to the first use of the config, as a 60-line traceback)."""
    given = [b if a == "--config" else a.split("=", 1)[1] for a, b in zip(argv, argv[1:] + [""])
             if a == "--config" or a.startswith("--config=")]
    path = given[-1] if given else ""
    if not os.path.isfile(path.split(":")[0]):
        return f"error: --config={path}: no such file; give a config file such as configs/default.py"
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (f"error: --config={path}: the config file failed to load: {type(error).__name__}: "
            f"{lines[-1] if lines else ''}")


def _one_line(error) -> str:
    """ml_collections' message of a bad override, on one line."""
    text = str(error.args[0]) if error.args else str(error)
    text = text.strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    return f"the config has no field {text}" if isinstance(error, (AttributeError, KeyError)) \
        else text


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
