"""Pins every private Keras / TF name of cgh_tf.keras_internals: each test fails on a Keras release
that breaks the assumption, and each accessor raises KerasInternalsError (naming the Keras version)
instead of falling back to a default."""

import io
import os
import pathlib
import subprocess
import sys
import tokenize

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import keras_internals as ki


PACKAGE_DIRS = ("cgh_tf", "trainers")
PRIVATE_MODULES = ("keras.src", "tensorflow.python", "tf.__internal__", "_pywrap")
# Dunders every Python object has (not a library's private state).
PUBLIC_DUNDERS = {"__init__", "__new__", "__name__", "__qualname__", "__doc__", "__class__",
                  "__module__", "__call__", "__cause__", "__context__"}
PUBLIC_STDLIB = {"os._exit"}  # documented Python API whose name starts with "_"
SELF_ONLY = {"__setattr__", "__delattr__", "__dict__"}  # allowed on the object's own instance


def package_modules():
    """Every .py file of the package and the trainers (all modules, found on disk)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    return sorted(p for d in PACKAGE_DIRS for p in (root / d).rglob("*.py"))


def private_uses(source):
    """[(line, text)] of every private Keras / TF reach in `source` (docstrings and comments
    excluded): a private module named in code or in an import string, an attribute read
    `x._name` on anything but `self` / `cls`, a `getattr(x, "_name")` on anything but `self`,
    and `__dict__` / `object.__setattr__` / `object.__delattr__` on anything but `self`."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                tokenize.DEDENT)]
    found = []
    for i, tok in enumerate(tokens):
        text = tok.string
        if tok.type == tokenize.STRING:
            body = text.lstrip("rbuRBUfF").strip("\"'")
            if any(body.startswith(m) for m in PRIVATE_MODULES):
                found.append((tok.start[0], text))
            continue
        before = tokens[i - 1].string if i else ""
        after = [t.string for t in tokens[i + 1:i + 4]]
        if tok.type == tokenize.NAME and before == "." and text.startswith("_"):
            owner = tokens[i - 2].string
            if text in SELF_ONLY:
                if after[:2] != ["(", "self"] and owner != "self":
                    found.append((tok.start[0], f"{owner}.{text}"))
            elif (text not in PUBLIC_DUNDERS and owner not in ("self", "cls")
                  and f"{owner}.{text}" not in PUBLIC_STDLIB):
                found.append((tok.start[0], f"{owner}.{text}"))
        if text in ("getattr", "hasattr", "setattr") and after[:1] == ["("]:
            rest = [t.string for t in tokens[i + 2:i + 5]]
            name = rest[2].strip("\"'")
            literal = (rest[2][:1] in ("'", '"') and name.startswith("_")
                       and name not in PUBLIC_DUNDERS)
            if rest[0] != "self" and rest[1] == "," and literal:
                found.append((tok.start[0], f"{text}({rest[0]}, {rest[2]})"))
    code = "".join(t.string for t in tokens if t.type != tokenize.STRING)
    found += [(0, m) for m in PRIVATE_MODULES if m in code]
    return found


def test_only_keras_internals_touches_private_names():
    """Every module of the package and the trainers reaches private Keras / TF names only through
    cgh_tf.keras_internals."""
    modules = package_modules()
    assert len(modules) > 40 and any(p.parent.name == "layer_rules" for p in modules)
    offenders = {str(p): private_uses(p.read_text()) for p in modules
                 if p.name != "keras_internals.py" or p.parent.name != "cgh_tf"}
    assert {p: uses for p, uses in offenders.items() if uses} == {}


@pytest.mark.parametrize("line,private", [
    ("from tensorflow.python.util import _pywrap_util_port", True),
    ("import keras.src.models", True),
    ("m = importlib.import_module('keras.src.models.model')", True),
    ("x = model._loss_tracker", True),
    ("x = per_example._dense(g)", True),
    ("x = layer.__dict__.get('call')", True),
    ("object.__setattr__(layer, 'call', f)", True),
    ("x = getattr(layer, '_layers')", True),
    ("x = self._cgh_state", False),
    ("object.__setattr__(self, 'a', 1)", False),
    ("x = getattr(self, '_cgh_state', None)", False),
    ("x = type(layer).__name__", False),
    ('"""Relies on keras.src.models.model and tf.__internal__."""', False),  # a docstring
])
def test_the_private_name_scan(line, private):
    """The scan of the guard test finds each kind of private reach (so it can fail)."""
    assert bool(private_uses(line + "\n")) == private


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


