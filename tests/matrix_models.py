"""Model builders and the brute-force reference for the differential test matrix.

`tests/test_coherence_matrix.py` compares cgh_tf's coherence / per-example-gradient results with
`reference(case)`, computed here **without cgh_tf**: one `tf.GradientTape` per example (a batch of
one, `training=False`), gradients accumulated in float64 NumPy. With a batch of one, Keras' own
loss reduction ("sum_over_batch_size") is the mean over the extra axes (e.g. tokens), which is the
per-example loss of docs/design.md §1.

Every builder takes `model_cls` (`keras.Model` or `cgh_tf.Model`, called as `model_cls(inputs,
outputs)`) and returns a `Case`; it is seeded, so two calls give the same weights and data. Build
under the dtype policy of the test (float64 Keras for the exact comparisons).

| id | architecture | flags |
|---|---|---|
| mlp | Dense relu, Dense | trainer |
| cnn_pool | Conv2D-MaxPool-Conv2D-MaxPool-Flatten-Dense-Dense | trainer |
| resnet_block_bn | Conv-BN-ReLU-Conv-BN + skip, GAP, Dense (BN with random moving stats) | trainer |
| resnet_block_frozen_bn | the same with BN frozen (`trainable=False`, fine-tuning) | trainer |
| conv1d_text | Embedding-Conv1D-GlobalMaxPool1D-Dense | |
| conv3d | Conv3D-Flatten-Dense | |
| depthwise_separable_2d / _1d | DepthwiseConv-SeparableConv-Flatten-Dense | |
| grouped_conv2d | Conv2D(groups=2) | |
| groupnorm_cnn | Conv2D-GroupNormalization-ReLU | |
| gru_classifier | Embedding-GRU-Dense (symbolic loop, the Keras default) | |
| lstm_classifier | float sequence-LSTM(unroll=True)-Dense (the loop costs ~10 s per check) | |
| transformer_block | Embedding + learned positions, self-attention, LayerNorm, FFN | trainer, subprocess |
| tied_lm_layer / _variable / _lambda | causal LM, logits = h @ embeddingsᵀ three ways, per-token loss | trainer (_layer) |
| dense_shared_two_inputs / _sequential | one Dense layer called twice | trainer (_sequential) |
| kernel_reused_by_other_layer | a custom layer multiplying by another Dense's kernelᵀ | |
| nested_sequential | a Sequential inside a functional model | |
| dense_subclass_call / custom_layer_own_weights | Dense subclass overriding call; custom weights | |
| lora_dense | Dense layers with `enable_lora(2)` | |
| einsum_* | EinsumDense alone (four equations, bias_axes), MSE loss | subprocess |
| conv2d_transpose | Conv2DTranspose-Flatten-Dense | |
| unbuilt_sequential | `keras.Sequential` without `keras.Input` (built by its first call) | |
| time_distributed_conv | TimeDistributed(Conv2D)-Flatten-Dense | trainer |
| bidirectional_lstm_gru | Bidirectional(LSTM, sequences)-Bidirectional(GRU)-Dense | trainer |
| convnext_layerscale | DepthwiseConv2D-LayerNorm-Dense(gelu)-Dense-LayerScale (custom weight) + skip | trainer |
| grouped_query_attention | Embedding, causal GroupQueryAttention (4 query / 2 kv heads), LayerNorm | trainer, subprocess |
| masked_lm_padding | Embedding(mask_zero)-Dense-Dense per token, padded sequences | trainer, update |
| masked_lm_causal | the same with causal self-attention (padding and causal masks) | trainer, update, subprocess |
| masked_lm_token_weights | the padded LM with per-token sample weights [m, T] | trainer, update |
| two_outputs_dict | a trunk with a dict of two heads (SCCE, MSE) and loss_weights | trainer, update |
| class_weights | MLP classifier with class_weight | trainer, update |

The last five follow Keras' loss semantics: their reference is the decomposition ℓ_i of Keras' batch
loss (`_decomposed_loss`: Keras' own loss with reduction "sum" on each example alone × M / D, D the
hand-counted divisor), which for the others is the loss of a batch of one.
"""

