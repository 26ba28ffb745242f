"""`cgh_tf.Model`: a `keras.Model` whose `train_step` knows the Coherent Gradients tricks.

Use it exactly like `keras.Model` (functional: `cgh_tf.Model(inputs, outputs)`; subclassed:
`class Net(cgh_tf.Model)`, before or after the functional form was used), and choose what the train
step does in `compile`:

| compile option                          | what one `train_step` does                            | cost vs. plain step       |
|-----------------------------------------|-------------------------------------------------------|---------------------------|
| `optimizer=cgh_tf.M3(opt, groups=k)`    | = `optimizer=opt, aggregation=MedianOfMeans(k)`: the  | ≈ 1 (same examples)       |
|                                         | median of the mean gradients of k contiguous groups   |                           |
| `aggregation="winsorize"`,              | coordinate-wise winsorized mean of the per-example    | 2-6× with a static batch  |
| `winsorize_pct=c`                       | gradients (clip to the c-th / (100-c)-th percentile)  | (XLA network), else more  |
| `aggregation=<cgh_tf.aggregators.X>`    | any aggregator of `cgh_tf.aggregators`                |                           |
| `coherence_every=N`                     | every N steps: m-coherence and alpha of the training  | N = 1: the aggregator's   |
|                                         | batch as metrics `m_coherence`, `alpha`               | own pass (shared)         |
| `coherence_per_layer=True`              | also `m_coherence/<layer>` for every layer with weights | same pass               |
| `coherence_include_regularization=True` | the metrics of g_i + ∇R (weight regularisers' R)      | no extra pass             |
| anything else                           | the plain Keras step (RM3 / RA3 / any optimizer)      | 1                         |

One path (docs/design.md §5): batch → gradient source (`cgh_tf.gradient_sources`) → aggregator →
`optimizer.apply`. This class only wires the compile options, the step and the metrics.

| aggregator needs        | source                                                   | with `coherence_every=1` (shared pass)      |
|-------------------------|----------------------------------------------------------|---------------------------------------------|
| k group means (k ≥ 1)   | one device: k forward/backward passes on the k slices;   | the per-example engine on each slice: its   |
|                         | R replicas, k > 1: the shards cut into the global groups | Σ_i g_i is the group's row, its squared     |
|                         | (one forward, ≤ ⌈k/R⌉ + 1 backward passes per replica,   | norms of all slices give Q                  |
|                         | one collective: `cgh_tf.replica_groups`)                 |                                             |
| per-example gradients   | `per_example.reduced_per_example_gradients` (one device) | the same pass returns S and the norms       |

The pass is shared unless the model computes differently in training and inference mode
(Dropout, BatchNorm, noise: the update needs `training=True`, coherence is taken with
`training=False`, so two passes are unavoidable) or there are several replicas; then (and for
N > 1) coherence is a separate pass on the measured steps. Every per-example gradient is that of
ℓ_i, example i's share of Keras' own batch loss (`cgh_tf.loss_decomposition`: masks, sample and
class weights, loss_weights, several outputs), so a mean aggregator's update is keras.Model's.

Mixed precision goes through the public LossScaleOptimizer API only: every source differentiates
`optimizer.scale_loss(loss)`, the aggregate (aggregators are positively homogeneous) goes to
`optimizer.apply`, which unscales, skips non-finite steps and adjusts the scale.

Coherence metrics behave like `keras.metrics.Mean`s updated only on measured steps, so the progress
bar and `History` show the mean over the measured steps of the epoch so far; they are not shown by
`evaluate`. Where nothing was measured (an epoch, or the start of one, without a step with
`step % N == 0`; the step counter starts at 0 and runs on across epochs) the value is NaN, never 0 —
0 is a real m-coherence (gradients that cancel). A measured batch whose per-example gradients are all
zero (Q = 0) has no m-coherence either: it contributes NaN, as in `cgh_tf.coherence.stats_from_sums`,
and the epoch mean is then NaN too. Keras' `CSVLogger` writes these values as `nan`; the trainer
(`trainers/train.py`) writes no value instead (null in `results.json`, no TensorBoard scalar).

Groups: example i of a batch of n belongs to group ⌊i·k/n⌋ (contiguous, sizes differ by at most
one). `fit` requires every batch whose size is known before training (arrays, `validation_split`,
a `tf.data` batch size from the element spec or the first element) to split into k equal groups
and says so in one line otherwise; a batch size known only while running (e.g. the last partial
batch of a `tf.data` pipeline without `drop_remainder`) is split by the rule above.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import warnings
import weakref
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from cgh_tf import (aggregators, gradient_sources, keras_internals, mode_dependence, optimizers,
                    per_example, precision, regularization, robust)


_STEPS_KEY = "cgh_steps_trained"  # the entry of `steps_trained` in Keras' variable store


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The `cgh_tf.Model.compile` options beyond Keras' own (see the module table)."""

    coherence_every: int = 0
    coherence_per_layer: bool = False
    coherence_training: bool = False
    aggregator: aggregators.Aggregator = dataclasses.field(default_factory=aggregators.Mean)
    coherence_dtype: Optional[str] = None
    coherence_include_regularization: bool = False

    def __post_init__(self):
        every = self.coherence_every
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 0:
            raise ValueError(f"coherence_every must be an int >= 0 (0 = off), got {every!r}.")
        object.__setattr__(self, "coherence_every", int(every))
        precision.check_coherence_dtype(self.coherence_dtype)
        regularization.check_flag(self.coherence_include_regularization,
                                  "coherence_include_regularization")
        for name in ("coherence_per_layer", "coherence_training", "coherence_dtype",
                     "coherence_include_regularization"):
            if getattr(self, name) and not self.coherence_every:
                raise ValueError(f"{name}={getattr(self, name)!r} has no effect without "
                                 "coherence_every >= 1; set coherence_every (e.g. 1) or remove it.")

    def to_config(self) -> dict:
        return {"coherence_every": self.coherence_every,
                "coherence_per_layer": self.coherence_per_layer,
                "coherence_training": self.coherence_training,
                "coherence_dtype": self.coherence_dtype,
                "coherence_include_regularization": self.coherence_include_regularization,
                "aggregation": keras.saving.serialize_keras_object(self.aggregator)}


