r"""Demo (`make demo`): the `memorisation` experiment on MNIST-1D at 50 % label noise, every robust
aggregation beside its matched control (the arms and why: docs/getting_started.md, "The demo").

    python -m trainers.demo --workdir=workdirs/demo
    python -m trainers.demo --workdir=/tmp/demo --arms=sgd,m3 --epochs=10 --fresh

Every arm trains into `WORKDIR/noise50/<arm>/seed0`; a second run reuses finished arms (`--fresh`
retrains them).
"""

import os
import shutil
import sys

from absl import app, flags

from cgh_tf import workdir_lock
from trainers import (console, hparams_board, memorisation, outputs, reproduce, run_state, runner,
                      train)

WINSORIZED = "winsorized"  # winsorized SGD (c = WINSORIZE_PCT); its matched control is `sgd`
WINSORIZE_PCT = 2.0  # at batch 64: one example clipped on each side, per coordinate
ARMS = (*memorisation.METHODS, WINSORIZED)
# Every robust arm with its matched control: M3 / SGD batch x3 (same examples per update, same
# updates), RM3 / RA3 (same staleness, mean instead of median), winsorized / SGD (same batches).
DEFAULT_ARMS = ("sgd", WINSORIZED, "m3", "sgd_x3", "rm3", "ra3")
DEMO_NOISE = 0.5
DEMO_EPOCHS = 30  # memorisation under way, not finished (SGD fits ~all at 60); 6 arms: 132 s here

# What a trainer workdir may contain; anything else makes the demo refuse to delete it.
_WORKDIR_ENTRIES = {run_state.CHECKPOINT_DIR, "tensorboard", hparams_board.SESSION_DIR,
                    outputs.RESULTS_FILE, outputs.TIMINGS_FILE, outputs.PLOT_FILE,
                    workdir_lock.LOCK_FILE}


def parse_arms(text: str) -> list:
    """"sgd,rm3" -> ["sgd", "rm3"]; ValueError naming the allowed arms for an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ARMS]
    if unknown or not names:
        raise ValueError(f"unknown arms {unknown or text!r}; allowed: {', '.join(ARMS)}")
    return names


def clear_arm_dir(path: str) -> None:
    """Delete a previous trainer workdir at `path`; refuse (ValueError) if it holds foreign files
    or (`workdir_lock.WorkdirBusy`) if a trainer is using it."""
    if not os.path.exists(path):
        return
    foreign = [e for e in os.listdir(path) if e not in _WORKDIR_ENTRIES and ".tmp-" not in e]
    if foreign:
        raise ValueError(f"{path} is not a trainer workdir (it holds {sorted(foreign)}); "
                         f"not deleting it: choose another --workdir")
    with workdir_lock.hold(path, "demo clearing it"):
        shutil.rmtree(path)


def demo_arms(arms=DEFAULT_ARMS, epochs=DEMO_EPOCHS, overrides=None):
    """The demo's `Arm`s of the `memorisation` experiment: 50 % noise, one seed, `arms`."""
    return memorisation.arms("small", 1, {"num_epochs": epochs, **(overrides or {})},
                             noise_levels=(DEMO_NOISE,),
                             methods=tuple(arm for arm in arms if arm != WINSORIZED),
                             winsorize_pcts=(WINSORIZE_PCT,) if WINSORIZED in arms else ())


def run_demo(workdir: str, arms=DEFAULT_ARMS, epochs=DEMO_EPOCHS, fresh=False, overrides=None,
             command="python -m trainers.demo", echo=print) -> dict:
    """Train the demo's arms into `workdir` (reusing finished ones unless `fresh`); the summary."""
    planned = demo_arms(arms, epochs, overrides)
    if fresh:
        for arm in planned:
            clear_arm_dir(os.path.join(workdir, arm.path))
    return runner.run(memorisation.EXPERIMENT, planned, workdir, command, echo=echo)


def summary_text(workdir: str, summary: dict) -> str:
    """What the demo prints: the first table of results.md and where the figure and files are."""
    with open(os.path.join(workdir, runner.RESULTS_MD)) as f:
        lines = f.read().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = "\n".join(lines[first:end])
    figure = os.path.join(workdir, summary["figures"][0])
    return (f"\nMNIST-1D, {DEMO_NOISE:.0%} label noise; accuracy of training examples measured "
            f"against their training labels (corrupted: memorisation).\n\n{table}\n\n"
            f"figure:  {figure}\ntable:   {os.path.join(workdir, runner.RESULTS_MD)}\n"
            f"TensorBoard: tensorboard --logdir={workdir}")


def main(argv):
    del argv  # console.parse_flags refused arguments that are not flags
    options = flags.FLAGS
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    try:
        summary = run_demo(options.workdir, parse_arms(options.arms), options.epochs, options.fresh,
                           command=reproduce.command_line(sys.argv, "trainers.demo"))
    except (ValueError, *train.RUN_ERRORS) as error:  # incl. config_schema.ConfigError
        sys.exit(f"error: {error}")
    print(summary_text(options.workdir, summary))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Directory; arm X trains into WORKDIR/noise50/X/seed0.")
    flags.DEFINE_string("arms", ",".join(DEFAULT_ARMS), f"Comma-separated arms of {list(ARMS)}.")
    flags.DEFINE_integer("epochs", DEMO_EPOCHS, "Epochs per arm.", lower_bound=1)
    flags.DEFINE_boolean("fresh", False, "Retrain arms that finished in an earlier run.")
    flags.mark_flag_as_required("workdir")
    app.run(main, flags_parser=console.parse_flags)
