"""The conv family's fast rules (`cgh_tf/layer_rules/conv.py`) against brute force, in float64.

Reference: one GradientTape per example (the per-example gradients by definition). Every case runs
through `per_example.gradients_and_sq_norms` and checks the per-example squared norms and Σ_i g_i of
every variable (relative error ≤ 1e-6), once per way the rules can compute a kernel's norms: the
Gram form, the materialised per-example gradients in both matmul layouts, and TF's depthwise filter
gradient with the examples folded into the channels ("native"); plus the automatic choice, its
matmuls and reductions with TF's kernels (the default) and as one XLA cluster (`conv.XLA`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import per_example
from cgh_tf.layer_rules import conv

L = keras.layers
RTOL = 1e-6


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


def loss_fn(y, y_pred):
    """A per-example loss that is not linear in the output (so b varies with the example)."""
    flat = tf.reshape(tf.sin(y_pred) * y + 0.5 * tf.square(y_pred), [tf.shape(y_pred)[0], -1])
    return tf.reduce_sum(flat, axis=1)


def build(layers, shape, twice=()):
    """A functional model applying `layers` in turn; layers at the indices in `twice` are applied
    a second time right after the first (a layer with two calls)."""
    inputs = keras.Input(shape)
    h = inputs
    for i, layer in enumerate(layers):
        h = layer(h)
        if i in twice:
            h = layer(h)
    return keras.Model(inputs, h)


def reference(model, x, y):
    """Brute force: ([m, V] squared norms, [Σ_i g_i per variable]) from one tape per example."""
    variables = model.trainable_variables
    norms, total = [], [np.zeros(v.shape) for v in variables]
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(loss_fn(y[i:i + 1], model(x[i:i + 1])))
        grads = [np.zeros(v.shape) if g is None else g.numpy()
                 for v, g in zip(variables, tape.gradient(loss, variables))]
        norms.append([np.sum(g * g) for g in grads])
        total = [t + g for t, g in zip(total, grads)]
    return np.array(norms), total


def assert_matches(result, expected):
    norms, total = expected
    np.testing.assert_allclose(result.sq_norms.numpy(), norms, rtol=RTOL, atol=1e-12 * norms.max())
    for got, want in zip(result.grad_sum, total):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got.numpy(), want, rtol=RTOL, atol=RTOL * scale)


def assert_fast(model):
    """Every layer with variables took a fast rule (none the exact fallback)."""
    plans = per_example.explain(model)
    assert all(p.rule != per_example.FALLBACK for p in plans), str(plans)


FORMS = {  # name -> (conv._kernel_choice override, LAYOUT, NATIVE_DEPTHWISE, XLA, PER_EXAMPLE_FILTER,
    #                 GROUPED_FILTER)
    "auto": (None, "auto", True, False, True, "xla"),
    "auto_xla": (None, "auto", True, True, True, "xla"),
    "gram": (False, "auto", True, False, True, "xla"),
    "channels_first": (True, "channels_first", False, False, False, "xla"),
    "transpose_b": (True, "transpose_b", False, False, False, "xla"),
    "native": (True, "auto", True, False, False, "xla"),
    "per_example_filter": (True, "auto", False, False, True, "xla"),
    "grouped_filter": (True, "auto", False, False, True, "always"),
}


@pytest.fixture
def form(request, monkeypatch):
    choice, layout, native, xla, per_example_filter, grouped_filter = FORMS[request.param]
    monkeypatch.setattr(conv, "GROUPED_FILTER", grouped_filter)
    if choice is not None:
        monkeypatch.setattr(conv, "_kernel_choice", lambda *args: choice)
    monkeypatch.setattr(conv, "LAYOUT", layout)
    monkeypatch.setattr(conv, "NATIVE_DEPTHWISE", native)
    monkeypatch.setattr(conv, "XLA", xla)
    monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER", per_example_filter)
    monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER_MIN_WORK", 0)  # (tiny layers here)
    return request.param


# (id, layer factory, input shape (without the example axis), indices of layers called twice)
CASES = [
    ("conv2d_valid_same", lambda: [L.Conv2D(3, 3, activation="tanh"), L.Conv2D(2, (2, 3), padding="same")],
     (7, 6, 2), ()),
    ("conv2d_stride2", lambda: [L.Conv2D(3, 3, strides=2, padding="same"), L.Conv2D(2, 2, strides=(2, 1))],
     (9, 8, 2), ()),
    ("conv2d_dilation2", lambda: [L.Conv2D(3, 3, dilation_rate=2), L.Conv2D(2, 2, dilation_rate=(1, 2), padding="same")],
     (9, 9, 2), ()),
    ("conv2d_groups2_no_bias", lambda: [L.Conv2D(4, 3, groups=2, use_bias=False, padding="same"),
                                        L.Conv2D(4, 2, groups=4, strides=2)], (7, 7, 4), ()),
    ("conv2d_one_output", lambda: [L.Conv2D(1, 3, padding="same"), L.Conv2D(2, 3, strides=2)], (7, 7, 3), ()),
    ("conv2d_called_twice", lambda: [L.Conv2D(3, 3, padding="same", activation="tanh")], (6, 5, 3), (0,)),
    ("conv1d_causal", lambda: [L.Conv1D(3, 3, padding="causal", dilation_rate=2),
                               L.Conv1D(2, 2, padding="causal", strides=2)], (10, 2), ()),
    ("conv1d_same_groups", lambda: [L.Conv1D(4, 3, strides=2, padding="same", groups=2), L.Conv1D(2, 3)],
     (11, 4), ()),
    ("conv3d", lambda: [L.Conv3D(3, 2, strides=(1, 2, 1), padding="same"), L.Conv3D(2, (2, 1, 2), dilation_rate=(2, 1, 1))],
     (5, 6, 4, 2), ()),
    ("conv3d_groups", lambda: [L.Conv3D(4, 2, groups=2, use_bias=False)], (3, 4, 3, 2), ()),
    ("depthwise2d", lambda: [L.DepthwiseConv2D(3, padding="same"), L.DepthwiseConv2D((2, 3), strides=2)],
     (8, 9, 3), ()),
    ("depthwise2d_multiplier_dilation", lambda: [L.DepthwiseConv2D(3, depth_multiplier=2, dilation_rate=2,
                                                                   use_bias=False)], (8, 7, 2), ()),
    ("depthwise2d_stride_and_dilation", lambda: [L.DepthwiseConv2D(3, strides=2, dilation_rate=2, padding="same")],
     (9, 9, 2), ()),
    ("depthwise1d", lambda: [L.DepthwiseConv1D(3, depth_multiplier=2, strides=2, padding="same"),
                             L.DepthwiseConv1D(2, dilation_rate=2)], (11, 2), ()),
    ("depthwise_called_twice", lambda: [L.DepthwiseConv2D(3, padding="same")], (6, 6, 2), (0,)),
    ("separable2d", lambda: [L.SeparableConv2D(3, 3, depth_multiplier=2, padding="same", activation="tanh"),
                             L.SeparableConv2D(2, 2, strides=2, use_bias=False)], (7, 8, 2), ()),
    ("separable2d_dilation", lambda: [L.SeparableConv2D(3, 3, dilation_rate=2)], (8, 8, 2), ()),
    ("separable1d", lambda: [L.SeparableConv1D(3, 3, strides=2, padding="same", depth_multiplier=2),
                             L.SeparableConv1D(2, 2, dilation_rate=2)], (12, 2), ()),
    ("separable_called_twice", lambda: [L.SeparableConv2D(2, 3, padding="same")], (5, 5, 2), (0,)),
    ("conv1d_transpose", lambda: [L.Conv1DTranspose(3, 3, strides=2), L.Conv1DTranspose(2, 2, padding="same")],
     (5, 2), ()),
    ("conv2d_transpose", lambda: [L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1),
                                  L.Conv2DTranspose(2, (2, 3), strides=(1, 2), use_bias=False)], (4, 3, 2), ()),
    ("conv3d_transpose", lambda: [L.Conv3DTranspose(2, 2, strides=2, padding="same")], (2, 3, 2, 2), ()),
]



def _version(module):
    """(major, minor) of an installed package's `__version__`."""
    return tuple(int(part) for part in module.__version__.split(".")[:2])

