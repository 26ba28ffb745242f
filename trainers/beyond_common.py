"""What the custom-loop experiments share (docs/design.md §7.0): resumable runs (`Checkpointer`,
`finish`), fixed samples and splits, configs at a scale, one-line config checks, parts of `arms`.
"""

import math
import os
import time

import numpy as np

from cgh_tf import checkpoints
from trainers import config_schema
from trainers import outputs
from trainers.experiment import Arm


def finished_result(run_dir, config_dict):
    """The results.json dict of a finished run of `config_dict`, else None; ConfigError (one
    line) if it holds another config's."""
    result = outputs.read_json(os.path.join(run_dir, "results.json"),
                               keys=("config", "curves", "finished", "summary"))
    if result and result.get("finished"):
        _require_same_config(run_dir, result, config_dict, "the finished results of a run")
        return result
    return None


def check_run_dir(run_dir, config_dict):
    """ConfigError (one line) if `run_dir`'s finished results or curves are of another config."""
    if finished_result(run_dir, config_dict) is None:
        Checkpointer.saved_curves(os.path.join(run_dir, "curves.json"), run_dir, config_dict)


def require(ok, message):
    """ValueError(message) unless ok: the one-line checks of the experiments' `check_config`."""
    if not ok:
        raise ValueError(message)


def require_each(config, fields, ok, must):
    """ValueError "field=value must be <must>" for the first of `fields` whose value is not ok."""
    for field in fields:
        require(ok(config[field]), f"{field}={config[field]!r} must be {must}")


def require_ints(config, fields, minimum=1):
    require_each(config, fields, lambda v: config_schema.is_int(v, minimum),
                 f"an int >= {minimum}")


def require_optional_ints(config, fields, minimum=1):
    require_each(config, fields, lambda v: v is None or config_schema.is_int(v, minimum),
                 f"None (all) or an int >= {minimum}")


def require_fractions(config, fields):
    require_each(config, fields, lambda v: config_schema.is_number(v) and 0 < v < 1,
                 "a number in (0, 1)")


def require_positive(config, fields):
    require_each(config, fields, lambda v: config_schema.is_number(v) and v > 0, "a number > 0")


def require_int_list(config, field, minimum=0):
    """ValueError "field=(...) must be a non-empty list of ints >= minimum" unless it is one."""
    values = config[field]
    require(isinstance(values, (tuple, list)) and len(values) > 0 and all(
        config_schema.is_int(v, minimum) for v in values),
        f"{field}={tuple(values) if isinstance(values, (tuple, list)) else values!r} must be a "
        f"non-empty list of ints >= {minimum}")


def require_label_noise(config):
    """ValueError unless 0 < label_noise < 1 (an experiment comparing pristine and corrupted)."""
    require_each(config, ("label_noise",), lambda v: config_schema.is_number(v) and 0 < v < 1,
                 "in (0, 1): the experiment compares pristine and corrupted examples")


def refuse_overrides(overrides, fields, why, hint=""):
    """ValueError "<field> is <why>; it cannot be overridden with --set<hint>" for the first of
    `fields` in `overrides` (the fields an experiment's arms set; why e.g. "set by the sweep")."""
    for field in fields:
        require(field not in overrides,
                f"{field} is {why}; it cannot be overridden with --set{hint}")


def chosen(overrides, key, given, allowed, what):
    """The names an `arms` call is limited to: `overrides.pop(key)` or `given` (None: all of
    `allowed`), each checked ("<what> 'x' is unknown; allowed: ...")."""
    names = overrides.pop(key, given)
    for name in names or ():
        require(name in allowed, f"{what} {name!r} is unknown; allowed: {', '.join(allowed)}")
    return tuple(allowed) if names is None else tuple(names)


def seeded_arms(group, label, panel, config, seeds, check_config, tags=(),
                seed_fields=("seed",)):
    """`check_config(config)`, then one `Arm` per seed 0..seeds−1 (the seed in `seed_fields`)."""
    check_config(config)
    return [Arm(group, label, panel, seed, config_schema.apply_overrides(
        config, dict.fromkeys(seed_fields, seed)), tags=tags) for seed in range(seeds)]


def planned_pairs(arms_, pairs):
    """[(panel/arm, panel/control, *rest)] per panel of `arms_` (plan order) and (arm, control,
    *rest) of `pairs` whose two groups are planned (panel "": bare group names)."""
    groups, out = {a.group for a in arms_}, []
    for panel in dict.fromkeys(a.panel for a in arms_):
        for arm, control, *rest in pairs:
            arm, control = (f"{panel}/{g}" if panel else g for g in (arm, control))
            if arm in groups and control in groups:
                out.append((arm, control, *rest))
    return out


def by_group(runs):
    """{arm group: [result dict of each seed]} of the runs [(Arm, result)], in plan order."""
    out = {}
    for arm, result in runs:
        out.setdefault(arm.group, []).append(result)
    return out


def require_one_of(config, field, allowed):
    """ValueError "field=value is unknown; allowed: a, b" unless `config[field]` is in `allowed`."""
    require(config[field] in allowed, f"{field}={config[field]!r} is unknown; allowed: "
            f"{', '.join(map(str, allowed))}")


def finished_or_checked(config, run_dir, check_config):
    """The results of a finished run of `config` in `run_dir`; else None once `check_config`
    accepted it."""
    done = finished_result(run_dir, config.to_dict())
    if done is None:
        check_config(config)
    return done


