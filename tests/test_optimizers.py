"""M3 / RM3 / RA3 against a float64 NumPy reference with hand-derived softmax-regression gradients.

Model: logits = x W + b, loss = mean sparse softmax cross-entropy, so for a batch (X, y) of size B
    dW = X^T (softmax(X W + b) - onehot(y)) / B,   db = sum_rows(softmax(X W + b) - onehot(y)) / B.
The reference applies the docs/design.md definitions (median of group means, running median / mean)
and Keras' SGD update (momentum m <- mu m - lr g, w <- w + m; decoupled weight decay
w <- w - lr wd w before the update).
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from cgh_tf import optimizers
from cgh_tf.optimizers import M3, RA3, RM3
from cgh_tf.aggregators import MedianOfMeans

DIM, CLASSES, BATCH, LR = 5, 3, 8, 0.5
# Keras casts Python-float hyper-parameters (momentum, weight_decay) through float32, so the tests
# use values exact in float32 (0.75, 0.125) and the float64 reference matches to rounding error.
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")


@pytest.fixture(autouse=True)
def float64():
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


# ----------------------------------------------------------------------------- reference
def softmax_regression_grads(params, x, y):
    w, b = params
    logits = x @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return [x.T @ p, p.sum(axis=0)]


class NumpySGD:
    """Keras SGD (nesterov=False) in float64 NumPy."""

    def __init__(self, lr, momentum=0.0, weight_decay=0.0):
        self.lr, self.momentum, self.weight_decay, self.velocity = lr, momentum, weight_decay, None

    def apply(self, params, grads):
        if self.velocity is None:
            self.velocity = [np.zeros_like(p) for p in params]
        params = [p - p * self.weight_decay * self.lr for p in params]
        if not self.momentum:
            return [p - self.lr * g for p, g in zip(params, grads)]
        self.velocity = [self.momentum * v - self.lr * g for v, g in zip(self.velocity, grads)]
        return [p + v for p, v in zip(params, self.velocity)]


def reference_trajectory(kind, size, params, batches, momentum=0.0, l2=0.0, weight_decay=0.0):
    """Weights after each call, for kind in {"m3", "rm3", "ra3"}."""
    inner = NumpySGD(LR, momentum, weight_decay)
    reduce = np.mean if kind == "ra3" else np.median
    history, trajectory = [], []
    for x, y in batches:
        grads = softmax_regression_grads(params, x, y)
        history.append([g + l2 * p for g, p in zip(grads, params)])
        if len(history) == size:
            robust = [reduce(np.stack(parts), axis=0) for parts in zip(*history)]
            params = inner.apply(params, robust)
            history = [] if kind == "m3" else history[1:]
        trajectory.append([p.copy() for p in params])
    return trajectory


# ----------------------------------------------------------------------------- Keras side
def make_data(num_batches, seed=0, batch=BATCH):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_batches * batch, DIM))
    y = rng.integers(0, CLASSES, size=num_batches * batch)
    return x, y


def split(x, y, batch=BATCH):
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def make_model(seed=0):
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(CLASSES)])
    rng = np.random.default_rng(100 + seed)
    model.set_weights([rng.normal(size=(DIM, CLASSES)) * 0.5, rng.normal(size=CLASSES) * 0.1])
    return model


class WeightRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.trajectory = []

    def on_train_batch_end(self, batch, logs=None):
        self.trajectory.append([np.array(w) for w in self.model.get_weights()])


def fit_trajectory(model, optimizer, x, y, jit_compile=False, batch=BATCH):
    model.compile(optimizer=optimizer, loss=LOSS, jit_compile=jit_compile)
    recorder = WeightRecorder()
    model.fit(x, y, batch_size=batch, shuffle=False, epochs=1, verbose=0, callbacks=[recorder])
    return recorder.trajectory


def assert_trajectories_close(got, want, rtol=1e-12, atol=1e-13):
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        for a, b in zip(g, w):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"step {step}")


def sgd(momentum=0.0, **kw):
    return keras.optimizers.SGD(LR, momentum=momentum, **kw)


# ----------------------------------------------------------------------------- M3
@pytest.mark.parametrize("groups,momentum", [(3, 0.0), (3, 0.75), (5, 0.0), (5, 0.75)])
def test_m3_consecutive_fit_matches_numpy(groups, momentum):
    x, y = make_data(2 * groups + 1)
    model = make_model()
    params = model.get_weights()
    optimizer = M3(sgd(momentum), groups=groups)
    got = fit_trajectory(model, optimizer, x, y)
    want = reference_trajectory("m3", groups, params, split(x, y), momentum)
    assert_trajectories_close(got, want)
    # Weights move only on every groups-th batch; schedules see applied updates only.
    assert np.array_equal(got[0][0], params[0]) and not np.array_equal(got[groups - 1][0], params[0])
    assert int(optimizer.iterations.numpy()) == 2
    assert int(optimizer.accepted_steps.numpy()) == 2 * groups + 1


def group_gradients(model, x, y, groups):
    """Rows [groups, *shape]: mean gradient of each contiguous group, at the current weights."""
    rows = []
    for xg, yg in zip(np.split(x, groups), np.split(y, groups)):
        with tf.GradientTape() as tape:
            loss = LOSS(yg, model(xg, training=True))
        rows.append(tape.gradient(loss, model.trainable_variables))
    return [tf.stack(parts) for parts in zip(*rows)]


@pytest.mark.parametrize("groups,momentum", [(3, 0.75), (5, 0.0)])
def test_median_of_means_into_the_inner_optimizer_matches_numpy_and_consecutive(groups, momentum):
    """In-batch M3 (cgh_tf.Model): MedianOfMeans of the group rows, applied by the plain inner
    optimizer, equals the reference and consecutive-batch M3 (was: M3.apply_group_gradients)."""
    updates = 3
    x, y = make_data(updates * groups)
    model = make_model()
    params = model.get_weights()
    inner = sgd(momentum)
    aggregator = MedianOfMeans(groups)
    step = tf.function(lambda rows: inner.apply(aggregator(rows), model.trainable_variables))
    in_batch = []
    for big_x, big_y in split(x, y, batch=groups * BATCH):
        step(group_gradients(model, big_x, big_y, groups))
        in_batch.append(model.get_weights())
    want = reference_trajectory("m3", groups, params, split(x, y), momentum)[groups - 1::groups]
    assert_trajectories_close(in_batch, want)
    consecutive = fit_trajectory(make_model(), M3(sgd(momentum), groups=groups), x, y)
    assert_trajectories_close(in_batch, consecutive[groups - 1::groups], rtol=1e-14, atol=1e-15)
    assert int(inner.iterations.numpy()) == updates


# ----------------------------------------------------------------------------- RM3 / RA3
@pytest.mark.parametrize(
    "cls,window,momentum",
    [(RM3, 3, 0.0), (RM3, 3, 0.75), (RM3, 5, 0.0), (RA3, 3, 0.0), (RA3, 3, 0.75)],
)
def test_running_fit_matches_numpy(cls, window, momentum):
    x, y = make_data(window + 4)
    model = make_model()
    params = model.get_weights()
    optimizer = cls(sgd(momentum), window=window)
    got = fit_trajectory(model, optimizer, x, y)
    want = reference_trajectory(cls.__name__.lower(), window, params, split(x, y), momentum)
    assert_trajectories_close(got, want)
    for step in range(window - 1):  # the first window-1 calls only fill the history
        np.testing.assert_array_equal(got[step][0], params[0])
    assert int(optimizer.iterations.numpy()) == 5


@pytest.mark.parametrize("cls,kind", [(M3, "m3"), (RM3, "rm3")])
def test_l2_before_median_and_decoupled_weight_decay(cls, kind):
    x, y = make_data(7)
    model = make_model()
    params = model.get_weights()
    optimizer = cls(sgd(0.5, weight_decay=0.125), 3, l2=0.05)
    got = fit_trajectory(model, optimizer, x, y)
    want = reference_trajectory(kind, 3, params, split(x, y), 0.5, l2=0.05, weight_decay=0.125)
    assert_trajectories_close(got, want)


@pytest.mark.parametrize("cls,kind", [(M3, "m3"), (RM3, "rm3")])
def test_xla_jit_compile_matches_numpy(cls, kind):
    x, y = make_data(7)
    model = make_model()
    params = model.get_weights()
    got = fit_trajectory(model, cls(sgd(0.75), 3), x, y, jit_compile=True)
    assert model.jit_compile is True
    want = reference_trajectory(kind, 3, params, split(x, y), 0.75)
    assert_trajectories_close(got, want, rtol=1e-11, atol=1e-12)


def test_learning_rate_and_iterations_proxy_the_inner_optimizer():
    inner = sgd()
    optimizer = RM3(inner)
    assert optimizer.iterations is inner.iterations
    optimizer.learning_rate = 0.25
    assert float(inner.learning_rate.numpy()) == 0.25 == float(optimizer.learning_rate.numpy())


def test_schedule_counts_applied_updates():
    # Learning rate halves after every applied update: 0.5, 0.25, ... per *update*, not per batch.
    schedule = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=1, decay_rate=0.5)
    x, y = make_data(6)
    model = make_model()
    params = model.get_weights()
    got = fit_trajectory(model, M3(keras.optimizers.SGD(schedule), 3), x, y)
    batches = split(x, y)
    first = [np.median(np.stack(p), 0) for p in zip(*[softmax_regression_grads(params, *b) for b in batches[:3]])]
    after_first = [p - LR * g for p, g in zip(params, first)]
    second = [np.median(np.stack(p), 0) for p in zip(*[softmax_regression_grads(after_first, *b) for b in batches[3:]])]
    after_second = [p - LR / 2 * g for p, g in zip(after_first, second)]
    assert_trajectories_close([got[2], got[5]], [after_first, after_second])


# ----------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("cls,kind", [(M3, "m3"), (RM3, "rm3")])
def test_nonfinite_gradient_is_skipped_and_counted(cls, kind):
    x, y = make_data(8)
    bad = 3
    x_bad = x.copy()
    x_bad[bad * BATCH + 2, 1] = np.nan  # batch `bad` has a NaN gradient
    model = make_model()
    params = model.get_weights()
    optimizer = cls(sgd(0.75), 3)
    got = fit_trajectory(model, optimizer, x_bad, y)
    clean = [b for i, b in enumerate(split(x, y)) if i != bad]
    want = reference_trajectory(kind, 3, params, clean, 0.75)
    assert_trajectories_close(got[:bad] + got[bad + 1:], want)
    assert_trajectories_close([got[bad]], [got[bad - 1]], rtol=0, atol=0)  # skipped step: no change
    assert int(optimizer.nonfinite_steps.numpy()) == 1
    assert int(optimizer.accepted_steps.numpy()) == 7
    assert all(np.all(np.isfinite(h.numpy())) for slots in optimizer.history for h in slots)


def test_variable_without_gradient_passes_through():
    model = make_model()
    kernel, bias = model.trainable_variables
    params = model.get_weights()
    optimizer = RM3(sgd(), window=2)
    g = tf.constant(np.full((DIM, CLASSES), 2.0))
    for _ in range(2):
        optimizer.apply([g, None], [kernel, bias])
    np.testing.assert_allclose(kernel.numpy(), params[0] - LR * 2.0)
    np.testing.assert_array_equal(bias.numpy(), params[1])
    np.testing.assert_array_equal(optimizer.history[1][0].numpy(), 0.0)  # bias: never buffered


def test_embedding_model_sparse_gradients_are_densified():
    vocab, dim, seq = 11, 4, 3
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, vocab, size=(6 * BATCH, seq))
    labels = rng.integers(0, CLASSES, size=6 * BATCH)
    model = keras.Sequential([
        keras.Input((seq,), dtype="int32"),
        keras.layers.Embedding(vocab, dim),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(CLASSES),
    ])
    init = model.get_weights()
    # Check the gradient really is sparse, then build the reference with TF gradients + NumPy median.
    with tf.GradientTape() as tape:
        loss = LOSS(labels[:BATCH], model(tokens[:BATCH]))
    assert isinstance(tape.gradient(loss, model.trainable_variables[0]), tf.IndexedSlices)
    want, history, params = [], [], init
    probe = keras.models.clone_model(model)
    for i in range(6):
        probe.set_weights(params)
        with tf.GradientTape() as tape:
            loss = LOSS(labels[i * BATCH:(i + 1) * BATCH], probe(tokens[i * BATCH:(i + 1) * BATCH]))
        history.append([tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, probe.trainable_variables)])
        if len(history) == 3:
            params = [p - LR * np.median(np.stack(parts), 0) for p, parts in zip(params, zip(*history))]
            history = []
        want.append(params)
    model.set_weights(init)
    got = fit_trajectory(model, M3(sgd(), 3), tokens, labels)
    assert_trajectories_close(got, want, rtol=1e-12, atol=1e-14)


def test_mixed_float16_policy_is_wrapped_and_unscaled():
    keras.config.set_floatx("float32")
    x, y = make_data(6)
    x = x.astype("float32")
    runs = {}
    try:
        for policy in ("float32", "mixed_float16"):
            keras.config.set_dtype_policy(policy)
            model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(CLASSES)])
            model.set_weights([np.random.default_rng(1).normal(size=(DIM, CLASSES)).astype("float32"),
                               np.zeros(CLASSES, "float32")])
            robust = M3(keras.optimizers.SGD(LR), 3)
            runs[policy] = fit_trajectory(model, robust, x, y)
            if policy == "mixed_float16":
                assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
                assert model.optimizer.inner_optimizer is robust
                assert optimizers.unwrap(model.optimizer) is robust
                assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**15  # no overflow
                assert robust.history[0][0].dtype == "float32"
                assert int(robust.iterations.numpy()) == 2
    finally:
        keras.config.set_dtype_policy("float32")
    # Unscaled: float16 compute differs from float32 by ~1e-3, a missed unscale by a factor 2**15.
    assert_trajectories_close(runs["mixed_float16"], runs["float32"], rtol=0, atol=1e-2)
    assert not np.allclose(runs["float32"][2][0], runs["float32"][0][0])


# ----------------------------------------------------------------------------- save / restore
def _fit_in_two_parts(cls, save, tmp_path, cut=4, total=8):
    x, y = make_data(total)
    uninterrupted = fit_trajectory(make_model(), cls(sgd(0.75), 3), x, y)
    model = make_model()
    fit_trajectory(model, cls(sgd(0.75), 3), x[:cut * BATCH], y[:cut * BATCH])
    model = save(model, tmp_path)
    second = WeightRecorder()
    model.fit(x[cut * BATCH:], y[cut * BATCH:], batch_size=BATCH, shuffle=False, verbose=0,
              callbacks=[second])
    return second.trajectory, uninterrupted[cut:], model


def _keras_file(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return keras.models.load_model(path)


def _tf_checkpoint(model, tmp_path):
    prefix = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "ckpt"))
    fresh = make_model(seed=7)  # different weights: everything must come from the checkpoint
    fresh.compile(optimizer=type(model.optimizer)(sgd(0.75), 3), loss=LOSS)
    fresh.optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(prefix).assert_consumed()
    return fresh


@pytest.mark.parametrize("cls", [M3, RM3])
@pytest.mark.parametrize("save", [_keras_file, _tf_checkpoint], ids=["keras_file", "tf_checkpoint"])
def test_save_mid_window_then_continue_equals_uninterrupted(cls, save, tmp_path):
    resumed, uninterrupted, model = _fit_in_two_parts(cls, save, tmp_path)
    assert isinstance(model.optimizer, cls)
    assert_trajectories_close(resumed, uninterrupted, rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------- API
@pytest.mark.parametrize("cls", [M3, RM3, RA3])
def test_config_round_trip(cls):
    optimizer = cls(keras.optimizers.Adam(0.01, beta_1=0.8), 5, l2=0.001, name="robust")
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is cls and restored.get_config() == optimizer.get_config()
    assert restored.size == 5 and restored.l2 == 0.001 and restored.name == "robust"
    assert isinstance(restored.inner_optimizer, keras.optimizers.Adam)
    assert restored.inner_optimizer.beta_1 == 0.8
    assert keras.saving.get_registered_name(cls) == f"cgh_tf>{cls.__name__}"


@pytest.mark.parametrize("bad", ["sgd", keras.layers.Dense(1), None])
def test_rejects_non_optimizer_with_type_name(bad):
    with pytest.raises(TypeError, match=type(bad).__name__):
        M3(bad)


def test_rejects_nesting_and_loss_scale_inner():
    with pytest.raises(TypeError, match="cannot be nested"):
        RM3(M3(sgd()))
    with pytest.raises(TypeError, match="LossScaleOptimizer"):
        M3(keras.optimizers.LossScaleOptimizer(sgd()))
    with pytest.raises(ValueError, match="must not use gradient_accumulation_steps"):
        RM3(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))


@pytest.mark.parametrize("cls,arg", [(M3, "groups"), (RM3, "window"), (RA3, "window")])
@pytest.mark.parametrize("value", [1, 0, 2.5, True, "3"])
def test_rejects_bad_group_or_window(cls, arg, value):
    with pytest.raises(ValueError, match=f"`{arg}` must be an int >= 2"):
        cls(sgd(), **{arg: value})


def test_rejects_negative_l2_and_unknown_kwargs():
    with pytest.raises(ValueError, match="`l2`"):
        M3(sgd(), l2=-1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        M3(sgd(), clipnorm=1.0)


def test_unwrap():
    robust = M3(sgd())
    assert optimizers.unwrap(robust) is robust
    assert optimizers.unwrap(keras.optimizers.LossScaleOptimizer(robust)) is robust
    assert optimizers.unwrap(sgd()) is None


def test_build_factory():
    assert isinstance(optimizers.build("sgd", 0.1, momentum=0.75), keras.optimizers.SGD)
    assert isinstance(optimizers.build("adam", 0.1), keras.optimizers.Adam)
    m3 = optimizers.build("m3", 0.1, groups=4, l2=1e-4)
    assert type(m3) is M3 and m3.groups == 4 and m3.l2 == 1e-4
    m5 = optimizers.build("M5", 0.1, momentum=0.75)
    assert m5.groups == 5 and m5.inner_optimizer.momentum == 0.75
    rm3 = optimizers.build("rm3", 0.1, window=5, inner="adam")
    assert type(rm3) is RM3 and rm3.window == 5 and isinstance(rm3.inner_optimizer, keras.optimizers.Adam)
    assert type(optimizers.build("ra4", 0.1)) is RA3 and optimizers.build("ra4", 0.1).window == 4
    with pytest.raises(ValueError, match="valid: sgd, adam, m3, rm3, ra3"):
        optimizers.build("lion", 0.1)
    with pytest.raises(ValueError, match="int >= 2"):
        optimizers.build("m1", 0.1)
    with pytest.raises(ValueError, match="valid: 'sgd', 'adam'"):
        optimizers.build("m3", 0.1, inner="rmsprop")


def test_inner_loss_scale_factor_is_handled_once():
    x, y = make_data(6)
    plain = fit_trajectory(make_model(), M3(sgd(), 3), x, y)
    scaled = fit_trajectory(make_model(), M3(sgd(loss_scale_factor=8.0), 3), x, y)
    assert_trajectories_close(scaled, plain, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("cls,arg", [(M3, "groups"), (RM3, "window"), (RA3, "window")])
def test_numpy_integers_are_accepted(cls, arg):
    assert getattr(cls(sgd(), **{arg: np.int64(3)}), arg) == 3


@pytest.mark.parametrize("cls,arg,warns", [(M3, "groups", True), (RM3, "window", True),
                                           (RA3, "window", False)])
def test_two_warns_for_medians_because_it_is_the_mean(cls, arg, warns):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls(sgd(), **{arg: 2})
    assert any("median of 2 values is their mean" in str(w.message) for w in caught) == warns


def test_wrapper_disables_the_inner_all_reduce_when_built_not_before():
    """The inner optimizer of an unused wrapper (e.g. the M3 that cgh_tf.Model.compile unwraps)
    keeps Keras' own all-reduce; a built wrapper's inner optimizer does not all-reduce again."""
    inner = sgd()
    wrapper = M3(inner)
    assert "_all_reduce_sum_gradients" not in vars(inner)
    wrapper.build(make_model().trainable_variables)
    grads_and_vars = [(tf.constant(1.0), "v")]
    assert inner._all_reduce_sum_gradients(grads_and_vars) == grads_and_vars
