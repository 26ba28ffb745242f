"""Config -> data, model, optimizer, compiled model (docs/design.md §7). Reads no flags."""

import keras

from trainers.config_schema import ConfigError, setting, updates_per_batch

# name -> (input_shape, num_classes, train, test examples before max_train / max_test) of the
# datasets of cgh_tf.data, known without loading (tests/test_dry_run.py checks them).
DATASETS = {
    "mnist1d": ((40,), 10, 4000, 1000),
    "digits": ((8, 8, 1), 10, 1437, 360),
    "mnist5k": ((28, 28, 1), 10, 4000, 1000),
    "mnist": ((28, 28, 1), 10, 60000, 10000),
    "fashion_mnist": ((28, 28, 1), 10, 60000, 10000),
    "cifar10": ((32, 32, 3), 10, 50000, 10000),
    "cifar100": ((32, 32, 3), 100, 50000, 10000),
    "imagenet2012": ((224, 224, 3), 1000, 1281167, 50000),
}


def dataset_sizes(config) -> tuple:
    """`(train, test)` examples a run of `config` sees, without loading them."""
    train, test = DATASETS[config.dataset][2:]
    return (min(train, config.max_train or train), min(test, config.max_test or test))


def load_data(config):
    """Load the dataset named by the config (labels corrupted as configured); NumPy in memory."""
    from cgh_tf import data

    try:
        return data.load(config.dataset, data_dir=config.data_dir, label_noise=config.label_noise,
                         noise_kind=config.noise_kind, input_corruption=config.input_corruption,
                         seed=config.seed, max_train=config.max_train, max_test=config.max_test)
    except (ValueError, TypeError, FileNotFoundError) as error:  # incl. DatasetNotAvailableError
        raise ConfigError(f"dataset {config.dataset!r}: {error}") from error


def dataset_spec(name: str, label_noise=0.0, noise_kind="uniform", num_train=None) -> tuple:
    """`(input_shape, num_classes)` of a known dataset without loading it; with "isolated" label
    noise K + round(label_noise · num_train) classes (`cgh_tf.data.label_classes`)."""
    from cgh_tf import data

    if name not in DATASETS:
        raise ConfigError(f"dataset={name!r} is unknown; allowed: {', '.join(DATASETS)}")
    input_shape, num_classes = DATASETS[name][:2]
    if noise_kind == "isolated" and label_noise and num_train is None:
        raise ConfigError(f"noise_kind='isolated' adds one class per corrupted example: give "
                          f"num_train (the training examples of {name!r}) to dataset_spec")
    try:
        return input_shape, data.label_classes(num_classes, label_noise, num_train or 0,
                                               noise_kind)
    except ValueError as error:
        raise ConfigError(f"dataset_spec({name!r}): {error}") from None


def build_model(config, input_shape, num_classes) -> keras.Model:
    """`cgh_tf.models.build(...)` of `config.model`: a `cgh_tf.Model`, but a plain `keras.Model`
    for M3 over k consecutive batches."""
    from cgh_tf import models
    from cgh_tf import training

    kwargs = config.model.kwargs.to_dict() if config.model.get("kwargs") else {}
    if updates_per_batch(config)[0] != "every_kth":
        kwargs["model_class"] = training.Model
    try:
        return models.build(config.model.name, tuple(input_shape), num_classes, **kwargs)
    except (ValueError, TypeError) as error:
        kwargs.pop("model_class", None)
        raise ConfigError(f"model {config.model.name!r} with kwargs {kwargs}: {error}") from error


def build_optimizer(config, learning_rate):
    """`cgh_tf.optimizers.build(...)` of `config.optimizer`; `learning_rate` a float or schedule."""
    from cgh_tf import optimizers

    opt = config.optimizer
    extra = {"weight_decay": opt.weight_decay} if opt.weight_decay else {}
    try:
        return optimizers.build(opt.name, learning_rate, momentum=opt.momentum, groups=opt.groups,
                                window=opt.window, l2=opt.l2, inner=opt.inner, **extra)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer {opt.name!r}: {error}") from error


def compile_model(model, optimizer, config=None) -> None:
    """Compile for classification from logits (sparse cross-entropy, `accuracy`; a `cgh_tf.Model`
    with `cgh_compile_options(config)`) and build the optimizer."""
    from cgh_tf import training

    options = (cgh_compile_options(config) if config is not None
               and isinstance(model, training.Model) else {})
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], **options)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)


def cgh_compile_options(config) -> dict:
    """The `cgh_tf.Model.compile` options of the config (`coherence_every`, `aggregation`, ...)."""
    every = int(setting(config, "coherence.every"))
    aggregation = setting(config, "optimizer.aggregation")
    return {  # (cgh_tf.Model rejects per_layer / training without coherence_every: ignored here)
        "coherence_every": every,
        "coherence_per_layer": bool(setting(config, "coherence.per_layer")) and every > 0,
        "coherence_training": bool(setting(config, "coherence.training")) and every > 0,
        "aggregation": aggregation,
        "winsorize_pct": (float(setting(config, "optimizer.winsorize_pct"))
                          if aggregation == "winsorize" else None),
    }