class _TrainState:
    """Step counter and the running means of the coherence metrics.

    Aggregation "none": every replica writes the same values (the coherence sums are all-reduced
    first), so no update needs a merge_call, also on strategies that run without one. The
    metrics are kept as one vector of sums and one count (a handful of ops per step instead of
    a Keras `Mean` per metric, which costs milliseconds of op overhead on a CPU), outside Keras'
    attribute tracking: they are not in `model.metrics`, so `evaluate` does not report them.
    """

    def __init__(self, strategy):
        self._strategy = strategy
        with strategy.scope():
            self.step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="cgh_train_step",
                aggregation=tf.VariableAggregation.NONE,
            )
        self._set_keys(["m_coherence", "alpha"])

    def _set_keys(self, keys):
        self.keys = list(keys)
        with self._strategy.scope():
            self.sums = tf.Variable(tf.zeros([len(self.keys)]), trainable=False,
                                    name="cgh_coherence_sums",
                                    aggregation=tf.VariableAggregation.NONE)
            self.count = tf.Variable(0.0, trainable=False, name="cgh_coherence_count",
                                     aggregation=tf.VariableAggregation.NONE)

    def add_layer_keys(self, layer_names):
        """Adds `m_coherence/<layer>` for every layer name (before the train step is traced)."""
        keys = ["m_coherence", "alpha"] + [f"m_coherence/{name}" for name in layer_names]
        if keys != self.keys:
            self._set_keys(keys)

    def update(self, values, weight):
        """Adds `weight` × values ([len(keys)] float32) to the sums and `weight` to the count.

        `weight` is 1.0 on a measured step, 0.0 otherwise; the values of an unmeasured step are
        ignored (they may be NaN), those of a measured step are added as they are (NaN included).
        """
        self.sums.assign_add(tf.where(weight > 0, values * weight, tf.zeros_like(values)))
        self.count.assign_add(weight)

    def results(self):
        """{key: mean over the measured steps since the last reset}; NaN before any measurement."""
        sums = tf.convert_to_tensor(self.sums)
        count = tf.convert_to_tensor(self.count)
        means = tf.where(count > 0, sums / tf.maximum(count, 1.0),
                         tf.fill(tf.shape(sums), float("nan")))
        return dict(zip(self.keys, tf.unstack(means, num=len(self.keys))))

    def reset(self):
        self.sums.assign(tf.zeros_like(self.sums))
        self.count.assign(0.0)




