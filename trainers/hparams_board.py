"""TensorBoard's HParams dashboard of an experiment: one session per run (its hyperparameters, its
final numbers as `final/<name>` at step 0, its curves) and the column config at the root, so
`tensorboard --logdir=WORKDIR` lists every run as one row. None / NaN metrics are left out (an
empty cell, never 0); hyperparameters other than bool / int / float / str are written as `str`.
"""

import glob
import os
import shutil

from trainers.config_schema import is_number

FINAL = "final"  # tag prefix of a session's final numbers
SESSION_DIR = "hparams"  # a run's session directory (beside its other TensorBoard runs)
_CONFIG_SUFFIX = ".hparams_config"  # events file of the column config at the sweep's root


def _hparam_value(value):
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def _write(logdir, summaries, filename_suffix=None):
    """Run `summaries()` into a new events file of `logdir`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(logdir, filename_suffix=filename_suffix)
    with writer.as_default():
        summaries()
    writer.close()  # flushes


def write_session(logdir: str, hparams: dict, metrics: dict, curves: dict = None) -> None:
    """One session in a fresh `logdir` (replaced whole): hparams {name: value}, metrics {name:
    number} and curves {"step": [int], name: [number or None]}."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    def summaries():
        hp.hparams({k: _hparam_value(v) for k, v in hparams.items()})
        for name, value in metrics.items():
            if is_number(value):
                tf.summary.scalar(f"{FINAL}/{name}", float(value), step=0)
        for name, values in (curves or {}).items():
            for step, value in zip(curves["step"], values if name != "step" else ()):
                if is_number(value):
                    tf.summary.scalar(name, float(value), step=int(step))

    if os.path.isdir(logdir):
        shutil.rmtree(logdir)
    _write(logdir, summaries)


def _domain(values: set):
    """A discrete domain of values of one kind (bools, strings or numbers); None for a mix."""
    from tensorboard.plugins.hparams import api as hp

    kinds = {bool if isinstance(v, bool) else str if isinstance(v, str) else float for v in values}
    return hp.Discrete(sorted(values)) if len(kinds) == 1 else None


def flatten(config: dict, prefix: str = "") -> dict:
    """`{"a.b": value}` of a nested config dict (lists / tuples as their `str`)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = _hparam_value(value)
    return flat


def write_sweep(workdir: str, runs: list) -> None:
    """One session per run in `run_dir/hparams` and the dashboard's columns at `workdir` (the
    previous file replaced). runs: `[(run_dir, config dict, extra hparams, metrics, curves or
    None)]`; a session holds the extra hparams and the config fields whose value differs between
    the runs (seed included); the columns: every hparam, every final metric with a number."""
    from tensorboard.plugins.hparams import api as hp

    flat = [flatten(config) for _, config, _, _, _ in runs]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    names, metric_names = {}, {}
    for (run_dir, _, extra, metrics, curves), fields in zip(runs, flat):
        hparams = {**extra, **{k: fields.get(k, "") for k in varying}}
        write_session(os.path.join(run_dir, SESSION_DIR), hparams, metrics, curves)
        for name, value in hparams.items():
            names.setdefault(name, set()).add(_hparam_value(value))
        metric_names.update(dict.fromkeys(k for k, v in metrics.items() if is_number(v)))
    columns = [hp.HParam(name, _domain(values)) for name, values in names.items()]
    os.makedirs(workdir, exist_ok=True)
    for old in glob.glob(os.path.join(workdir, "events.out.tfevents.*" + _CONFIG_SUFFIX)):
        os.remove(old)
    _write(workdir, lambda: hp.hparams_config(
        hparams=columns, metrics=[hp.Metric(f"{FINAL}/{m}", display_name=m) for m in metric_names]),
        filename_suffix=_CONFIG_SUFFIX)
