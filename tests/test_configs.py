"""Every config validates and builds (config -> model + optimizer + schedule; no data, no training)."""

import importlib
import os

import keras
import pytest
from absl import flags
from ml_collections import config_flags

import cgh_tf
from trainers import config_schema, factories, schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("default", "m3", "rm3", "cifar10_resnet18", "imagenet_resnet50")


def _config(name):
    return importlib.import_module(f"configs.{name}").get_config()


def _build(config):
    """Model and optimizer of a config on the dataset's known shapes, compiled as the trainer does."""
    input_shape, num_classes = factories.dataset_spec(config.dataset)
    model = factories.build_model(config, input_shape, num_classes)
    decay = schedule.build_schedule(config)
    optimizer = factories.build_optimizer(config, decay)
    factories.compile_model(model, optimizer)
    return model, optimizer, decay


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
    config_schema.validate(_config(name))


@pytest.mark.parametrize("name, wrapper, size_field", [
    ("default", None, None), ("m3", cgh_tf.M3, "groups"), ("rm3", cgh_tf.RM3, "window"),
])
def test_small_configs_build_mlp_and_their_optimizer(name, wrapper, size_field):
    config = _config(name)
    model, optimizer, schedule = _build(config)
    assert model.input_shape == (None, 40) and model.output_shape == (None, 10)
    assert config.dataset == "mnist1d" and 0 < config.label_noise < 1
    if wrapper is None:
        assert isinstance(optimizer, keras.optimizers.SGD)
    else:
        assert isinstance(optimizer, wrapper)
        assert optimizer.size == config.optimizer[size_field] == 3
        assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)
        assert float(optimizer.inner_optimizer.momentum) == 0.0  # the authors' plain SGD
    assert float(_inner(optimizer).learning_rate) == pytest.approx(config.learning_rate)
    assert schedule.value_at(config.num_epochs - 1) == config.learning_rate  # constant


@pytest.mark.parametrize("name, input_shape, num_classes, batch, params_millions, lr_by_epoch", [
    ("cifar10_resnet18", (32, 32, 3), 10, 128, (10.5, 11.5),
     {0: 0.1, 99: 0.1, 100: 0.01, 149: 0.01, 150: 0.001, 199: 0.001}),
    ("imagenet_resnet50", (224, 224, 3), 1000, 256, (25.0, 26.0),
     {0: 0.1, 29: 0.1, 30: 0.01, 59: 0.01, 60: 0.001, 89: 0.001}),
])
def test_scale_configs_build_with_the_authors_hyperparameters(
        name, input_shape, num_classes, batch, params_millions, lr_by_epoch):
    config = _config(name)
    model, optimizer, schedule = _build(config)
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == (None, num_classes)
    low, high = params_millions
    assert low < model.count_params() / 1e6 < high
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert float(optimizer.momentum) == pytest.approx(0.9)
    assert config.optimizer.weight_decay > 0
    assert optimizer.weight_decay == pytest.approx(config.optimizer.weight_decay)
    assert config.batch_size == batch
    assert config.num_epochs == max(lr_by_epoch) + 1
    for epoch, expected in lr_by_epoch.items():
        schedule.set_epoch(epoch)
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-6), epoch


def test_flags_override_any_field_and_learning_rate_is_linked():
    argv = ["prog", f"--config={REPO}/configs/default.py", "--config.learning_rate=0.05",
            "--config.lr_schedule.decay_epochs=(3,7)", "--config.model.kwargs.width=17",
            "--config.max_train=123", "--config.optimizer.name=rm3"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=flag_values,
                                    sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.optimizer.learning_rate == config.learning_rate == 0.05
    assert tuple(config.lr_schedule.decay_epochs) == (3, 7)
    assert config.model.kwargs.width == 17
    assert config.max_train == 123
    assert config.optimizer.name == "rm3"
    config_schema.validate(config)


def test_dataset_spec_rejects_unknown_names():
    with pytest.raises(config_schema.ConfigError, match="unknown; allowed: mnist1d"):
        factories.dataset_spec("svhn")


def test_dataset_spec_counts_the_dummy_classes_of_isolated_noise():
    from cgh_tf import data

    loaded = data.load("mnist1d", label_noise=0.4, noise_kind="isolated", seed=0, train_size=500)
    assert factories.dataset_spec("mnist1d", 0.4, "isolated", num_train=500) == (
        tuple(loaded.input_shape), loaded.num_classes) == ((40,), 10 + 200)
    assert factories.dataset_spec("mnist1d", 0.4, "pair", num_train=500) == ((40,), 10)
    with pytest.raises(config_schema.ConfigError, match="give num_train"):
        factories.dataset_spec("mnist1d", 0.4, "isolated")


@pytest.mark.parametrize("kind", ["pair", "isolated"])
def test_trainer_configs_accept_every_noise_kind_of_the_data_module(kind):
    config = _config("default")
    config.noise_kind = kind
    config_schema.validate(config)
    config.noise_kind = "sideways"
    with pytest.raises(config_schema.ConfigError, match="allowed: uniform, other, permute, pair, "
                                                         "isolated"):
        config_schema.validate(config)
