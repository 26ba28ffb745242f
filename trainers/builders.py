"""Config -> data, model, optimizer, learning-rate schedule, input pipeline. Nothing here reads flags.

| function                        | returns                                                        |
|---------------------------------|----------------------------------------------------------------|
| `validate(config)`              | None; raises `ConfigError` listing every bad field             |
| `load_data(config)`             | `cgh_tf.data.Dataset`                                          |
| `dataset_spec(name)`            | `(input_shape, num_classes)` of a known dataset, without loading it |
| `build_model(config, shape, k)` | `keras.Model` (uncompiled, outputs logits)                     |
| `build_schedule(config)`        | `EpochStepDecay` (learning rate as a function of the epoch)    |
| `build_optimizer(config, lr)`   | Keras optimizer from `cgh_tf.optimizers.build`                 |
| `compile_model(model, opt)`     | compiles with sparse categorical cross-entropy on logits + accuracy |
| `epoch_order(n, seed, epoch)`   | `[n]` int64 permutation: the training order of one epoch      |
| `train_dataset(...)`            | `tf.data.Dataset` of `(x, y)` batches for epochs [first, last) |
| `epoch_index_batches(n, ...)`   | the same batches as int index vectors (sharded by `trainers/distributed_loop.py`) |
| `memorisation_subsets(split)`   | `{"pristine": (x, y), "corrupted": (x, y)}` with training labels |
| `setting(config, "a.b")`        | a feature field's value, or its default (`FEATURE_DEFAULTS`) when absent |
| `add_feature_fields(config)`    | adds the missing feature fields with their defaults (for config files) |
| `uses_cgh_model(config)`        | True unless the optimizer is M3 in consecutive-batch mode       |
| `monitor_samples(data, m, seed)`| `{"train", "test", "pristine"[, "corrupted"]: Split}`, m examples each |
| `feature_callbacks(...)`        | CoherenceMonitor / f^p, f^c / LearningTimes callbacks of the config |
| `easy_mask_from_csv(path, split)` / `predicted_correctly(model, split)` | `[n]` bool easy masks |

Feature fields (absent fields take these defaults, which keep the plain trainer's behaviour):

| field                          | default   | meaning                                                          |
|--------------------------------|-----------|------------------------------------------------------------------|
| `mode`                         | "train"   | "train", or "easy_hard" (probe, split, train on each; `trainers/train.py`) |
| `coherence.every`              | 0         | m-coherence / alpha of the training batch every N steps (0 = off) |
| `coherence.per_layer`          | False     | also `m_coherence/<layer>` (batch) and per-layer monitor values  |
| `coherence.training`           | False     | per-example gradients in training mode (default inference mode)  |
| `coherence.monitor_samples`    | 0         | m of the fixed monitor samples train/test/pristine/corrupted (0 = off) |
| `coherence.monitor_every_steps`| 0         | monitor and f^p / f^c also every N batches, at step 0 and every epoch end (`step_history` of results.json; 0 = epoch ends only) |
| `optimizer.aggregation`        | "mean"    | "mean" or "winsorize" (coordinate-wise, `cgh_tf.Model`)          |
| `optimizer.winsorize_pct`      | 0.0       | c in [0, 50): percent clipped on each side of the batch          |
| `optimizer.m3_in_batch`        | False     | M3 groups: False = k consecutive batches (authors' code, plain `keras.Model`), True = k contiguous parts of one batch (`cgh_tf.Model`, batch % k == 0) |
| `learning_times.every_steps`   | 0         | per-example learning times every N batches (0 = off)             |
| `easy_hard.probe_epochs`       | 2         | epochs of the probe run that defines "easy"                      |
| `easy_hard.learning_times_csv` | None      | take the easy mask from this learning-times CSV instead of a probe |
| `easy_hard.test_fraction`      | 0.5       | share of each part held out as its own test split                |
| `easy_hard.part`               | ""        | set by the trainer in the sub-runs: "probe", "easy", "hard"      |

The training order of an epoch is a pure function of (seed, epoch), so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run sees.
"""

import csv
import glob
import math
import numbers
import os
import re

import keras
import ml_collections
import numpy as np
import tensorflow as tf

NOISE_KINDS = ("uniform", "other", "permute")
INPUT_CORRUPTIONS = ("shuffled_pixels", "random_pixels", "gaussian")
SCHEDULES = ("constant", "step")
INNER_OPTIMIZERS = ("sgd", "adam")
MODES = ("train", "easy_hard")
AGGREGATIONS = ("mean", "winsorize")
EASY_HARD_PARTS = ("", "probe", "easy", "hard")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker", "tpu")  # trainers/distributed_loop.py
_M3_NAME = re.compile(r"^m\d+$")