import contextlib
import dataclasses
import hashlib
from typing import Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from keras import layers as L
from keras import ops

M = 8  # examples per sample
CLASSES = 3
VOCAB = 11
SEQUENCE = 6
SEED = 7


@dataclasses.dataclass
class Case:
    """A model, a sample of M examples and the loss (a keras.losses.Loss built in the test's dtype,
    or a dict of them keyed by output name).

    The Keras-semantics cases (masks, weights, several outputs) also give `sample_weight` (as
    `fit` takes it), `class_weight`, `loss_weights` and `divisors`: {output name or None: D}, the
    divisor of Keras' "sum_over_batch_size" reduction of that loss on the whole sample, derived by
    hand (number of unmasked elements); with `divisors` the reference is the decomposition below.
    """

    model: keras.Model
    x: np.ndarray
    y: object
    loss: object
    sample_weight: object = None
    class_weight: Optional[dict] = None
    loss_weights: Optional[dict] = None
    divisors: Optional[dict] = None

    def weights_of_examples(self):
        """The sample weights Keras trains with: `sample_weight`, or `class_weight` per label."""
        if self.class_weight is None:
            return self.sample_weight
        return np.array([self.class_weight[int(label)] for label in self.y])

    def compile_args(self):
        """`compile` keywords for the loss (and `loss_weights` when given)."""
        args = {"loss": self.loss}
        if self.loss_weights is not None:
            args["loss_weights"] = self.loss_weights
        return args


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registered builder; `trainer`: also checked through `cgh_tf.Model.fit`; `isolated`: the
    name of the subprocess group it runs in (attention / EinsumDense may crash the process);
    `update`: every mean aggregator's update of `cgh_tf.Model` is checked against keras.Model's."""

    build: Callable[..., Case]
    trainer: bool = False
    isolated: Optional[str] = None
    update: bool = False


ARCHITECTURES: Dict[str, Architecture] = {}


def architecture(name, trainer=False, isolated=None, update=False):
    """Registers `fn(model_cls) -> Case` under `name`."""

    def register(fn):
        ARCHITECTURES[name] = Architecture(fn, trainer, isolated, update)
        return fn

    return register


def build(name, model_cls=keras.Model) -> Case:
    """A fresh, seeded `Case` of architecture `name`."""
    keras.utils.set_random_seed(SEED)
    return ARCHITECTURES[name].build(model_cls)


@contextlib.contextmanager
def dtype_policy(policy, floatx):
    """Temporarily sets Keras' dtype policy and floatx (restored on exit)."""
    previous = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous[0])
        keras.config.set_floatx(previous[1])


# ----------------------------------------------------------------------------------------------
# The reference (independent of cgh_tf)


