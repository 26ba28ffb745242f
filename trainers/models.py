"""The Keras models of the custom-loop experiments (functional, logits out); layer names are in
the results (per-layer keys `coherence/<sample>/<layer>/...`)."""

import math


def mlp(config, input_shape, num_classes, prefix="hidden", initializer=None):
    """[flatten →] <prefix>1 .. <prefix><depth> = `depth` × Dense(`width`, relu) → out [K];
    `initializer` (None: Keras' default) for every kernel."""
    import keras

    kernel = {} if initializer is None else {"kernel_initializer": initializer}
    inputs = keras.Input(tuple(input_shape))
    h = keras.layers.Flatten(name="flatten")(inputs) if len(input_shape) > 1 else inputs
    for i in range(int(config.depth)):
        h = keras.layers.Dense(int(config.width), activation="relu", name=f"{prefix}{i + 1}",
                               **kernel)(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="out", **kernel)(h))


def transformer(config, vocabulary, num_classes, initializer):
    """Tokens (a, p+b, "=") int [3] → Embedding(vocabulary, width) → `depth` blocks of
    MultiHeadAttention (`heads`, residual) and MLP 4·width (relu, residual) → the "=" position →
    Dense(K) logits (Nanda et al. 2023: 1 layer, no LayerNorm)."""
    import keras

    d, layers = int(config.width), keras.layers
    inputs = keras.Input((3,), dtype="int32", name="tokens")
    x = layers.Embedding(vocabulary, d, name="embed",
                         embeddings_initializer=keras.initializers.RandomNormal(
                             stddev=float(config.init_scale) / math.sqrt(d),
                             seed=int(config.seed)))(inputs)
    for i in range(int(config.depth)):
        attn = layers.MultiHeadAttention(int(config.heads), d // int(config.heads),
                                         kernel_initializer=initializer, name=f"attn{i + 1}")
        x = layers.Add(name=f"res_attn{i + 1}")([x, attn(x, x)])
        h = layers.Dense(4 * d, activation="relu", kernel_initializer=initializer,
                         name=f"mlp_in{i + 1}")(x)
        h = layers.Dense(d, kernel_initializer=initializer, name=f"mlp_out{i + 1}")(h)
        x = layers.Add(name=f"res_mlp{i + 1}")([x, h])
    last = layers.Flatten(name="flatten")(layers.Cropping1D((2, 0), name="equals_position")(x))
    outputs = layers.Dense(num_classes, kernel_initializer=initializer, name="unembed")(last)
    return keras.Model(inputs, outputs, name="grok_transformer")


def check_conv_net(config):
    """ValueError (one line) for bad `conv_net` fields."""
    from . import beyond_common as common
    from . import config_schema

    common.require_ints(config, ("dense_width", "resnet_blocks", "resnet_stem_stride"))
    common.require_int_list(config, "cnn_filters", 1)
    common.require_int_list(config, "resnet_filters", 1)
    common.require_each(config, ("bn_momentum",),
                        lambda v: config_schema.is_number(v) and 0 <= v < 1, "in [0, 1)")


def conv_net(config, input_shape, num_classes):
    """`config.arch` "cnn" (conv 3 + max-pool per `cnn_filters`, Dense `dense_width`) or "resnet"
    (stem, stages `resnet_filters` × `resnet_blocks` BN basic blocks, global average pool); Conv1D
    for rank-1 inputs (a channel is added), Conv2D otherwise; logits [K]."""
    import keras

    layers = keras.layers
    inputs = keras.Input(tuple(input_shape), name="x")
    h = layers.Reshape(tuple(input_shape) + (1,), name="add_channel")(inputs) if len(
        input_shape) == 1 else inputs
    one_d = len(h.shape) == 3
    conv = layers.Conv1D if one_d else layers.Conv2D
    if config.arch == "cnn":
        pool = layers.MaxPooling1D if one_d else layers.MaxPooling2D
        for i, filters in enumerate(config.cnn_filters):
            h = conv(int(filters), 3, padding="same", activation="relu", name=f"conv{i + 1}")(h)
            h = pool(2, name=f"pool{i + 1}")(h)
        h = layers.Flatten(name="flatten")(h)
        h = layers.Dense(int(config.dense_width), activation="relu", name="dense1")(h)
        return keras.Model(inputs, layers.Dense(num_classes, name="out")(h), name="cnn")

    def conv_bn(x, filters, kernel, strides, name):
        x = conv(filters, kernel, strides=strides, padding="same", use_bias=False,
                 kernel_initializer="he_normal", name=f"{name}_conv")(x)
        return layers.BatchNormalization(momentum=float(config.bn_momentum), name=f"{name}_bn")(x)

    filters = [int(f) for f in config.resnet_filters]
    h = layers.Activation("relu", name="stem_relu")(
        conv_bn(h, filters[0], 3, int(config.resnet_stem_stride), "stem"))
    for stage, f in enumerate(filters):
        for block in range(int(config.resnet_blocks)):
            strides, name = (2 if stage > 0 and block == 0 else 1), f"s{stage + 1}b{block + 1}"
            shortcut = (conv_bn(h, f, 1, strides, f"{name}_proj")
                        if strides != 1 or h.shape[-1] != f else h)
            y = layers.Activation("relu", name=f"{name}_relu")(
                conv_bn(h, f, 3, strides, f"{name}_1"))
            h = layers.Activation("relu", name=f"{name}_out")(
                layers.Add(name=f"{name}_add")([shortcut, conv_bn(y, f, 3, 1, f"{name}_2")]))
    gap = layers.GlobalAveragePooling1D if one_d else layers.GlobalAveragePooling2D
    return keras.Model(inputs, layers.Dense(num_classes, name="out")(gap(name="gap")(h)),
                       name="resnet")