# Feature fields and their defaults (module table); a config without them trains as before.
FEATURE_DEFAULTS = {
    "mode": "train",
    "coherence.every": 0,
    "coherence.per_layer": False,
    "coherence.training": False,
    "coherence.monitor_samples": 0,
    "coherence.monitor_every_steps": 0,
    "optimizer.aggregation": "mean",
    "optimizer.winsorize_pct": 0.0,
    "optimizer.m3_in_batch": False,
    "learning_times.every_steps": 0,
    "easy_hard.probe_epochs": 2,
    "easy_hard.learning_times_csv": None,
    "easy_hard.test_fraction": 0.5,
    "easy_hard.part": "",
}

# (input_shape, num_classes) of the datasets cgh_tf.data knows, for building without loading data.
DATASET_SPECS = {
    "mnist1d": ((40,), 10),
    "digits": ((8, 8, 1), 10),
    "mnist5k": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "imagenet2012": ((224, 224, 3), 1000),
}


class ConfigError(ValueError):
    """A config field has a bad value; raised before any training or writing happens."""


def validate(config: ml_collections.ConfigDict) -> None:
    """Check names and numbers of a trainer config; raise `ConfigError` listing all problems."""
    from cgh_tf import data

    problems = []

    def need(ok, message):
        if not ok:
            problems.append(message)

    need(config.dataset in data.DATASETS,
         f"dataset={config.dataset!r} is unknown; allowed: {', '.join(data.DATASETS)}")
    need(_is_number(config.label_noise) and 0.0 <= config.label_noise <= 1.0,
         f"label_noise={config.label_noise!r} must be a fraction in [0, 1]")
    need(config.noise_kind in NOISE_KINDS,
         f"noise_kind={config.noise_kind!r} is unknown; allowed: {', '.join(NOISE_KINDS)}")
    need(config.input_corruption is None or config.input_corruption in INPUT_CORRUPTIONS,
         f"input_corruption={config.input_corruption!r} is unknown; allowed: None, "
         f"{', '.join(INPUT_CORRUPTIONS)}")
    for field in ("max_train", "max_test"):
        value = config[field]
        need(value is None or _is_int(value, minimum=1),
             f"{field}={value!r} must be None or a positive int")
    for field in ("num_epochs", "batch_size", "eval_batch_size", "keep_checkpoints"):
        need(_is_int(config[field], minimum=1), f"{field}={config[field]!r} must be a positive int")
    need(_is_int(config.seed, minimum=0), f"seed={config.seed!r} must be a non-negative int")
    need(config.get("distribution") in DISTRIBUTIONS,
         f"distribution={config.get('distribution')!r} is unknown; allowed: "
         f"{', '.join(DISTRIBUTIONS)}")
    need(isinstance(config.model.name, str) and config.model.name,
         f"model.name={config.model.name!r} must be a model name of cgh_tf.models")
    _validate_optimizer(config.optimizer, need)
    _validate_schedule(config.lr_schedule, need)
    _validate_features(config, need)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _validate_optimizer(opt, need):
    need(isinstance(opt.name, str) and opt.name, f"optimizer.name={opt.name!r} must be a name")
    need(_is_number(opt.learning_rate) and opt.learning_rate > 0,
         f"learning_rate={opt.learning_rate!r} must be a positive number")
    need(_is_number(opt.momentum) and 0.0 <= opt.momentum < 1.0,
         f"optimizer.momentum={opt.momentum!r} must be in [0, 1)")
    need(_is_int(opt.groups, minimum=1), f"optimizer.groups={opt.groups!r} must be a positive int")
    need(_is_int(opt.window, minimum=1), f"optimizer.window={opt.window!r} must be a positive int")
    need(_is_number(opt.l2) and opt.l2 >= 0, f"optimizer.l2={opt.l2!r} must be >= 0")
    need(_is_number(opt.weight_decay) and opt.weight_decay >= 0,
         f"optimizer.weight_decay={opt.weight_decay!r} must be >= 0")
    need(opt.inner in INNER_OPTIMIZERS,
         f"optimizer.inner={opt.inner!r} is unknown; allowed: {', '.join(INNER_OPTIMIZERS)}")


def _validate_schedule(schedule, need):
    need(schedule.name in SCHEDULES,
         f"lr_schedule.name={schedule.name!r} is unknown; allowed: {', '.join(SCHEDULES)}")
    epochs = schedule.decay_epochs
    epochs = tuple(epochs) if isinstance(epochs, (tuple, list)) else None
    need(epochs is not None and all(_is_int(e, minimum=1) for e in epochs)
         and list(epochs) == sorted(set(epochs)),
         f"lr_schedule.decay_epochs={schedule.decay_epochs!r} must be strictly increasing "
         f"positive ints")
    need(_is_number(schedule.decay_factor) and schedule.decay_factor > 0,
         f"lr_schedule.decay_factor={schedule.decay_factor!r} must be a positive number")