@dataclasses.dataclass
class Reference:
    """Per-example gradients, one float64 array [m, *var.shape] per trainable variable."""

    grads: List[np.ndarray]

    @property
    def m(self) -> int:
        return len(self.grads[0])

    def sq_norms(self) -> np.ndarray:
        """[m, V]: ‖g_{i,v}‖² per example i and variable v."""
        return np.stack([np.sum(g.reshape(self.m, -1) ** 2, axis=1) for g in self.grads], axis=1)

    def grad_sum(self) -> List[np.ndarray]:
        """Σ_i g_i per variable."""
        return [g.sum(axis=0) for g in self.grads]

    def m_coherence(self, indices=None) -> float:
        """‖Σ_i g_i‖² / Σ_i ‖g_i‖² over the variables `indices` (default: all)."""
        indices = range(len(self.grads)) if indices is None else indices
        sq_norm_of_sum = sum(np.sum(self.grad_sum()[j] ** 2) for j in indices)
        return float(sq_norm_of_sum / np.sum(self.sq_norms()[:, list(indices)]))

    def pairwise_coherence(self, indices=None) -> float:
        """Σ_{i≠j} g_i·g_j / ((m − 1) Σ_i ‖g_i‖²) from the Gram matrix of the flattened gradients
        of the variables `indices` (default: all): the off-diagonal mean, computed directly."""
        indices = range(len(self.grads)) if indices is None else indices
        flat = np.concatenate([self.grads[j].reshape(self.m, -1) for j in indices], axis=1)
        gram = flat @ flat.T
        return float((gram.sum() - np.trace(gram)) / ((self.m - 1) * np.trace(gram)))

    def dots_with_sum(self) -> np.ndarray:
        """[m]: g_i · S, S = Σ_j g_j, from the flattened gradients."""
        flat = np.concatenate([g.reshape(self.m, -1) for g in self.grads], axis=1)
        return flat @ flat.sum(axis=0)

    def per_layer(self, statistic, names) -> Dict[str, float]:
        """{layer name: `statistic(indices)` of its variables}; `names` aligned with the variables."""
        groups = {}
        for j, name in enumerate(names):
            groups.setdefault(name, []).append(j)
        return {name: statistic(indices) for name, indices in groups.items()}

    def per_layer_m_coherence(self, names) -> Dict[str, float]:
        """{layer name: m-coherence of its variables}; `names` aligned with the variables."""
        return self.per_layer(self.m_coherence, names)

    def weighted(self, weights) -> "Reference":
        """The per-example gradients of the weighted losses w_i·ℓ_i, i.e. w_i·g_i."""
        w = np.asarray(weights, np.float64)
        return Reference([g * w.reshape((-1,) + (1,) * (g.ndim - 1)) for g in self.grads])


def _float64(gradient, variable):
    if gradient is None:  # the loss does not depend on the variable
        return np.zeros(variable.shape, np.float64)
    return np.asarray(tf.convert_to_tensor(gradient), np.float64)  # IndexedSlices -> dense


def reference(case: Case) -> Reference:
    """Brute force: one tape per example (batch of 1, training=False), float64 NumPy."""
    per_example = []
    for i in range(M):
        with tf.GradientTape() as tape:
            if case.divisors is None:
                loss = case.loss(case.y[i:i + 1], case.model(case.x[i:i + 1], training=False))
            else:
                loss = _decomposed_loss(case, i)
        variables = case.model.trainable_variables
        per_example.append([_float64(g, v) for g, v in zip(tape.gradient(loss, variables), variables)])
    return Reference([np.stack(g) for g in zip(*per_example)])


def _example(structure, i):
    """Example i (as a batch of one) of an array or a dict of arrays; None stays None."""
    if structure is None:
        return None
    if isinstance(structure, dict):
        return {key: value[i:i + 1] for key, value in structure.items()}
    return structure[i:i + 1]


def _decomposed_loss(case: Case, i):
    """ℓ_i of Keras' batch loss, by hand: Σ over the losses of λ · (M / D) · Keras' own loss
    with reduction "sum" on example i alone (its mask rides on the model's output; its weights
    are example i's sample weights). Σ_i ℓ_i / M is Keras' "sum_over_batch_size" batch loss."""
    prediction = case.model(case.x[i:i + 1], training=False)
    losses = case.loss if isinstance(case.loss, dict) else {None: case.loss}
    weights = _example(case.weights_of_examples(), i)
    total = 0.0
    for key, loss in losses.items():
        summed = type(loss).from_config(dict(loss.get_config(), reduction="sum"))
        part = (lambda s: s) if key is None else (lambda s: s[key] if isinstance(s, dict) else s)
        value = summed(part(_example(case.y, i)), part(prediction),
                       None if weights is None else part(weights))
        factor = M / case.divisors[key] * (case.loss_weights or {}).get(key, 1.0)
        total = total + factor * value
    return total


_MEMO: Dict[tuple, Reference] = {}


def memoised_reference(name, case: Case) -> Reference:
    """`reference(case)`, memoised on the architecture `name` and the bytes of every weight (also
    non-trainable), input and target: each check builds the seeded architecture afresh, so the
    checks of one architecture share one reference, and any change of weights misses the memo."""
    if not case.model.weights:  # unbuilt: reference(case) builds it
        return reference(case)
    digest = hashlib.sha256()
    for array in [*case.model.get_weights(), case.x, *tf.nest.flatten(case.y),
                  *tf.nest.flatten(case.weights_of_examples())]:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    key = (name, digest.hexdigest())
    if key not in _MEMO:
        _MEMO[key] = reference(case)
    return _MEMO[key]


