"""TensorBoard's HParams dashboard for every experiment's arms (docs/design.md, "Trainers").

One *session* per run: `write_session(logdir, hparams, metrics, curves)` writes, into a fresh
`logdir` (replaced whole, so rewriting a finished run is idempotent), the run's hyperparameters
(`hp.hparams`), its final numbers as scalars at step 0 (`final/<name>`) and optionally its curves
as scalars at their steps. `write_experiment(workdir, sessions)` writes the dashboard's column
config (`hp.hparams_config`) at the sweep's root, so `tensorboard --logdir=WORKDIR` lists every
run of the sweep as one row with its hyperparameters and final numbers.

Values: hyperparameters must be bool / int / float / str (others are written with `str()`);
metric values that are None or NaN are left out (a run without a measurement shows an empty
cell, never 0).
"""

import glob
import math
import os
import shutil

FINAL = "final"  # tag prefix of a session's final numbers
_CONFIG_SUFFIX = ".hparams_config"  # events file of the column config at the sweep's root


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def write_session(logdir: str, hparams: dict, metrics: dict, curves: dict = None,
                  trial_id: str = None) -> None:
    """Write one HParams session into `logdir` (removed first if it exists).

    hparams: {name: value}; metrics: {name: number} (final numbers, tag `final/<name>`);
    curves: optional {"step": [int], name: [number or None]} (tag `<name>`, at each step)."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    if os.path.isdir(logdir):
        shutil.rmtree(logdir)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp.hparams({k: _hparam_value(v) for k, v in hparams.items()}, trial_id=trial_id)
        for name, value in metrics.items():
            if _is_number(value):
                tf.summary.scalar(f"{FINAL}/{name}", float(value), step=0)
        for name, values in (curves or {}).items():
            if name == "step":
                continue
            for step, value in zip(curves["step"], values):
                if _is_number(value):
                    tf.summary.scalar(name, float(value), step=int(step))
    writer.flush()
    writer.close()


def write_experiment(workdir: str, sessions: list) -> None:
    """The dashboard's columns, in an events file at `workdir` (the previous one replaced):
    every hparam of `sessions` and every final metric with a number in some session.

    sessions: [(hparams dict, metrics dict)] as given to `write_session`."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    names, metric_names = {}, {}
    for hparams, metrics in sessions:
        for name, value in hparams.items():
            names.setdefault(name, set()).add(_hparam_value(value))
        metric_names.update(dict.fromkeys(k for k, v in metrics.items() if _is_number(v)))
    columns = [hp.HParam(name, _domain(values)) for name, values in names.items()]
    os.makedirs(workdir, exist_ok=True)
    for old in glob.glob(os.path.join(workdir, "events.out.tfevents.*" + _CONFIG_SUFFIX)):
        os.remove(old)
    writer = tf.summary.create_file_writer(workdir, filename_suffix=_CONFIG_SUFFIX)
    with writer.as_default():
        hp.hparams_config(hparams=columns,
                          metrics=[hp.Metric(f"{FINAL}/{m}", display_name=m) for m in metric_names])
    writer.flush()
    writer.close()


def _domain(values: set):
    from tensorboard.plugins.hparams import api as hp

    if all(isinstance(v, bool) for v in values) or all(isinstance(v, str) for v in values):
        return hp.Discrete(sorted(values))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return hp.Discrete(sorted(values))
    return None


SESSION_DIR = "hparams"  # a run's session directory (beside its other TensorBoard runs)


def flatten(config: dict, prefix: str = "") -> dict:
    """`{"a.b": value}` of a nested config dict (lists / tuples as their `str`)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def write_sweep(workdir: str, runs: list) -> None:
    """One session per run and the columns at `workdir`: the dashboard of a whole sweep.

    runs: `[(run_dir, config dict, extra hparams dict, metrics dict, curves dict or None)]`. Each
    session holds the config fields whose value differs between the runs (the sweep's axes,
    seed included) plus the extra hparams (e.g. the arm's group), written to
    `run_dir/hparams`."""
    flat = [flatten(config) for _, config, _, _, _ in runs]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    sessions = []
    for (run_dir, _, extra, metrics, curves), fields in zip(runs, flat):
        hparams = {**extra, **{k: fields.get(k, "") for k in varying}}
        write_session(os.path.join(run_dir, SESSION_DIR), hparams, metrics, curves)
        sessions.append((hparams, metrics))
    write_experiment(workdir, sessions)
