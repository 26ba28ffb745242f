r"""Demo: train the default experiment (MNIST-1D, 50 % label noise, MLP) and print a results table.

    python -m trainers.demo --workdir=workdirs/demo            # what `make demo` runs
    python -m trainers.demo --workdir=/tmp/demo --arms=sgd,m3,rm3

Each arm is a named config trained into its own fresh sub-directory `WORKDIR/<arm>` (a previous
run of that arm is deleted first). The table shows, per arm, the accuracy on the pristine and on the
corrupted training examples (against their training labels: the latter measures memorisation) and
the test accuracy, plus the path of each arm's PNG of the curves.

| arm   | config              | optimizer                                 |
|-------|---------------------|-------------------------------------------|
| `sgd` | `configs/default.py`| plain SGD                                 |
| `m3`  | `configs/m3.py`     | M3: median of 3 means (2003.07422)        |
| `rm3` | `configs/rm3.py`    | RM3: running median of 3 (2003.07422)     |

Add an arm by adding an entry to `ARMS` (a name and a function returning its config).
"""

import os
import shutil

from absl import app, flags

from configs import default, m3, rm3
from trainers import io
from trainers import train

ARMS = {
    "sgd": default.get_config,
    "m3": m3.get_config,
    "rm3": rm3.get_config,
}
DEFAULT_ARMS = ("sgd",)

# What a trainer workdir may contain; anything else makes the demo refuse to delete it.
_WORKDIR_ENTRIES = {io.CHECKPOINT_DIR, "tensorboard", io.RESULTS_FILE, io.TIMINGS_FILE,
                    io.PLOT_FILE}


def parse_arms(text: str) -> list:
    """"sgd,rm3" -> ["sgd", "rm3"]; ValueError naming the allowed arms for an unknown one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ARMS]
    if unknown or not names:
        raise ValueError(f"unknown arms {unknown or text!r}; allowed: {', '.join(ARMS)}")
    return names


def clear_arm_dir(path: str) -> None:
    """Delete a previous trainer workdir at `path`; refuse (ValueError) if it holds foreign files."""
    if not os.path.exists(path):
        return
    foreign = [e for e in os.listdir(path) if e not in _WORKDIR_ENTRIES and ".tmp-" not in e]
    if foreign:
        raise ValueError(f"{path} is not a trainer workdir (it holds {sorted(foreign)}); "
                         f"not deleting it: choose another --workdir")
    shutil.rmtree(path)


def run_arms(workdir: str, arms, progress: bool = True) -> dict:
    """Train every arm into a fresh `workdir/<arm>`; return `{arm: results dict}`."""
    results = {}
    for name in arms:
        arm_dir = os.path.join(workdir, name)
        clear_arm_dir(arm_dir)
        results[name] = train.run_or_exit(ARMS[name](), arm_dir, progress=progress)
    return results


def format_table(workdir: str, results: dict) -> str:
    """Fixed-width table: arm, pristine / corrupted training accuracy, test accuracy, PNG path."""
    header = f"{'arm':<6} {'pristine train':>14} {'corrupted train':>15} {'test':>6}  curves"
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        final = result["final"]
        corrupted = final["corrupted_train_accuracy"]
        lines.append(f"{name:<6} {final['pristine_train_accuracy']:>14.3f} "
                     f"{'n/a' if corrupted is None else format(corrupted, '.3f'):>15} "
                     f"{final['test_accuracy']:>6.3f}  {os.path.join(workdir, name, io.PLOT_FILE)}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        arms = parse_arms(flags.FLAGS.arms)
    except ValueError as error:
        raise app.UsageError(str(error))
    workdir = flags.FLAGS.workdir
    results = run_arms(workdir, arms, progress=flags.FLAGS.progress)
    first = next(iter(results.values()))
    dataset = first["dataset"]
    print(f"\n{dataset['name']}: {dataset['num_train']} training examples, "
          f"{dataset['num_train_corrupted']} with a corrupted label; {dataset['num_test']} test "
          f"examples; {first['epochs_completed']} epochs. Accuracy (training examples measured "
          f"against their training labels):\n")
    print(format_table(workdir, results))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Directory; each arm trains into WORKDIR/<arm>.")
    flags.DEFINE_string("arms", ",".join(DEFAULT_ARMS), f"Comma-separated arms of {sorted(ARMS)}.")
    flags.DEFINE_boolean("progress", True, "Show the Keras progress bar.")
    flags.mark_flag_as_required("workdir")
    app.run(main)