class Checkpointer:
    """(model, optimizer, step) in a `CheckpointStore` `ckpt/ckpt-<step>`, the curves as JSON."""

    def __init__(self, run_dir, model, optimizer):
        import tensorflow as tf

        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="run_step")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step)
        self.store = checkpoints.CheckpointStore(os.path.join(run_dir, "ckpt"), self.checkpoint,
                                                 "ckpt", keep=2)
        self.curves_path = os.path.join(run_dir, "curves.json")

    def restore(self, config_dict):
        """(step, curves) of the newest intact checkpoint the saved curves reach, or (0, None);
        ConfigError for another config's run."""
        saved = self.saved_curves(self.curves_path, self.run_dir, config_dict)
        if saved is None:
            return 0, None
        found = self.store.newest_intact(at_most=saved.get("step"))  # none the curves do not reach
        if found is None:
            return 0, None
        self.store.restore(found[1])
        step = int(self.step.numpy())
        curves = {k: [v for s, v in zip(saved["curves"]["step"], vals) if s <= step]
                  for k, vals in saved["curves"].items()}
        return step, curves

    @staticmethod
    def saved_curves(path, run_dir, config_dict):
        """The curves.json dict at `path` (None: none); ConfigError if of another config."""
        saved = outputs.read_json(path, keys=("config", "curves", "step"))
        if saved is not None:
            _require_same_config(run_dir, saved, config_dict, "a run")
        return saved

    def save(self, step, curves, config_dict):
        """The curves up to `step`, then the checkpoint of `step`: a kill between the two leaves
        curves ahead of the newest checkpoint, which `restore` cuts back to it."""
        outputs.write_json(self.curves_path, {**_config_record(config_dict), "curves": curves,
                                              "step": step})
        self.step.assign(step)
        self.store.save(step)


def _config_record(config_dict):
    """The config fields of a run's curves.json / results.json: the config and its version."""
    return {"config": outputs.json_roundtrip(config_dict),
            "config_version": config_schema.CONFIG_VERSION}


def _require_same_config(run_dir, record, config_dict, what):
    """ConfigError (one line) unless the curves.json / results.json dict `record` holds a run of
    `config_dict` (its config migrated from the version it was saved at:
    `config_schema.migrate`)."""
    wanted = outputs.json_roundtrip(config_dict)
    saved = record.get("config")
    saved = config_schema.migrate(saved, record.get("config_version", 1)) if isinstance(
        saved, dict) else {}
    if saved != wanted:
        differing = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        raise config_schema.ConfigError(
            f"{run_dir} holds {what} with a different config (fields {differing} differ); use "
            f"another workdir")


def sample(pool, m, seed, salt):
    """Sorted indices of min(m, pool size) examples of `pool` (int n: range(n); bool mask; index
    array) drawn without replacement by `default_rng([seed, salt])`."""
    pool = np.asarray(pool)
    idx = (np.flatnonzero(pool) if pool.dtype == bool
           else np.arange(int(pool)) if pool.ndim == 0 else pool)
    return np.sort(np.random.default_rng([int(seed), int(salt)]).choice(
        idx, size=min(int(m), len(idx)), replace=False))


def arrays(split):
    """(x float32 [n, ...], y int32 [n]: the training labels) of a `cgh_tf.data` split."""
    return split.x.astype(np.float32), split.y.astype(np.int32)


def split_indices(n, fraction, seed):
    """(kept, held out) sorted indices: round(n · fraction) held out by `default_rng([seed, 4])`."""
    perm = np.random.default_rng([int(seed), 4]).permutation(n)
    held_out = held_out_count(n, fraction)
    return np.sort(perm[held_out:]), np.sort(perm[:held_out])


def held_out_count(n, fraction):
    """The number of examples `split_indices` holds out of n: round(n · fraction)."""
    return int(round(n * float(fraction)))


def dataset_bases(module, scale, overrides, name):
    """[(dataset, `get_config()` ← `SCALES[scale]` ← `DATASET_CHANGES[scale][dataset]` ←
    `overrides`)] for `module.DATASETS[scale]`, or only `overrides["dataset"]` (one of
    `DATASET_CHANGES[scale]`, else one-line ValueError)."""
    datasets = (overrides["dataset"],) if "dataset" in overrides else module.DATASETS[scale]
    allowed = module.DATASET_CHANGES[scale]
    for dataset in datasets:
        require(dataset in allowed, f"dataset={dataset!r} is not available for {name} at scale "
                f"{scale!r}; allowed: {', '.join(allowed)}")
    base = config_schema.apply_overrides(module.get_config(), module.SCALES[scale])
    return [(d, config_schema.apply_overrides(config_schema.apply_overrides(base, allowed[d]),
                                              {**overrides, "dataset": d})) for d in datasets]


def finish(run_dir, config_dict, curves, summary, started, **extra):
    """Write and return a finished run's results.json (config, curves, summary, extra fields)."""
    result = {**_config_record(config_dict), "curves": curves, "finished": True,
              "summary": summary, **extra,
              "seconds_last_invocation": round(time.time() - started, 1)}
    outputs.write_json(os.path.join(run_dir, "results.json"), result)
    return result


def append(curves, row):
    """Append a dict of scalars to the column dict `curves` (new keys padded with None)."""
    n = len(curves.get("step", []))
    for key in row:
        curves.setdefault(key, [None] * n)
    for key in curves:
        value = row.get(key)
        curves[key].append(None if value is None or (isinstance(value, float) and math.isnan(value))
                           else float(value))

