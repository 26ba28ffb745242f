"""The trainer's config schema: allowed values, validation (`ConfigError` listing every bad
field), the feature fields, the optimizer kind, `--set` overrides and the saved configs' versions.
Every trainer config derives from `configs/default.py`, the one place fields and defaults are
written. Nothing here reads flags or data.
"""

import copy
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


def field_value(config, dotted: str, absent=None):
    """The value of the dotted field (e.g. "optimizer.name") of a config (dict or ConfigDict),
    `absent` when the config has no such field: the one dotted lookup of configs."""
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return absent
        node = node[part]
    return node


class ConfigError(ValueError):
    """A config field has a bad value; raised before any training or writing happens."""


POSITIVE_INT = (lambda v: is_int(v, 1), "must be a positive int")
OPTIONAL_POSITIVE_INT = (lambda v: v is None or is_int(v, 1), "must be None or a positive int")
POSITIVE = (lambda v: is_number(v) and v > 0, "must be a positive number")
NON_NEGATIVE = (lambda v: is_number(v) and v >= 0, "must be >= 0")
SWITCH = (lambda v: is_int(v, 0), "must be an int >= 0 (0 = off)")
FLAG = (lambda v: isinstance(v, bool), "must be True or False")


def _field_rules() -> dict:
    """`{dotted field: allowed values, or (test, what is allowed)}` of every field checked alone,
    in the order problems are listed."""
    from cgh_tf import data, models

    return {
        "dataset": data.DATASETS,
        "label_noise": (lambda v: is_number(v) and 0 <= v <= 1, "must be a fraction in [0, 1]"),
        "noise_kind": data.LABEL_NOISE_KINDS,  # the one list of noise kinds
        "input_corruption": (None, *INPUT_CORRUPTIONS),
        "max_train": OPTIONAL_POSITIVE_INT, "max_test": OPTIONAL_POSITIVE_INT,
        "num_epochs": POSITIVE_INT, "batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT,
        "keep_checkpoints": POSITIVE_INT,
        "seed": (lambda v: is_int(v, 0) and v < 2**32, "must be an int in [0, 2**32)"),
        "collective_timeout": (POSITIVE[0], "must be a positive number of seconds"),
        "distribution": DISTRIBUTIONS,
        "model.name": tuple(models.MODELS),
        "optimizer.learning_rate": POSITIVE,
        "optimizer.momentum": (lambda v: is_number(v) and 0 <= v < 1, "must be in [0, 1)"),
        "optimizer.groups": POSITIVE_INT, "optimizer.window": POSITIVE_INT,
        "optimizer.l2": NON_NEGATIVE, "optimizer.weight_decay": NON_NEGATIVE,
        "optimizer.name": (_known_optimizer_name, "is unknown; allowed: sgd, adam, adamw, m3, rm3, "
                           "ra3, or m<k> / rm<k> / ra<k> (e.g. m5)"),
        "optimizer.inner": INNER_OPTIMIZERS,
        "lr_schedule.name": SCHEDULES,
        "lr_schedule.decay_epochs": (lambda v: isinstance(v, (tuple, list)) and all(
            is_int(e, 1) for e in v) and list(v) == sorted(set(v)),
            "must be strictly increasing positive ints"),
        "lr_schedule.decay_factor": POSITIVE,
        "mode": MODES,
        "coherence.every": SWITCH, "coherence.monitor_samples": SWITCH,
        "coherence.monitor_every_steps": SWITCH, "learning_times.every_steps": SWITCH,
        "coherence.per_layer": FLAG, "coherence.training": FLAG, "optimizer.m3_in_batch": FLAG,
        "optimizer.aggregation": AGGREGATIONS,
        "optimizer.winsorize_pct": (lambda v: v is None or (is_number(v) and 0 <= v < 50),
                                    "must be a percentage in [0, 50) (clipped on each side)"),
    }


_SHOWN_AS = {"optimizer.learning_rate": "learning_rate"}  # names in the messages, if not dotted


def validate(config: ml_collections.ConfigDict) -> None:
    """Check names and numbers of a trainer config; raise `ConfigError` listing all problems."""
    problems = []
    for field, rule in _field_rules().items():
        value = setting(config, field) if field in FEATURE_FIELDS else field_value(config, field)
        test, allowed = rule if callable(rule[0]) else (
            lambda v: v in rule, "is unknown; allowed: " + ", ".join(map(str, rule)))
        if not test(value):
            problems.append(f"{_SHOWN_AS.get(field, field)}={value!r} {allowed}")
    problems += _combination_problems(config)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _known_optimizer_name(name) -> bool:
    from cgh_tf import optimizers

    try:
        return isinstance(name, str) and bool(optimizers.parse_name(name))
    except (TypeError, ValueError):
        return False