def setting(config, dotted: str):
    """The value of feature field `dotted` (e.g. "coherence.every"), or its `FEATURE_DEFAULTS` value."""
    node = config
    for part in dotted.split("."):
        if part not in node:
            return FEATURE_DEFAULTS[dotted]
        node = node[part]
    return node


def add_feature_fields(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds every missing feature field with its default (so flags can override it); returns config."""
    from ml_collections import config_dict

    for dotted, default in FEATURE_DEFAULTS.items():
        node = config
        *parents, leaf = dotted.split(".")
        for parent in parents:
            if parent not in node:
                node[parent] = ml_collections.ConfigDict()
            node = node[parent]
        if leaf not in node:
            node[leaf] = config_dict.placeholder(str) if default is None else default
    return config


def is_m3(config) -> bool:
    """True if `optimizer.name` is M3 (`m3`, `m5`, ...)."""
    return bool(_M3_NAME.match(str(config.optimizer.name).lower()))


def m3_groups(config) -> int:
    """The number of groups k of an M3 optimizer name (`m3` -> `optimizer.groups`, `m5` -> 5)."""
    name = str(config.optimizer.name).lower()
    return int(config.optimizer.groups) if name == "m3" else int(name[1:])


def uses_cgh_model(config) -> bool:
    """`cgh_tf.Model` unless M3 groups are consecutive batches (which needs a plain `keras.Model`)."""
    return not is_m3(config) or bool(setting(config, "optimizer.m3_in_batch"))


def _validate_features(config, need):
    mode = setting(config, "mode")
    need(mode in MODES, f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    for field in ("coherence.every", "coherence.monitor_samples", "coherence.monitor_every_steps",
                  "learning_times.every_steps"):
        value = setting(config, field)
        need(_is_int(value, minimum=0), f"{field}={value!r} must be an int >= 0 (0 = off)")
    every_steps = setting(config, "coherence.monitor_every_steps")
    need(not (_is_int(every_steps, 1) and setting(config, "coherence.monitor_samples") == 0),
         f"coherence.monitor_every_steps={every_steps!r} has no effect without the monitor; set "
         f"coherence.monitor_samples > 0 or coherence.monitor_every_steps=0")
    for field in ("coherence.per_layer", "coherence.training", "optimizer.m3_in_batch"):
        value = setting(config, field)
        need(isinstance(value, bool), f"{field}={value!r} must be True or False")
    aggregation = setting(config, "optimizer.aggregation")
    pct = setting(config, "optimizer.winsorize_pct")
    need(aggregation in AGGREGATIONS, f"optimizer.aggregation={aggregation!r} is unknown; "
         f"allowed: {', '.join(AGGREGATIONS)}")
    need(_is_number(pct) and 0.0 <= pct < 50.0,
         f"optimizer.winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")
    need(aggregation == "winsorize" or not (_is_number(pct) and pct > 0),
         f"optimizer.winsorize_pct={pct!r} has no effect with optimizer.aggregation={aggregation!r}; "
         f"set optimizer.aggregation='winsorize' or winsorize_pct=0")
    if is_m3(config):
        in_batch = setting(config, "optimizer.m3_in_batch")
        need(in_batch or (setting(config, "coherence.every") == 0 and aggregation == "mean"),
             "coherence.every > 0 and optimizer.aggregation='winsorize' need cgh_tf.Model, where "
             "M3 splits one batch into its groups: set optimizer.m3_in_batch=True (and a batch "
             "size divisible by the groups) or turn them off")
        need(aggregation == "mean", f"optimizer.aggregation={aggregation!r} and M3 are two "
             f"aggregators of the same batch; use one of them")
        groups = m3_groups(config) if _is_int(config.optimizer.groups, 1) else 1
        need(not in_batch or not _is_int(config.batch_size, 1) or config.batch_size % groups == 0,
             f"optimizer.m3_in_batch=True needs batch_size={config.batch_size!r} divisible by the "
             f"{groups} M3 groups")
    need(mode != "easy_hard" or config.get("distribution") == "none",
         f"mode='easy_hard' runs on one device; set distribution='none' (got "
         f"{config.get('distribution')!r})")
    _validate_easy_hard(config, need)


def _validate_easy_hard(config, need):
    probe_epochs = setting(config, "easy_hard.probe_epochs")
    need(_is_int(probe_epochs, minimum=1),
         f"easy_hard.probe_epochs={probe_epochs!r} must be a positive int")
    fraction = setting(config, "easy_hard.test_fraction")
    need(_is_number(fraction) and 0.0 < fraction < 1.0,
         f"easy_hard.test_fraction={fraction!r} must be in (0, 1)")
    part = setting(config, "easy_hard.part")
    need(part in EASY_HARD_PARTS, f"easy_hard.part={part!r} is set by the trainer; allowed: "
         f"{', '.join(map(repr, EASY_HARD_PARTS))}")
    path = setting(config, "easy_hard.learning_times_csv")
    if setting(config, "mode") == "easy_hard" and path is not None:
        need(isinstance(path, str) and os.path.isfile(path),
             f"easy_hard.learning_times_csv={path!r} is not a file (a learning_times.csv "
             f"written by a run with learning_times.every_steps > 0)")


def _is_int(value, minimum):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def _is_number(value):
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def load_data(config):
    """Load the dataset named by the config (labels corrupted as configured); NumPy in memory."""
    from cgh_tf import data

    try:
        return data.load(config.dataset, data_dir=config.data_dir, label_noise=config.label_noise,
                         noise_kind=config.noise_kind, input_corruption=config.input_corruption,
                         seed=config.seed, max_train=config.max_train, max_test=config.max_test)
    except (ValueError, TypeError, FileNotFoundError) as error:  # incl. DatasetNotAvailableError
        raise ConfigError(f"dataset {config.dataset!r}: {error}") from error


def dataset_spec(name: str) -> tuple:
    """`(input_shape, num_classes)` of a known dataset (no data is loaded)."""
    if name not in DATASET_SPECS:
        raise ConfigError(f"dataset={name!r} is unknown; allowed: {', '.join(DATASET_SPECS)}")
    return DATASET_SPECS[name]


def build_model(config, input_shape, num_classes) -> keras.Model:
    """`cgh_tf.models.build(config.model.name, input_shape, num_classes, **config.model.kwargs)`.

    The model is a `cgh_tf.Model` (a `keras.Model` subclass) unless `uses_cgh_model(config)` is
    False (M3 over consecutive batches, which a plain `keras.Model` realises).
    """
    from cgh_tf import models
    from cgh_tf import training

    kwargs = config.model.kwargs.to_dict() if config.model.get("kwargs") else {}
    if uses_cgh_model(config):
        kwargs["model_class"] = training.Model
    try:
        return models.build(config.model.name, tuple(input_shape), num_classes, **kwargs)
    except (ValueError, TypeError) as error:
        kwargs.pop("model_class", None)
        raise ConfigError(f"model {config.model.name!r} with kwargs {kwargs}: {error}") from error


@keras.saving.register_keras_serializable(package="cgh_tf_trainers")
class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate `initial × factor ** (number of decay_epochs <= epoch)`, epoch counted from 0.

    The epoch is held in a variable that the trainer sets at every epoch start (`set_epoch`), so the
    schedule is independent of how a wrapper optimizer counts its steps (M3 updates every 3rd batch).
    `decay_epochs=()` gives a constant rate.
    """

    def __init__(self, initial_learning_rate, decay_epochs=(), decay_factor=0.1):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="schedule_epoch")

    def set_epoch(self, epoch: int) -> None:
        """Set the current (0-based) epoch."""
        self.epoch.assign(int(epoch))

    def value_at(self, epoch: int) -> float:
        """The learning rate of (0-based) `epoch`, in Python."""
        passed = sum(1 for e in self.decay_epochs if e <= epoch)
        return self.initial_learning_rate * self.decay_factor ** passed

    def __call__(self, step):
        del step  # the rate depends on the epoch only
        if not self.decay_epochs:
            return tf.constant(self.initial_learning_rate, tf.float32)
        boundaries = tf.constant(self.decay_epochs, dtype=tf.int64)
        passed = tf.reduce_sum(tf.cast(boundaries <= self.epoch, tf.float32))
        return self.initial_learning_rate * tf.pow(self.decay_factor, passed)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_epochs": self.decay_epochs, "decay_factor": self.decay_factor}