# ----------------------------------------------------------------------------------------------
# Building blocks


def _rng():
    return np.random.default_rng(SEED)


def _perturb(model, scale=0.3):
    """Adds noise to every trainable variable (non-zero biases, γ ≠ 1, LoRA B ≠ 0)."""
    rng = _rng()
    for v in model.trainable_variables:
        v.assign(v + rng.normal(scale=scale, size=v.shape).astype(v.dtype))


def _inputs_like(inputs, vocab=VOCAB):
    """M random examples matching a `keras.Input` (integer ids below `vocab`, else normal)."""
    shape = (M, *inputs.shape[1:])
    if "int" in str(inputs.dtype):
        return _rng().integers(0, vocab, shape).astype(np.int32)
    return _rng().normal(size=shape)


def _scce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _classifier(model_cls, inputs, hidden, after_build=None) -> Case:
    """A `Dense(CLASSES)` head on `hidden`, random inputs and labels, SCCE on logits.

    after_build: optional `fn(model)` run before the weights are perturbed.
    """
    model = model_cls(inputs, L.Dense(CLASSES)(hidden))
    if after_build is not None:
        after_build(model)
    _perturb(model)
    y = np.random.default_rng(SEED + 1).integers(0, CLASSES, M)
    return Case(model, _inputs_like(inputs), y, _scce())


# ----------------------------------------------------------------------------------------------
# 1-2: MLP, CNN with pooling


@architecture("mlp", trainer=True)
def mlp(model_cls):
    inputs = keras.Input((6,))
    return _classifier(model_cls, inputs, L.Dense(8, activation="relu")(inputs))


@architecture("cnn_pool", trainer=True)
def cnn_pool(model_cls):
    inputs = keras.Input((12, 12, 1))
    h = L.MaxPooling2D()(L.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    h = L.MaxPooling2D()(L.Conv2D(6, 3, padding="same", activation="relu")(h))
    return _classifier(model_cls, inputs, L.Dense(8, activation="relu")(L.Flatten()(h)))


# ----------------------------------------------------------------------------------------------
# 3: ResNet block with BatchNormalization (inference mode)


def _randomise_moving_statistics(model):
    """Non-trivial BatchNorm moving mean / variance, so inference mode ≠ batch statistics."""
    rng = _rng()
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            size = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(size=size))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=size))


@architecture("resnet_block_bn", trainer=True)
def resnet_block_bn(model_cls):
    inputs = keras.Input((6, 6, 4))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(inputs)))
    h = L.BatchNormalization()(L.Conv2D(4, 3, padding="same")(h))
    h = L.GlobalAveragePooling2D()(L.ReLU()(L.Add()([inputs, h])))
    return _classifier(model_cls, inputs, h, after_build=_randomise_moving_statistics)


@architecture("resnet_block_frozen_bn", trainer=True)
def resnet_block_frozen_bn(model_cls):
    """Fine-tuning: BatchNorm frozen (`trainable=False`, so inference mode in both modes); the
    trainer metric then comes from the update's own pass (cgh_tf/training.py)."""
    case = resnet_block_bn(model_cls)
    for layer in case.model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.trainable = False
    return case


# ----------------------------------------------------------------------------------------------
# 4-8: more convolutions and normalisations


@architecture("conv1d_text")
def conv1d_text(model_cls):
    inputs = keras.Input((10,), dtype="int32")
    h = L.Conv1D(5, 3, activation="relu")(L.Embedding(VOCAB, 6)(inputs))
    return _classifier(model_cls, inputs, L.GlobalMaxPooling1D()(h))


@architecture("conv3d")
def conv3d(model_cls):
    inputs = keras.Input((4, 4, 4, 2))
    return _classifier(model_cls, inputs, L.Flatten()(L.Conv3D(3, 2, activation="relu")(inputs)))


