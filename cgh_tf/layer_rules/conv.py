"""Convolutions: z = conv(a, W) + c, then the activation (Keras' own conv layers, rank 1-3).

Per example i, with im2col patches P_i [L, K·C] (L output positions, K kernel offsets, C input
channels; row l holds the input values that the K offsets multiply at output position l) and the
output gradient b_i [L, O] (b = ∂ℓ/∂z, from the engine's single backward pass):

    ∇W ℓ_i = G_i = P_iᵀ b_i  (reshaped to the kernel),   ∇c ℓ_i = Σ_l b_i[l].

A grouped conv (G groups) is block diagonal: G_i[g] = P_i[g]ᵀ b_i[g], ‖G_i‖² = Σ_g ‖G_i[g]‖².
‖G_i‖² takes the cheaper exact form, chosen per call at trace time from static shapes (per
example and group; Kg = K·C/G, Og = O/G):

| form | multiply-adds | memory | Σ_i g_i from |
|---|---|---|---|
| materialised G_i (all examples at once) | L·Kg·Og·G | m·K·C·O/G (+ patches) | the rule: Σ_i G_i, so the tape skips the filter gradient (`ctx.weight(kernel, tape_sum=False)`) |
| Gram: Σ_g Σ_{p,q} (P_p·P_q)(b_p·b_q) | L²·G·(Kg+Og) | m·G·L² | tape |

Materialising costs about one filter gradient, which the tape then skips, so the extra cost is
mostly building the patches. An unknown L (a sequence model traced with length None) takes the
materialised form. How G_i is materialised (all exact):

| path | when | how |
|---|---|---|
| per-example filter gradient | G = 1, rank ≤ 2, no dilation, not native, ≥ 2^22 multiply-adds per example | TF's own filter gradient on one example at a time (`tf.map_fn`, 16 in flight), x cut to the read extent so the conv is 'VALID'; inside a whole-step XLA compile one XLA convolution with the examples as feature groups instead |
| native | depthwise (one input channel per group, G > 1), or G = 1 with O < K; rank ≤ 2, no dilation, equal strides | TF's depthwise filter gradient on [1, *S, m·C] (the examples folded into the channels: a depthwise conv never mixes channels), b tiled over the C input channels when G = 1 |
| transpose_b | G = 1 and static spatial sizes (unless the whole step is XLA-compiled); without them, when x is clearly larger than b (e.g. Conv*Transpose, whose x is ∂ℓ/∂z) | P [m, L, K·C] (channels last: one gather with indices computed at trace time, or slices), then bᵀ P |
| channels_first | grouped; G = 1 inside a whole-step XLA compile (`jit_compile=True`: XLA's CPU gather is slow), or with unknown spatial sizes unless transpose_b | P [m, G, Kg, L] from one transpose of the input and slices, then P b |

Patches never use strided slices (slow in TF): each spatial axis is split into [n/s, s] (phase),
so that every kernel offset is a unit-stride slice (or, with static spatial sizes, one gather).
The batched matmuls and reductions are TF's own kernels (oneDNN on x86); `XLA = True` compiles
them as one XLA cluster instead, slower on TF 2.21 (measured: see `XLA`). The gather + transpose_b
path is the fastest for every ungrouped conv tried (benchmarks/conv_rules.py, 2-core x86 CPU). Memory is bounded: examples are processed in chunks of at most
`CHUNK_ELEMENTS` materialised elements (Python loop for a static batch size, while loop
otherwise).

| layer | kernel | G | patches of | output gradient |
|---|---|---|---|---|
| Conv1D/2D/3D (`groups`, padding valid/same/causal, strides, dilation) | [*k, C/G, O] | groups | a | ∂ℓ/∂z |
| DepthwiseConv1D/2D (`depth_multiplier` M) | [*k, C, M] | C (Kg = K, Og = M) | a | ∂ℓ/∂z |
| SeparableConv1D/2D, depthwise kernel | [*k, C, M] | C | a | ∂ℓ/∂d, d the depthwise output (recorded) |
| SeparableConv1D/2D, pointwise kernel (1×1 conv of d) | [1.., C·M, O] | 1 | d | ∂ℓ/∂z |
| Conv1D/2D/3DTranspose, z = conv_transpose(a, W) | [*k, O, C] | 1 | ∂ℓ/∂z | a |

(Conv*Transpose: W's gradient is the filter gradient of the conv that maps z's grid to a's, so the
roles of input and output gradient swap; `output_padding` needs nothing more.)

Each rule's `call` runs the layer's own Keras op (`keras.ops.conv`, `depthwise_conv`,
`conv_transpose`; SeparableConv: `depthwise_conv` then a 1×1 `conv`, as `tf.nn.separable_conv2d`).
Geometry as TF: 'same' pads (L−1)·s + (k−1)·d + 1 − n in total, the smaller half before; 'causal'
(Conv1D) pads (k−1)·d before, as Keras does (computed here, not with Keras' private helper).
channels_first tensors are transposed to channels_last for the statistics.
"""

import copy
import itertools
import math

import numpy as np

import keras
import tensorflow as tf

from cgh_tf import keras_internals
from cgh_tf.layer_rules import base

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)


def _is_one_of(layer, classes):
    return any(base.unmodified(layer, cls) for cls in classes) and base.plain(layer)


# ----------------------------------------------------------------------------------------------
# Shapes and the cost choice


def _dims(*dims):
    """A shape for tf.reshape from Python ints and scalar tensors."""
    if all(isinstance(d, int) for d in dims):
        return list(dims)
    return tf.stack([tf.cast(d, tf.int32) for d in dims])


def _spatial_sizes(t, rank):
    """The spatial sizes of a channels_last [m, *S, C] tensor: ints where static, else tensors."""
    static, dynamic = t.shape[1:rank + 1], None
    sizes = []
    for axis, size in enumerate(static):
        if size is None:
            dynamic = tf.shape(t) if dynamic is None else dynamic
            size = dynamic[axis + 1]
        sizes.append(size)
    return sizes