def build_schedule(config) -> EpochStepDecay:
    """The learning-rate schedule of the config ("constant" or "step")."""
    step = config.lr_schedule.name == "step"
    decay_epochs = tuple(config.lr_schedule.decay_epochs) if step else ()
    return EpochStepDecay(config.optimizer.learning_rate, decay_epochs,
                          config.lr_schedule.decay_factor)


def build_optimizer(config, learning_rate):
    """`cgh_tf.optimizers.build(...)` with the config's optimizer fields; `learning_rate` a float or schedule."""
    from cgh_tf import optimizers

    opt = config.optimizer
    extra = {"weight_decay": opt.weight_decay} if opt.weight_decay else {}
    try:
        return optimizers.build(opt.name, learning_rate, momentum=opt.momentum, groups=opt.groups,
                                window=opt.window, l2=opt.l2, inner=opt.inner, **extra)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer {opt.name!r}: {error}") from error


def compile_model(model, optimizer, config=None) -> None:
    """Compile for classification from logits: sparse cross-entropy loss, `accuracy` metric; builds the optimizer.

    For a `cgh_tf.Model` the config's `coherence.*` and `optimizer.aggregation` /
    `winsorize_pct` fields (module table) become its compile options (defaults when `config` is None).
    """
    from cgh_tf import training

    options = {}
    if isinstance(model, training.Model):
        options = {} if config is None else cgh_compile_options(config)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], **options)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)


