"""Tests of cgh_tf.models: output shapes, logits, one training step, model_class, errors."""

import keras
import numpy as np
import pytest

from cgh_tf import mode_dependence, models


class TaggedModel(keras.Model):
    """Stand-in for cgh_tf.Model: a functional keras.Model subclass."""


def _train_one_step(model, input_shape, num_classes, batch=4):
    """One SGD step on random data; returns (loss, max |Δw| over trainable weights)."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, *input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, batch)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    change = max(np.abs(w.numpy() - b).max() for w, b in zip(model.trainable_weights, before))
    return float(np.asarray(loss)), change


@pytest.mark.parametrize("name,input_shape,kwargs", [
    ("mlp", (40,), {}),
    ("mlp", (6, 6, 1), {"depth": 0}),
    ("small_cnn", (40,), {}),
    ("small_cnn", (20, 2), {}),
    ("small_cnn", (12, 12, 3), {"filters": (4, 8, 8, 8)}),
    ("resnet18_cifar", (16, 16, 3), {}),
    ("resnet18_imagenet", (32, 32, 3), {}),
])
def test_output_shape_and_one_training_step(name, input_shape, kwargs):
    model = models.build(name, input_shape, 7, **kwargs)
    x = np.random.default_rng(1).random((3, *input_shape)).astype(np.float32)
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (3, 7)
    assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)  # logits, not probabilities
    loss, change = _train_one_step(model, input_shape, 7)
    assert np.isfinite(loss) and change > 0


def test_mlp_structure_matches_arguments():
    model = models.mlp((5, 2), 3, depth=3, width=11, activation="tanh")
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [l.units for l in dense] == [11, 11, 11, 3]
    assert dense[0].activation is keras.activations.tanh and dense[-1].activation is keras.activations.linear
    assert model.count_params() == (10 * 11 + 11) + 2 * (11 * 11 + 11) + (11 * 3 + 3)


def test_small_cnn_uses_conv1d_for_sequences_and_conv2d_for_images():
    seq = models.small_cnn((40,), 10)
    img = models.small_cnn((28, 28, 1), 10)
    assert any(isinstance(l, keras.layers.Conv1D) for l in seq.layers)
    assert any(isinstance(l, keras.layers.Conv2D) for l in img.layers)
    assert not any(isinstance(l, keras.layers.Conv2D) for l in seq.layers)


def test_resnet18_cifar_default_shape_and_size():
    model = models.resnet18_cifar()
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 10)
    assert not any(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs[0].kernel_size == (3, 3) and convs[0].strides == (1, 1)
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 17  # stem + 8 blocks × 2
    assert sorted({c.filters for c in convs}) == [64, 128, 256, 512]
    # The standard CIFAR ResNet-18 has 11,173,962 parameters (kuangliu/pytorch-cifar count).
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 11_173_962
    assert model.count_params() - trainable == 2 * 4_800  # BN moving mean / variance, 4,800 channels


def test_resnet18_imagenet_stem():
    model = models.resnet18_imagenet((64, 64, 3), 5)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs[0].kernel_size == (7, 7) and convs[0].strides == (2, 2)
    assert any(isinstance(l, keras.layers.MaxPooling2D) for l in model.layers)
    assert model.output_shape == (None, 5)


def test_model_class_is_used():
    for name, shape in [("mlp", (4,)), ("small_cnn", (8,)), ("resnet18_cifar", (8, 8, 3))]:
        assert isinstance(models.build(name, shape, 2, model_class=TaggedModel), TaggedModel)


def test_resnet50_builds_with_logits_and_model_class():
    model = models.resnet50_imagenet((32, 32, 3), 4, model_class=TaggedModel)
    assert isinstance(model, TaggedModel) and model.output_shape == (None, 4)
    assert model.layers[-1].activation is keras.activations.linear
    assert model.count_params() > 23_000_000


def test_bad_input():
    with pytest.raises(ValueError, match="'mlp', 'small_cnn', 'resnet18_cifar'"):
        models.build("vgg16", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="images"):
        models.build("resnet18_cifar", (40,), 10)
    with pytest.raises(ValueError, match="num_classes"):
        models.build("mlp", (40,), 0)
    with pytest.raises(ValueError, match="rank 1, 2 or 3"):
        models.small_cnn((2, 3, 4, 5), 3)


@pytest.mark.parametrize("name,input_shape", [
    ("mlp", (40,)), ("small_cnn", (12, 12, 3)), ("resnet18_cifar", (16, 16, 3)),
    ("resnet18_imagenet", (32, 32, 3)), ("resnet50_imagenet", (32, 32, 3))])
def test_batch_statistics_lists_exactly_the_models_whose_examples_interact(name, input_shape):
    model = models.build(name, input_shape, 3)
    assert bool(mode_dependence.example_mixing_layers(model)) == (
        name in models.BATCH_STATISTICS)
    assert set(models.BATCH_STATISTICS) <= set(models.MODELS)