def test_strategy_supports_no_merge_call():
    """The default (no-op) strategy runs without merge_call; MirroredStrategy on CPU devices
    needs it, in its scope and in replica context (only TPUStrategy and Mirrored under XLA on
    GPUs run without)."""
    assert ki.strategy_supports_no_merge_call() is True
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        assert ki.strategy_supports_no_merge_call() is False
    in_replicas = strategy.run(lambda: tf.constant(ki.strategy_supports_no_merge_call()))
    assert [bool(v) for v in strategy.experimental_local_results(in_replicas)] == [False, False]


@pytest.mark.slow
def test_onednn_enabled_follows_the_environment_variable():
    """TF_ENABLE_ONEDNN_OPTS=0 / 1 forces oneDNN off / on; read in fresh processes."""
    code = "from cgh_tf import keras_internals as ki; print(ki.onednn_enabled())"
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    for flag, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": flag, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": root}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.stdout.strip().splitlines()[-1:] == [expected], out.stderr[-2000:]


@pytest.mark.parametrize("args,kwargs,functional", [
    ((1, 2), {}, True), ((1,), {"outputs": 2}, True), ((), {"inputs": 1, "outputs": 2}, True),
    ((), {}, False), ((1,), {}, False), ((), {"name": "m"}, False), ((), {"inputs": 1}, False),
])
def test_is_functional_call_is_keras_rule(args, kwargs, functional):
    assert ki.is_functional_call(args, kwargs) is functional


def test_call_replaced_runs_the_replacement_inside_keras_call_and_restores():
    layer = keras.layers.Dense(2, kernel_initializer="ones")
    x = np.ones((1, 3), "float32")
    before = layer(x).numpy()
    with ki.call_replaced(layer, lambda inputs, **kwargs: inputs[:, :2] * 10.0):
        np.testing.assert_array_equal(layer(x).numpy(), [[10.0, 10.0]])
    np.testing.assert_array_equal(layer(x).numpy(), before)
    assert "call" not in vars(layer)
    with pytest.raises(TypeError, match="keras Layer"):
        ki.call_replaced(object(), None)


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


def test_keeping_global_dtype_policy_restores_even_unset():
    """The probe's guard: Keras' global dtype policy after the block is the one before it, also
    when none was set yet (Keras would otherwise pin DTypePolicy(floatx()) at the first layer)."""
    state = ki._global_state()
    saved = state.get_global_attribute("dtype_policy", None)
    try:
        state.set_global_attribute("dtype_policy", None)
        with ki.keeping_global_dtype_policy():
            keras.layers.Dense(1)
            assert state.get_global_attribute("dtype_policy", None) is not None  # Keras pinned it
        assert state.get_global_attribute("dtype_policy", None) is None
        ki._functional_class()
        assert state.get_global_attribute("dtype_policy", None) is None
    finally:
        state.set_global_attribute("dtype_policy", saved)


@pytest.mark.slow
def test_importing_cgh_tf_leaves_floatx_in_charge():
    """`import cgh_tf` (and its modules) then `keras.config.set_floatx("float64")` builds float64
    layers, as in plain Keras (before: the import's functional probe pinned Keras' global policy
    to float32, so a float64 model silently computed in float32: m-coherence off by 1e-7
    relative against the float64 reference instead of 1e-16)."""
    code = ("import cgh_tf, keras\n"
            "from cgh_tf import alignment, callbacks, coherence, models, per_example, training\n"
            "keras.config.set_floatx('float64')\n"
            "print(keras.layers.Dense(2).dtype_policy.name, keras.Input((1,)).dtype)\n")
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip().splitlines()[-1:] == ["float64 float64"], out.stderr[-2000:]


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


def test_a_missing_private_function_fails_loudly():
    """onednn_enabled, in_xla_compilation and is_functional_call read module functions that
    raise KerasInternalsError, naming what is missing, when a release removes them."""
    with pytest.raises(ki.KerasInternalsError, match="tensorflow.python.no_such_module.f"):
        ki._module_function("tensorflow.python.no_such_module", "f", ki._fail_tf)
    with pytest.raises(ki.KerasInternalsError, match="keras.src.models.model.no_such_function"):
        ki._module_function("keras.src.models.model", "no_such_function", ki._fail)
