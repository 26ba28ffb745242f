r"""Train a classifier from a config with Keras `fit`; resumable, deterministic, atomic outputs.

    python -m trainers.train --config=configs/default.py --workdir=/tmp/run \
        --config.num_epochs=2 --config.optimizer.name=rm3

Every field of `configs/default.py` can be set by `--config.FIELD=VALUE`. The same command started
again after an interruption (even `kill -9`) resumes and ends with the same `results.json`. A bad
flag, field or workdir exits with status 1 and one line, before any data is loaded; `--dry_run`
stops after those checks and prints what would train and an estimated time. The workdir's files
and TensorBoard scalars: docs/guide/trainer.md; one run: `single_run.py`.
"""

import contextlib
import os
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags
import tensorflow as tf

from cgh_tf import checkpoints, workdir_lock
from trainers import config_schema, console
from trainers import distributed_loop
from trainers import single_run
from trainers.config_schema import ConfigError, setting


# Besides ConfigError, what a run reports as one line and exit status 1 (the binaries catch these;
# OSError: a path that cannot be read or written, its message names it).
RUN_ERRORS = (workdir_lock.WorkdirBusy, workdir_lock.BadWorkdir, checkpoints.CheckpointSaveError,
              distributed_loop.PeerFailure, OSError)


def train_and_evaluate(config, workdir: str, progress: bool = True) -> dict:
    """Run, resume or re-report the run of `config` in `workdir`; its results.json dict."""
    check_workdir(config, workdir)
    strategy = distributed_loop.build_strategy(config.distribution,
                                               setting(config, "collective_timeout"))
    lock = contextlib.nullcontext()  # another worker than the chief writes nothing
    if distributed_loop.is_chief(strategy):  # another run's workdir: refused before the lock
        single_run.check_workdir_holds_config(workdir, config)
        lock = workdir_lock.hold(workdir, f"trainer ({setting(config, 'mode')})")
    with lock, distributed_loop.peers_fail_loudly(strategy):
        return single_run.run(config, workdir, progress, strategy=strategy)


def check_workdir(config, workdir: str) -> None:
    """ConfigError (one line) for a bad `config` or a `workdir` that is not (and cannot be created
    as) a writable directory; reads only."""
    config_schema.validate(config)
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a directory" if not os.path.isdir(existing) else "is not writable"
        raise ConfigError(f"--workdir={workdir}: {existing} {what}; choose a writable directory")


def dry_run(config, workdir: str, echo=print) -> None:
    """Check `config` and `workdir` as a run would (reading only), then print what the run would
    train and its estimated time; writes nothing, trains nothing."""
    from trainers import dry_run as planning
    from trainers import experiment, factories, input_pipeline

    check_workdir(config, workdir)
    single_run.check_workdir_holds_config(workdir, config)
    train, test = factories.dataset_sizes(config)
    steps = input_pipeline.steps_per_epoch(train, config.batch_size, config.drop_remainder)
    config_schema.check_data_fits(config, train)  # a run checks it once the data is loaded
    echo(f"config valid; nothing written. {config.dataset} ({train} train / {test} test "
         f"examples), {config.model.name}, optimizer {config.optimizer.name}: "
         f"{config.num_epochs} epochs × {steps} batches of {config.batch_size}")
    echo(planning.estimate([experiment.Arm("run", "", "", config.seed, config)], None).source)


def _run_or_exit(action, *args, **kwargs):
    """`action(*args, **kwargs)`; a `ConfigError` or one of `RUN_ERRORS` exits with status 1 and
    its one line."""
    try:
        return action(*args, **kwargs)
    except distributed_loop.PeerFailure as error:
        print(f"error: {error}", file=sys.stderr, flush=True)  # one line, as below
        os._exit(1)  # after aborted collectives TF's runtime cannot shut down cleanly (errors at exit)
    except (ConfigError, *RUN_ERRORS) as error:
        sys.exit(f"error: {error}")  # one line (absl's logging.error printed it a second time)


def _define_flags():
    """Flags of this binary (defined only when it runs: other binaries import this module)."""
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py.")
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard, results.")
    flags.DEFINE_boolean("progress", True, "Show the Keras progress bar (else one line per epoch).")
    flags.DEFINE_boolean("dry_run", False, "Only check the config and workdir and print what "
                         "would run and an estimated time; write nothing, train nothing.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv  # console.parse_flags refused arguments that are not flags
    if flags.FLAGS.dry_run:
        _run_or_exit(dry_run, flags.FLAGS.config, flags.FLAGS.workdir)
        return
    tf.config.experimental.enable_op_determinism()
    _run_or_exit(train_and_evaluate, flags.FLAGS.config, flags.FLAGS.workdir,
                 progress=flags.FLAGS.progress)


def parse_flags(argv):
    """`console.parse_flags` with a bad `--config.FIELD=VALUE` or a `--config` file that is
    missing or fails to load as one line naming it (ml_collections raises Python errors, and
    absl's usage errors carry the config's traceback)."""
    return console.parse_flags(argv, _parse_config_flags)


def _parse_config_flags(argv):
    try:
        parsed = flags.FLAGS(argv)
    except flags.Error as error:  # absl's usage errors, incl. get_config's ValueError / TypeError
        if "Error whilst parsing config file" not in str(error):
            raise
        sys.exit(_config_file_error(argv, str(error).strip().splitlines()[-1].strip()))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        if _raised_in_config_file(error, argv):
            sys.exit(_config_file_error(argv, error))
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


def _config_path(argv) -> str:
    """The last `--config` value of `argv` (the one absl uses), "" if none."""
    given = [b if a == "--config" else a.split("=", 1)[1] for a, b in zip(argv, argv[1:] + [""])
             if a == "--config" or a.startswith("--config=")]
    return given[-1] if given else ""


def _raised_in_config_file(error, argv) -> bool:
    """True if `error` was raised inside the `--config` file's code, or the file has no
    `get_config` (not by an override)."""
    path = os.path.abspath(_config_path(argv).split(":")[0])
    frames = traceback.TracebackException.from_exception(error).stack
    return "get_config" in str(error) or any(os.path.abspath(frame.filename) == path
                                             for frame in frames)


def _config_file_error(argv, error) -> str:
    """One line for a `--config` file that did not load (else a 60-line traceback); `error`: the
    exception, or its "Type: message" line."""
    path = _config_path(argv)
    if not os.path.isfile(path.split(":")[0]):
        return f"error: --config={path}: no such file; give a config file such as configs/default.py"
    if isinstance(error, BaseException):
        while error.__cause__ is not None:
            error = error.__cause__
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        error = f"{type(error).__name__}: {lines[-1] if lines else ''}"
    return f"error: --config={path}: the config file failed to load: {error}"


def _one_line(error) -> str:
    """ml_collections' message of a bad override, on one line."""
    text = str(error.args[0]) if error.args else str(error)
    text = text.strip("'\"").replace("\\'", "'").replace("\\n", " ").replace("\n", " ")
    return f"the config has no field {text}" if isinstance(error, (AttributeError, KeyError)) \
        else text


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