_REFERENCES = {}  # case id -> brute-force result (the same model and batch for every form)


@pytest.mark.parametrize("form", list(FORMS), indirect=True)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rules_match_brute_force(case, form):
    name, layers, shape, twice = case
    keras.utils.set_random_seed(0)
    try:
        built = layers()
    except ValueError as error:
        # Keras < 3.13 refuses strides together with dilation in DepthwiseConv2D when the layer is
        # built (TF's depthwise op has no such form): no user model of that Keras reaches a rule
        # with it. Pinned: that is the only refusal, and only there.
        assert name == "depthwise2d_stride_and_dilation" and _version(keras) < (3, 13), error
        return
    model = build(built, shape, twice)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, *shape))
    y = rng.normal(size=(3, *model.output_shape[1:]))
    if name not in _REFERENCES:
        _REFERENCES[name] = reference(model, x, y)
    assert_matches(per_example.gradients_and_sq_norms(model, x, y, loss_fn), _REFERENCES[name])
    assert_fast(model)


def test_rule_names():
    keras.utils.set_random_seed(0)
    model = build([L.Conv2D(2, 3), L.DepthwiseConv2D(2), L.SeparableConv2D(2, 2),
                   L.Conv2DTranspose(2, 2), L.Flatten(), L.Dense(2)], (7, 7, 2))
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 2))
    rules = [p.rule for p in per_example.explain(model, x, np.zeros((2, 2)), loss_fn)]
    assert rules == ["conv", "depthwise_conv", "separable_conv", "conv_transpose", "dense"]


