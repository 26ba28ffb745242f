"""Model builders for the experiments. Every model outputs **logits** (no softmax).

Compile with a loss that takes logits, e.g.
`keras.losses.SparseCategoricalCrossentropy(from_logits=True)`; accuracy metrics work on logits
unchanged (argmax is the same).

| name (= builder)      | input                             | architecture                                   |
|-----------------------|-----------------------------------|------------------------------------------------|
| `"mlp"`               | any (flattened)                   | `depth` × Dense(`width`) + Dense(K)            |
| `"small_cnn"`         | [L] or [L, C]: Conv1D; [H, W, C]: Conv2D | per `filters` entry conv + max-pool 2, Dense(`dense_width`), Dense(K) |
| `"resnet18_cifar"`    | [H, W, C], default 32×32×3        | 3×3 stem, no max-pool, 4 stages × 2 basic blocks (64-128-256-512) |
| `"resnet18_imagenet"` | [H, W, C], default 224×224×3      | 7×7/2 stem + 3×3/2 max-pool, same stages       |
| `"resnet50_imagenet"` | [H, W, C], default 224×224×3      | `keras.applications.ResNet50(weights=None)`    |

Every builder takes `model_class` (default `keras.Model`), called as `model_class(inputs, outputs,
name=...)`, so that `cgh_tf.Model` (a functional `keras.Model` subclass) can be substituted.
`build(name, input_shape, num_classes, **kwargs)` dispatches by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

Shape = Sequence[int]  # an example's shape, without the batch axis


def _check_shape(input_shape, num_classes):
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d <= 0 for d in input_shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return input_shape, int(num_classes)


def _logits(x, num_classes):
    return layers.Dense(num_classes, name="logits")(x)


def mlp(input_shape: Shape, num_classes: int, depth: int = 2, width: int = 256,
        activation: str = "relu", *, model_class: type[keras.Model] = keras.Model,
        name: str = "mlp") -> keras.Model:
    """Flatten → `depth` × Dense(width, activation) → Dense(num_classes) logits."""
    input_shape, num_classes = _check_shape(input_shape, num_classes)
    if depth < 0 or width < 1:
        raise ValueError(f"mlp needs depth >= 0 and width >= 1, got depth={depth}, width={width}")
    inputs = keras.Input(shape=input_shape, name="x")
    x = layers.Flatten(name="flatten")(inputs)
    for i in range(depth):
        x = layers.Dense(width, activation=activation, name=f"dense_{i}")(x)
    return model_class(inputs, _logits(x, num_classes), name=name)


def small_cnn(input_shape: Shape, num_classes: int, filters: Sequence[int] = (32, 64),
              kernel_size: int = 3, dense_width: int = 128, activation: str = "relu", *,
              model_class: type[keras.Model] = keras.Model, name: str = "small_cnn") -> keras.Model:
    """Conv(+max-pool 2) per entry of `filters` → Flatten → Dense(dense_width) → Dense logits.

    Rank-1 inputs [L] (mnist1d) are treated as [L, 1]; rank-2 [L, C] use Conv1D; rank-3
    [H, W, C] use Conv2D. Pooling is skipped once a spatial side is below 2. dense_width=0
    removes the hidden Dense layer.
    """
    input_shape, num_classes = _check_shape(input_shape, num_classes)
    if len(input_shape) > 3:
        raise ValueError(f"small_cnn takes inputs of rank 1, 2 or 3, got input_shape={input_shape}")
    inputs = keras.Input(shape=input_shape, name="x")
    x = inputs
    if len(input_shape) == 1:
        x = layers.Reshape(input_shape + (1,), name="add_channel")(x)
    conv, pool = ((layers.Conv1D, layers.MaxPooling1D) if len(input_shape) <= 2
                  else (layers.Conv2D, layers.MaxPooling2D))
    spatial = list(input_shape[:-1] if len(input_shape) >= 2 else input_shape)
    for i, f in enumerate(filters):
        x = conv(f, kernel_size, padding="same", activation=activation, name=f"conv_{i}")(x)
        if min(spatial) >= 2:
            x = pool(2, name=f"pool_{i}")(x)
            spatial = [s // 2 for s in spatial]
    x = layers.Flatten(name="flatten")(x)
    if dense_width:
        x = layers.Dense(dense_width, activation=activation, name="dense")(x)
    return model_class(inputs, _logits(x, num_classes), name=name)


def _conv_bn(x, filters, kernel_size, strides, name):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    return layers.BatchNormalization(name=f"{name}_bn")(x)


def _basic_block(x, filters, strides, name):
    """He et al. (2016) basic block; 1×1 projection shortcut when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, f"{name}_proj")
    y = layers.Activation("relu", name=f"{name}_relu1")(_conv_bn(x, filters, 3, strides, f"{name}_1"))
    y = _conv_bn(y, filters, 3, 1, f"{name}_2")
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def _resnet18_body(x, num_classes):
    for stage, (filters, strides) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
        for block in range(2):
            x = _basic_block(x, filters, strides if block == 0 else 1, f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _logits(x, num_classes)


def _image_shape(input_shape, num_classes, model):
    input_shape, num_classes = _check_shape(input_shape, num_classes)
    if len(input_shape) != 3:
        raise ValueError(f"{model} takes images [H, W, C], got input_shape={input_shape}")
    return input_shape, num_classes


def resnet18_cifar(input_shape: Shape = (32, 32, 3), num_classes: int = 10, *,
                   model_class: type[keras.Model] = keras.Model,
                   name: str = "resnet18_cifar") -> keras.Model:
    """CIFAR ResNet-18: 3×3/1 stem (64), no max-pool, 4 stages × 2 basic blocks, GAP, logits."""
    input_shape, num_classes = _image_shape(input_shape, num_classes, "resnet18_cifar")
    inputs = keras.Input(shape=input_shape, name="x")
    x = layers.Activation("relu", name="stem_relu")(_conv_bn(inputs, 64, 3, 1, "stem"))
    return model_class(inputs, _resnet18_body(x, num_classes), name=name)


def resnet18_imagenet(input_shape: Shape = (224, 224, 3), num_classes: int = 1000, *,
                      model_class: type[keras.Model] = keras.Model,
                      name: str = "resnet18_imagenet") -> keras.Model:
    """ImageNet ResNet-18: 7×7/2 stem (64) + 3×3/2 max-pool, 4 stages × 2 basic blocks, logits."""
    input_shape, num_classes = _image_shape(input_shape, num_classes, "resnet18_imagenet")
    inputs = keras.Input(shape=input_shape, name="x")
    x = layers.Activation("relu", name="stem_relu")(_conv_bn(inputs, 64, 7, 2, "stem"))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    return model_class(inputs, _resnet18_body(x, num_classes), name=name)


def resnet50_imagenet(input_shape: Shape = (224, 224, 3), num_classes: int = 1000, *,
                      model_class: type[keras.Model] = keras.Model,
                      name: str = "resnet50_imagenet") -> keras.Model:
    """`keras.applications.ResNet50(weights=None)` with a logits head, re-wrapped in model_class."""
    input_shape, num_classes = _image_shape(input_shape, num_classes, "resnet50_imagenet")
    base = keras.applications.ResNet50(weights=None, include_top=True, input_shape=input_shape,
                                       classes=num_classes, classifier_activation=None)
    return model_class(base.inputs, base.outputs, name=name)


MODELS = {
    "mlp": mlp,
    "small_cnn": small_cnn,
    "resnet18_cifar": resnet18_cifar,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50_imagenet": resnet50_imagenet,
}


# The models whose training mode normalises by the batch's statistics (BatchNormalization), so that
# the examples of a batch interact: per-example aggregators (winsorize) refuse them
# (`mode_dependence.check_examples_independent`); tests/test_models.py pins the list.
BATCH_STATISTICS = ("resnet18_cifar", "resnet18_imagenet", "resnet50_imagenet")


def build(name: str, input_shape: Shape, num_classes: int, **kwargs: Any) -> keras.Model:
    """Builds model `name` (a key of MODELS); kwargs go to its builder (e.g. model_class, width)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(map(repr, MODELS))}")
    return MODELS[name](input_shape, num_classes, **kwargs)