def _combination_problems(config) -> list:
    """The problems of fields that are valid alone but not together."""
    from cgh_tf import models

    every_steps = setting(config, "coherence.monitor_every_steps")
    aggregation = setting(config, "optimizer.aggregation")
    pct = setting(config, "optimizer.winsorize_pct")
    problems = [message for bad, message in (
        (is_int(every_steps, 1) and setting(config, "coherence.monitor_samples") == 0,
         f"coherence.monitor_every_steps={every_steps!r} has no effect without the monitor; set "
         f"coherence.monitor_samples > 0 or coherence.monitor_every_steps=0"),
        (aggregation == "winsorize" and pct is None,
         "optimizer.aggregation='winsorize' needs optimizer.winsorize_pct, the percent clipped on "
         "each side, in [0, 50) (e.g. --config.optimizer.winsorize_pct=2; 0 is a plain mean "
         "computed per example)"),
        (aggregation == "winsorize" and config.model.name in models.BATCH_STATISTICS,
         f"optimizer.aggregation='winsorize' takes each example's gradient on its own, but "
         f"model.name={config.model.name!r} normalises by the batch's statistics in training "
         f"(BatchNormalization), where the examples interact; use a model without it (mlp, "
         f"small_cnn) or optimizer.aggregation='mean'"),
        (aggregation != "winsorize" and is_number(pct) and pct > 0,
         f"optimizer.winsorize_pct={pct!r} has no effect with optimizer.aggregation="
         f"{aggregation!r}; set optimizer.aggregation='winsorize' or winsorize_pct=0"),
    ) if bad]
    sized = all(is_int(config.optimizer[field], 1) for field in ("groups", "window"))
    if sized and _known_optimizer_name(config.optimizer.name) and optimizer_kind(config)[0] == "m":
        if aggregation != "mean":
            problems.append(f"optimizer.aggregation={aggregation!r} and M3 are two aggregators of "
                            f"the same batch; use one of them")
        changes = in_batch_m3_changes(config)
        if changes:
            problems.append("in-batch M3 (cgh_tf.Model splits each batch into the groups; per-step "
                            "coherence needs it) wants all of: " + " ".join(changes)
                            + " (or coherence.every=0 and optimizer.m3_in_batch=False: M3 over "
                            "consecutive batches)")
    return problems


def setting(config, dotted: str):
    """The value of feature field `dotted` (e.g. "coherence.every"), or its default when absent."""
    from configs import default

    value = field_value(config, dotted, _ABSENT)
    return field_value(default.get_config(), dotted) if value is _ABSENT else value


_ABSENT = object()  # `field_value`'s answer for a field the config lacks (None is a value)


def add_feature_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds every missing feature field with its default and type (so flags can override it)."""
    from ml_collections import config_dict

    from configs import default

    defaults = default.get_config()
    for dotted in FEATURE_FIELDS:
        node, source = config, defaults
        *parents, leaf = dotted.split(".")
        for parent in parents:
            if parent not in node:
                node[parent] = ml_collections.ConfigDict()
            node, source = node[parent], source[parent]
        if leaf not in node:
            node[leaf] = (config_dict.placeholder(source.get_type(leaf)) if source[leaf] is None
                          else source[leaf])
    return config


CONFIG_VERSION = 2  # of the config a run saves (`config_version` beside it; absent: 1)


def _from_version_1(saved: dict) -> dict:
    """Version 1 → 2: `winsorize_pct` 0 under `aggregation="mean"` became unset (None), in a
    trainer config (`optimizer.`) and in a graph-loop experiment's (top level: grokking's old
    default), and the `easy_hard` fields of a `mode="train"` run went with the easy_hard trainer
    mode."""
    if saved.get("aggregation") == "mean" and saved.get("winsorize_pct") == 0:
        saved = {**saved, "winsorize_pct": None}
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


def updates_per_batch(config) -> tuple:
    """`(kind, k)`: "every" batch (SGD / Adam / AdamW, in-batch M3), "every_kth" (M3 over k
    consecutive batches) or "after_window" (RM3 / RA3: every batch once k were seen)."""
    kind, k = optimizer_kind(config)
    if k is None or (kind == "m" and setting(config, "optimizer.m3_in_batch")):
        return "every", 1
    return ("every_kth", k) if kind == "m" else ("after_window", k)


def in_batch_m3_changes(config) -> list:
    """Every `--config.FIELD=VALUE` that in-batch M3 (asked for by `optimizer.m3_in_batch`, or
    needed by per-step coherence) still needs: the batch size as a multiple of the groups, and
    `drop_remainder=True` unless `max_train` is known to leave a last batch that splits too
    (otherwise `check_data_fits` checks after loading). Empty when nothing must change."""
    in_batch = setting(config, "optimizer.m3_in_batch")
    every = setting(config, "coherence.every")
    if not (in_batch is True or is_int(every, 1)) or not is_int(config.optimizer.groups, 1):
        return []
    changes = [] if in_batch is True else ["--config.optimizer.m3_in_batch=True"]
    groups, batch = optimizer_kind(config)[1], config.batch_size
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


def is_number(value) -> bool:
    """True for a finite real number (not a bool)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def updates(config, num_train: int, epochs: int) -> int:
    """Optimizer updates of `epochs` epochs over `num_train` examples (`updates_per_batch`): b
    batches; M3 over k consecutive batches ⌊b / k⌋; RM3 / RA3 with window k max(0, b − k + 1)."""
    batches = _steps_per_epoch(config, num_train) * epochs
    kind, k = updates_per_batch(config)
    return batches if kind == "every" else batches // k if kind == "every_kth" \
        else max(0, batches - k + 1)


def _steps_per_epoch(config, num_train: int) -> int:
    from trainers import input_pipeline

    return input_pipeline.steps_per_epoch(num_train, config.batch_size, config.drop_remainder)


def check_data_fits(config, num_train: int) -> None:
    """ConfigError unless the run makes at least one update and every batch of in-batch M3, the
    last one too, splits into the groups."""
    if not updates(config, num_train, config.num_epochs):
        raise ConfigError(
            f"optimizer.name={config.optimizer.name!r} makes no update in this run: its first "
            f"update comes after {updates_per_batch(config)[1]} batches, the run has "
            f"{config.num_epochs} epochs × {_steps_per_epoch(config, num_train)} batches of "
            f"{config.batch_size}; set more epochs or fewer batches per update "
            f"(optimizer.window / optimizer.groups)")
    kind, groups = optimizer_kind(config)
    last = num_train % config.batch_size
    in_batch = kind == "m" and setting(config, "optimizer.m3_in_batch")
    if in_batch and not config.drop_remainder and last % groups:
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
