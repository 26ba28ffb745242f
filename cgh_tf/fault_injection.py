"""Deterministic faults for tests: a process kills itself (SIGKILL) or hangs at a named point.

    CGH_TF_KILL_AT=save-1-staged python -m trainers.train ...   # dies there, as `kill -9` would
    CGH_TF_HANG_AT=train-step-6 ...                              # sleeps there (a hung peer)
    CGH_TF_HANG_AT=train-step-1 CGH_TF_HANG_UNTIL=/tmp/go ...    # sleeps there until /tmp/go exists

Both variables take a comma-separated list of point names; unset (the normal case), `point` only
reads the environment. Points passed by the trainer (`trainers/single_run.py`) and the checkpoint
store (`cgh_tf/checkpoints.py`):

| point                        | where                                                       |
|------------------------------|-------------------------------------------------------------|
| `train-step-<S>`             | after global training step S (1-based), before the next     |
| `epoch-end-<E>`              | epoch E's logs complete, before its checkpoint is saved     |
| `save-<N>-staged`            | checkpoint N written to its staging directory, nothing installed |
| `save-<N>-data-installed`    | its data files renamed into place, not its `.index`         |
| `save-<N>-index-installed`   | its `.index` renamed into place, the `checkpoint` file not yet updated |
| `save-<N>-listed`            | the `checkpoint` file updated, older checkpoints not yet rotated out |
| `results-written`            | `results.json` written, `curves.png` and `timings.json` not yet |
"""

import os
import signal
import time

KILL_VARIABLE = "CGH_TF_KILL_AT"
HANG_VARIABLE = "CGH_TF_HANG_AT"
RELEASE_VARIABLE = "CGH_TF_HANG_UNTIL"
HANG_SECONDS = 3600.0
POLL_SECONDS = 0.05


def point(name: str) -> None:
    """SIGKILL this process if `name` is in $CGH_TF_KILL_AT; if it is in $CGH_TF_HANG_AT, sleep
    `HANG_SECONDS`, or until the file $CGH_TF_HANG_UNTIL exists when that is set (so a test can
    hold a process at a point, e.g. while it holds its workdir, however loaded the machine);
    else nothing."""
    if name in _names(KILL_VARIABLE):
        os.kill(os.getpid(), signal.SIGKILL)
    if name in _names(HANG_VARIABLE):
        _hang(os.environ.get(RELEASE_VARIABLE))


def _hang(release) -> None:
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(POLL_SECONDS if release else HANG_SECONDS)


def active() -> bool:
    """True when a fault is requested (callers may skip adding their hooks otherwise)."""
    return bool(_names(KILL_VARIABLE) or _names(HANG_VARIABLE))


def _names(variable: str) -> set:
    return {n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()}
