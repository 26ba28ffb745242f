"""In-batch M3 under tf.distribute (cgh_tf.replica_groups): replicas as groups, identical weights.

Every run is compared with the same model trained on one device (itself checked against float64
NumPy in tests/test_training.py), in float64, on 2-6 logical CPUs (tests/conftest.py).
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

import cgh_tf
from cgh_tf import replica_groups

DIM, CLASSES = 4, 3


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Every test here runs in float64 Keras (see conftest)."""


_strategies = {}


def mirrored(replicas, merge_call=True):
    """One MirroredStrategy per (replica count, merge_call): CPU collectives of strategies with
    different device counts in one process collide on their group keys, hence ReductionToOneDevice.

    merge_call=False makes the strategy report that it runs without merge_call, as TPUStrategy
    and MirroredStrategy under XLA on GPUs do: the path those take, forced on CPUs."""
    key = (replicas, merge_call)
    if key not in _strategies:
        # Without merge_call MirroredStrategy uses collective ops, whose group keys would collide
        # between strategies of different sizes: TF's test-only key base separates them.
        tf.distribute.MirroredStrategy._collective_key_base = 1000 * (len(_strategies) + 1)
        try:
            strategy = tf.distribute.MirroredStrategy(
                [f"/cpu:{i}" for i in range(replicas)],
                cross_device_ops=tf.distribute.ReductionToOneDevice())
        finally:
            tf.distribute.MirroredStrategy._collective_key_base = 0
        if not merge_call:
            strategy.extended._use_merge_call = lambda: False
        _strategies[key] = strategy
    return _strategies[key]


def data(n):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, DIM)), rng.integers(0, CLASSES, n)


def train(strategy, optimizer_fn, n, batch, model_class=None, drop_remainder=False, epochs=2,
          **compile_options):
    """(weights, History.history) after `epochs` epochs on `n` examples in batches of `batch`."""
    x, y = data(n)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((DIM,))
        hidden = keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
        outputs = keras.layers.Dense(
            CLASSES, kernel_regularizer=keras.regularizers.L2(0.01), name="logits")(hidden)
        model = (model_class or cgh_tf.Model)(inputs, outputs)
        model.compile(optimizer_fn(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["sparse_categorical_accuracy"], **compile_options)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=drop_remainder)
    history = model.fit(dataset, epochs=epochs, verbose=0)
    return model.get_weights(), history.history


_one_device_runs = {}


def one_device(name, optimizer_fn, n, batch, model_class=None, **options):
    """`train` on one device, computed once per configuration (`name` names the optimizer)."""
    key = (name, n, batch, model_class, tuple(sorted(options.items())))
    if key not in _one_device_runs:
        _one_device_runs[key] = train(tf.distribute.get_strategy(), optimizer_fn, n, batch,
                                      model_class, **options)
    return _one_device_runs[key]


def m3(groups=3):
    return cgh_tf.M3(keras.optimizers.SGD(0.1, momentum=0.5), groups=groups, l2=0.001)


def assert_same_training(got, want, weights_atol=1e-14, logs_rtol=1e-6):
    (w_got, logs_got), (w_want, logs_want) = got, want
    for a, b in zip(w_got, w_want):
        np.testing.assert_allclose(a, b, rtol=0, atol=weights_atol)
    assert logs_got.keys() == logs_want.keys()
    for key in logs_want:
        np.testing.assert_allclose(logs_got[key], logs_want[key], rtol=logs_rtol, err_msg=key)  # float32 logs


# ------------------------------------------------------------------------ replicas as groups
@pytest.mark.parametrize("replicas,groups,batch", [(2, 3, 12), (3, 3, 12), (4, 3, 12), (6, 3, 12),
                                                   (3, 5, 15)])
def test_replicas_as_groups_give_the_weights_and_logs_of_one_device(replicas, groups, batch):
    """Weights and every log (loss, accuracy) as on one device; the loss used to be each
    replica's share (divided by R) instead of its mean."""
    want = one_device(f"m3-{groups}", lambda: m3(groups), 4 * batch, batch)
    assert_same_training(train(mirrored(replicas), lambda: m3(groups), 4 * batch, batch), want)


@pytest.mark.parametrize("replicas", [2, 4, 6])
def test_an_unevenly_split_last_batch_gets_the_one_device_groups(replicas):
    """57 examples in batches of 24: the last batch of 9 is split 5/4 on 2 replicas, 3/3/3/0 on
    4, 2/2/2/2/1/0 on 6 (tf.distribute's rule); the groups are those of one device."""
    assert_same_training(train(mirrored(replicas), m3, 57, 24), one_device("m3-3", m3, 57, 24))


def test_static_shards_use_the_all_gather_when_it_moves_fewer_bytes():
    strategy = mirrored(3)
    want = train(tf.distribute.get_strategy(), m3, 72, 12, drop_remainder=True)
    assert replica_groups.collective(3, 3, replica_groups.passes_per_replica(3, 3, 4), True) == \
        "all_gather"
    assert_same_training(train(strategy, m3, 72, 12, drop_remainder=True), want)