def cgh_compile_options(config) -> dict:
    """The `cgh_tf.Model.compile` options of the config (`coherence_every`, `aggregation`, ...)."""
    every = int(setting(config, "coherence.every"))
    return {  # (cgh_tf.Model rejects per_layer / training without coherence_every: ignored here)
        "coherence_every": every,
        "coherence_per_layer": bool(setting(config, "coherence.per_layer")) and every > 0,
        "coherence_training": bool(setting(config, "coherence.training")) and every > 0,
        "aggregation": setting(config, "optimizer.aggregation"),
        "winsorize_pct": float(setting(config, "optimizer.winsorize_pct")),
    }


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool) -> int:
    """Number of batches in one epoch."""
    steps = num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
    if steps < 1:
        raise ConfigError(f"batch_size={batch_size} with drop_remainder leaves no batch of the "
                          f"{num_examples} training examples")
    return steps


def _epoch_order_tf(n, seed, epoch):
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64),
                                                           tf.cast(epoch, tf.int64)]))
    return tf.argsort(keys, stable=True)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """`[n]` int64: the order in which epoch `epoch` (0-based) visits the training examples."""
    return _epoch_order_tf(n, seed, epoch).numpy().astype(np.int64)


def train_dataset(x, y, *, batch_size, seed, first_epoch, num_epochs, drop_remainder=False):
    """`(x, y)` batches of epochs `first_epoch .. num_epochs - 1`, each epoch in `epoch_order`.

    One dataset for the whole run (use with `fit(steps_per_epoch=...)`); batches never straddle
    epochs, so the last batch of an epoch may be smaller unless `drop_remainder`.
    """
    n = len(y)
    x, y = tf.constant(x), tf.constant(y)
    dataset = epoch_index_batches(n, batch_size=batch_size, seed=seed, first_epoch=first_epoch,
                                  num_epochs=num_epochs, drop_remainder=drop_remainder)
    dataset = dataset.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))
    return dataset.prefetch(2)


def epoch_index_batches(n, *, batch_size, seed, first_epoch, num_epochs, drop_remainder=False):
    """`tf.data.Dataset` of int index vectors: the batches of `train_dataset`, as example indices."""
    def batches_of_epoch(epoch):
        order = _epoch_order_tf(n, seed, epoch)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder)

    return tf.data.Dataset.range(first_epoch, num_epochs).flat_map(batches_of_epoch)


def memorisation_subsets(train_split) -> dict:
    """`{"pristine": (x, y), "corrupted": (x, y)}` of a `cgh_tf.data.Split`, y = the *training* labels."""
    corrupted = np.asarray(train_split.corrupted, dtype=bool)
    return {"pristine": (train_split.x[~corrupted], train_split.y[~corrupted]),
            "corrupted": (train_split.x[corrupted], train_split.y[corrupted])}


# ------------------------------------------------------------------------------------------------
# Feature callbacks: coherence monitor, loss-reduction fractions, learning times.
#
# | file (in the workdir)                     | written                | content                     |
# |-------------------------------------------|------------------------|-----------------------------|
# | `coherence.csv`                           | every epoch / N steps (appended) | `CoherenceMonitor` rows |
# | `learning_times.csv`                      | at train end (atomic)  | `LearningTimes` rows        |
# | `checkpoints/learning-times-NNNN.npz`     | every epoch (atomic)   | LearningTimes state to resume |
# | `tensorboard/learning_times`              | at every evaluation    | histograms / fractions      |
# | `tensorboard/steps`                       | every N steps          | `StepMeasurements` scalars  |
#
# The monitor's values go into the epoch logs (TensorBoard `train` run, History, results.json).
# ------------------------------------------------------------------------------------------------

