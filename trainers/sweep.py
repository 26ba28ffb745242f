"""A sweep: the trainer configs ("arms") of one experiment of the papers, plus what to
tabulate and plot (docs/design.md, "Trainers"). The experiments are in `trainers/sweeps/`;
`trainers.reproduce` runs a sweep, `trainers.report` reads its results.

Scales (`--scale`): `small` = the embedded MNIST-1D with the MLP of `configs/default.py`, epochs
cut to fit < 10 minutes per experiment on 2 CPU cores (`trainers/sweeps/__init__.py`);
`cifar10` / `imagenet` = `configs/cifar10_resnet18.py` / `configs/imagenet_resnet50.py`
(`configs/imagenet_easy_hard.py` for easy_hard): the authors' hyperparameters, all their epochs,
every arm of the experiment (these need the tfds data and accelerators).
"""

import copy
import dataclasses

import ml_collections

from trainers import config_schema
from trainers.experiment import Arm  # noqa: F401  (the sweeps' arms are the runner's)

SCALES = ("small", "cifar10", "imagenet")
REDUCERS = ("first", "last", "max", "min", "mean")
SERIES = ("history", "step_history")  # per-epoch logs / per-step measurements of results.json


@dataclasses.dataclass(frozen=True)
class Metric:
    """One table column, computed from an arm's `results.json` (see `metric_value`).

    source: ("final", key)            -> results["final"][key]
            ("history", key, reducer) -> reducer over results["history"][key] (None entries dropped)
            ("step_history", key, reducer) -> the same over results["step_history"][key] (the
                                         measurements every `coherence.monitor_every_steps` batches)
            ("step_at", key, step)    -> results["step_history"][key] at step `step` (None if absent)
            ("step_of_max", key)      -> the step at which results["step_history"][key] is largest
            ("dataset", key)          -> results["dataset"][key] (e.g. "num_train")
            ("updates",)              -> number of optimizer updates the arm made (`count_updates`)
    """

    name: str
    header: str
    source: tuple
    fmt: str = ".3f"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One PNG: a grid with a row per panel and a column per curve; every arm of the row is a curve.

    columns: ((history key, y label), ...); a key with one `*` (e.g. "coherence/train/*/m_coherence")
    becomes one column per matching history key (per layer). x: "epoch" or a history key (e.g.
    "loss", "step") whose seed-mean is the x coordinate. groups: the arm groups drawn (None: all).
    series: "history" (one point per epoch) or "step_history" (one per step measurement).
    """

    file: str
    title: str
    columns: tuple
    groups: tuple = None
    x: str = "epoch"
    x_label: str = "epoch"
    ylim: tuple = None
    log_y: bool = False
    series: str = "history"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Arms to train, and the table / figures to make of them."""

    name: str
    title: str
    description: str
    arms: tuple
    metrics: tuple
    figures: tuple
    sub_runs: tuple = ()   # sub-workdirs of an arm whose histories join its own as "<sub>/<key>"
    comparisons: tuple = ()  # (arm group, control group): every metric differenced, paired by seed

    def groups(self) -> list:
        """Arm groups in definition order, each once."""
        return list(dict.fromkeys(arm.group for arm in self.arms))


# The config file each experiment starts from at the small scale (its feature fields — coherence
# monitor, easy/hard mode, ... — are carried over to the larger scales).
SMALL_CONFIGS = {
    "real_vs_random": "real_vs_random",
    "memorisation": "default",
    "easy_hard": "easy_hard",
}
FEATURE_SUBTREES = ("mode", "coherence", "learning_times", "easy_hard")
# The config file of the larger scales; (scale, experiment) entries override the scale's default.
SCALE_CONFIGS = {
    "cifar10": "cifar10_resnet18",
    "imagenet": "imagenet_resnet50",
    ("imagenet", "easy_hard"): "imagenet_easy_hard",  # ResNet-18, 40k / 5k examples in memory
}


def _config_module(name):
    import importlib

    return importlib.import_module(f"configs.{name}").get_config()


def base_config(scale: str, experiment: str = "memorisation") -> ml_collections.ConfigDict:
    """The config every arm of `experiment` starts from, at `scale` (label noise 0, no sweep).

    small: `configs/<SMALL_CONFIGS[experiment]>.py`. cifar10 / imagenet: `configs/<SCALE_CONFIGS>.py`
    (the authors' recipes) with the feature fields (coherence monitor, easy/hard mode, ...) of the
    small config.
    """
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is unknown; allowed: {', '.join(SCALES)}")
    if experiment not in SMALL_CONFIGS:
        raise ValueError(f"experiment={experiment!r} is unknown; allowed: "
                         f"{', '.join(SMALL_CONFIGS)}")
    small = config_schema.add_feature_fields(_config_module(SMALL_CONFIGS[experiment]))
    if scale == "small":
        config = small
    else:
        name = SCALE_CONFIGS.get((scale, experiment), SCALE_CONFIGS[scale])
        config = config_schema.add_feature_fields(_config_module(name))
        for field in FEATURE_SUBTREES:
            config[field] = copy.deepcopy(small[field])
        if scale == "imagenet":  # splits are in-memory arrays (see configs/imagenet_easy_hard.py)
            config.max_train = config.max_train or 40_000
            config.max_test = config.max_test or 5_000
    if "sweep" in config:
        del config["sweep"]
    config.label_noise = 0.0
    return config


def sweep_values(config_name: str, field: str) -> tuple:
    """The `sweep.values` of `configs/<config_name>.py` (checked to sweep `field`)."""
    sweep = _config_module(config_name).sweep
    if sweep.field != field:
        raise ValueError(f"configs/{config_name}.py sweeps {sweep.field!r}, not {field!r}")
    return tuple(sweep["values"])


def with_fields(config, **fields):
    """Copy of `config` with top-level / dotted (`a__b`) fields set."""
    return config_schema.apply_overrides(config, {k.replace("__", "."): v for k, v in fields.items()})


def noise_panel(noise: float) -> str:
    return f"{noise:.0%} noise"


def noise_group(noise: float) -> str:
    return f"noise{round(noise * 100):02d}"


# ----------------------------------------------------------------------------------------------