@architecture("depthwise_separable_2d")
def depthwise_separable_2d(model_cls):
    inputs = keras.Input((7, 7, 3))
    h = L.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(inputs)
    h = L.SeparableConv2D(4, 3, depth_multiplier=2, activation="relu")(h)
    return _classifier(model_cls, inputs, L.Flatten()(h))


@architecture("depthwise_separable_1d")
def depthwise_separable_1d(model_cls):
    inputs = keras.Input((10, 3))
    h = L.DepthwiseConv1D(3, depth_multiplier=2, activation="relu")(inputs)
    h = L.SeparableConv1D(4, 3, depth_multiplier=2, activation="relu")(h)
    return _classifier(model_cls, inputs, L.Flatten()(h))


@architecture("grouped_conv2d")
def grouped_conv2d(model_cls):
    inputs = keras.Input((6, 6, 4))
    return _classifier(model_cls, inputs, L.Flatten()(L.Conv2D(6, 3, groups=2, activation="relu")(inputs)))


@architecture("groupnorm_cnn")
def groupnorm_cnn(model_cls):
    inputs = keras.Input((6, 6, 2))
    h = L.ReLU()(L.GroupNormalization(groups=2)(L.Conv2D(4, 3, padding="same")(inputs)))
    return _classifier(model_cls, inputs, L.Flatten()(h))


@architecture("conv2d_transpose")
def conv2d_transpose(model_cls):
    inputs = keras.Input((4, 4, 2))
    h = L.Conv2DTranspose(3, 3, strides=2, activation="relu")(inputs)
    return _classifier(model_cls, inputs, L.Flatten()(h))


# ----------------------------------------------------------------------------------------------
# 9: recurrent classifiers


@architecture("gru_classifier")
def gru_classifier(model_cls):
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    return _classifier(model_cls, inputs, L.GRU(5)(L.Embedding(VOCAB, 4)(inputs)))


@architecture("lstm_classifier")
def lstm_classifier(model_cls):
    inputs = keras.Input((SEQUENCE, 3))
    return _classifier(model_cls, inputs, L.LSTM(5, unroll=True)(inputs))


# ----------------------------------------------------------------------------------------------
# 10: Transformer encoder block


class LearnedPositions(L.Layer):
    """Adds a trainable [sequence, features] position table to its input."""

    def build(self, input_shape):
        self.table = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal")

    def call(self, inputs):
        return inputs + self.table


@architecture("transformer_block", trainer=True, isolated="attention")
def transformer_block(model_cls):
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    h = LearnedPositions()(L.Embedding(VOCAB, 8)(inputs))
    h = L.LayerNormalization()(L.Add()([h, L.MultiHeadAttention(num_heads=2, key_dim=4)(h, h)]))
    ffn = L.Dense(8)(L.Dense(16, activation="relu")(h))
    h = L.LayerNormalization()(L.Add()([h, ffn]))
    return _classifier(model_cls, inputs, L.GlobalAveragePooling1D()(h))


# ----------------------------------------------------------------------------------------------
# 11: causal language model with tied input / output embeddings


