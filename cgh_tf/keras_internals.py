"""Every access to a private Keras or TensorFlow name, in one place, each checked.

Each function states the assumption it relies on and raises `KerasInternalsError`, naming the
installed Keras version, when the assumption no longer holds; `tests/test_keras_internals.py` pins
each one. Nothing here falls back silently to a default.
"""

import contextlib
import importlib
import inspect

import keras
import tensorflow as tf

class KerasInternalsError(RuntimeError):
    """A private Keras / TF name that cgh_tf relies on changed in the installed version."""


def _fail(what):
    raise KerasInternalsError(
        f"cgh_tf relies on {what}, which Keras {keras.__version__} does not provide; this Keras "
        "version is not supported by this cgh_tf release (see setup.cfg for the tested range).")


def _private(owner, name, what, fail=None):
    """`owner.<name>`, or a `KerasInternalsError` naming `what` when it does not exist."""
    if not hasattr(owner, name):
        (fail or _fail)(what)
    return getattr(owner, name)


def flatten_layers(model, include_self=True):
    """Every layer reachable from `model`, depth first, including layers held as attributes of
    other layers (e.g. the projections of MultiHeadAttention), which the public `model.layers` omits.

    Relies on `keras.layers.Layer._flatten_layers(include_self, recursive)`.
    """
    _private(type(model), "_flatten_layers", "Layer._flatten_layers")
    return list(model._flatten_layers(include_self=include_self, recursive=True))


def child_layers(layer):
    """The layers directly tracked by `layer` (attributes and lists), in creation order.

    Relies on `keras.layers.Layer._layers`, the list Keras' attribute tracker fills.
    """
    if not hasattr(layer, "_layers"):
        _fail("Layer._layers")
    return list(layer._layers)


def call_replaced(layer, call):
    """Context manager: `layer(...)` runs `call(inputs, *args, **kwargs)` instead of the layer's
    own `call` inside the block (Keras' `__call__` still does its casting, masking and name
    scopes around it); the layer is as before afterwards.

    Relies on `keras.layers.Layer.__call__` reaching `call` through the instance (`self.call`),
    so an instance attribute set past Keras' attribute tracking (`object.__setattr__`) takes
    precedence over the class's method.
    """
    if not isinstance(layer, keras.layers.Layer):
        raise TypeError(f"call_replaced needs a keras Layer; got {type(layer).__name__}.")
    return _call_replaced(layer, call)


@contextlib.contextmanager
def _call_replaced(layer, call):
    previous = vars(layer).get("call")
    object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        if previous is None:
            object.__delattr__(layer, "call")
        else:
            object.__setattr__(layer, "call", previous)


# ------------------------------------------------------------------------------ models
def loss_tracker(model):
    """The `keras.metrics.Mean` behind the "loss" entry of `fit`'s logs.

    Relies on `keras.Model._loss_tracker` (created by `compile`): a custom train step that does
    not call `Trainer.train_step` must update it for the progress bar and `History` to show the
    loss. No public accessor exists in Keras 3.
    """
    tracker = _private(model, "_loss_tracker", "Model._loss_tracker (the loss Mean that compile creates)")
    if not isinstance(tracker, keras.metrics.Mean):
        _fail(f"Model._loss_tracker being a keras.metrics.Mean (got {type(tracker).__name__})")
    return tracker