def _product(sizes):
    return math.prod(sizes) if all(isinstance(s, int) for s in sizes) else tf.reduce_prod(tf.stack(
        [tf.cast(s, tf.int32) for s in sizes]))


def _output_size(size, kernel, stride, dilation, padding):
    """Output length of a conv along one axis, or None if the input length is unknown."""
    if size is None:
        return None
    if padding == "same":
        return -(-size // stride)
    return max((size - (kernel - 1) * dilation - 1) // stride + 1, 0)


def _materialise(positions, fan_in, fan_out):
    """True if materialising G_i (L·fan_in·fan_out per group) is cheaper than the Gram form
    (L²·(fan_in + fan_out)), or L is unknown; positions: L per example (None = unknown)."""
    return positions is None or not base.prefer_gram(positions, fan_in, fan_out)


def _static_positions(sizes):
    return None if any(s is None for s in sizes) else math.prod(sizes)


def _channels_last(t, data_format):
    """[m, C, *S] -> [m, *S, C] for channels_first tensors; channels_last unchanged."""
    if data_format == "channels_last":
        return t
    rank = t.shape.rank
    return tf.transpose(t, [0, *range(2, rank), 1])


def _bias_shape(layer, channels):
    rank = layer.rank
    if layer.data_format == "channels_last":
        return (1,) * (rank + 1) + (channels,)
    return (1, channels) + (1,) * rank


# ----------------------------------------------------------------------------------------------
# Patches and the two forms


def _is_int(v):
    return isinstance(v, int)


def _minimum(a, b):
    return min(a, b) if _is_int(a) and _is_int(b) else tf.minimum(a, b)


def _maximum0(a):
    return max(a, 0) if _is_int(a) else tf.maximum(a, 0)


def _fit(x, out_sizes, kernel, strides, dilation, padding):
    """Pads ('same': TF's split, the smaller half before) and crops x [m, *S, C] so that each spatial
    axis has length n = blocks·s, exactly the extent the output positions read rounded up to a
    multiple of the stride s. Returns (x, blocks)."""
    rank = len(kernel)
    before, ends, after, blocks = [], [], [], []
    for n_in, n_out, k, s, d in zip(_spatial_sizes(x, rank), out_sizes, kernel, strides, dilation):
        needed = (n_out - 1) * s + (k - 1) * d + 1
        pad = _maximum0(needed - n_in) // 2 if padding == "same" else 0
        n = -(-needed // s) * s
        end = _minimum(n_in, n - pad)
        before.append(pad), ends.append(end), after.append(n - pad - end), blocks.append(n // s)
    if any(not _is_int(e) or e != n for e, n in zip(ends, x.shape[1:rank + 1])):
        x = x[(slice(None),) + tuple(slice(0, e) for e in ends)]
    if any(not _is_int(p) or p for p in before + after):
        x = tf.pad(x, [[0, 0]] + [[b, a] for b, a in zip(before, after)] + [[0, 0]])
    return x, blocks


def _offsets(kernel, strides, dilation):
    """Per kernel offset (row-major): its phase and start per axis. Offset o along an axis reads
    input o·d + l·s for output l: phase (o·d) mod s, block ⌊o·d/s⌋ + l."""
    return [(tuple((o * d) % s for o, s, d in zip(offset, strides, dilation)),
             tuple((o * d) // s for o, s, d in zip(offset, strides, dilation)))
            for offset in itertools.product(*[range(k) for k in kernel])]


def patches(x, out_sizes, kernel, strides, dilation, padding, groups=1):
    """im2col patches of a channels_last input, grouped and channels first: [m, G, K·Cg, L].

    x: [m, *S, C]; out_sizes: the L = Π out_sizes output positions (ints or scalar tensors);
    padding: "valid" or "same". Row k·Cg + c of group g holds the input value of channel g·Cg + c
    that kernel offset k (row-major over the kernel axes) multiplies at each output position, so
    that G_i = P_i b_i with b_i [G, L, Og].

    Strides without strided slices (slow in TF): each spatial axis (`_fit` to n = blocks·s) is split
    into [blocks, s] and moved behind the channels in one transpose, [m, G, Cg, Π s, *blocks]; each
    kernel offset is then one unit-stride slice (≤ 7 dimensions: TF's StridedSlice takes ≤ 8)."""
    rank = len(kernel)
    per_group = x.shape[-1] // groups
    x, blocks = _fit(x, out_sizes, kernel, strides, dilation, padding)
    m = tf.shape(x)[0]
    interleaved = [v for block, s in zip(blocks, strides) for v in (block, s)]
    x = tf.reshape(x, _dims(m, *interleaved, groups, per_group))
    xt = tf.transpose(x, [0, 2 * rank + 1, 2 * rank + 2, *range(2, 2 * rank + 1, 2),
                          *range(1, 2 * rank, 2)])  # [m, G, Cg, *s, *blocks]
    xt = tf.reshape(xt, _dims(m, groups, per_group, math.prod(strides), *blocks))
    pieces = []
    for phases, starts in _offsets(kernel, strides, dilation):
        phase = 0
        for p, s in zip(phases, strides):
            phase = phase * s + p
        pieces.append(xt[(slice(None),) * 3 + (phase,)
                         + tuple(slice(b, b + n) for b, n in zip(starts, out_sizes))])
    stacked = pieces[0][:, :, None] if len(pieces) == 1 else tf.stack(pieces, axis=2)  # [m,G,K,Cg,*L]
    return tf.reshape(stacked, _dims(m, groups, len(pieces) * per_group, _product(out_sizes)))


def patches_channels_last(x, out_sizes, kernel, strides, dilation, padding):
    """The same patches without moving x's channels (no transpose of x), ungrouped: [m, L, K·C].

    Each spatial axis (`_fit`) is reshaped to [blocks, s] in place; each kernel offset is one slice
    (≤ 8 dimensions for rank 3)."""
    rank = len(kernel)
    channels = x.shape[-1]
    m = tf.shape(x)[0]
    offsets = _offsets(kernel, strides, dilation)
    if len(offsets) == 1 and all(s == 1 for s in strides) and padding == "valid" and all(
            _is_int(n) and n == size for n, size in zip(out_sizes, x.shape[1:rank + 1])):
        return tf.reshape(x, _dims(m, _product(out_sizes), channels))  # a 1×1 conv: x itself
    if all(_is_int(n) for n in out_sizes) and None not in x.shape[1:rank + 1]:
        return _gathered_patches(x, out_sizes, kernel, strides, dilation, padding)
    x, blocks = _fit(x, out_sizes, kernel, strides, dilation, padding)
    interleaved = [v for block, s in zip(blocks, strides) for v in (block, s)]
    x = tf.reshape(x, _dims(m, *interleaved, channels))
    pieces = []
    for phases, starts in offsets:
        index = [slice(None)]
        for p, b, n in zip(phases, starts, out_sizes):
            index += [slice(b, b + n), p]
        pieces.append(x[tuple(index)])  # [m, *L, C]
    stacked = pieces[0] if len(pieces) == 1 else tf.stack(pieces, axis=rank + 1)  # [m, *L, K, C]
    return tf.reshape(stacked, _dims(m, _product(out_sizes), len(pieces) * channels))


def _gathered_patches(x, out_sizes, kernel, strides, dilation, padding):
    """`patches_channels_last` for static spatial sizes: one gather of the (padded) input's
    positions, [m, S, C] -> [m, L·K, C], with the indices computed here."""
    rank = len(kernel)
    sizes, paddings = [], [[0, 0]]
    for n_in, n_out, k, s, d in zip(x.shape[1:rank + 1], out_sizes, kernel, strides, dilation):
        needed = (n_out - 1) * s + (k - 1) * d + 1
        before = max(needed - n_in, 0) // 2 if padding == "same" else 0
        after = max(needed - before - n_in, 0)
        paddings.append([before, after])
        sizes.append(n_in + before + after)
    if any(p for pair in paddings for p in pair):
        x = tf.pad(x, paddings + [[0, 0]])
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(out_sizes, strides)], indexing="ij")
    offsets = np.meshgrid(*[np.arange(k) * d for k, d in zip(kernel, dilation)], indexing="ij")
    index = 0  # [L, K]: flat input position of output l, kernel offset k
    for axis in range(rank):
        position = grids[axis].reshape(-1, 1) + offsets[axis].reshape(1, -1)
        index = index * sizes[axis] + position
    m, channels = tf.shape(x)[0], x.shape[-1]
    flat = tf.reshape(x, _dims(m, math.prod(sizes), channels))
    gathered = tf.gather(flat, tf.constant(index.reshape(-1), tf.int32), axis=1)
    return tf.reshape(gathered, _dims(m, math.prod(out_sizes), math.prod(kernel) * channels))


def grouped_outputs(y, rank, groups):
    """[m, *S, O] -> [m, G, L, O/G]."""
    channels = y.shape[-1]
    m, positions = tf.shape(y)[0], _product(_spatial_sizes(y, rank))
    if groups == 1:
        return tf.reshape(y, _dims(m, 1, positions, channels))
    y = tf.reshape(y, _dims(m, positions, groups, channels // groups))
    return tf.transpose(y, [0, 2, 1, 3])


def kernel_from_groups(grad, kernel_shape, groups):
    """[G, K·Cg, Og] (a sum of G_i) -> the kernel: [K, Cg, G, Og] reshaped to `kernel_shape`
    (K = Π kernel_shape[:-2]; a depthwise kernel [*k, C, M] is [*k, 1, C·M] in this layout)."""
    offsets = math.prod(kernel_shape[:-2])
    grad = tf.reshape(grad, [groups, offsets, -1, grad.shape[-1]])
    return tf.reshape(tf.transpose(grad, [1, 2, 0, 3]), kernel_shape)


def _gram_tf(p, b):
    """Σ_g Σ_{p,q} (P_p·P_q)(b_p·b_q): p [m, G, Kg, L], b [m, G, L, Og] -> [m]."""
    return tf.reduce_sum(tf.matmul(p, p, transpose_a=True) * tf.matmul(b, b, transpose_b=True),
                         axis=[1, 2, 3])


_gram_xla = tf.function(_gram_tf, jit_compile=True, autograph=False)


def _gram(p, b):
    return _gram_xla(p, b) if _use_xla([p, b]) else _gram_tf(p, b)


# How an ungrouped conv's G_i = P_iᵀ b_i is laid out for the batched matmul (all exact):
#   "channels_first": P [m, K·C, L] (one transpose of the input) times b [m, L, O];
#   "transpose_b":    bᵀ [m, O, L] times P [m, L, K·C] (channels last, no transpose of the input);
#   "auto":           transpose_b with static spatial sizes (GATHERED_PATCHES), else channels_first unless the input
#                     is clearly larger than the output gradient; channels_first inside a step that
#                     XLA compiles as a whole (`jit_compile=True`), where XLA's CPU gather of the
#                     patches is slow (benchmarks/coherence_models.py, XLA on: CNN with pooling 1.11
#                     vs 1.22 a plain step, BN ResNet block in training mode 1.58 vs 2.03).
# Grouped convs take "channels_first"; depthwise ones (one input channel per group) TF's own
# depthwise filter gradient with the examples folded into the channels (NATIVE_DEPTHWISE).
LAYOUT = "auto"
NATIVE_DEPTHWISE = True
# TF's filter gradient per example (`per_example_filter_grads`) for an ungrouped conv whose G_i
# costs at least this many multiply-adds per example; below, its per-call overhead loses to the
# patches. Measured (benchmarks/coherence_models.py and keras_steps.py, batch 128, coherence step /
# plain step, each in its own process): CNN Conv2D(32)-Conv2D(64)-pool (10.6M for the second
# conv) 1.26–1.31 with patches, 1.11–1.12 with the threshold; CNN with pooling (0.2M and 2.2M)
# 1.11 with patches, 1.30–1.35 when every conv took the loop, 1.15–1.20 with the threshold;
# BN ResNet block (7.2M), training-mode pass: 1.40 → 1.05.
PER_EXAMPLE_FILTER = True
PER_EXAMPLE_FILTER_MIN_WORK = 1 << 22
# Inside a whole-step XLA compile the same G_i come from one XLA convolution with the examples as
# feature groups (`grouped_filter_grads`; XLA would compile the loop above, and TF's CPU kernels
# have no grouped conv, so outside XLA it is its own compiled cluster). Measured
# (benchmarks/coherence_models.py, XLA on, coherence step / plain step): BN ResNet block (7.2M
# per conv), training-mode pass 1.58 → 1.38–1.48, inference-mode pass 2.37 → 2.26–2.40; with
# the threshold at 2^17 the CNN with pooling would take it too and slow down (1.08 → 1.22).
# Alone, a 28×28×32 → 32 conv at batch 128: 74–97 ms, against 196 ms for the patches from
# slices and 943 ms for the per-example loop compiled by XLA (the batch's filter gradient: 34 ms).
# GROUPED_FILTER = "always" takes it outside XLA too (tests run every conv case through it).
GROUPED_FILTER = "xla"


class _Part:
    """One call's contribution to one kernel: patches source x, output gradient y, the geometry."""

    def __init__(self, x, y, kernel, strides, dilation, padding, groups, materialise):
        self.x, self.y = base.full_precision(x), base.full_precision(y)
        self.kernel, self.strides, self.dilation = kernel, strides, dilation
        self.padding, self.groups, self.materialise = padding, groups, materialise
        self.matmul_layout = self._matmul_layout()  # fixed here: chunks of examples keep them
        self.per_example_filter = self._per_example_filter()

    @property
    def native(self):
        """Whether G_i comes from TF's depthwise filter gradient with the examples folded into the
        channels (`native_depthwise`): "depthwise" for one input channel per group (several
        groups: with one input channel in all, the batched matmul is faster); "tiled" for an
        ungrouped conv with fewer output channels than kernel offsets, whose patches would be
        larger than b tiled over the input channels; else None. Needs rank ≤ 2, no dilation (TF's
        CPU kernel ignores `dilations`) and equal strides (TF's kernel needs them)."""
        if not NATIVE_DEPTHWISE or len(self.kernel) > 2 or max(self.dilation) > 1 or len(
                set(self.strides)) > 1:
            return None
        if self.x.shape[-1] == self.groups > 1:
            return "depthwise"
        if self.groups == 1 and self.y.shape[-1] < math.prod(self.kernel):
            return "tiled"
        return None

    def _per_example_filter(self):
        """How G_i comes from a filter gradient of each example on its own, for an ungrouped conv
        of rank ≤ 2 without dilation that is not native and does enough work: "map" (TF's own
        kernel per example, `per_example_filter_grads`), or "grouped" inside a step XLA compiles as
        a whole (`grouped_filter_grads`: XLA would compile the loop); None otherwise."""
        if not (PER_EXAMPLE_FILTER and self.groups == 1 and len(self.kernel) <= 2
                and max(self.dilation) == 1 and not self.native
                and self._multiply_adds_per_example() >= PER_EXAMPLE_FILTER_MIN_WORK):
            return None
        grouped = GROUPED_FILTER == "always" or keras_internals.in_xla_compilation()
        return "grouped" if grouped else "map"

    def _multiply_adds_per_example(self):
        """L·K·C·O/G of one example's G_i (0 when the spatial sizes are unknown)."""
        positions = _static_positions(self.y.shape[1:len(self.kernel) + 1])
        if positions is None:
            return 0
        return positions * math.prod(self.kernel) * self.x.shape[-1] * self.y.shape[-1] // self.groups

    def patches(self):
        return patches(self.x, _spatial_sizes(self.y, len(self.kernel)), self.kernel, self.strides,
                       self.dilation, self.padding, self.groups)

    def outputs(self):
        return grouped_outputs(self.y, len(self.kernel), self.groups)

    def _matmul_layout(self):
        if self.groups > 1 or LAYOUT != "auto":
            return "channels_first" if self.groups > 1 else LAYOUT
        if keras_internals.in_xla_compilation():  # XLA's gather of the patches is slow on CPU
            return "channels_first"
        if GATHERED_PATCHES and _static_but_examples([self.x, self.y]):  # fastest measured
            return "transpose_b"
        x_size, y_size = self.x.shape[1:].num_elements(), self.y.shape[1:].num_elements()
        if x_size is None or y_size is None:
            return "channels_first"
        # Without XLA, measured on CPU: channels_first unless transposing x costs clearly more than
        # b (the strided transpose of x about twice a plain one), e.g. Conv*Transpose's x = ∂ℓ/∂z.
        strided = max(self.strides) > 1
        return "channels_first" if x_size * (2 if strided else 1) <= 2 * y_size else "transpose_b"

    def layout(self):
        """Layout of the G_i from `operands`: "native", "gko" or "ok"."""
        if self.native:
            return "native"
        return "gko" if self.matmul_layout == "channels_first" or self.per_example_filter else "ok"

    def grad_shape(self, layout):
        """Shape of Σ_i G_i in `layout` (the kernel's elements, ordered by the layout)."""
        channels, out_channels = self.x.shape[-1], self.y.shape[-1]
        offsets = math.prod(self.kernel)
        if layout == "native":
            return [offsets, channels, out_channels if self.native == "tiled" else out_channels // channels]
        if layout == "ok":
            return [out_channels, offsets * channels]
        return [self.groups, offsets * channels // self.groups, out_channels // self.groups]

    def elements_per_example(self):
        """Elements materialised per example (an int, or a scalar tensor for unknown spatial sizes):
        the per-example gradient plus the patches (native path: the transposed x and b)."""
        rank = len(self.kernel)
        grad = math.prod(self.grad_shape(self.layout()))
        x_size = _product(_spatial_sizes(self.x, rank)) * self.x.shape[-1]
        y_size = _product(_spatial_sizes(self.y, rank)) * self.y.shape[-1]
        if self.native == "tiled":
            return grad + x_size + y_size * self.x.shape[-1]
        if self.native or self.per_example_filter:
            return grad + x_size + y_size
        positions = _product(_spatial_sizes(self.y, rank))
        return grad + positions * math.prod(self.kernel) * self.x.shape[-1]

    def gram_elements_per_example(self):
        """Elements the Gram form holds per example: two [G, L, L] Gram matrices and the patches."""
        rank = len(self.kernel)
        positions = _product(_spatial_sizes(self.y, rank))
        return positions * (2 * self.groups * positions + math.prod(self.kernel) * self.x.shape[-1])

    def examples(self, start, stop):
        """This part restricted to examples start:stop."""
        part = copy.copy(self)
        part.x, part.y = self.x[start:stop], self.y[start:stop]
        return part

    def operands(self):
        """(layout, a, b) with G_i of every example = `_gradients(layout, a, b)`: "gko" [m, G, Kg, Og]
        = P b, "ok" [m, O, K·C] (G = 1) = bᵀ P, or a itself (b None): "native" [K, m, C, M], "direct"
        [m, 1, K·C, O] (TF's filter gradient per example, already in the "gko" layout)."""
        if self.native:
            return "native", native_depthwise(self.x, self.y, self.kernel, self.strides, self.padding,
                                              tiled=self.native == "tiled"), None
        if self.per_example_filter:
            filter_grads = {"map": per_example_filter_grads,
                            "grouped": grouped_filter_grads}[self.per_example_filter]
            return "direct", filter_grads(self.x, self.y, self.kernel, self.strides,
                                          self.padding), None
        if self.matmul_layout == "channels_first":
            return "gko", self.patches(), self.outputs()
        rank = len(self.kernel)
        p = patches_channels_last(self.x, _spatial_sizes(self.y, rank), self.kernel, self.strides,
                                  self.dilation, self.padding)
        b = tf.reshape(self.y, _dims(tf.shape(self.y)[0], _product(_spatial_sizes(self.y, rank)),
                                     self.y.shape[-1]))
        return "ok", b, p


def _gradients(layout, a, b):
    if b is None:  # "native" / "direct": a holds the G_i
        return a
    return tf.matmul(a, b, transpose_a=layout == "ok")


def per_example_filter_grads(x, y, kernel, strides, padding):
    """Per-example kernel gradients [m, 1, K·C, O] (the "gko" layout, G = 1) from TF's own filter
    gradient, run on one example at a time (`tf.map_fn`, 16 in flight).

    x [m, *S, C], y [m, *L, O], rank 1 or 2, no dilation. x is first cut to exactly the extent the
    L output positions read (`_fit`, which also applies 'same' padding), so the conv is 'VALID'."""
    x, y, kernel, strides = _valid_2d(x, y, kernel, strides, padding)
    channels, out_channels = x.shape[-1], y.shape[-1]
    filter_sizes = [*kernel, channels, out_channels]

    def one_example(pair):
        return tf.raw_ops.Conv2DBackpropFilter(
            input=pair[0][None], filter_sizes=filter_sizes, out_backprop=pair[1][None],
            strides=[1, *strides, 1], padding="VALID")

    g = tf.map_fn(one_example, (x, y), fn_output_signature=x.dtype, parallel_iterations=16)
    return tf.reshape(g, _dims(tf.shape(x)[0], 1, math.prod(kernel) * channels, out_channels))


def grouped_filter_grads(x, y, kernel, strides, padding):
    """The G_i of `per_example_filter_grads` [m, 1, K·C, O] from one convolution, compiled by XLA.

    The filter gradient of example i is a VALID correlation of x_i with y_i (y dilated by the
    strides). With the channels C as the batch and the examples as m feature groups of one
    channel each: input [C, *S, m], filter y as [*L, 1, m·O], output [C, *K, m·O]. TF's CPU
    kernels have no grouped conv, so outside an XLA compile this runs as its own XLA cluster."""
    return _grouped_filter_grads(*_valid_2d(x, y, kernel, strides, padding))


def _valid_2d(x, y, kernel, strides, padding):
    """(x, y, kernel, strides) of a per-example filter gradient as a 'VALID' 2D conv: x cut to the
    extent the outputs read (`_fit`, which also applies 'same' padding), rank 1 lifted to 2."""
    rank = len(kernel)
    x, _ = _fit(x, _spatial_sizes(y, rank), kernel, strides, (1,) * rank, padding)
    if rank == 1:
        return x[:, None], y[:, None], (1, *kernel), (1, *strides)
    return x, y, tuple(kernel), tuple(strides)


@tf.function(jit_compile=True, autograph=False)
def _grouped_filter_grads(x, y, kernel, strides):
    """x [m, S1, S2, C] cut to at least the read extent, y [m, L1, L2, O] → [m, 1, K·C, O]."""
    m, channels, out_channels = tf.shape(x)[0], x.shape[-1], y.shape[-1]
    positions = tf.shape(y)[1:3]
    xt = tf.transpose(x, [3, 1, 2, 0])  # [C, S1, S2, m]
    f = tf.reshape(tf.transpose(y, [1, 2, 0, 3]), tf.concat([positions, [1, m * out_channels]], 0))
    g = tf.nn.conv2d(xt, f, strides=1, padding="VALID", dilations=list(strides))  # [C, ≥K1, ≥K2, m·O]
    g = tf.reshape(g[:, :kernel[0], :kernel[1]], [channels, kernel[0], kernel[1], m, out_channels])
    g = tf.transpose(g, [3, 1, 2, 0, 4])  # [m, K1, K2, C, O]
    return tf.reshape(g, [m, 1, kernel[0] * kernel[1] * channels, out_channels])


def native_depthwise(x, y, kernel, strides, padding, tiled=False):
    """Per-example kernel gradients [K, m, C, M] from one depthwise filter gradient.

    x [m, *S, C], y [m, *L, C·M] (rank 1 or 2, no dilation): a depthwise conv treats channels
    independently, so moving the examples into the channels ([1, *S, m·C]) makes its filter
    gradient [*k, m·C, M] the per-example gradients. tiled: an ungrouped conv, y [m, *L, O]; each
    input channel c sees all of b, so y is tiled to [m, *L, C·O] (M = O)."""
    if len(kernel) == 1:
        x, y = x[:, None], y[:, None]
        kernel, strides = (1, *kernel), strides * 2  # as Keras: the unit axis takes the stride too
    channels, out_channels = x.shape[-1], y.shape[-1]
    m = tf.shape(x)[0]
    xs, ys = tf.transpose(x, [1, 2, 0, 3]), tf.transpose(y, [1, 2, 0, 3])  # [*S, m, C], [*L, m, O]
    if tiled:
        ys = tf.broadcast_to(ys[:, :, :, None], _dims(_size(ys, 0), _size(ys, 1), m, channels, out_channels))
        out_channels *= channels
    xs = tf.reshape(xs, _dims(1, _size(xs, 0), _size(xs, 1), m * channels))
    ys = tf.reshape(ys, _dims(1, _size(ys, 0), _size(ys, 1), m * out_channels))
    multiplier = out_channels // channels
    g = tf.nn.depthwise_conv2d_backprop_filter(
        xs, _dims(*kernel, m * channels, multiplier), ys, strides=[1, *strides, 1],
        padding=padding.upper())
    return tf.reshape(g, _dims(math.prod(kernel), m, channels, multiplier))


def _size(t, axis):
    return t.shape[axis] if t.shape[axis] is not None else tf.shape(t)[axis]


def _materialised(parts, layout):
    """(per-example ‖Σ_calls G_i‖² [m], Σ_i G_i of the calls read with tape_sum=False) in `layout`."""
    operands = [part.operands() for part in parts]
    layouts = tuple(own for own, _, _ in operands)
    tensors = [t for _, a, b in operands for t in ((a,) if b is None else (a, b))]
    flags = tuple(part.materialise for part in parts)
    reduce = _reduce_xla if _use_xla(tensors) and layout != "native" else _reduce
    return reduce(layouts, flags, layout, tensors)


def _reduce(layouts, materialise, layout, tensors):
    """The products and reductions of `_materialised` (jit-compiled in `_reduce_xla`)."""
    tensors = list(tensors)
    examples = 1 if layout == "native" else 0
    per_example, grad_sum = None, None
    for own, flag in zip(layouts, materialise):
        g = _gradients(own, tensors.pop(0), None if own in ("native", "direct") else tensors.pop(0))
        if layout == "gko" and own == "ok":  # calls of different shapes chose different layouts
            g = tf.transpose(g, [0, 2, 1])[:, None]
        per_example = g if per_example is None else per_example + g
        if flag:
            s = tf.reduce_sum(g, axis=examples)
            grad_sum = s if grad_sum is None else grad_sum + s
    sq_norms = tf.reduce_sum(tf.square(per_example),
                             axis=[a for a in range(per_example.shape.rank) if a != examples])
    return sq_norms, grad_sum


# XLA = True runs the batched matmuls and reductions of the materialised and Gram forms, with
# static spatial sizes, as one XLA cluster (TF's depthwise filter gradient and the patches stay
# outside). It was the default until 2026-12-07, when TF 2.21's own kernels (oneDNN's BatchMatMul)
# measured faster on this 2-core x86 CPU: the whole engine pass with TF's kernels / with the XLA
# cluster, 20 paired rounds at batch 128 (benchmarks/RESULTS.md, 2026-12-07): the small
# CNN of the whole-set benchmark 0.84 wall, 0.82 CPU; benchmarks/conv_rules.py's cnn 0.80 / 0.79,
# mobile 0.84 / 0.91, text1d 0.94 / 0.95, conv1d, conv3d, transpose, grouped 0.94-1.02 wall,
# 0.93-1.00 CPU; the Gram form alone 0.48-0.91. An unknown batch size is fine under XLA (it
# compiles once per batch size met, and per chunk size); unknown spatial sizes are not (it would
# compile for every sequence length).
XLA = False
# Static spatial sizes take the transpose_b layout with its patches from one gather (with or
# without XLA: the fastest measured for every ungrouped conv of benchmarks/conv_rules.py); False
# leaves the choice to the sizes of x and b, as for unknown spatial sizes.
GATHERED_PATCHES = True
_reduce_xla = tf.function(_reduce, jit_compile=True, autograph=False)


def _static_but_examples(tensors):
    """Whether tensors [m, ...] have static shapes but for m."""
    return all(t.shape[1:].is_fully_defined() for t in tensors)


def _use_xla(tensors):
    """XLA (if on) for tensors whose shape is static but for m (a few batch sizes in practice)."""
    return XLA and _static_but_examples(tensors)


# Materialised per-example gradients (and patches) of at most about this many elements at once
# (32 MB in float32): larger batches are processed in chunks of examples (memory independent of m).
# Measured (benchmarks/memory.py, BN ResNet block, 28×28×32 convs at batch 128 on the patch path,
# patches 110 MB each): step extra 298–325 MB with 2^23, 359–361 MB with 2^26 (one chunk), same
# step time. (Those convs now take TF's filter gradient per example: 136 MB, a plain step 135.)
CHUNK_ELEMENTS = 1 << 23


def _gram_of_calls(parts):
    """(Gram-form ‖Σ_calls G_i‖² [m], None): the calls' positions concatenated."""
    p = tf.concat([part.patches() for part in parts], axis=3) if len(parts) > 1 else parts[0].patches()
    b = tf.concat([part.outputs() for part in parts], axis=2) if len(parts) > 1 else parts[0].outputs()
    return _gram(p, b), None


def kernel_statistic(parts, kernel_shape):
    """Statistic of a kernel from its calls' parts (all with the same kernel and groups).

    All calls chose the Gram form: Gram over the concatenated positions, Σ_i g_i from the tape.
    Otherwise every call's G_i is materialised and summed per example; the rule supplies Σ_i g_i of
    the calls that read the kernel with tape_sum=False (the others' sum comes from the tape).
    Examples are processed in chunks of ≤ CHUNK_ELEMENTS materialised elements (a Python loop
    for a static batch size, a while loop otherwise)."""
    if not any(part.materialise for part in parts):
        elements = sum(part.gram_elements_per_example() for part in parts)
        sq_norms, _ = _in_chunks(_gram_of_calls, parts, elements, None)
        return base.Statistic(sq_norms)
    layouts = {part.layout() for part in parts}
    layout = layouts.pop() if len(layouts) == 1 else "gko"  # "native" never mixes (same geometry)
    elements = sum(part.elements_per_example() for part in parts)
    sq_norms, grad_sum = _in_chunks(lambda chunk: _materialised(chunk, layout), parts, elements,
                                    parts[0].grad_shape(layout))
    if layout == "native":  # [K, C, M]: the kernel's layout ([*k, C, M]; [*k, 1, C·M] for groups = C)
        return base.Statistic(sq_norms, tf.reshape(grad_sum, kernel_shape))
    if layout == "ok":  # [O, K·C]
        return base.Statistic(sq_norms, tf.reshape(tf.transpose(grad_sum), kernel_shape))
    return base.Statistic(sq_norms, kernel_from_groups(grad_sum, kernel_shape, parts[0].groups))


def _in_chunks(compute, parts, elements, grad_shape):
    """compute(parts) -> ([m] squared norms, summed gradient or None), over chunks of examples of
    at most CHUNK_ELEMENTS / elements examples. grad_shape: the summed gradient's (None: none)."""
    m = parts[0].x.shape[0]
    if _is_int(elements) and m is not None:  # static: a Python loop (none for most layers)
        chunk = max(1, CHUNK_ELEMENTS // elements)
        if m <= chunk:
            return compute(parts)
        pieces = [compute([p.examples(i, i + chunk) for p in parts]) for i in range(0, m, chunk)]
        sq_norms = tf.concat([sq for sq, _ in pieces], axis=0)
        return sq_norms, None if grad_shape is None else tf.add_n([g for _, g in pieces])
    chunk = tf.maximum(tf.cast(CHUNK_ELEMENTS // elements, tf.int32), 1)
    m = tf.shape(parts[0].x)[0]
    count = (m + chunk - 1) // chunk
    dtype = parts[0].x.dtype
    norms = tf.TensorArray(dtype, size=count, infer_shape=False, element_shape=[None])

    def body(i, norms, total):
        start = i * chunk
        sq, g = compute([p.examples(start, start + chunk) for p in parts])
        return i + 1, norms.write(i, sq), total if g is None else total + g

    total = tf.zeros([] if grad_shape is None else grad_shape, dtype)
    _, norms, total = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(0), norms, total))
    return norms.concat(), None if grad_shape is None else total


def bias_statistic(grads, rank):
    """‖Σ_pos b‖² per example, over the calls' output gradients (channels_last)."""
    total = None
    for g in grads:
        s = tf.reduce_sum(base.full_precision(g), axis=list(range(1, rank + 1)))
        total = s if total is None else total + s
    return base.Statistic(base.sum_sq(total))


def _kernel_choice(layer, positions, fan_in, fan_out):
    """Static choice of the form for one call (see the module table)."""
    return _materialise(positions, fan_in, fan_out)


def _static_out_positions(layer, inputs, padding):
    """L of a conv call from the static input shape (None if unknown)."""
    shape = inputs.shape[1:layer.rank + 1] if layer.data_format == "channels_last" else inputs.shape[2:]
    return _static_positions([
        _output_size(n, k, s, d, padding)
        for n, k, s, d in zip(shape, layer.kernel_size, layer.strides, layer.dilation_rate)])


# ----------------------------------------------------------------------------------------------
# Rules


def _add_bias(layer, z, ctx, channels):
    """z + the layer's bias (if any), broadcast over the positions of its data format."""
    if not layer.use_bias:
        return z
    return keras.ops.add(z, keras.ops.reshape(ctx.weight(layer.bias), _bias_shape(layer, channels)))


def _kernel_and_bias_statistics(layer, calls, groups):
    """{id: Statistic} of a (grouped or depthwise) conv's kernel and bias from its recorded calls
    (inputs, padding and the materialise choice kept by `call`, b = output_grads[0])."""
    grads = [_channels_last(c.output_grads[0], layer.data_format) for c in calls]
    parts = [_Part(_channels_last(c["inputs"], layer.data_format), g, layer.kernel_size,
                   layer.strides, layer.dilation_rate, c["padding"], groups, c["materialise"])
             for c, g in zip(calls, grads)]
    out = {id(layer.kernel): kernel_statistic(parts, layer.kernel.shape)}
    if layer.use_bias:
        out[id(layer.bias)] = bias_statistic(grads, layer.rank)
    return out


class ConvRule(base.LayerRule):
    """Conv1D / Conv2D / Conv3D (any strides, dilation, padding, groups)."""

    name = "conv"

    @staticmethod
    def matches(layer):
        return _is_one_of(layer, _CONV)

    @staticmethod
    def call(layer, inputs, ctx):
        padding = layer.padding
        if padding == "causal":
            left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            pad = [[0, 0], [left, 0], [0, 0]] if layer.data_format == "channels_last" else [
                [0, 0], [0, 0], [left, 0]]
            inputs = keras.ops.pad(inputs, pad)
            padding = "valid"
        in_channels, out_channels = layer.kernel.shape[-2], layer.filters
        per_group_out = out_channels // layer.groups
        materialise = _kernel_choice(layer, _static_out_positions(layer, inputs, padding),
                                     math.prod(layer.kernel_size) * in_channels, per_group_out)
        z = keras.ops.conv(inputs, ctx.weight(layer.kernel, tape_sum=not materialise),
                           strides=list(layer.strides), padding=padding,
                           dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        z = _add_bias(layer, z, ctx, out_channels)
        ctx.keep(inputs=inputs, padding=padding, materialise=materialise)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        return _kernel_and_bias_statistics(layer, calls, layer.groups)


class DepthwiseConvRule(base.LayerRule):
    """DepthwiseConv1D / DepthwiseConv2D (any depth_multiplier, strides, dilation, padding)."""

    name = "depthwise_conv"

    @staticmethod
    def matches(layer):
        return _is_one_of(layer, _DEPTHWISE)

    @staticmethod
    def call(layer, inputs, ctx):
        channels, multiplier = layer.kernel.shape[-2], layer.kernel.shape[-1]
        materialise = _kernel_choice(layer, _static_out_positions(layer, inputs, layer.padding),
                                     math.prod(layer.kernel_size), multiplier)
        z = keras.ops.depthwise_conv(inputs, ctx.weight(layer.kernel, tape_sum=not materialise),
                                     strides=layer.strides, padding=layer.padding,
                                     dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        z = _add_bias(layer, z, ctx, channels * multiplier)
        ctx.keep(inputs=inputs, padding=layer.padding, materialise=materialise)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        return _kernel_and_bias_statistics(layer, calls, groups=layer.kernel.shape[-2])


class SeparableConvRule(base.LayerRule):
    """SeparableConv1D / SeparableConv2D: d = depthwise_conv(a, D), z = conv1x1(d, P) + c."""

    name = "separable_conv"

    @staticmethod
    def matches(layer):
        return _is_one_of(layer, _SEPARABLE)

    @staticmethod
    def call(layer, inputs, ctx):
        channels, multiplier = layer.depthwise_kernel.shape[-2], layer.depthwise_kernel.shape[-1]
        positions = _static_out_positions(layer, inputs, layer.padding)
        depthwise_materialise = _kernel_choice(layer, positions, math.prod(layer.kernel_size), multiplier)
        pointwise_materialise = _kernel_choice(layer, positions, channels * multiplier, layer.filters)
        d = keras.ops.depthwise_conv(
            inputs, ctx.weight(layer.depthwise_kernel, tape_sum=not depthwise_materialise),
            strides=layer.strides, padding=layer.padding, dilation_rate=layer.dilation_rate,
            data_format=layer.data_format)
        pointwise = ctx.weight(layer.pointwise_kernel, tape_sum=not pointwise_materialise)
        # The 1×1 conv of tf.nn.separable_conv2d, on channels_last (CPU has no NCHW conv).
        z = keras.ops.conv(_channels_last(ctx.output(d), layer.data_format), pointwise,
                           strides=1, padding="valid", data_format="channels_last")
        if layer.data_format == "channels_first":
            z = keras.ops.transpose(z, [0, layer.rank + 1, *range(1, layer.rank + 1)])
        z = _add_bias(layer, z, ctx, layer.filters)
        ctx.keep(inputs=inputs, depthwise_materialise=depthwise_materialise,
                 pointwise_materialise=pointwise_materialise)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        channels = layer.depthwise_kernel.shape[-2]
        d_grads = [_channels_last(c.output_grads[0], layer.data_format) for c in calls]
        z_grads = [_channels_last(c.output_grads[1], layer.data_format) for c in calls]
        depthwise = [_Part(_channels_last(c["inputs"], layer.data_format), g, layer.kernel_size,
                           layer.strides, layer.dilation_rate, layer.padding, channels,
                           c["depthwise_materialise"]) for c, g in zip(calls, d_grads)]
        ones = (1,) * layer.rank
        pointwise = [_Part(_channels_last(c.outputs[0], layer.data_format), g, ones, ones, ones,
                           "valid", 1, c["pointwise_materialise"]) for c, g in zip(calls, z_grads)]
        out = {id(layer.depthwise_kernel): kernel_statistic(depthwise, layer.depthwise_kernel.shape),
               id(layer.pointwise_kernel): kernel_statistic(pointwise, layer.pointwise_kernel.shape)}
        if layer.use_bias:
            out[id(layer.bias)] = bias_statistic(z_grads, layer.rank)
        return out


class ConvTransposeRule(base.LayerRule):
    """Conv1DTranspose / Conv2DTranspose / Conv3DTranspose (strides, padding, output_padding)."""

    name = "conv_transpose"

    @staticmethod
    def matches(layer):
        return _is_one_of(layer, _TRANSPOSE)

    @staticmethod
    def call(layer, inputs, ctx):
        in_channels = layer.kernel.shape[-1]
        shape = inputs.shape[1:layer.rank + 1] if layer.data_format == "channels_last" else inputs.shape[2:]
        materialise = _kernel_choice(layer, _static_positions(list(shape)),
                                     math.prod(layer.kernel_size) * layer.filters, in_channels)
        z = keras.ops.conv_transpose(
            inputs, ctx.weight(layer.kernel, tape_sum=not materialise), strides=list(layer.strides),
            padding=layer.padding, output_padding=layer.output_padding,
            dilation_rate=layer.dilation_rate, data_format=layer.data_format)
        z = _add_bias(layer, z, ctx, layer.filters)
        ctx.keep(inputs=inputs, materialise=materialise)
        return base.activation(layer, ctx.output(z))

    @staticmethod
    def statistics(layer, calls):
        grads = [_channels_last(c.output_grads[0], layer.data_format) for c in calls]
        # W's gradient is the filter gradient of the conv mapping z's grid to a's: patches of b.
        parts = [_Part(g, _channels_last(c["inputs"], layer.data_format), layer.kernel_size,
                       layer.strides, layer.dilation_rate, layer.padding, 1, c["materialise"])
                 for c, g in zip(calls, grads)]
        out = {id(layer.kernel): kernel_statistic(parts, layer.kernel.shape)}
        if layer.use_bias:
            out[id(layer.bias)] = bias_statistic(grads, layer.rank)
        return out
