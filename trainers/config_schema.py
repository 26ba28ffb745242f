"""The trainer's config schema: allowed values, validation (`ConfigError` listing every bad
field), the feature fields, the optimizer kind, `--set` overrides and the saved configs' versions.

Every trainer config derives from `configs/default.py`, the one place fields and defaults are
written. Nothing here reads flags or data.
"""

import copy
import functools
import math
import numbers

import ml_collections

INPUT_CORRUPTIONS = ("shuffled_pixels", "random_pixels", "gaussian")
SCHEDULES = ("constant", "step")
INNER_OPTIMIZERS = ("sgd", "adam")
MODES = ("train",)
AGGREGATIONS = ("mean", "winsorize")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "tpu")  # trainers/distributed_loop.py

# Optional in a config (one without them trains as the plain trainer); defaults: configs/default.py.
FEATURE_FIELDS = ("mode", "coherence.every", "coherence.per_layer", "coherence.training",
                  "coherence.monitor_samples", "coherence.monitor_every_steps",
                  "optimizer.aggregation", "optimizer.winsorize_pct", "optimizer.m3_in_batch",
                  "learning_times.every_steps", "collective_timeout")


def feature_defaults() -> dict:
    """`{dotted field: default}` of the feature fields, read from `configs/default.py`."""
    from configs import default

    config = default.get_config()
    return {dotted: functools.reduce(lambda node, part: node[part], dotted.split("."), config)
            for dotted in FEATURE_FIELDS}


class ConfigError(ValueError):
    """A config field has a bad value; raised before any training or writing happens."""


def validate(config: ml_collections.ConfigDict) -> None:
    """Check names and numbers of a trainer config; raise `ConfigError` listing all problems."""
    from cgh_tf import data, models

    problems = []

    def need(ok, message):
        if not ok:
            problems.append(message)

    need(config.dataset in data.DATASETS,
         f"dataset={config.dataset!r} is unknown; allowed: {', '.join(data.DATASETS)}")
    need(_is_number(config.label_noise) and 0.0 <= config.label_noise <= 1.0,
         f"label_noise={config.label_noise!r} must be a fraction in [0, 1]")
    need(config.noise_kind in data.LABEL_NOISE_KINDS,  # the one list of noise kinds
         f"noise_kind={config.noise_kind!r} is unknown; allowed: "
         f"{', '.join(data.LABEL_NOISE_KINDS)}")
    need(config.input_corruption is None or config.input_corruption in INPUT_CORRUPTIONS,
         f"input_corruption={config.input_corruption!r} is unknown; allowed: None, "
         f"{', '.join(INPUT_CORRUPTIONS)}")
    for field in ("max_train", "max_test"):
        value = config[field]
        need(value is None or is_int(value, minimum=1),
             f"{field}={value!r} must be None or a positive int")
    for field in ("num_epochs", "batch_size", "eval_batch_size", "keep_checkpoints"):
        need(is_int(config[field], minimum=1), f"{field}={config[field]!r} must be a positive int")
    need(is_int(config.seed, minimum=0), f"seed={config.seed!r} must be a non-negative int")
    timeout = setting(config, "collective_timeout")
    need(_is_number(timeout) and timeout > 0,
         f"collective_timeout={timeout!r} must be a positive number of seconds")
    need(config.get("distribution") in DISTRIBUTIONS,
         f"distribution={config.get('distribution')!r} is unknown; allowed: "
         f"{', '.join(DISTRIBUTIONS)}")
    need(config.model.name in models.MODELS,
         f"model.name={config.model.name!r} is unknown; allowed: {', '.join(models.MODELS)}")
    _validate_optimizer(config.optimizer, need)
    _validate_schedule(config.lr_schedule, need)
    _validate_features(config, need)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _validate_optimizer(opt, need):
    need(isinstance(opt.name, str) and opt.name, f"optimizer.name={opt.name!r} must be a name")
    need(_is_number(opt.learning_rate) and opt.learning_rate > 0,
         f"learning_rate={opt.learning_rate!r} must be a positive number")
    need(_is_number(opt.momentum) and 0.0 <= opt.momentum < 1.0,
         f"optimizer.momentum={opt.momentum!r} must be in [0, 1)")
    need(is_int(opt.groups, minimum=1), f"optimizer.groups={opt.groups!r} must be a positive int")
    need(is_int(opt.window, minimum=1), f"optimizer.window={opt.window!r} must be a positive int")
    need(_is_number(opt.l2) and opt.l2 >= 0, f"optimizer.l2={opt.l2!r} must be >= 0")
    need(_is_number(opt.weight_decay) and opt.weight_decay >= 0,
         f"optimizer.weight_decay={opt.weight_decay!r} must be >= 0")
    need(_known_optimizer_name(opt), f"optimizer.name={opt.name!r} is unknown; allowed: sgd, adam, "
         f"m3, rm3, ra3, or m<k> / rm<k> / ra<k> (e.g. m5)")
    need(opt.inner in INNER_OPTIMIZERS,
         f"optimizer.inner={opt.inner!r} is unknown; allowed: {', '.join(INNER_OPTIMIZERS)}")