def test_one_device_with_and_without_xla_split_a_partial_last_batch_alike():
    """58 examples, batches of 24: the last batch of 10 is split 4/3/3 by the group rule."""
    plain = train(tf.distribute.get_strategy(), m3, 58, 24, epochs=1)
    compiled = train(tf.distribute.get_strategy(), m3, 58, 24, epochs=1, jit_compile=True)
    assert_same_training(compiled, plain, weights_atol=1e-12)


@pytest.mark.parametrize("replicas,groups,expected", [
    (2, 3, 2), (3, 3, 1), (4, 3, 2), (6, 3, 1), (3, 5, 3), (9, 3, 1), (5, 3, 2), (2, 7, 4)])
def test_backward_passes_per_replica(replicas, groups, expected):
    """At most ⌈k/R⌉ + 1, and one when R is a multiple of k (the issue's bound), by brute force
    over where each equal shard of n = lcm-sized batch falls."""
    passes = replica_groups.passes_per_replica(replicas, groups)
    assert passes == expected <= -(-groups // replicas) + 1
    if replicas % groups == 0:
        assert passes == 1
    shard = groups * 4  # n = R * shard is a multiple of k: the formula is exact
    assert replica_groups.passes_per_replica(replicas, groups, shard) == passes


def test_backward_passes_traced_per_replica(monkeypatch):
    """The replica's graph holds J passes for static shards (R = 3 = k: one)."""
    counted = []
    original = replica_groups.partial_rows
    monkeypatch.setattr(replica_groups, "partial_rows",
                        lambda tape, losses, variables, targets: counted.append(len(targets))
                        or original(tape, losses, variables, targets))
    train(mirrored(3), m3, 24, 12, drop_remainder=True, epochs=1)
    assert counted and set(counted) == {1}


def test_bytes_per_replica():
    p = 1000
    assert replica_groups.bytes_per_replica("all_reduce", 3, 3, 1, p) == pytest.approx(2 * 2 / 3 * 3 * p * 4)
    assert replica_groups.bytes_per_replica("all_gather", 3, 3, 1, p) == 2 * 1 * p * 4
    assert replica_groups.collective(4, 3, 2, True) == "all_reduce"  # 8 >= 6
    assert replica_groups.collective(3, 3, 1, False) == "all_reduce"  # dynamic shards


# ------------------------------------------------------------------------ without merge_call
_WRAPPERS = {
    "M3 consecutive": (keras.Model, lambda: cgh_tf.M3(keras.optimizers.SGD(0.1, momentum=0.5)), {}),
    "RM3": (keras.Model, lambda: cgh_tf.RM3(keras.optimizers.SGD(0.1, momentum=0.5)), {}),
    "RA3": (keras.Model, lambda: cgh_tf.RA3(keras.optimizers.SGD(0.1)), {}),
    "M3 in batch": (cgh_tf.Model, m3, {}),
    "M3 in batch + coherence": (cgh_tf.Model, m3, {"coherence_every": 1, "coherence_per_layer": True}),
    "SGD + coherence every 2": (cgh_tf.Model, lambda: keras.optimizers.SGD(0.1), {"coherence_every": 2}),
}


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("mode", sorted(_WRAPPERS))
def test_every_mode_runs_without_merge_call_and_equals_one_device(mode, replicas):
    model_class, optimizer_fn, options = _WRAPPERS[mode]
    want = one_device(mode, optimizer_fn, 48, 12, model_class, **options)
    got = train(mirrored(replicas, merge_call=False), optimizer_fn, 48, 12, model_class, **options)
    # Keras scales each replica's loss by 1 / R rounded through float32 (exact for R = 2, ~3e-8
    # relative per step for R = 3; plain SGD has the same offset); in-batch M3 does not use it.
    exact = mode.startswith("M3 in batch") or replicas == 2
    assert_same_training(got, want, weights_atol=1e-12 if exact else 1e-7)


@pytest.mark.parametrize("model_class", [keras.Model, cgh_tf.Model])
def test_mixed_precision_runs_without_merge_call(model_class):
    """Keras' LossScaleOptimizer updates the inner optimizer inside a tf.cond; with M3 (either
    form) the step counter involved is replica-local, so the step needs no merge_call."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("mixed_float16")
    try:  # (the float64 fixture restores floatx and the policy afterwards)
        batch = 12 if model_class is cgh_tf.Model else 4
        runs = [train(strategy, m3, 72, batch, model_class)
                for strategy in (tf.distribute.get_strategy(), mirrored(2, merge_call=False))]
    finally:
        keras.config.set_dtype_policy("float32")
    # float16 forward and backward passes on shards vs the whole batch: rounding differs.
    assert_same_training(runs[1], runs[0], weights_atol=2e-3, logs_rtol=1e-3)