def test_shared_layer_on_inputs_of_different_sizes(monkeypatch):
    """Two calls with different position counts may choose different matmul layouts."""
    keras.utils.set_random_seed(0)
    shared = L.Conv2D(10, 3)  # 10 outputs > 9 offsets: the matmul; x·C vs L·O picks the layout
    big, small = keras.Input((9, 9, 4)), keras.Input((3, 3, 4))
    out = L.Concatenate()([L.Flatten()(shared(big)), L.Flatten()(shared(small))])
    model = keras.Model([big, small], out)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(3, 9, 9, 4)), rng.normal(size=(3, 3, 3, 4))]
    y = rng.normal(size=(3, 7 * 7 * 10 + 1 * 1 * 10))
    parts = []
    original = conv.kernel_statistic
    monkeypatch.setattr(conv, "kernel_statistic", lambda p, shape: parts.append(p) or original(p, shape))
    monkeypatch.setattr(conv, "_kernel_choice", lambda *args: True)
    monkeypatch.setattr(conv, "GATHERED_PATCHES", False)  # (else static shapes take transpose_b)
    monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER", False)  # (else TF's filter gradient for both)
    result = per_example.gradients_and_sq_norms(model, x, y, loss_fn)

    def ref():
        norms, total = [], None
        for i in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(loss_fn(y[i:i + 1], model([x[0][i:i + 1], x[1][i:i + 1]])))
            grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
            norms.append([np.sum(g * g) for g in grads])
            total = grads if total is None else [t + g for t, g in zip(total, grads)]
        return np.array(norms), total

    assert_matches(result, ref())
    assert {p.layout() for p in parts[0]} == {"gko", "ok"}


def test_one_call_gram_other_materialised(monkeypatch):
    """A layer whose calls chose different forms: the rule materialises both and supplies Σ_i g_i
    only for the call whose kernel read skipped the tape."""
    keras.utils.set_random_seed(0)
    choices = iter([True, False])
    monkeypatch.setattr(conv, "_kernel_choice", lambda *args: next(choices))
    model = build([L.Conv2D(2, 3, padding="same")], (5, 5, 2), twice=(0,))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 5, 5, 2)), rng.normal(size=(3, 5, 5, 2))
    assert_matches(per_example.gradients_and_sq_norms(model, x, y, loss_fn), reference(model, x, y))


@pytest.mark.parametrize("chunk_elements, layout", [(None, "auto"), (200, "transpose_b")])
def test_unknown_batch_and_length_in_tf_function(monkeypatch, chunk_elements, layout):
    """input_signature with None batch (and None length for the 1D model): the materialised form
    runs in a while loop over chunks of examples (several chunks with a tiny budget), patches from
    slices with sizes known only at run time."""
    if chunk_elements is not None:
        monkeypatch.setattr(conv, "CHUNK_ELEMENTS", chunk_elements)
    monkeypatch.setattr(conv, "LAYOUT", layout)
    monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER", layout == "auto")
    monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER_MIN_WORK", 0)  # auto: TF's filter gradient per
    # example wherever it applies, also in the while loop and with a length known only at run time
    keras.utils.set_random_seed(0)
    image = build([L.Conv2D(3, 3, strides=2, padding="same"), L.DepthwiseConv2D(3, depth_multiplier=2),
                   L.SeparableConv2D(2, 2), L.Conv2DTranspose(2, 2, strides=2)], (9, 9, 2))
    sequence = build([L.Conv1D(3, 3, padding="causal", dilation_rate=2), L.DepthwiseConv1D(2, strides=2),
                      L.SeparableConv1D(2, 3, padding="same"), L.Conv1DTranspose(2, 3, strides=2)], (None, 2))
    rng = np.random.default_rng(0)
    for model, x, spec in [(image, rng.normal(size=(5, 9, 9, 2)), [None, 9, 9, 2]),
                           (sequence, rng.normal(size=(5, 10, 2)), [None, None, 2])]:
        y = rng.normal(size=model(x).shape)

        @tf.function(input_signature=[tf.TensorSpec(spec, tf.float64),
                                      tf.TensorSpec([None] + list(y.shape[1:]), tf.float64)])
        def run(xb, yb, model=model):
            result = per_example.gradients_and_sq_norms(model, xb, yb, loss_fn)
            return result.sq_norms, result.grad_sum

        norms, grad_sum = run(x, y)
        assert_matches(per_example.GradientSums(None, grad_sum, norms), reference(model, x, y))
        assert_fast(model)