# ------------------------------------------------------------------------------ batch checks
def _check_array_batches(num_examples, batch_size, groups, where=""):
    """Raises ValueError unless every batch of `num_examples` split by `batch_size` divides into
    `groups` equal groups (the last, partial batch included)."""
    last = num_examples % batch_size
    for size in (batch_size, last):
        if size and size % groups:
            raise ValueError(
                f"M3 with groups={groups} needs every batch to split into {groups} equal groups, "
                f"but {num_examples} examples{where} in batches of {batch_size} give a batch of "
                f"{size}; use a batch size and a number of examples that are multiples of "
                f"{groups} (e.g. batch_size={batch_size - batch_size % groups or groups}), or a "
                "tf.data pipeline with drop_remainder=True.")


def _check_dataset_batches(dataset, groups):
    """Checks the (global) batch size of a tf.data.Dataset of batches: from the element spec if
    static, else from the first element. (A later partial batch is split by the group rule.)"""
    spec = tf.nest.flatten(dataset.element_spec)[0]
    size = spec.shape[0] if spec.shape.rank else None
    if size is None:
        first = next(iter(dataset))
        size = int(tf.shape(tf.nest.flatten(first)[0])[0])
    if size % groups:
        raise ValueError(
            f"M3 with groups={groups} needs a batch size divisible by {groups}; got a batch of "
            f"size {size} from the dataset; batch it by a multiple of {groups}.")


# ------------------------------------------------------------------------------ helpers
_WARNED_SECOND_PASS = weakref.WeakSet()  # models told that their metric takes a second pass


def _warn_second_pass(model, layer_names):
    if model in _WARNED_SECOND_PASS:
        return
    _WARNED_SECOND_PASS.add(model)
    warnings.warn(
        f"cgh_tf.Model: coherence_every=1 measures in inference mode, and layers {layer_names} "
        "compute differently in training mode, so every step makes a second forward/backward pass "
        "for the metric (about 2x a plain step). coherence_training=True measures on the update's "
        "own training-mode pass instead; a frozen BatchNormalization (trainable=False) needs no "
        "second pass.", stacklevel=2)




def _coherence_from_sums(sq_norm_of_sum, sum_of_sq_norms, m):
    """(m-coherence, alpha) = (‖S‖²/Q, ‖S‖²/(m·Q)); NaN where Q = 0 (undefined; also every
    unmeasured step, whose values `_TrainState.update` ignores).

    The same formulas as `cgh_tf.coherence.stats_from_sums`.
    """
    r = tf.where(sum_of_sq_norms > 0,
                 sq_norm_of_sum / tf.where(sum_of_sq_norms > 0, sum_of_sq_norms, 1.0),
                 float("nan"))
    return r, r / m