class TiedLogitsFromLayer(L.Layer):
    """logits = h @ embedding.embeddingsᵀ, holding the Embedding layer."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, h):
        return ops.matmul(h, ops.transpose(self.embedding.embeddings))


class TiedLogitsFromVariable(L.Layer):
    """logits = h @ tableᵀ, holding the embedding variable itself."""

    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.table = table

    def call(self, h):
        return ops.matmul(h, ops.transpose(self.table))


def _tied_logits_lambda(embedding):
    return L.Lambda(lambda h: ops.matmul(h, ops.transpose(embedding.embeddings)))


def _tied_lm(model_cls, head) -> Case:
    """Embedding → causal Conv1D → Dense → head(embedding)(h) logits [m, T, VOCAB]; per-token SCCE
    on next-token targets [m, T]."""
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    embedding = L.Embedding(VOCAB, 6)
    h = L.Conv1D(6, 3, padding="causal", activation="tanh")(embedding(inputs))
    h = L.Dense(6, activation="tanh")(h)
    model = model_cls(inputs, head(embedding)(h))
    _perturb(model)
    x = _inputs_like(inputs)
    y = np.concatenate([x[:, 1:], np.random.default_rng(SEED + 1).integers(0, VOCAB, (M, 1))], axis=1)
    return Case(model, x, y.astype(np.int32), _scce())


@architecture("tied_lm_layer", trainer=True)
def tied_lm_layer(model_cls):
    return _tied_lm(model_cls, TiedLogitsFromLayer)


@architecture("tied_lm_variable")
def tied_lm_variable(model_cls):
    return _tied_lm(model_cls, lambda embedding: TiedLogitsFromVariable(embedding.embeddings))


@architecture("tied_lm_lambda")
def tied_lm_lambda(model_cls):
    return _tied_lm(model_cls, _tied_logits_lambda)


# ----------------------------------------------------------------------------------------------
# 12-13: shared layers and shared kernels


@architecture("dense_shared_two_inputs")
def dense_shared_two_inputs(model_cls):
    inputs = keras.Input((6,))
    shared = L.Dense(6, activation="tanh")
    h = L.Concatenate()([shared(inputs), shared(L.Dense(6)(inputs))])
    return _classifier(model_cls, inputs, h)


@architecture("dense_shared_sequential", trainer=True)
def dense_shared_sequential(model_cls):
    inputs = keras.Input((6,))
    shared = L.Dense(6, activation="tanh")
    return _classifier(model_cls, inputs, shared(shared(inputs)))


class KernelTransposeProjection(L.Layer):
    """h @ dense.kernelᵀ: reads another Dense layer's kernel (weights tied across layers)."""

    def __init__(self, dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, h):
        return ops.tanh(ops.matmul(h, ops.transpose(self.dense.kernel)))


@architecture("kernel_reused_by_other_layer")
def kernel_reused_by_other_layer(model_cls):
    inputs = keras.Input((5,))
    encoder = L.Dense(7, activation="tanh")
    return _classifier(model_cls, inputs, KernelTransposeProjection(encoder)(encoder(inputs)))


# ----------------------------------------------------------------------------------------------
# 14-16: nesting, subclassing, LoRA


@architecture("nested_sequential")
def nested_sequential(model_cls):
    inputs = keras.Input((6,))
    inner = keras.Sequential([L.Dense(8, activation="relu"), L.Dense(5, activation="tanh")], name="inner")
    return _classifier(model_cls, inputs, inner(inputs))


class SquaredInputDense(L.Dense):
    """A Dense layer whose `call` squares its input first (an overridden `call`)."""

    def call(self, inputs):
        return super().call(ops.square(inputs))