def compiled_loss_leaves(model, y=None, y_pred=None):
    """[(path, keras.losses.Loss, loss weight or None)]: the leaves of the model's compiled loss
    container, as Keras resolved them (loss names and functions wrapped, dict / list losses and
    `loss_weights` matched to the outputs). Built on (y, y_pred) first if Keras has not yet.

    Relies on `keras.Model._compile_loss` (a `CompileLoss`), its `build(y_true, y_pred)`, `built`,
    and `_flat_losses`, a list of (path, loss, weight, name) tuples. No public accessor exists.
    """
    container = _private(model, "_compile_loss", "Model._compile_loss (the compiled loss container)")
    if container is None:
        raise ValueError("The model has no compiled loss; compile it with `loss=` or pass `loss=`.")
    if not getattr(container, "built", False):
        if y is None or y_pred is None:
            raise ValueError("The compiled loss is not built yet; give a batch (y, y_pred) to build it.")
        _private(container, "build", "CompileLoss.build(y_true, y_pred)")(y, y_pred)
    flat = _private(container, "_flat_losses", "CompileLoss._flat_losses")
    leaves = []
    for entry in flat:
        if len(entry) != 4 or not isinstance(entry[1], keras.losses.Loss):
            _fail("CompileLoss._flat_losses holding (path, Loss, weight, name) tuples")
        path, loss, weight, _ = entry
        leaves.append((tuple(path), loss, weight))
    return leaves


# -------------------------------------------------------------------------- optimizers
def optimizer_own_variables(optimizer):
    """The variables an optimizer created itself (`add_variable`), without those of an inner
    optimizer. Relies on `keras.optimizers.Optimizer._variables` (a list)."""
    own = _private(optimizer, "_variables", "Optimizer._variables")
    if not isinstance(own, list):
        _fail("Optimizer._variables (the list add_variable appends to)")
    return own


def check_variables_are_known(optimizer, variables):
    """Keras' own check that `variables` are those the optimizer was built with.

    Relies on `keras.optimizers.Optimizer._check_variables_are_known(variables)`.
    """
    method = _private(optimizer, "_check_variables_are_known", "Optimizer._check_variables_are_known")
    if not callable(method):
        _fail("Optimizer._check_variables_are_known")
    method(variables)


def optimizer_strategy(optimizer):
    """The tf.distribute strategy an optimizer was created under (its variables are placed by it).

    Relies on `keras.src.backend.tensorflow.optimizer.TFOptimizer._distribution_strategy`.
    """
    strategy = _private(optimizer, "_distribution_strategy", "TFOptimizer._distribution_strategy")
    if not isinstance(strategy, tf.distribute.Strategy):
        _fail("TFOptimizer._distribution_strategy (a tf.distribute.Strategy)")
    return strategy


def make_step_counter_replica_local(optimizer):
    """Gives `optimizer.iterations` a TF variable with aggregation NONE (one copy per replica).

    Keras creates the counter with aggregation "only_first_replica", whose update in replica
    context is a `merge_call`; the robust wrappers (and Keras' own LossScaleOptimizer) update an
    inner optimizer inside a `tf.cond` (skip non-finite or not-yet-due steps), and on strategies
    that run without merge_call (TPUStrategy, Mirrored under XLA on GPUs) a merge_call inside
    control flow fails. With NONE every replica increments its own copy; the copies stay equal
    because every replica runs the same update on the same all-reduced gradients (as for every
    variable of the wrappers). The Keras variable object, its value, path, place in
    `optimizer.variables` and checkpoint key stay the same: only the TF variable behind it changes.

    Relies on `keras.Variable._value`, the TF variable a Keras variable delegates reads, writes and
    checkpointing to (TensorFlow backend).
    """
    counter = optimizer.iterations
    if not isinstance(counter, keras.Variable):
        raise ValueError(f"{type(optimizer).__name__}.iterations is not a variable (gradient "
                         "accumulation?); the robust optimizers need a plain Keras optimizer.")
    current = _private(counter, "_value", "keras.Variable._value (the TF variable behind it)")
    if not isinstance(current, tf.Variable):
        _fail(f"keras.Variable._value being a tf.Variable (got {type(current).__name__})")
    if current.aggregation == tf.VariableAggregation.NONE:
        return
    with tf.init_scope():
        count = tf.convert_to_tensor(current)
    with optimizer_strategy(optimizer).scope():
        replacement = tf.Variable(count, name=current.name.split(":")[0], trainable=False,
                                  aggregation=tf.VariableAggregation.NONE)
    counter._value = replacement
    if counter.value is not replacement:
        _fail("keras.Variable.value returning keras.Variable._value")