def test_static_batch_in_chunks(monkeypatch):
    monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 300)
    keras.utils.set_random_seed(0)
    model = build([L.Conv2D(3, 3), L.DepthwiseConv2D(2), L.Conv2D(2, 2, groups=1)], (6, 6, 2))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 6, 6, 2)), rng.normal(size=(5, *model.output_shape[1:]))
    assert_matches(per_example.gradients_and_sq_norms(model, x, y, loss_fn), reference(model, x, y))


def test_channels_first_depthwise_and_separable():
    """channels_first (CPU supports it for the depthwise ops): statistics on transposed tensors."""
    keras.utils.set_random_seed(0)
    model = build([L.DepthwiseConv2D(3, depth_multiplier=2, data_format="channels_first", padding="same"),
                   L.SeparableConv2D(3, 2, data_format="channels_first")], (2, 6, 7))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 6, 7))
    y = rng.normal(size=(3, *model.output_shape[1:]))
    try:
        model(x)
    except tf.errors.UnimplementedError:
        # TF < 2.20's CPU kernels run no channels_first depthwise conv (the layer's own call
        # fails): the engine must give that error too, never a result or a crash.
        assert _version(tf) < (2, 20)
        with pytest.raises(tf.errors.UnimplementedError):
            per_example.gradients_and_sq_norms(model, x, y, loss_fn)
        return
    assert_matches(per_example.gradients_and_sq_norms(model, x, y, loss_fn), reference(model, x, y))
    assert_fast(model)


def test_overridden_call_and_lora_are_not_matched():
    class MyConv(L.Conv2D):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    layer = MyConv(2, 3)
    layer.build((None, 5, 5, 2))
    assert not conv.ConvRule.matches(layer)
    lora = L.Conv2D(2, 3)
    lora.build((None, 5, 5, 2))
    lora.enable_lora(1)
    assert not conv.ConvRule.matches(lora)
    assert conv.ConvRule.matches(L.Conv2D(2, 3))


def test_gram_form_in_chunks(monkeypatch):
    monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 300)
    monkeypatch.setattr(conv, "_kernel_choice", lambda *args: False)
    keras.utils.set_random_seed(0)
    model = build([L.Conv2D(3, 3), L.SeparableConv2D(2, 2)], (6, 6, 2))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 6, 6, 2)), rng.normal(size=(5, *model.output_shape[1:]))
    expected = reference(model, x, y)
    assert_matches(per_example.gradients_and_sq_norms(model, x, y, loss_fn), expected)

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 2], tf.float64),
                                  tf.TensorSpec([None, *model.output_shape[1:]], tf.float64)])
    def run(xb, yb):
        result = per_example.gradients_and_sq_norms(model, xb, yb, loss_fn)
        return result.sq_norms, result.grad_sum

    norms, grad_sum = run(x, y)
    assert_matches(per_example.GradientSums(None, grad_sum, norms), expected)


@pytest.mark.parametrize("min_work,paths_by_jit", [
    (0, {True: {("direct", "grouped")}, False: {("direct", "map")}}),
    (1 << 40, {True: {("gko", None)}, False: {("ok", None)}}),
])
def test_whole_step_under_xla_takes_its_own_paths_and_matches(monkeypatch, min_work, paths_by_jit):
    """Inside a `tf.function(jit_compile=True)` (a Keras step compiled with jit_compile=True) an
    ungrouped conv takes one grouped XLA convolution for its G_i when it does enough work, else the
    channels_first matmul (XLA's CPU gather of the patches is slow, and XLA would compile the
    per-example loop); outside, TF's filter gradient per example, else the gathered patches. All
    exact."""
    paths = []
    original = conv._Part.operands
    monkeypatch.setattr(conv._Part, "operands", lambda self: paths.append(
        (original(self)[0], self.per_example_filter)) or original(self))
    monkeypatch.setattr(conv, "_kernel_choice", lambda *args: True)  # materialised form
    monkeypatch.setattr(conv, "NATIVE_DEPTHWISE", False)  # (else O < K takes the depthwise path)
    monkeypatch.setattr(conv, "PER_EXAMPLE_FILTER_MIN_WORK", min_work)
    keras.utils.set_random_seed(0)
    model = build([L.Conv2D(3, 3, strides=2, padding="same", activation="tanh"), L.Conv2D(2, 2)],
                  (7, 7, 2))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 7, 7, 2)), rng.normal(size=(4, *model.output_shape[1:]))
    expected = reference(model, x, y)
    for jit, want in paths_by_jit.items():
        paths.clear()

        @tf.function(jit_compile=jit)
        def run(xb, yb):
            result = per_example.gradients_and_sq_norms(model, xb, yb, loss_fn)
            return result.sq_norms, result.grad_sum

        norms, grad_sum = run(x, y)
        assert paths and set(paths) == want, (jit, paths)
        assert_matches(per_example.GradientSums(None, grad_sum, norms), expected)