@keras.saving.register_keras_serializable(package="cgh_tf")
class Model(keras.Model):
    """`keras.Model` with in-batch aggregators (M3, winsorized GD, ...) and per-step coherence.

    See the module docstring for the table of `compile` options. Everything else is Keras.
    """

    def __new__(cls, *args, **kwargs):
        # Keras makes `Model(inputs, outputs)` functional by rewriting the *class's* bases to
        # Functional, which would break every later `class Net(cgh_tf.Model)`. The functional
        # form gets its own class instead, and cgh_tf.Model's bases are never touched.
        if cls is Model and keras_internals.is_functional_call(args, kwargs):
            return super().__new__(FunctionalModel)
        return super().__new__(cls, *args, **kwargs)

    # ----------------------------------------------------------------------------------- compile
    def compile(self, optimizer: str | keras.optimizers.Optimizer = "rmsprop", *args: Any,
                coherence_every: int = 0, coherence_per_layer: bool = False,
                coherence_training: bool = False,
                aggregation: str | aggregators.Aggregator | dict = "mean",
                winsorize_pct: float | None = None, coherence_dtype: str | tf.DType | None = None,
                coherence_include_regularization: bool = False, **kwargs: Any) -> None:
        """`keras.Model.compile` plus the options of the module table.

        Args:
          optimizer: any Keras optimizer or wrapper. An `M3` here means its groups are contiguous
            groups of each batch: it is replaced by its inner optimizer and the aggregator
            `MedianOfMeans(groups, l2)` (in a plain `keras.Model` they are consecutive batches).
          coherence_every: measure the training batch's m-coherence every N train steps (0 = off).
          coherence_per_layer: also report `m_coherence/<layer name>` (needs coherence_every).
          coherence_training: take the per-example gradients in training mode (Dropout active,
            BatchNorm with batch statistics, which couples the examples of a batch); default
            inference mode, as in docs/design.md (needs coherence_every).
          aggregation: "mean" (Keras), "winsorize" (with `winsorize_pct` in [0, 50), required:
            no default c), or an instance of `cgh_tf.aggregators.Aggregator`.
          coherence_dtype: None (the layers' compute dtype) or "float32": under a 16-bit mixed
            policy, compute the coherence metrics in float32 (a separate pass; `cgh_tf.precision`;
            without it a one-time warning names the expected error). Needs coherence_every.
          coherence_include_regularization: the metrics of g_i + ∇R, each example's objective
            ℓ_i + R with R the weight regularisers' penalty (as `coherence.measure(...,
            include_regularization=True)`; `cgh_tf.regularization`). Activity regularisers and
            `add_loss` penalties are refused when `fit` starts. Needs coherence_every.
        """
        aggregator = aggregators.get(aggregation, winsorize_pct)
        optimizer, aggregator = _in_batch_m3(optimizer, aggregator)
        self._cgh_options = TrainOptions(
            coherence_every=coherence_every, coherence_per_layer=coherence_per_layer,
            coherence_training=coherence_training, aggregator=aggregator,
            coherence_dtype=coherence_dtype,
            coherence_include_regularization=coherence_include_regularization)
        super().compile(optimizer, *args, **kwargs)
        self._cgh_state = _TrainState(self.distribute_strategy)
        if getattr(self, "_cgh_restored_step", None) is not None:  # loaded before compile
            self._cgh_state.step.assign(self._cgh_restored_step)

    @property
    def steps_trained(self) -> tf.Variable | None:
        """The int64 `tf.Variable` counting train steps (it decides which steps measure
        coherence with `coherence_every`); None before `compile`. Saved with the model (`.keras`,
        `save_weights`) and in `trainers/run_state.py`'s checkpoints, so a reloaded run measures
        on the same steps as an uninterrupted one."""
        state = getattr(self, "_cgh_state", None)
        return None if state is None else state.step

    def save_own_variables(self, store: dict) -> None:
        """Keras' saving hook: the model's own variables, plus `steps_trained` once compiled."""
        super().save_own_variables(store)
        if getattr(self, "_cgh_state", None) is not None:
            store[_STEPS_KEY] = np.asarray(self._cgh_state.step.numpy())

    def load_own_variables(self, store: dict) -> None:
        """Keras' loading hook: restores `steps_trained` (applied by `compile` if the model is
        compiled later) and hands the other entries to Keras."""
        keys = list(store.keys())
        if _STEPS_KEY in keys:
            self._cgh_restored_step = int(np.asarray(store[_STEPS_KEY]))
            if getattr(self, "_cgh_state", None) is not None:
                self._cgh_state.step.assign(self._cgh_restored_step)
            store = {key: store[key] for key in keys if key != _STEPS_KEY}
        super().load_own_variables(store)

    def make_train_function(self, force: bool = False) -> Callable[..., Any]:
        """Keras hook, called eagerly once the model is built, before tracing the train step.

        Builds the optimizer (so that `scale_loss` reads the dynamic loss scale variable while
        tracing) and the per-layer coherence sums.
        """
        if self.optimizer is not None and not self.optimizer.built and self.built:
            self.optimizer.build(self.trainable_variables)
        if (isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer) and self.optimizer.built
                and self.distribute_strategy.num_replicas_in_sync > 1):
            # Keras' LossScaleOptimizer updates its inner optimizer inside a tf.cond; its step
            # counter must then not need a merge_call (strategies that run without one).
            keras_internals.make_step_counter_replica_local(self.optimizer.inner_optimizer)
        if self.built:
            precision.check_float32_possible(self, self._cgh_options.coherence_dtype)
            if self._cgh_options.aggregator.per_example:  # non-Dense variables: the exact fallback
                mode_dependence.check_examples_independent(
                    self, True, f"cgh_tf.Model with aggregation={self._cgh_options.aggregator!r}")
        if self._cgh_options.coherence_per_layer:
            self._cgh_state.add_layer_keys(dict.fromkeys(per_example.variable_layer_names(self)))
        return super().make_train_function(force=force)

    def fit(self, *args: Any, **kwargs: Any) -> keras.callbacks.History:
        """`keras.Model.fit`; with a group aggregator, checks the batch sizes before training.

        Every batch whose size is known beforehand must split into the aggregator's groups: arrays
        (the last partial batch and `validation_split` included) and the batches of a
        `tf.data.Dataset` (element spec, else first element). Fails at once, in one line.
        """
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        bound.apply_defaults()
        x = bound.arguments["x"]
        if getattr(self, "compiled", False) and x is not None:
            self._check_batches(x, bound.arguments["batch_size"],
                                bound.arguments["validation_split"] or 0.0)
        if not self.built and x is not None:
            self._build_on_first_example(x)
        if getattr(self, "compiled", False) and self._cgh_options.coherence_include_regularization:
            first = _first_input(x)
            if first is not None:
                regularization.check_weight_regularizers_only(
                    self, first, option="coherence_include_regularization")
        return super().fit(*args, **kwargs)

    def _check_batches(self, x, batch_size, validation_split):
        groups = self._cgh_options.aggregator.groups
        if groups == 1:
            return
        if isinstance(x, tf.data.Dataset):  # its batches are global batches, split by Keras
            _check_dataset_batches(x, groups)
            return
        first = tf.nest.flatten(x)[0]
        if hasattr(first, "shape") and first.shape and first.shape[0] is not None:
            n = int(first.shape[0])
            where = ""
            if validation_split:
                n = int(math.floor(n * (1.0 - validation_split)))
                where = f" (after validation_split={validation_split})"
            _check_array_batches(n, batch_size or 32, groups, where)

    def _build_on_first_example(self, x):
        """Builds an unbuilt model (Sequential without Input, subclassed) by calling it on the first
        example of `x` (arrays or a tf.data.Dataset of (x, y) batches), as Keras' first call would.

        The per-layer coherence metrics are created before the train step is traced, from the
        layers that own variables, so they need the built model.
        """
        first = _first_input(x)
        if first is not None:  # None: a generator or PyDataset, Keras builds it while tracing
            self(first, training=False)

    def get_compile_config(self) -> dict | None:
        config = super().get_compile_config()
        if config and hasattr(self, "_cgh_options"):
            config["cgh_options"] = self._cgh_options.to_config()
        return config

    def compile_from_config(self, config: dict) -> None:
        config = dict(config)
        options = dict(config.pop("cgh_options", {}))
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config, **options)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def reset_metrics(self) -> None:
        super().reset_metrics()
        if getattr(self, "_cgh_state", None) is not None:
            self._cgh_state.reset()

    # -------------------------------------------------------------------------------- train step
    def train_step(self, data: tuple) -> dict:
        """batch → gradient source → aggregator → optimizer.apply; coherence (if due) is measured
        at the weights the gradient is taken at, from the same pass when it can be shared."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        aggregator = self._cgh_options.aggregator
        shared = self._shares_pass()
        if self._cgh_options.coherence_every and not shared:
            done = self._maybe_measure_coherence(x, y, sample_weight)
            x = _after(done, x)  # one pass at a time: peak memory of the larger, not the sum
        variables = self.trainable_variables
        source = self._source(x, y, sample_weight, shared)
        grads = source.reduced if aggregator.per_example else aggregator(source.rows)
        scale = gradient_sources.loss_scale(self)
        if not source.regularized:
            grads = gradient_sources.add(
                grads, gradient_sources.regularization_gradients(self, scale))
        if aggregator.l2:
            grads = gradient_sources.add(
                grads, [tf.cast(aggregator.l2 * scale, v.dtype) * v for v in variables])
        shift = None if source.sums is None else self._regularizer_shift(scale)  # before the update
        if source.replica_reduced:  # every replica holds the update; Keras' optimizer sums them
            replicas = self.distribute_strategy.num_replicas_in_sync
            grads = [None if g is None else g / replicas for g in grads]
        self.optimizer.apply(_after_all(grads), variables)
        if source.sums is not None:
            grad_sum, sq_norms, m = source.sums
            self._record_coherence(grad_sum, sq_norms, m, self._is_measurement(grad_sum, sq_norms),
                                   shift)
        self._update_loss(source.loss, x)
        if not source.regularized:  # the source did not call compute_loss
            self._update_output_losses(y, source.y_pred, sample_weight)
        logs = self.compute_metrics(x, y, source.y_pred, sample_weight=sample_weight)
        self._cgh_state.step.assign_add(1)
        return {**logs, **self._coherence_results()}

    def _source(self, x, y, sample_weight, shared):
        """The gradient source the aggregator needs (`cgh_tf.gradient_sources`)."""
        aggregator = self._cgh_options.aggregator
        if aggregator.per_example:
            training = self._cgh_options.coherence_training if shared else True
            return gradient_sources.per_example_source(self, x, y, sample_weight, aggregator,
                                                       training, shared)
        if shared:
            return gradient_sources.engine_group_source(
                self, x, y, sample_weight, aggregator.groups, self._cgh_options.coherence_training)
        return gradient_sources.group_source(self, x, y, sample_weight, aggregator.groups)

    def _is_measurement(self, grad_sum, sq_norms):
        """Under loss scaling a step whose scaled gradients overflowed is skipped by the
        LossScaleOptimizer and is not a measurement either (its sums are not finite); without
        loss scaling every shared-pass step is one (decided while tracing: no extra reduction)."""
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            return tf.constant(True)
        return robust.all_finite(list(grad_sum) + [sq_norms])

    def _shares_pass(self):
        """True when the update's pass also gives the coherence sums (see the module docstring);
        says so once per model when only the model's mode-dependent layers prevent it (and once
        when the metric is computed in 16 bits). Metrics in float32 under a 16-bit policy
        (coherence_dtype="float32") take their own pass."""
        opts = self._cgh_options
        if opts.coherence_every:
            precision.warn_if_16_bit(self, opts.coherence_dtype)
            if opts.coherence_dtype == "float32" and precision.sixteen_bit_dtype(self):
                return False
        if not (opts.coherence_every == 1 and self.distribute_strategy.num_replicas_in_sync == 1):
            return False
        if opts.coherence_training:
            return True
        dependent = mode_dependence.mode_dependent_layers(self)
        if dependent:
            _warn_second_pass(self, dependent)
        return not dependent

    def _update_output_losses(self, y, y_pred, sample_weight):
        """With several outputs, Keras logs each output's loss (e.g. "cls_loss") from Means that
        its loss container updates when it computes the loss; a per-example source does not call
        it, so it is called here on the predictions for that side effect (the loss alone, no
        model pass; its value is discarded, the decomposition's is logged)."""
        if tf.nest.is_nested(y_pred):
            self.compute_loss(y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)

    def _update_loss(self, loss, x):
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        keras_internals.loss_tracker(self).update_state(loss, sample_weight=batch)

    # ---- coherence of the training batch
    def _should_measure(self):
        return tf.equal(self._cgh_state.step % self._cgh_options.coherence_every, 0)

    def _maybe_measure_coherence(self, x, y, sample_weight=None):
        """Separate fast-path pass on measured steps (used when the update cannot share it).
        Returns a tensor computed at the end of the pass (for ordering the update's pass after it).
        At coherence_every=1 every step measures, with no conditional."""
        every_step = self._cgh_options.coherence_every == 1
        measure = tf.constant(True) if every_step else self._should_measure()
        grad_sum, sq_norms = gradient_sources.coherence_sums(
            self, x, y, sample_weight, self._cgh_options.coherence_training,
            True if every_step else measure, self._cgh_options.coherence_dtype)
        m = tf.cast(tf.shape(sq_norms)[0], tf.float32)
        self._record_coherence(grad_sum, sq_norms, m, measure, self._regularizer_shift(1.0))
        return sq_norms

    def _regularizer_shift(self, scale):
        """With coherence_include_regularization, r = scale · ∇R per variable (float64; the loss
        scale the pass's g_i carry), at the current weights; else None."""
        if not self._cgh_options.coherence_include_regularization:
            return None
        return [r * tf.cast(scale, tf.float64) for r in regularization.gradient(self)]

    def _record_coherence(self, grad_sum, sq_norms, m, measured, shift=None):
        """Adds the batch's coherence to the running means, from S, per-example squared norms, m.

        Args:
          grad_sum: [variables] tensors S_v = Σ_i g_i restricted to variable v.
          sq_norms: [m, variables] float32, ‖g_i restricted to v‖².
          m: number of examples (float32 scalar).
          measured: bool scalar; the running means only count measured steps.
          shift: None, or r per variable (`_regularizer_shift`, taken at the weights of the pass).

        Under tf.distribute S, Q and m are summed over replicas first, so the values equal the
        one-device values on the same global batch; with a `shift` every g_i is then translated
        by the same r (`regularization.translated`).
        """
        grad_sum = [tf.cast(g, tf.float32) for g in grad_sum]
        sum_of_sq_norms = tf.reduce_sum(tf.cast(sq_norms, tf.float32), axis=0)  # [variables]
        if self.distribute_strategy.num_replicas_in_sync > 1:
            context = tf.distribute.get_replica_context()
            grad_sum, sum_of_sq_norms, m = context.all_reduce(
                tf.distribute.ReduceOp.SUM, [grad_sum, sum_of_sq_norms, m])
        if shift is not None:
            grad_sum, sum_of_sq_norms = regularization.translated(grad_sum, sum_of_sq_norms, m,
                                                                  shift)
        sq_norm_of_sum = tf.stack([tf.reduce_sum(tf.square(g)) for g in grad_sum])
        r, alpha = _coherence_from_sums(tf.reduce_sum(sq_norm_of_sum),
                                        tf.reduce_sum(sum_of_sq_norms), m)
        values = [r, alpha]
        if self._cgh_options.coherence_per_layer:
            values += self._layer_coherence(sq_norm_of_sum, sum_of_sq_norms, m)
        self._cgh_state.update(tf.stack(values), tf.cast(measured, tf.float32))

    def _layer_coherence(self, sq_norm_of_sum, sum_of_sq_norms, m):
        """Per-layer m-coherence, in the order of `_TrainState.keys`: the variables of a layer form
        one block (its ‖S_b‖² and Q_b are block sums, because the blocks partition the coordinates).
        """
        blocks = per_example.variable_layer_names(self)
        values = []
        for name in dict.fromkeys(blocks):
            index = [i for i, block in enumerate(blocks) if block == name]
            r, _ = _coherence_from_sums(tf.reduce_sum(tf.gather(sq_norm_of_sum, index)),
                                        tf.reduce_sum(tf.gather(sum_of_sq_norms, index)), m)
            values.append(r)
        return values

    def _coherence_results(self):
        if not self._cgh_options.coherence_every:
            return {}
        return self._cgh_state.results()


def _first_input(x):
    """The model input of the first example of `x` (arrays or nests of them), or the first batch
    of a tf.data.Dataset of (x, y) batches; None for a generator or PyDataset."""
    if isinstance(x, tf.data.Dataset):
        first = next(iter(x))
        return first[0] if isinstance(first, (tuple, list)) else first
    if isinstance(x, (dict, list, tuple)) or hasattr(x, "shape"):
        return tf.nest.map_structure(lambda t: t[:1], x)
    return None


def _after(tensor, structure):
    """`structure` (nested tensors) behind a control dependency on `tensor`: ops that read the
    result start only once `tensor` is computed. Without it TF may run the separate coherence pass
    and the update's pass side by side, holding both passes' activations at once."""
    with tf.control_dependencies([tensor]):
        return tf.nest.map_structure(
            lambda t: tf.identity(t) if isinstance(t, tf.Tensor) else t, structure)


def _after_all(grads):
    """`grads` behind a control dependency on all of them: no variable is updated before every
    gradient is computed. Data dependencies alone let the update of one variable (e.g. a Dense
    kernel from the update's own tape) run while another gradient is still being computed, and
    the exact fallback's XLA function, which reads that kernel again for its per-example
    forward passes, was seen to read it updated (gradients off in proportion to the learning
    rate, inside Keras' non-XLA train function)."""
    tensors = [g for g in grads if isinstance(g, tf.Tensor)]
    if not tensors:
        return grads
    with tf.control_dependencies(tensors):
        return [tf.identity(g) if isinstance(g, tf.Tensor) else g for g in grads]


def _in_batch_m3(optimizer, aggregator):
    """compile(optimizer=M3(opt, groups=k, l2)) on a cgh_tf.Model = (opt, MedianOfMeans(k, l2))."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and isinstance(
            optimizer.inner_optimizer, optimizers.M3):
        raise ValueError("Pass cgh_tf.M3(...) itself to cgh_tf.Model.compile; under the "
                         "'mixed_float16' policy Keras adds the LossScaleOptimizer.")
    if not isinstance(optimizer, optimizers.M3):
        return optimizer, aggregator
    if not isinstance(aggregator, aggregators.Mean):
        raise ValueError(
            f"An M3 optimizer and aggregation={aggregator!r} (e.g. winsorize) are two different "
            "aggregators of the same batch; use one of them (wrap a plain optimizer for "
            "winsorized GD, or pass aggregation=cgh_tf.aggregators.MedianOfMeans(k)).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # M3 itself has warned about groups=2 already
        aggregator = aggregators.MedianOfMeans(optimizer.groups, l2=optimizer.l2)
    inner = optimizer.inner_optimizer
    if inner.loss_scale_factor is None:
        inner.loss_scale_factor = optimizer.loss_scale_factor
    return inner, aggregator


@keras.saving.register_keras_serializable(package="cgh_tf")
class FunctionalModel(Model, keras_internals.Functional):
    """`cgh_tf.Model(inputs, outputs)`: the functional form (see `Model.__new__`)."""

    # No __init__ of its own: Functional.__init__ is found through the MRO (cgh_tf.Model has
    # none), so the argument list is the installed Keras' own, which is what Keras' get_config /
    # from_config compare it with to save and revive the model as functional (3.12 accepts only
    # that list; 3.15 also (*args, **kwargs)).