COHERENCE_CSV = "coherence.csv"
STEP_TENSORBOARD_RUN = "steps"  # TensorBoard run of StepMeasurements (scalars at the global step)
LEARNING_TIMES_CSV = "learning_times.csv"
_MONITOR_SEED_SALT = 20_081_217  # separates the monitor's sample choice from other uses of the seed


def monitor_samples(data, m: int, seed: int) -> dict:
    """Fixed samples of `m` examples each for the coherence monitor, chosen with `seed`.

    Returns `{"train", "test", "pristine"[, "corrupted"]: cgh_tf.data.Split}` (subsets of
    `data.train` / `data.test`; training subsets carry their *training* labels, `"corrupted"` only
    when the training split has corrupted examples). Raises ConfigError if a pool has fewer than m.
    """
    rng = np.random.default_rng([seed, _MONITOR_SEED_SALT])
    corrupted = np.asarray(data.train.corrupted, dtype=bool)
    pools = {"train": (data.train, np.ones(len(data.train), bool)),
             "test": (data.test, np.ones(len(data.test), bool)),
             "pristine": (data.train, ~corrupted)}
    if corrupted.any():
        pools["corrupted"] = (data.train, corrupted)
    samples = {}
    for name, (split, mask) in pools.items():
        candidates = np.flatnonzero(mask)
        if len(candidates) < m:
            raise ConfigError(f"coherence.monitor_samples={m} but the {name} examples number only "
                              f"{len(candidates)}; choose a smaller sample size")
        samples[name] = split.subset(np.sort(rng.choice(candidates, size=m, replace=False)))
    return samples


class LossReductionFractions(keras.callbacks.Callback):
    """Logs `f_pristine`, `f_corrupt` (ICLR 2020) of a fixed training sample at every epoch end.

    f^p = ⟨g, g^p⟩ / ⟨g, g⟩ with g^p, g^c the summed gradients of the pristine / corrupt examples
    of the sample (training labels) and g = g^p + g^c; f^c = 1 − f^p
    (`cgh_tf.coherence.loss_reduction_fractions`, inference mode unless `training`).
    """

    def __init__(self, split, batch_size: int, training: bool = False):
        super().__init__()
        self.split, self.batch_size, self.training = split, int(batch_size), bool(training)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.measure())

    def measure(self) -> dict:
        """`{"f_pristine": f^p, "f_corrupt": f^c}` (Python floats) at the current weights."""
        from cgh_tf import coherence

        f_p, f_c = coherence.loss_reduction_fractions(
            self.model, self.split.x, self.split.y, ~np.asarray(self.split.corrupted, bool),
            batch_size=self.batch_size, training=self.training)
        return {"f_pristine": float(f_p), "f_corrupt": float(f_c)}


STEP_ONLY_KEYS = ("step", "epoch", "loss", "accuracy")  # step rows' keys not put into epoch logs