class ScaledTanh(L.Layer):
    """A fully custom layer with its own weights: tanh(x @ w) * scale."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.scale = self.add_weight(shape=(self.units,), initializer="ones")

    def call(self, inputs):
        return ops.tanh(ops.matmul(inputs, self.w)) * self.scale


@architecture("dense_subclass_call")
def dense_subclass_call(model_cls):
    inputs = keras.Input((5,))
    return _classifier(model_cls, inputs, SquaredInputDense(6, activation="tanh")(inputs))


@architecture("custom_layer_own_weights")
def custom_layer_own_weights(model_cls):
    inputs = keras.Input((5,))
    return _classifier(model_cls, inputs, ScaledTanh(6)(inputs))


def _enable_lora(model):
    for layer in model.layers:
        if isinstance(layer, L.Dense):
            layer.enable_lora(rank=2)


@architecture("lora_dense")
def lora_dense(model_cls):
    inputs = keras.Input((6,))
    return _classifier(model_cls, inputs, L.Dense(8, activation="relu")(inputs), after_build=_enable_lora)


# ----------------------------------------------------------------------------------------------
# 17: EinsumDense alone (MSE: the per-example loss averages over all output axes)

EINSUM_EQUATIONS = {  # name: (equation, input shape, output shape, bias_axes)
    "einsum_ab_bc": ("ab,bc->ac", (5,), (4,), "c"),
    "einsum_abc_cd": ("abc,cd->abd", (3, 5), (3, 4), "d"),
    "einsum_abc_cde": ("abc,cde->abde", (3, 5), (3, 2, 4), "de"),
    "einsum_abcd_cde": ("abcd,cde->abe", (3, 4, 5), (3, 6), "e"),
}


def _einsum_dense(equation, input_shape, output_shape, bias_axes):
    def builder(model_cls):
        inputs = keras.Input(input_shape)
        layer = L.EinsumDense(equation, output_shape, activation="tanh", bias_axes=bias_axes)
        model = model_cls(inputs, layer(inputs))
        _perturb(model)
        y = np.random.default_rng(SEED + 1).normal(size=(M, *output_shape))
        return Case(model, _inputs_like(inputs), y, keras.losses.MeanSquaredError())

    return builder


for _name, _spec in EINSUM_EQUATIONS.items():
    architecture(_name, isolated="einsum")(_einsum_dense(*_spec))


# ----------------------------------------------------------------------------------------------
# 20: an unbuilt Sequential (no keras.Input): built by its first call, not perturbed


@architecture("unbuilt_sequential")
def unbuilt_sequential(model_cls):
    model = keras.Sequential([L.Dense(8, activation="relu", bias_initializer="random_normal"),
                              L.Dense(CLASSES)])
    x = _rng().normal(size=(M, 6))
    return Case(model, x, np.random.default_rng(SEED + 1).integers(0, CLASSES, M), _scce())


# ----------------------------------------------------------------------------------------------
# 21 (issue 21, part B): sequence wrappers, bidirectional RNNs, ConvNeXt with a custom weight
# layer, grouped-query attention


@architecture("time_distributed_conv", trainer=True)
def time_distributed_conv(model_cls):
    """TimeDistributed(Conv2D) over 3 frames of 5×5×2, Flatten, head (mode-independent: the
    trainer's metric shares the update's pass)."""
    inputs = keras.Input((3, 5, 5, 2))
    h = L.TimeDistributed(L.Conv2D(2, 3, activation="tanh"))(inputs)
    return _classifier(model_cls, inputs, L.Flatten()(h))


@architecture("bidirectional_lstm_gru", trainer=True)
def bidirectional_lstm_gru(model_cls):
    """Bidirectional(LSTM, sequences) -> Bidirectional(GRU) on float sequences (Keras' loops)."""
    inputs = keras.Input((SEQUENCE, 3))
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(inputs)
    return _classifier(model_cls, inputs, L.Bidirectional(L.GRU(2))(h))


class LayerScale(L.Layer):
    """ConvNeXt's per-channel scale γ ⊙ x, a custom layer owning its weight."""

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, inputs):
        return inputs * self.gamma


@architecture("convnext_layerscale", trainer=True)
def convnext_layerscale(model_cls):
    """A ConvNeXt block: depthwise 3×3, LayerNorm, Dense 4× (gelu), Dense, LayerScale, residual."""
    inputs = keras.Input((5, 5, 4))
    h = L.LayerNormalization(epsilon=1e-6)(L.DepthwiseConv2D(3, padding="same")(inputs))
    h = L.Dense(4)(L.Dense(16, activation="gelu")(h))
    h = L.Add()([inputs, LayerScale()(h)])
    return _classifier(model_cls, inputs, L.GlobalAveragePooling2D()(h))


@architecture("grouped_query_attention", trainer=True, isolated="attention")
def grouped_query_attention(model_cls):
    """Causal GroupQueryAttention (4 query / 2 key-value heads) over embeddings, pooled."""
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    e = L.Embedding(VOCAB, 8)(inputs)
    a = L.GroupQueryAttention(2, num_query_heads=4, num_key_value_heads=2)(
        e, e, use_causal_mask=True)
    h = L.LayerNormalization()(L.Add()([e, a]))
    return _classifier(model_cls, inputs, L.GlobalAveragePooling1D()(h))


