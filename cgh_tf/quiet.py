"""Quiet by default: what the trainer programs print, decided before TensorFlow is first imported.

`cgh_tf/__init__.py` runs `quiet_if_our_program()` before it imports TensorFlow, and
`trainers/__init__.py` imports `cgh_tf` before any trainer module imports TensorFlow (TF reads
`TF_CPP_MIN_LOG_LEVEL` once, when its C++ runtime loads). It acts only when one of the project's
programs runs (`python -m trainers.X`, `python -m cgh_tf.trainers.X`, the `cgh-*` console
scripts), never when another program (a test, a notebook, a user's script) imports `cgh_tf`.
This module imports no TensorFlow at module level.

Without `--verbosity` / `-v` on the command line, a run prints Keras' own line per epoch (or the
binary's line per arm) and the results:

| source | default | `--verbosity=N` |
|--------|---------|-----------------|
| TF's C++ log | off (`TF_CPP_MIN_LOG_LEVEL=3`): no cuInit failure, no `use_unbounded_threadpool` | as TF |
| TF's import banner (1) | held back; shown if the import fails | shown |
| TF's Python INFO records (2) | hidden: warnings and errors only | shown (`-v 1`: DEBUG too) |

(1) oneDNN, `Could not find cuda drivers`: written before absl::InitializeLog, which
`TF_CPP_MIN_LOG_LEVEL` does not reach (tensorflow/tensorflow#100442).
(2) absl or `tensorflow` logger records from TensorFlow's files, e.g. `Sharding callback
duration` at every checkpoint.

The trainer's own absl INFO lines (resumed, results written) show for a `trainers.train` run;
its per-epoch line is DEBUG (`-v 1`), since Keras prints its own. An experiment's arms print
nothing of their own (`trainers/fit_arm.py`: Keras `verbose=0`, absl at WARNING) unless
`--progress`: the runner prints one line per arm. A `TF_CPP_MIN_LOG_LEVEL` already in
the environment is kept.
"""

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile

from absl import logging as absl_logging


QUIET_TF_CPP_LOG_LEVEL = "3"  # TF C++ logs at INFO 0, WARNING 1, ERROR 2; 3 shows none


def verbosity_given(argv) -> bool:
    """Whether `argv` (a command line, program name first) sets absl's `--verbosity` / `-v`."""
    return any(arg in ("-v", "--verbosity") or arg.startswith(("-v=", "--verbosity="))
               for arg in argv[1:])


def running_as_program(argv, orig_argv) -> bool:
    """Whether one of the project's programs runs: `python -m trainers.X` / `cgh_tf.trainers.X`
    (`orig_argv`, the interpreter's own command line) or a `cgh-*` console script (`argv[0]`)."""
    program = os.path.basename(argv[0]) if argv else ""
    if program.startswith("cgh-"):
        return True
    modules = [orig_argv[i + 1] for i, arg in enumerate(orig_argv[:-1]) if arg == "-m"]
    return bool(modules) and modules[0].startswith(("trainers.", "cgh_tf."))


def quiet_if_our_program() -> bool:
    """`quiet_by_default(sys.argv)` when one of the project's programs runs; returns whether it
    silenced anything."""
    return (running_as_program(sys.argv, getattr(sys, "orig_argv", []))
            and quiet_by_default(sys.argv))


def quiet_by_default(argv) -> bool:
    """Silence TF's C++ log and absl's INFO unless `argv` asks for `--verbosity`; returns whether
    it did. Must run before TensorFlow is imported to reach the C++ log."""
    if verbosity_given(argv):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_LOG_LEVEL)
    with stderr_held_back():
        import tensorflow  # noqa: F401 - its import banner, held back
    tensorflow_directory = importlib.util.find_spec("tensorflow").submodule_search_locations[0]
    absl_logging.get_absl_handler().addFilter(WarningsOnlyFrom(tensorflow_directory))
    return True


class WarningsOnlyFrom(logging.Filter):
    """Passes a log record unless it is below WARNING and was logged from a file under
    `directory` (absl's handler prints the records of both absl and TF's `tensorflow` logger)."""

    def __init__(self, directory):
        super().__init__()
        self.directory = os.path.join(os.path.abspath(directory), "")

    def filter(self, record):
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.directory)


@contextlib.contextmanager
def stderr_held_back():
    """File descriptor 2 (C++ libraries write there directly) goes to a temporary file for the
    block, and is written to the real stderr only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            except BaseException:
                os.dup2(saved, 2)
                held.seek(0)
                os.write(2, held.read())
                raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def logs_at_least(level=logging.WARNING):
    """For the block, the `absl` and `tensorflow` loggers pass only records at `level` (a
    `logging` level) or above, unless they were quieter already; their own levels are restored
    after (not their effective ones: a caller's later `setLevel` on the root still reaches them).
    Used where a run must print nothing of its own (an experiment's arms, timed steps)."""
    loggers = [logging.getLogger("absl"), logging.getLogger("tensorflow")]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for logger, own in zip(loggers, saved):
            logger.setLevel(own)