class StepMeasurements(keras.callbacks.Callback):
    """Drives a `CoherenceMonitor` (and `LossReductionFractions`) every N batches and at epoch ends.

    Measures at step 0 (train begin of a fresh run), after every `every_steps`-th batch (steps =
    batches seen, counted over the whole run) and at every epoch end (reusing the measurement of
    the epoch's last batch when that step was just measured). Every measurement

    | goes to                          | content                                                        |
    |----------------------------------|----------------------------------------------------------------|
    | `rows` (a list shared with the checkpoint state; `step_history` of results.json) | `{"step", "epoch" (0-based, in progress), "loss", "accuracy" (running means over the epoch's batches so far, training mode; None at step 0), "coherence/<sample>/...", "f_pristine", "f_corrupt"}` |
    | `coherence.csv` (the monitor's)  | its rows, column `epoch` as above, so `truncate_csv_epochs` works |
    | TensorBoard `log_dir`            | every value of the row (except step / epoch; None and NaN: no scalar) at the global step |
    | epoch logs (epoch ends only)     | the same keys as the per-epoch monitor, so `history` is unchanged |

    Deterministic (no wall-clock); resume with `steps_seen = epochs done x steps per epoch` and the
    rows of the checkpoint, which end with that epoch's end measurement.
    """

    def __init__(self, monitor, fractions, every_steps: int, log_dir=None, steps_seen: int = 0,
                 rows=None):
        super().__init__()
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps must be a positive int, got {every_steps!r}")
        self.monitor, self.fractions, self.every_steps = monitor, fractions, every_steps
        self.log_dir, self.steps_seen = log_dir, int(steps_seen)
        self.rows = [] if rows is None else rows
        self._epoch, self._writer = 0, None

    def set_model(self, model):
        super().set_model(model)
        for callback in (self.monitor, self.fractions):
            if callback is not None:
                callback.set_model(model)

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        if self.steps_seen == 0 and not self.rows:
            self._measure(loss=None, accuracy=None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps_seen += 1
        if self.steps_seen % self.every_steps == 0:
            self._measure(loss=(logs or {}).get("loss"), accuracy=(logs or {}).get("accuracy"))

    def on_epoch_end(self, epoch, logs=None):
        if not self.rows or self.rows[-1]["step"] != self.steps_seen:
            self._measure(loss=(logs or {}).get("loss"), accuracy=(logs or {}).get("accuracy"))
        if logs is not None:
            logs.update({k: v for k, v in self.rows[-1].items()
                         if k not in STEP_ONLY_KEYS})

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _measure(self, loss, accuracy=None):
        step = self.steps_seen
        values = self.monitor.record(epoch=self._epoch, step=step, summary_step=step)
        if self.fractions is not None:
            values.update(self.fractions.measure())
        row = {"step": step, "epoch": self._epoch, **values}
        for key, value in (("loss", loss), ("accuracy", accuracy)):
            row[key] = None if value is None else float(value)
        self.rows.append(row)
        if self._writer is not None:
            with self._writer.as_default():
                for tag, value in row.items():
                    if tag not in ("step", "epoch") and value is not None \
                            and not math.isnan(value):  # NaN: no value (null in step_history)
                        tf.summary.scalar(tag, value, step=step)
            self._writer.flush()


def truncate_csv_epochs(path: str, first_epoch: int) -> None:
    """Keep the header and the rows of epochs < `first_epoch` (column `epoch`) of a CSV, atomically.

    Used on resume so that an append-only CSV never holds a row twice: rows written after the
    checkpoint being resumed from (and a line cut by a kill) are dropped. No-op if `path` is absent.
    """
    from trainers import io

    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = text.split("\n")
    header, complete = lines[0], lines[1:-1]  # lines[-1]: "" or a line cut by a kill
    if not header:
        return
    epoch_column = next(csv.reader([header])).index("epoch")
    kept = [line for line in complete
            if line and int(next(csv.reader([line]))[epoch_column]) < first_epoch]
    new_text = "\n".join([header, *kept]) + "\n"
    if new_text != text:
        with io.atomic_open(path, "w") as f:
            f.write(new_text)


class ResumableLearningTimes(keras.callbacks.Callback):
    """`cgh_tf.callbacks.LearningTimes` whose state is saved after every epoch and restored on resume.

    The state after epoch e (arrays, evaluated steps, steps seen) goes to
    `WORKDIR/checkpoints/learning-times-{e:04d}.npz` (atomic) *before* the epoch's checkpoint, so
    the state matching any checkpoint exists; `restore(e)` loads it. Delegates everything else.
    """

    def __init__(self, workdir, split, every_steps, batch_size, keep):
        from cgh_tf import callbacks

        super().__init__()
        self.workdir, self.keep = workdir, int(keep)
        self.inner = callbacks.LearningTimes(
            split, every_steps, batch_size=batch_size,
            csv_path=os.path.join(workdir, LEARNING_TIMES_CSV),
            log_dir=os.path.join(workdir, "tensorboard", "learning_times"))

    def state_path(self, epochs_completed: int) -> str:
        return os.path.join(self.workdir, "checkpoints", f"learning-times-{epochs_completed:04d}.npz")

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def on_train_begin(self, logs=None):
        self.inner.on_train_begin(logs)

    def on_train_batch_end(self, batch, logs=None):
        self.inner.on_train_batch_end(batch, logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)

    def on_epoch_end(self, epoch, logs=None):
        from trainers import io

        lt = self.inner
        os.makedirs(os.path.dirname(self.state_path(0)), exist_ok=True)
        with io.atomic_open(self.state_path(epoch + 1), "wb") as f:
            np.savez(f, first_correct_step=lt.first_correct_step,
                     stable_since_step=lt.stable_since_step, last_prediction=lt.last_prediction,
                     evaluated_steps=np.asarray(lt.evaluated_steps, np.int64),
                     steps_seen=np.int64(lt.steps_seen))
        for path in glob.glob(self.state_path(0).replace("0000", "[0-9]*")):
            if int(os.path.basename(path)[len("learning-times-"):-len(".npz")]) <= epoch - self.keep:
                os.remove(path)

    def restore(self, epochs_completed: int) -> None:
        """Load the state saved after `epochs_completed` epochs (ConfigError if it is missing)."""
        path = self.state_path(epochs_completed)
        if not os.path.exists(path):
            raise ConfigError(f"{path} is missing: the workdir's learning times cannot be resumed")
        lt = self.inner
        with np.load(path) as f:
            lt.first_correct_step = f["first_correct_step"].copy()
            lt.stable_since_step = f["stable_since_step"].copy()
            lt.last_prediction = f["last_prediction"].copy()
            lt.evaluated_steps = [int(s) for s in f["evaluated_steps"]]
            lt.steps_seen = int(f["steps_seen"])


def feature_callbacks(config, data, workdir: str, first_epoch: int, steps: int,
                      step_history: list = None) -> list:
    """Callbacks of the feature fields, in order; each adds its values to the epoch logs.

    `first_epoch` > 0 means a resume: the monitor CSV is truncated to the epochs before it, the
    monitor's step count and the learning times' state are restored. `steps`: batches per epoch.
    `step_history`: the list the per-step measurements (`coherence.monitor_every_steps > 0`,
    `StepMeasurements.rows`) are appended to — the rows of the checkpoint resumed from.
    """
    from cgh_tf import callbacks

    result = []
    m = setting(config, "coherence.monitor_samples")
    if m:
        samples = monitor_samples(data, m, config.seed)
        csv_path = os.path.join(workdir, COHERENCE_CSV)
        truncate_csv_epochs(csv_path, first_epoch)
        monitor = callbacks.CoherenceMonitor(
            {name: (s.x, s.y) for name, s in samples.items()}, every_epochs=1,
            per_layer=setting(config, "coherence.per_layer"), batch_size=config.eval_batch_size,
            csv_path=csv_path, training=setting(config, "coherence.training"))
        monitor.steps_seen = first_epoch * steps
        fractions = None
        if config.label_noise > 0 and "corrupted" in samples:
            fractions = LossReductionFractions(samples["train"], config.eval_batch_size,
                                               training=setting(config, "coherence.training"))
        every_steps = setting(config, "coherence.monitor_every_steps")
        if every_steps:
            result.append(StepMeasurements(
                monitor, fractions, int(every_steps),
                log_dir=os.path.join(workdir, "tensorboard", STEP_TENSORBOARD_RUN),
                steps_seen=first_epoch * steps, rows=step_history))
        else:
            result += [c for c in (monitor, fractions) if c is not None]
    every_steps = setting(config, "learning_times.every_steps")
    if every_steps:
        times = ResumableLearningTimes(workdir, data.train, every_steps, config.eval_batch_size,
                                       keep=config.keep_checkpoints)
        if first_epoch:
            times.restore(first_epoch)
        result.append(times)
    return result


# ------------------------------------------------------------------------------------------------
# Easy / hard examples (2003.07422)
# ------------------------------------------------------------------------------------------------

def predicted_correctly(model, split, batch_size: int = 1000) -> np.ndarray:
    """`[n]` bool: argmax of `model(x, training=False)` equals the training label `split.y`."""
    predictions = [np.argmax(model(split.x[i:i + batch_size], training=False), axis=-1)
                   for i in range(0, len(split), batch_size)]
    return np.concatenate(predictions).astype(np.int64) == np.asarray(split.y, np.int64)


def easy_mask_from_csv(path: str, split) -> np.ndarray:
    """`[n]` bool easy mask of `split` from a learning-times CSV (`last_prediction == label`).

    Rows are matched by `example_id`; ConfigError if the CSV lacks examples of `split` or its labels
    differ (it belongs to another dataset / noise setting).
    """
    from cgh_tf import callbacks

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        by_id = {int(r["example_id"]): (int(r["label"]), int(r["last_prediction"])) for r in rows}
    except (KeyError, ValueError) as error:
        raise ConfigError(f"easy_hard.learning_times_csv={path!r} is not a learning-times CSV "
                          f"({error})") from error
    ids = np.asarray(split.example_id)
    missing = [int(i) for i in ids if int(i) not in by_id]
    if missing:
        raise ConfigError(f"easy_hard.learning_times_csv={path!r} has no rows for {len(missing)} "
                          f"training examples (e.g. id {missing[0]}); it belongs to another run")
    labels = np.array([by_id[int(i)][0] for i in ids], np.int64)
    if not np.array_equal(labels, np.asarray(split.y, np.int64)):
        raise ConfigError(f"easy_hard.learning_times_csv={path!r}: its labels differ from the "
                          f"training labels of this config (other dataset, noise or seed)")
    return callbacks.easy_mask({"label": labels,
                                "last_prediction": np.array([by_id[int(i)][1] for i in ids])})


def part_config(config, part: str, num_epochs=None) -> ml_collections.ConfigDict:
    """A copy of an easy/hard config for one sub-run: `mode="train"`, `easy_hard.part=part`."""
    sub = add_feature_fields(ml_collections.ConfigDict(config.to_dict()))
    sub.mode = "train"
    sub.easy_hard.part = part
    if num_epochs is not None:
        sub.num_epochs = int(num_epochs)
    return sub