def _known_optimizer_name(opt) -> bool:
    from cgh_tf import optimizers

    try:
        return bool(optimizers.parse_name(opt.name))
    except ValueError:
        return False


def _validate_schedule(schedule, need):
    need(schedule.name in SCHEDULES,
         f"lr_schedule.name={schedule.name!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    epochs = schedule.decay_epochs
    epochs = tuple(epochs) if isinstance(epochs, (tuple, list)) else None
    need(epochs is not None and all(is_int(e, minimum=1) for e in epochs)
         and list(epochs) == sorted(set(epochs)),
         f"lr_schedule.decay_epochs={schedule.decay_epochs!r} must be strictly increasing "
         f"positive ints")
    need(_is_number(schedule.decay_factor) and schedule.decay_factor > 0,
         f"lr_schedule.decay_factor={schedule.decay_factor!r} must be a positive number")


def setting(config, dotted: str):
    """The value of feature field `dotted` (e.g. "coherence.every"), or its default when absent."""
    node = config
    for part in dotted.split("."):
        if part not in node:
            return feature_defaults()[dotted]
        node = node[part]
    return node


def add_feature_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds every missing feature field with its default (so flags can override it)."""
    from ml_collections import config_dict

    for dotted, default in feature_defaults().items():
        node = config
        *parents, leaf = dotted.split(".")
        for parent in parents:
            if parent not in node:
                node[parent] = ml_collections.ConfigDict()
            node = node[parent]
        if leaf not in node:
            node[leaf] = (config_dict.placeholder(_FIELD_TYPES.get(dotted, str)) if default is None
                          else default)
    return config


_FIELD_TYPES = {"optimizer.winsorize_pct": float}  # of the feature fields unset by default


CONFIG_VERSION = 2  # of the config a run saves (`config_version` beside it; absent: 1)


def _from_version_1(saved: dict) -> dict:
    """Version 1 → 2: `optimizer.winsorize_pct` 0 under `aggregation="mean"` became unset (None),
    and the `easy_hard` fields of a `mode="train"` run went with the easy_hard trainer mode."""
    if saved.get("mode", "train") == "train":
        saved = {key: value for key, value in saved.items() if key != "easy_hard"}
    optimizer = saved.get("optimizer")
    if (isinstance(optimizer, dict) and optimizer.get("aggregation", "mean") == "mean"
            and optimizer.get("winsorize_pct") == 0):
        saved = {**saved, "optimizer": {**optimizer, "winsorize_pct": None}}
    return saved


_MIGRATIONS = {1: _from_version_1}  # version v -> the function mapping a v dict to v + 1


def migrate(saved: dict, version: int = 1) -> dict:
    """A config dict saved at `version` in today's spelling, so that a saved run and a new config
    compare by plain equality (with `outputs.json_roundtrip(config.to_dict())`); ConfigError for a
    version this code does not know (saved by a newer cgh_tf)."""
    if not is_int(version, 1) or version > CONFIG_VERSION:
        raise ConfigError(f"config_version={version!r}, which this cgh_tf does not read (versions "
                          f"1 to {CONFIG_VERSION}); use a newer cgh_tf or another workdir")
    for older in range(version, CONFIG_VERSION):
        saved = _MIGRATIONS[older](saved)
    return saved


def saved_config(record: dict) -> dict:
    """The config of a checkpoint record or results.json dict (`config`, `config_version`),
    migrated to today's version."""
    return migrate(record["config"], record.get("config_version", 1))


def optimizer_kind(config) -> tuple:
    """`(kind, k)` of `optimizer.name` (`cgh_tf.optimizers.parse_name`); ConfigError if unknown."""
    from cgh_tf import optimizers

    opt = config.optimizer
    try:
        return optimizers.parse_name(opt.name, groups=opt.groups, window=opt.window)
    except ValueError as error:
        raise ConfigError(f"optimizer.name={opt.name!r}: {error}") from error


def is_m3(config) -> bool:
    """True if `optimizer.name` is M3 (`m3`, `m5`, ...)."""
    return optimizer_kind(config)[0] == "m"


def m3_groups(config) -> int:
    """The groups k of an M3 name (`m3` -> `optimizer.groups`, `m5` -> 5)."""
    return optimizer_kind(config)[1]


def updates_per_batch(config) -> tuple:
    """`(kind, k)`: "every" batch (SGD / Adam, in-batch M3), "every_kth" (M3 over k consecutive
    batches) or "after_window" (RM3 / RA3: every batch once k were seen)."""
    kind, k = optimizer_kind(config)
    if kind in ("sgd", "adam") or (kind == "m" and setting(config, "optimizer.m3_in_batch")):
        return "every", 1
    return ("every_kth", k) if kind == "m" else ("after_window", k)


def uses_cgh_model(config) -> bool:
    """`cgh_tf.Model` unless M3 groups are consecutive batches (a plain `keras.Model`)."""
    return not is_m3(config) or bool(setting(config, "optimizer.m3_in_batch"))


def _validate_features(config, need):
    mode = setting(config, "mode")
    need(mode in MODES, f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    for field in ("coherence.every", "coherence.monitor_samples", "coherence.monitor_every_steps",
                  "learning_times.every_steps"):
        value = setting(config, field)
        need(is_int(value, minimum=0), f"{field}={value!r} must be an int >= 0 (0 = off)")
    every_steps = setting(config, "coherence.monitor_every_steps")
    need(not (is_int(every_steps, 1) and setting(config, "coherence.monitor_samples") == 0),
         f"coherence.monitor_every_steps={every_steps!r} has no effect without the monitor; set "
         f"coherence.monitor_samples > 0 or coherence.monitor_every_steps=0")
    for field in ("coherence.per_layer", "coherence.training", "optimizer.m3_in_batch"):
        value = setting(config, field)
        need(isinstance(value, bool), f"{field}={value!r} must be True or False")
    aggregation = setting(config, "optimizer.aggregation")
    pct = setting(config, "optimizer.winsorize_pct")
    need(aggregation in AGGREGATIONS, f"optimizer.aggregation={aggregation!r} is unknown; "
         f"allowed: {', '.join(AGGREGATIONS)}")
    need(pct is None or (_is_number(pct) and 0.0 <= pct < 50.0),
         f"optimizer.winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")
    need(aggregation != "winsorize" or pct is not None,
         "optimizer.aggregation='winsorize' needs optimizer.winsorize_pct, the percent clipped on "
         "each side, in [0, 50) (e.g. --config.optimizer.winsorize_pct=2; 0 is a plain mean "
         "computed per example)")
    need(aggregation == "winsorize" or not (_is_number(pct) and pct > 0),
         f"optimizer.winsorize_pct={pct!r} has no effect with optimizer.aggregation={aggregation!r}; "
         f"set optimizer.aggregation='winsorize' or winsorize_pct=0")
    if _known_optimizer_name(config.optimizer) and is_m3(config):
        need(aggregation == "mean", f"optimizer.aggregation={aggregation!r} and M3 are two "
             f"aggregators of the same batch; use one of them")
        changes = in_batch_m3_changes(config)
        need(not changes, "in-batch M3 (cgh_tf.Model splits each batch into the groups; per-step "
             "coherence needs it) wants all of: " + " ".join(changes)
             + " (or coherence.every=0 and optimizer.m3_in_batch=False: M3 over consecutive "
             "batches)")


def in_batch_m3_changes(config) -> list:
    """Every `--config.FIELD=VALUE` that in-batch M3 (asked for by `optimizer.m3_in_batch`, or
    needed by per-step coherence) still needs: the batch size as a multiple of the groups, and
    `drop_remainder=True` unless `max_train` is known to leave a last batch that splits too
    (otherwise `check_batches_split` checks after loading). Empty when nothing must change."""
    in_batch = setting(config, "optimizer.m3_in_batch")
    every = setting(config, "coherence.every")
    if not (in_batch is True or is_int(every, 1)) or not is_int(config.optimizer.groups, 1):
        return []
    changes = [] if in_batch is True else ["--config.optimizer.m3_in_batch=True"]
    groups, batch = m3_groups(config), config.batch_size
    if not is_int(batch, 1):
        return changes
    if batch % groups:
        batch = -(-batch // groups) * groups
        changes.append(f"--config.batch_size={batch} (a multiple of the {groups} M3 groups; "
                       f"now {config.batch_size})")
    last = config.max_train % batch if is_int(config.max_train, 1) else None
    if config.drop_remainder is not True and (last is None or last % groups):
        changes.append("--config.drop_remainder=True (the last batch of an epoch must split "
                       "into the groups too)")
    return changes


def is_int(value, minimum):
    """True for an int (not a bool) >= minimum: the one integer check of configs and experiments."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _is_number(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def check_batches_split(config, num_train: int) -> None:
    """ConfigError unless every batch of in-batch M3, the last one too, splits into the groups."""
    if not (is_m3(config) and setting(config, "optimizer.m3_in_batch")):
        return
    last = num_train % config.batch_size
    groups = m3_groups(config)
    if not config.drop_remainder and last % groups:
        raise ConfigError(
            f"optimizer.m3_in_batch=True: the last batch of an epoch holds {last} of the "
            f"{num_train} training examples, not divisible by the {groups} M3 groups; set "
            f"drop_remainder=True or change batch_size / max_train")


def apply_overrides(config, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `config` with `{"a.b": value}` fields set (`--set`); ValueError (one line)
    naming an unknown field or a wrong type."""
    config = copy.deepcopy(config)
    for path, value in (overrides or {}).items():
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise ValueError(f"override {path}={value!r}: the config has no field {part!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"override {path}={value!r}: the config has no field {path!r}; "
                             f"fields: {', '.join(sorted(node.keys()))}")
        try:
            node[leaf] = value
        except TypeError as error:  # ml_collections' type check: one line, as every config error
            raise ValueError(f"override {path}={value!r}: {error}") from None
    return config
