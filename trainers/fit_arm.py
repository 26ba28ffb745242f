r"""One arm of a declared experiment as a Keras `fit` run (`Experiment(loop="fit")`): the trainer
(`trainers.train`) on the arm's config in the run directory (resumable, refused in another config's
directory, skipped when finished), its table numbers read from its `results.json` by `Reading`
sources and its base config at a scale (arm result, sources and scales: docs/design.md §7.0).
"""

import contextlib
import copy
import dataclasses
import importlib
import math
import os

import ml_collections

from trainers import config_schema
from trainers import outputs
from trainers.experiment import Column, Experiment

SCALES = ("small", "cifar10", "imagenet")
SCALE_CONFIGS = {"cifar10": "cifar10_resnet18", "imagenet": "imagenet_resnet50"}
FEATURE_SUBTREES = ("mode", "coherence", "learning_times")
REDUCERS = {"first": lambda v: v[0], "last": lambda v: v[-1], "max": max, "min": min,
            "mean": lambda v: math.fsum(v) / len(v)}


@dataclasses.dataclass(frozen=True)
class Reading:
    """A table column (`summary[key]` of every run) read from the trainer's results.json."""

    key: str
    header: str
    source: tuple
    fmt: str = ".3f"


def config_file(name) -> ml_collections.ConfigDict:
    """`configs/<name>.py`'s `get_config()`."""
    return importlib.import_module(f"configs.{name}").get_config()


def base_config(small, scale="small", small_changes=None, overrides=None):
    """The config every arm starts from at `scale`: `configs/<small>.py` ← `small_changes` (the
    small scale's time budget), or at cifar10 / imagenet the authors' recipe with the feature
    fields of `configs/<small>.py`; no `sweep`, no noise; then ← `overrides` (`--set`)."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is unknown; allowed: {', '.join(SCALES)}")
    config = config_schema.add_feature_fields(config_file(small))
    if scale != "small":
        features = config
        config = config_schema.add_feature_fields(config_file(SCALE_CONFIGS[scale]))
        for field in FEATURE_SUBTREES:
            config[field] = copy.deepcopy(features[field])
        if scale == "imagenet":  # the splits are in-memory arrays
            config.max_train = config.max_train or 40_000
            config.max_test = config.max_test or 5_000
    if "sweep" in config:
        del config["sweep"]
    config.label_noise = 0.0
    if scale == "small":
        config = config_schema.apply_overrides(config, small_changes)
    return config_schema.apply_overrides(config, overrides)


def with_fields(config, **fields):
    """A checked copy of `config` with top-level / dotted (`a__b`) fields set (one-line
    ValueError / `config_schema.ConfigError` for a field or value the trainer would refuse)."""
    config = config_schema.apply_overrides(config, {k.replace("__", "."): v
                                                    for k, v in fields.items()})
    config_schema.validate(config)
    return config


def noise_group(noise) -> str:
    """"noise50" for 0.5."""
    return f"noise{round(noise * 100):02d}"


def noise_panel(noise) -> str:
    """"50% noise" for 0.5."""
    return f"{noise:.0%} noise"


def count_updates(result) -> int:
    """Optimizer updates made by the run of a trainer results.json dict (`updates_per_batch`)."""
    return config_schema.updates(ml_collections.ConfigDict(result["config"]),
                                 result["dataset"]["num_train"], result["epochs_completed"])


def _step_pairs(result, key):
    series = result.get("step_history", {})
    return [(s, float(v)) for s, v in zip(series.get("step", []), series.get(key, []))
            if v is not None]


def read(result, source):
    """The number `source` (a `Reading` source) of a trainer results.json dict; None if absent."""
    kind = source[0]
    if kind == "final":
        value = result["final"].get(source[1])
        return None if value is None else float(value)
    if kind == "updates":
        return float(count_updates(result))
    if kind in ("history", "step_history"):
        values = [float(v) for v in result.get(kind, {}).get(source[1], []) if v is not None]
        return REDUCERS[source[2]](values) if values else None
    if kind == "step_at":
        step = result["config"]["coherence"]["monitor_every_steps"]
        return next((v for s, v in _step_pairs(result, source[1]) if step and s == step), None)
    if kind == "step_of_max":
        pairs = _step_pairs(result, source[1])
        return float(max(pairs, key=lambda p: p[1])[0]) if pairs else None
    raise ValueError(f"unknown source {source!r}; allowed kinds: final, history, step_history, "
                     "step_at, step_of_max, updates")


def _finished(result, config) -> bool:
    """True if `result` is a finished trainer run of exactly `config`."""
    return (isinstance(result, dict) and isinstance(result.get("config"), dict)
            and config_schema.saved_config(result) == outputs.json_roundtrip(config.to_dict())
            and result.get("epochs_completed") == config.num_epochs)


def run_arm(readings):
    """`run(config, run_dir, echo=None)`: train (or resume) the trainer run of `config` in
    `run_dir` unless it finished; its arm result for `runner.py`. `echo` None: only warnings and
    errors printed."""

    def run(config, run_dir, echo=None):
        path = os.path.join(run_dir, outputs.RESULTS_FILE)
        result = outputs.read_json(path) if os.path.exists(path) else None
        if not _finished(result, config):
            from cgh_tf import quiet
            from trainers import train

            with quiet.logs_at_least() if echo is None else contextlib.nullcontext():
                train.train_and_evaluate(config, run_dir, progress=True if echo else None)
            result = outputs.read_json(path)  # the numbers as written, resumed or not
        timings = outputs.read_json(os.path.join(run_dir, outputs.TIMINGS_FILE)) or {}
        epochs = list(range(1, result["epochs_completed"] + 1))
        return {"config": result["config"], "finished": True,
                "summary": {r.key: read(result, r.source) for r in readings},
                "curves": {"step": epochs, "epoch": epochs, **result.get("history", {})},
                "step_curves": result.get("step_history", {}),
                "seconds_last_invocation": timings.get("total_seconds")}

    return run


def describe(config) -> str:
    """"dataset D, model `M` {kwargs}, E epochs, batch B, learning rate L" of a config dict."""
    return (f"dataset {config['dataset']}, model `{config['model']['name']}` "
            f"{config['model'].get('kwargs') or ''}, {config['num_epochs']} epochs, batch "
            f"{config['batch_size']}, learning rate {config['learning_rate']}")


def experiment(readings, **fields) -> Experiment:
    """The declared fit experiment whose table columns are `readings` (each arm: `run_arm`)."""
    columns = tuple(Column(r.key, r.header, r.fmt) for r in readings)
    return Experiment(run_arm=run_arm(readings), columns=columns,
                      loop="fit", scales=SCALES, **fields)
