"""Pins every private Keras / TF name of cgh_tf.keras_internals: each test fails on a Keras release
that breaks the assumption, and each accessor raises KerasInternalsError (naming the Keras version)
instead of falling back to a default."""

import inspect
import io
import tokenize

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import keras_internals as ki


def test_no_other_module_touches_private_keras_names():
    """Owned modules reach private Keras / TF names only through keras_internals."""
    import cgh_tf.aggregators
    import cgh_tf.distribute
    import cgh_tf.optimizers
    import cgh_tf.training
    for module in (cgh_tf.distribute, cgh_tf.optimizers, cgh_tf.training, cgh_tf.aggregators):
        source = _code_only(inspect.getsource(module))
        for name in ("keras.src", "tf.__internal__", "_loss_tracker", "_flatten_layers",
                     "_call_has_training_arg", "_distribution_strategy", "._variables",
                     "_check_variables_are_known", "_compute_loss"):
            assert name not in source.replace("keras_internals .", ""), (module.__name__, name)


def _code_only(source):
    """The source without strings and comments (docstrings may name the internals)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.STRING, tokenize.COMMENT))


def _model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)))


def test_flatten_layers_and_child_layers():
    model = _model()
    assert len(ki.flatten_layers(model, include_self=False)) == 3
    assert [type(l).__name__ for l in ki.child_layers(model)] == ["InputLayer", "Dense", "Dense"]
    with pytest.raises(ki.KerasInternalsError, match=keras.__version__):
        ki.child_layers(object())
    with pytest.raises(ki.KerasInternalsError, match="_flatten_layers"):
        ki.flatten_layers(object())


def test_loss_tracker():
    model = _model()
    model.compile(optimizer="sgd", loss="mse")
    assert isinstance(ki.loss_tracker(model), keras.metrics.Mean)
    assert ki.loss_tracker(model) in model.metrics
    with pytest.raises(ki.KerasInternalsError, match="_loss_tracker"):
        ki.loss_tracker(object())


def test_optimizer_internals():
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    model = _model()
    optimizer.build(model.trainable_variables)
    own = ki.optimizer_own_variables(optimizer)
    assert isinstance(own, list) and len(own) == len(optimizer.variables)
    assert ki.optimizer_strategy(optimizer) is tf.distribute.get_strategy()
    ki.check_variables_are_known(optimizer, model.trainable_variables)
    with pytest.raises(ValueError):
        ki.check_variables_are_known(optimizer, _model().trainable_variables)
    for accessor in (ki.optimizer_own_variables, ki.optimizer_strategy):
        with pytest.raises(ki.KerasInternalsError):
            accessor(object())


@pytest.mark.parametrize("built_first", [False, True])
def test_replica_local_step_counter_keeps_value_order_and_checkpoints(tmp_path, built_first):
    """The re-created counter has aggregation NONE, replaces the old one at its place in
    `variables` (Keras' saving relies on the order), and both a TF checkpoint and a Keras save
    restore it."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _model()
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        if built_first:
            optimizer.build(model.trainable_variables)
        optimizer.iterations.assign(7)
        paths = [v.path for v in optimizer.variables]
        ki.make_step_counter_replica_local(optimizer)
    assert [v.path for v in optimizer.variables] == paths
    assert optimizer.iterations.value.aggregation == tf.VariableAggregation.NONE
    assert int(optimizer.iterations.numpy()) == 7
    checkpoint = tf.train.Checkpoint(optimizer=optimizer)
    saved = checkpoint.write(str(tmp_path / "ckpt"))
    optimizer.iterations.assign(0)
    checkpoint.read(saved).assert_consumed()
    assert int(optimizer.iterations.numpy()) == 7
    if built_first:  # Keras saves an optimizer's variables once it is built
        model.compile(optimizer=optimizer, loss="mse")
        model.save(tmp_path / "model.keras")
        loaded = keras.saving.load_model(tmp_path / "model.keras")
        assert int(loaded.optimizer.iterations.numpy()) == 7
    ki.make_step_counter_replica_local(optimizer)  # idempotent
    assert optimizer.iterations.value.aggregation == tf.VariableAggregation.NONE
    with pytest.raises(ValueError, match="not a variable"):
        ki.make_step_counter_replica_local(keras.optimizers.SGD(gradient_accumulation_steps=2))


def test_all_reduce_hook_is_called_by_the_update_step_and_disabled_per_instance():
    tf_optimizer = next(c for c in keras.optimizers.SGD.__mro__ if c.__name__ == "TFOptimizer")
    ki._check_all_reduce_hook(keras.optimizers.SGD)  # the hook exists and is called
    inner = keras.optimizers.SGD(0.1)
    ki.disable_all_reduce(inner)
    grads_and_vars = [(tf.constant(1.0), "v")]
    assert inner._all_reduce_sum_gradients(grads_and_vars) == grads_and_vars
    other = keras.optimizers.SGD(0.1)
    assert other._all_reduce_sum_gradients.__func__ is tf_optimizer._all_reduce_sum_gradients
    with pytest.raises(TypeError, match="_all_reduce_sum_gradients"):
        ki.disable_all_reduce(object())


def test_all_reduce_hook_check_fails_loudly_if_keras_stops_calling_it():
    class Renamed(keras.optimizers.SGD):
        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            pass  # an update step that no longer calls the hook

    with pytest.raises(ki.KerasInternalsError, match="calling self._all_reduce_sum_gradients"):
        ki.disable_all_reduce(Renamed(0.1))


def test_strategy_supports_no_merge_call(monkeypatch):
    """True outside any strategy (nothing to merge), False for Mirrored on CPUs (which merges);
    True once the strategy says it runs without merge_call (Mirrored + XLA on GPUs, TPUStrategy)."""
    assert ki.strategy_supports_no_merge_call() is True
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        assert ki.strategy_supports_no_merge_call() is False
        monkeypatch.setattr(strategy.extended, "_use_merge_call", lambda: False)
        assert ki.strategy_supports_no_merge_call() is True


def test_functional_class():
    inputs = keras.Input((2,))
    assert type(keras.Model(inputs, keras.layers.Dense(1)(inputs))) is ki.Functional
    assert issubclass(ki.Functional, keras.Model)


def test_functional_probe_fails_as_keras_internals_error(monkeypatch):
    """Whatever Keras raises while the probe builds its model, import sees KerasInternalsError."""
    def reject(*args, **kwargs):
        raise ValueError("rejected by this Keras")

    monkeypatch.setattr(keras.layers, "Identity", reject)
    with pytest.raises(ki.KerasInternalsError, match="rejected by this Keras"):
        ki._functional_class()


def test_keras_round_trip_does_not_depend_on_functional_init_arguments(monkeypatch, tmp_path):
    """A `.keras` file of a functional cgh_tf.Model reloads even if Functional.__init__ takes
    other arguments than Keras 3.15's (inputs, outputs, name)."""
    import cgh_tf

    original = ki.Functional.__init__

    def init_with_another_argument(self, inputs, outputs, name=None, another=None, **kwargs):
        original(self, inputs, outputs, name=name, **kwargs)

    monkeypatch.setattr(ki.Functional, "__init__", init_with_another_argument)
    inputs = keras.Input((3,))
    model = cgh_tf.Model(inputs, keras.layers.Dense(2)(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, cgh_tf.Model)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_in_xla_compilation():
    """True while tracing a jit-compiled function and the functions it calls; False eagerly and
    in an ordinary tf.function."""
    seen = {}

    @tf.function
    def inner(x):
        seen["inner of jit"] = ki.in_xla_compilation()
        return x

    @tf.function(jit_compile=True)
    def compiled(x):
        seen["jit"] = ki.in_xla_compilation()
        return inner(x)

    @tf.function
    def plain(x):
        seen["plain"] = ki.in_xla_compilation()
        return x

    compiled(tf.constant(1.0)), plain(tf.constant(1.0))
    assert seen == {"jit": True, "inner of jit": True, "plain": False}
    assert ki.in_xla_compilation() is False