ALL_REDUCE_HOOK = "_all_reduce_sum_gradients"


def _identity_grads_and_vars(grads_and_vars):
    """Replacement for `TFOptimizer._all_reduce_sum_gradients`: gradients are already reduced."""
    return list(grads_and_vars)


def _check_all_reduce_hook(optimizer_type):
    """The hook exists on the type and `_backend_update_step` (the only all-reduce of a TF
    optimizer's `apply`) calls it: if Keras stopped calling it, replacing it would not prevent a
    second all-reduce of already summed gradients, silently."""
    hook = _private(optimizer_type, ALL_REDUCE_HOOK,
                    f"TFOptimizer.{ALL_REDUCE_HOOK} (for {optimizer_type.__name__})")
    if not callable(hook):
        _fail(f"TFOptimizer.{ALL_REDUCE_HOOK} being a method")
    step = _private(optimizer_type, "_backend_update_step", "TFOptimizer._backend_update_step")
    try:
        source = inspect.getsource(step)
    except (TypeError, OSError):
        source = ""
    if f"self.{ALL_REDUCE_HOOK}(" not in source:
        _fail(f"TFOptimizer._backend_update_step calling self.{ALL_REDUCE_HOOK}(...)")


def disable_all_reduce(optimizer):
    """Stop a Keras TF optimizer instance from all-reducing the gradients handed to `apply`.

    Used by the robust wrappers, which sum the replicas' gradients themselves before the median
    (one all-reduce of P values per step). The public alternative -- each replica hands the inner
    optimizer median / R and lets it all-reduce -- moves 2 P values per step instead of P.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"disable_all_reduce needs a keras optimizer with `{ALL_REDUCE_HOOK}`; "
                        f"got {type(optimizer).__name__}.")
    _check_all_reduce_hook(type(optimizer))
    setattr(optimizer, ALL_REDUCE_HOOK, _identity_grads_and_vars)


# ---------------------------------------------------------------------------- tf.distribute
def strategy_supports_no_merge_call():
    """Whether the current strategy runs without merge_call (TPUStrategy, Mirrored + XLA on GPU).

    Relies on `tf.__internal__.distribute.strategy_supports_no_merge_call` (the same test Keras'
    LossScaleOptimizer makes); no public equivalent exists.
    """
    what = "tf.__internal__.distribute.strategy_supports_no_merge_call"
    internal = _private(_private(tf, "__internal__", what, _fail_tf), "distribute", what, _fail_tf)
    fn = _private(internal, "strategy_supports_no_merge_call", what, _fail_tf)
    if not callable(fn):
        _fail_tf(what)
    return fn()


def in_xla_compilation():
    """Whether the code being traced is compiled by XLA as a whole (inside a
    `tf.function(jit_compile=True)`, e.g. a Keras train step compiled with `jit_compile=True`,
    or a function called from one). False eagerly and in ordinary graphs.

    Relies on `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext` (what TF's own
    ops use to tell); no public equivalent exists.
    """
    fn = _module_function("tensorflow.python.ops.control_flow_util",
                          "GraphOrParentsInXlaContext", _fail_tf)
    return bool(fn(tf.compat.v1.get_default_graph()))


def onednn_enabled():
    """Whether TensorFlow's oneDNN (MKL) CPU kernels are on in this process (decided once per
    process: `TF_ENABLE_ONEDNN_OPTS`, else on for Linux x86 CPUs with AVX512_VNNI, AVX512_BF16,
    AVX_VNNI or AMX).

    Relies on `tensorflow.python.util._pywrap_util_port.IsMklEnabled` (what TF's own tests use);
    no public equivalent exists.
    """
    return bool(_module_function("tensorflow.python.util._pywrap_util_port", "IsMklEnabled",
                                 _fail_tf)())


def _module_function(module_path, name, fail):
    """The function `name` of the private module `module_path`, or `fail(what)` (raising
    KerasInternalsError) when the module, the name or its being callable is gone."""
    what = f"{module_path}.{name}"
    try:
        module = importlib.import_module(module_path)
    except ImportError:
        fail(what)
    fn = _private(module, name, what, fail)
    if not callable(fn):
        fail(what)
    return fn


def _fail_tf(what):
    raise KerasInternalsError(
        f"cgh_tf relies on {what}, which TensorFlow {tf.__version__} (Keras {keras.__version__}) "
        "does not provide; this version is not supported by this cgh_tf release (see setup.cfg).")


# ------------------------------------------------------------------------------ Functional
def _global_state():
    """Keras' global-state module (`keras.src.backend.common.global_state`), checked to have
    `get_global_attribute(name, default)` and `set_global_attribute(name, value)`."""
    for name in ("get_global_attribute", "set_global_attribute"):
        _module_function("keras.src.backend.common.global_state", name, _fail)
    return importlib.import_module("keras.src.backend.common.global_state")


@contextlib.contextmanager
def keeping_global_dtype_policy():
    """Context manager: Keras' global dtype policy after the block is what it was before it,
    including *not set yet*.

    Keras fixes its global policy at the first layer it creates (`keras.config.dtype_policy()`
    stores `DTypePolicy(floatx())` when none is set), so a layer made while cgh_tf is imported
    would silently pin every later layer to float32: `import cgh_tf` then
    `keras.config.set_floatx("float64")` built float32 models. Relies on the global attribute
    "dtype_policy" of `keras.src.backend.common.global_state` (None until set); checked after the
    block.
    """
    state = _global_state()
    before = state.get_global_attribute("dtype_policy", None)
    try:
        yield
    finally:
        state.set_global_attribute("dtype_policy", before)
        if state.get_global_attribute("dtype_policy", None) is not before:
            _fail('global_state.get_global_attribute("dtype_policy") returning what was set')


def _functional_class():
    """`keras.src.models.functional.Functional`, the class of `keras.Model(inputs, outputs)`.

    Keras exports no public name for it; it is found as the type of a tiny functional model (one
    `Identity` layer: Keras 3.10-3.13 reject a model whose output is its input; the layer has no
    weights, so the probe creates no variable and does not start the TF runtime), checked to be a
    `keras.Model` subclass that takes `(inputs, outputs)`. Any failure of the probe is a
    `KerasInternalsError`.
    """
    try:
        with keeping_global_dtype_policy():
            inputs = keras.Input((1,))
            cls = type(keras.Model(inputs, keras.layers.Identity()(inputs)))
    except KerasInternalsError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever Keras raises, the probe failed
        _fail(f"keras.Model(inputs, outputs) building a functional model ({error!r})")
    if cls is keras.Model or not issubclass(cls, keras.Model) or cls.__name__ != "Functional":
        _fail(f"keras.Model(inputs, outputs) returning a Functional (got {cls.__name__})")
    parameters = list(inspect.signature(cls.__init__).parameters)
    if parameters[1:3] != ["inputs", "outputs"]:
        _fail(f"Functional.__init__(self, inputs, outputs, ...) (got {parameters})")
    return cls


Functional = _functional_class()


def _functional_init_arguments():
    """Keras' own test of `Model(...)` arguments that make a functional model.

    Relies on `keras.src.models.model.functional_init_arguments(args, kwargs)`, which
    `keras.Model.__new__` uses to turn `Model(inputs, outputs)` into a Functional.
    """
    return _module_function("keras.src.models.model", "functional_init_arguments", _fail)


_FUNCTIONAL_INIT_ARGUMENTS = _functional_init_arguments()


def is_functional_call(args, kwargs):
    """Whether `Model(*args, **kwargs)` is the functional form (inputs and outputs given, by
    position or keyword), by Keras' own rule."""
    return bool(_FUNCTIONAL_INIT_ARGUMENTS(args, kwargs))