# ----------------------------------------------------------------------------------------------
# 22 (issue 21, part A): Keras' loss semantics — masks, per-token and class weights, several outputs


def _padded_tokens():
    """M sequences of ids in [1, VOCAB) padded with 0 to SEQUENCE (lengths 1..SEQUENCE), and
    next-token-like targets [M, SEQUENCE]; returns (x, y, token mask)."""
    rng = _rng()
    x = rng.integers(1, VOCAB, (M, SEQUENCE)).astype(np.int32)
    lengths = rng.integers(1, SEQUENCE + 1, M)
    lengths[0] = SEQUENCE
    x[np.arange(SEQUENCE)[None, :] >= lengths[:, None]] = 0
    y = np.random.default_rng(SEED + 1).integers(0, VOCAB, (M, SEQUENCE)).astype(np.int32)
    return x, y, x > 0


def _masked_lm(model_cls, body, sample_weight=None) -> Case:
    """Embedding(mask_zero=True) → body → Dense(VOCAB) logits per token; the padding mask rides on
    the logits, so Keras' per-token SCCE divides by the number of real tokens."""
    inputs = keras.Input((SEQUENCE,), dtype="int32")
    logits = L.Dense(VOCAB)(body(L.Embedding(VOCAB, 6, mask_zero=True)(inputs)))
    model = model_cls(inputs, logits)
    _perturb(model)
    x, y, mask = _padded_tokens()
    divisor = float(mask.sum())
    return Case(model, x, y, _scce(), sample_weight=sample_weight, divisors={None: divisor})


@architecture("masked_lm_padding", trainer=True, update=True)
def masked_lm_padding(model_cls):
    return _masked_lm(model_cls, lambda h: L.Dense(6, activation="tanh")(h))


@architecture("masked_lm_causal", trainer=True, isolated="attention", update=True)
def masked_lm_causal(model_cls):
    """Causal self-attention that also honours the padding mask (query and key masks). No
    residual Add: Keras 3.15 drops the mask at an Add of the Embedding output, and the loss would
    then be unmasked (which the decomposition follows, but this case is about the mask)."""
    def body(h):
        attended = L.MultiHeadAttention(num_heads=2, key_dim=3)(h, h, use_causal_mask=True)
        return L.LayerNormalization()(attended)
    return _masked_lm(model_cls, body)


@architecture("masked_lm_token_weights", trainer=True, update=True)
def masked_lm_token_weights(model_cls):
    """Per-token sample weights [M, SEQUENCE] on the padded LM (weights on padding are ignored)."""
    weights = np.random.default_rng(SEED + 2).uniform(0.25, 2.0, (M, SEQUENCE))
    return _masked_lm(model_cls, lambda h: L.Dense(6, activation="tanh")(h), weights)


@architecture("two_outputs_dict", trainer=True, update=True)
def two_outputs_dict(model_cls):
    """A trunk with a dict of two heads: classes (SCCE) and a 2-d regression (MSE), with
    loss_weights."""
    inputs = keras.Input((6,))
    trunk = L.Dense(8, activation="tanh")(inputs)
    outputs = {"cls": L.Dense(CLASSES, name="cls")(trunk), "reg": L.Dense(2, name="reg")(trunk)}
    model = model_cls(inputs, outputs)
    _perturb(model)
    rng = np.random.default_rng(SEED + 1)
    y = {"cls": rng.integers(0, CLASSES, M), "reg": rng.normal(size=(M, 2))}
    return Case(model, _inputs_like(inputs), y,
                {"cls": _scce(), "reg": keras.losses.MeanSquaredError()},
                loss_weights={"cls": 0.7, "reg": 2.5}, divisors={"cls": M, "reg": M})


@architecture("class_weights", trainer=True, update=True)
def class_weights(model_cls):
    """An MLP classifier trained with class_weight (Keras turns it into per-example weights)."""
    inputs = keras.Input((6,))
    case = _classifier(model_cls, inputs, L.Dense(8, activation="tanh")(inputs))
    return dataclasses.replace(case, class_weight={0: 0.5, 1: 2.0, 2: 1.25}, divisors={None: M})
