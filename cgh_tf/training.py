"""`cgh_tf.Model`: a `keras.Model` whose `train_step` knows the Coherent Gradients tricks.

Use it exactly like `keras.Model` (functional: `cgh_tf.Model(inputs, outputs)`; subclassed:
`class Net(cgh_tf.Model)`), and choose what the train step does in `compile`:

| compile option                       | what one `train_step` does                              | cost vs. plain step        |
|--------------------------------------|---------------------------------------------------------|----------------------------|
| `optimizer=cgh_tf.M3(opt, groups=k)` | splits the batch into k contiguous groups, hands the     | ≈ 1 (same examples)        |
|                                      | median of the k group-mean gradients to `opt`           |                            |
| `aggregation="winsorize"`,           | coordinate-wise winsorized mean of the per-example       | 2-6× with a static batch   |
| `winsorize_pct=c`                    | gradients (clip to the c-th / (100-c)-th percentile)     | size and small c (XLA      |
|                                      |                                                         | network), else 14-180×     |
| `coherence_every=N`                  | every N steps: m-coherence and alpha of the training     | fast path: one backward    |
|                                      | batch as metrics `m_coherence`, `alpha`                  | pass, norms from the tape  |
| `coherence_per_layer=True`           | also `m_coherence/<layer>` for every layer with weights  | same pass                  |
| anything else                        | the plain Keras step (RM3 / RA3 / any optimizer)          | 1                          |

Coherence metrics are `keras.metrics.Mean`s updated only on measured steps, so the progress bar and
`History` show the mean over the measured steps of the epoch; they are not shown by `evaluate`.

With M3 in a plain `keras.Model`, consecutive batches are the groups instead (the authors'
realisation); both give the same weights on the same examples (see `cgh_tf.optimizers`).

Under `tf.distribute` with R replicas, the in-batch M3 step assigns each example of the *global* batch
to its contiguous group, each replica computes its contribution to every group mean (k backward passes
of its shard), and `M3.apply_group_gradients` all-reduces the stacked `[k, ...]` contributions once.
On one device the batch is sliced instead (k backward passes of B/k examples each).
"""

import dataclasses

import keras
import tensorflow as tf

from cgh_tf import optimizers, per_example, robust

AGGREGATIONS = ("mean", "winsorize")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The `cgh_tf.Model.compile` options beyond Keras' own (see the module table)."""

    coherence_every: int = 0
    coherence_per_layer: bool = False
    coherence_training: bool = False
    aggregation: str = "mean"
    winsorize_pct: float = 0.0

    def __post_init__(self):
        if not isinstance(self.coherence_every, int) or self.coherence_every < 0:
            raise ValueError(
                f"coherence_every must be an int >= 0 (0 = off), got {self.coherence_every!r}."
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"Unknown aggregation {self.aggregation!r}; valid: {', '.join(AGGREGATIONS)}."
            )
        if not 0.0 <= self.winsorize_pct < 50.0:
            raise ValueError(
                f"winsorize_pct must be in [0, 50) (percent clipped on each side), "
                f"got {self.winsorize_pct!r}."
            )


class _TrainState:
    """Step counter and the running means of the coherence metrics.

    The metrics are kept as one vector of sums and one count (a handful of ops per step instead of
    a Keras `Mean` per metric, which costs milliseconds of op overhead on a CPU), outside Keras'
    attribute tracking: they are not in `model.metrics`, so `evaluate` does not report them.
    """

    def __init__(self, strategy):
        self._strategy = strategy
        with strategy.scope():
            self.step = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="cgh_train_step",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        self._set_keys(["m_coherence", "alpha"])

    def _set_keys(self, keys):
        self.keys = list(keys)
        with self._strategy.scope():
            self.sums = tf.Variable(tf.zeros([len(self.keys)]), trainable=False,
                                    name="cgh_coherence_sums",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.count = tf.Variable(0.0, trainable=False, name="cgh_coherence_count",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def add_layer_keys(self, layer_names):
        """Adds `m_coherence/<layer>` for every layer name (before the train step is traced)."""
        keys = ["m_coherence", "alpha"] + [f"m_coherence/{name}" for name in layer_names]
        if keys != self.keys:
            self._set_keys(keys)

    def update(self, values, weight):
        """Adds `weight` × values ([len(keys)] float32) to the sums and `weight` to the count."""
        self.sums.assign_add(values * weight)
        self.count.assign_add(weight)

    def results(self):
        """{key: mean over the measured steps since the last reset} (0 before any measurement)."""
        means = tf.math.divide_no_nan(tf.convert_to_tensor(self.sums), self.count)
        return dict(zip(self.keys, tf.unstack(means, num=len(self.keys))))

    def reset(self):
        self.sums.assign(tf.zeros_like(self.sums))
        self.count.assign(0.0)


def _check_array_batches(num_examples, batch_size, groups):
    """Raises ValueError unless every batch of `num_examples` split by `batch_size` divides into
    `groups` equal groups (the last, partial batch included)."""
    last = num_examples % batch_size
    for size in (batch_size, last):
        if size and size % groups:
            raise ValueError(
                f"M3 with groups={groups} needs every batch to split into {groups} equal groups, "
                f"but {num_examples} examples in batches of {batch_size} give a batch of {size}. "
                f"Use a batch size and a number of examples that are multiples of {groups} (e.g. "
                f"batch_size={batch_size - batch_size % groups or groups}), or a tf.data pipeline "
                "with drop_remainder=True.")


def _split_into_groups(structure, groups):
    """Splits every tensor of a nested structure into `groups` contiguous parts along axis 0."""
    if structure is None:
        return [None] * groups
    parts = [tf.split(t, groups, axis=0) for t in tf.nest.flatten(structure)]
    return [tf.nest.pack_sequence_as(structure, [p[j] for p in parts]) for j in range(groups)]


def _stack_group_gradients(group_grads):
    """[groups][variables] gradients -> [variables] tensors of shape [groups, *var.shape] (or None)."""
    stacked = []
    for per_variable in zip(*group_grads):
        if any(g is None for g in per_variable):
            stacked.append(None)
        else:
            stacked.append(tf.stack([tf.convert_to_tensor(g) for g in per_variable]))
    return stacked


def _depends_on_training(layer) -> bool:
    """Whether `layer` may compute differently in training and inference mode.

    True for every layer whose `call` takes `training` (Dropout, BatchNormalization, noise layers,
    user layers), except Keras' own `Dense` / `EinsumDense` calls, which take it only for float8
    quantization.
    """
    if not getattr(layer, "_call_has_training_arg", False):
        return False
    for base in (keras.layers.Dense, keras.layers.EinsumDense):
        if isinstance(layer, base) and type(layer).call is base.call:
            return getattr(layer, "quantization_mode", None) == "float8"
    return True


def _zeros_for_none(grads, variables):
    """Replaces None gradients by zeros of the variable's shape (tf.cond needs tensors)."""
    return [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) for g, v in zip(grads, variables)]


def _coherence_from_sums(sq_norm_of_sum, sum_of_sq_norms, m):
    """(m-coherence, alpha) = (‖S‖²/Q, ‖S‖²/(m·Q)); 0 where Q = 0 (an unmeasured step).

    The same formulas as `cgh_tf.coherence.stats_from_sums`, but NaN-free for the metric update.
    """
    r = tf.math.divide_no_nan(sq_norm_of_sum, sum_of_sq_norms)
    return r, tf.math.divide_no_nan(r, m)


def _unscale_and_update_loss_scale(loss_scaler, grads):
    """Mixed precision: unscale gradients of a scaled loss and update the dynamic loss scale.

    Mirrors `keras.optimizers.LossScaleOptimizer` for a caller that hands the gradients to its
    inner optimizer itself: on a non-finite gradient the scale halves (the M3 wrapper then skips the
    update and counts it), after `dynamic_growth_steps` finite steps it doubles.
    Returns the unscaled gradients (None stays None).
    """
    scale = tf.convert_to_tensor(loss_scaler.dynamic_scale)
    grads = [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]
    finite = loss_scaler.check_finite(grads)
    grow = tf.logical_and(finite, tf.equal(loss_scaler.step_counter,
                                           loss_scaler.dynamic_growth_steps - 1))
    counter = tf.convert_to_tensor(loss_scaler.step_counter)
    zero = tf.zeros_like(counter)
    loss_scaler.step_counter.assign(tf.where(finite, tf.where(grow, zero, counter + 1), zero))
    loss_scaler.dynamic_scale.assign(
        tf.where(grow, scale * 2.0, tf.where(finite, scale, scale * 0.5)))
    return grads


def _regularization_gradients(model):
    """(regularization loss, [variables] its gradients, None where it does not depend on a variable).

    `model.losses` (weight regularizers, `add_loss`) is read inside the tape because Keras computes
    weight-regularization losses from the variables when the property is read.
    """
    variables = model.trainable_variables
    if not model.losses:
        return tf.constant(0.0), [None] * len(variables)
    with tf.GradientTape() as tape:
        regularization = _regularization_loss(model)
    return regularization, tape.gradient(regularization, variables)


def _add_regularization(grads, regularization_grads):
    """g + r per variable, treating None as zero (None + None stays None)."""
    return [g if r is None else (tf.cast(r, g.dtype) if g is None else g + tf.cast(r, g.dtype))
            for g, r in zip(grads, regularization_grads)]


def _regularization_loss(model):
    """Sum of the model's added losses (weight regularizers, `add_loss`), a scalar (0 if none)."""
    losses = model.losses
    return tf.add_n([tf.cast(l, tf.float32) for l in losses]) if losses else tf.constant(0.0)


@keras.saving.register_keras_serializable(package="cgh_tf")
class Model(keras.Model):
    """`keras.Model` with in-batch M3, winsorized gradient descent and per-step coherence metrics.

    See the module docstring for the table of `compile` options. Everything else is Keras.
    """

    # ----------------------------------------------------------------------------------- compile
    def compile(self, *args, coherence_every=0, coherence_per_layer=False,
                coherence_training=False, aggregation="mean", winsorize_pct=0.0, **kwargs):
        """`keras.Model.compile` plus the options of the module table.

        Args:
          coherence_every: measure the training batch's m-coherence every N train steps (0 = off).
          coherence_per_layer: also report `m_coherence/<layer name>`.
          coherence_training: take the per-example gradients in training mode (Dropout active,
            BatchNorm with batch statistics, which couples the examples of a batch); default
            inference mode, as in DESIGN.md.
          aggregation: "mean" (Keras) or "winsorize" (coordinate-wise winsorized mean of the
            per-example gradients, `winsorize_pct` in [0, 50)).
        """
        self._cgh_options = TrainOptions(
            coherence_every=coherence_every, coherence_per_layer=coherence_per_layer,
            coherence_training=coherence_training, aggregation=aggregation,
            winsorize_pct=float(winsorize_pct),
        )
        super().compile(*args, **kwargs)
        self._check_option_combinations()
        self._cgh_state = _TrainState(self.distribute_strategy)

    def make_train_function(self, force=False):
        """Keras hook, called eagerly once the model is built, before tracing the train step.

        Builds the optimizer (the in-batch M3 step reads a LossScaleOptimizer's variables without
        calling its `apply`, which would build it) and the per-layer coherence sums.
        """
        if self.optimizer is not None and not self.optimizer.built and self.built:
            self.optimizer.build(self.trainable_variables)
        if self._cgh_options.coherence_per_layer:
            self._cgh_state.add_layer_keys(dict.fromkeys(per_example.variable_layer_names(self)))
        return super().make_train_function(force=force)

    def _check_option_combinations(self):
        opts = self._cgh_options
        if opts.aggregation == "winsorize" and isinstance(self._m3_optimizer(), optimizers.M3):
            raise ValueError(
                "aggregation='winsorize' and an M3 optimizer are two different aggregators of the "
                "same batch; use one of them (wrap a plain optimizer for winsorized GD)."
            )

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """`keras.Model.fit`; with in-batch M3 and array inputs, checks the batch sizes first.

        Every batch, the last partial one included, must split into `groups` equal groups; the
        check runs before any training so a bad setting fails at once with a clear message.
        """
        m3 = self._m3_optimizer() if getattr(self, "compiled", False) else None
        if m3 is not None and x is not None and not isinstance(x, tf.data.Dataset):
            first = tf.nest.flatten(x)[0]
            if hasattr(first, "shape") and first.shape[0] is not None:
                _check_array_batches(int(first.shape[0]), batch_size or 32, m3.groups)
        return super().fit(x, y, batch_size, *args, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config and hasattr(self, "_cgh_options"):
            config["cgh_options"] = dataclasses.asdict(self._cgh_options)
        return config

    def compile_from_config(self, config):
        config = dict(config)
        options = config.pop("cgh_options", {})
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config, **options)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def reset_metrics(self):
        super().reset_metrics()
        if getattr(self, "_cgh_state", None) is not None:
            self._cgh_state.reset()

    # -------------------------------------------------------------------------------- train step
    def train_step(self, data):
        """One step; coherence (if due) is measured at the weights the gradient is taken at."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        opts = self._cgh_options
        if isinstance(self._m3_optimizer(), optimizers.M3):
            self._maybe_measure_coherence(x, y)
            logs = self._m3_train_step(x, y, sample_weight)
        elif opts.aggregation == "winsorize":
            self._maybe_measure_coherence(x, y)
            logs = self._winsorized_train_step(x, y, sample_weight)
        elif opts.coherence_every == 1 and self._can_share_backward_pass(sample_weight):
            logs = self._plain_step_with_shared_coherence(x, y)
        else:
            self._maybe_measure_coherence(x, y)
            logs = super().train_step(data)
        self._cgh_state.step.assign_add(1)
        return {**logs, **self._coherence_results()}

    def _m3_optimizer(self):
        """The M3 instance driving this model, looking through a LossScaleOptimizer; else None."""
        opt = getattr(self, "optimizer", None)
        if isinstance(opt, keras.optimizers.LossScaleOptimizer):
            opt = opt.inner_optimizer
        return opt if isinstance(opt, optimizers.M3) else None

    # ---- in-batch M3
    def _m3_train_step(self, x, y, sample_weight):
        m3 = self._m3_optimizer()
        loss_scaler = self.optimizer if m3 is not self.optimizer else None
        replicas = self.distribute_strategy.num_replicas_in_sync
        if loss_scaler is not None and replicas > 1:
            raise ValueError(
                "In-batch M3 in cgh_tf.Model under mixed precision supports one replica only; "
                "under tf.distribute use a plain keras.Model (consecutive-batch M3), which works "
                "with loss scaling."
            )
        x = self._check_batch_divisible(x, m3.groups)
        if replicas > 1:
            group_grads, y_pred, loss = self._replica_group_gradients(x, y, sample_weight, m3.groups)
        else:
            group_grads, y_pred, loss = self._sliced_group_gradients(x, y, sample_weight, m3.groups)
        if loss_scaler is not None:
            group_grads = _unscale_and_update_loss_scale(loss_scaler, group_grads)
        m3.apply_group_gradients(group_grads, self.trainable_variables)
        return self._update_loss_and_metrics(loss, x, y, y_pred, sample_weight)

    def _check_batch_divisible(self, x, groups):
        """Raises (or, for batch sizes unknown while tracing, asserts) global batch % groups == 0.

        Returns `x`, made to depend on the run-time assertion when one is needed.
        """
        replicas = self.distribute_strategy.num_replicas_in_sync
        message = (f"M3 with groups={groups} needs a batch size divisible by {groups}; got a "
                   "batch of size {} (the last batch of an epoch counts too: choose a batch size "
                   f"and a number of examples that are multiples of {groups}, or drop the "
                   "remainder).")
        first = tf.nest.flatten(x)[0]
        static = first.shape[0]
        if static is not None:
            if (static * replicas) % groups:
                raise ValueError(message.format(static * replicas))
            return x
        global_batch = tf.shape(first)[0] * replicas
        check = tf.debugging.assert_equal(
            global_batch % groups, 0, message=message.format("not a multiple"))
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(tf.identity, x)

    def _sliced_group_gradients(self, x, y, sample_weight, groups):
        """One device: `groups` contiguous slices, one forward/backward pass each.

        Returns ([variables] tensors [groups, *var.shape] of group-mean gradients, y_pred of the whole
        batch, the mean loss).
        """
        xs, ys = _split_into_groups(x, groups), _split_into_groups(y, groups)
        sws = _split_into_groups(sample_weight, groups)
        grads, preds, losses = [], [], []
        for xj, yj, swj in zip(xs, ys, sws):
            with tf.GradientTape() as tape:
                y_pred = self(xj, training=True)
                loss = self._compute_loss(x=xj, y=yj, y_pred=y_pred, sample_weight=swj,
                                          training=True)
                scaled_loss = self.optimizer.scale_loss(loss)
            grads.append(tape.gradient(scaled_loss, self.trainable_variables))
            preds.append(y_pred)
            losses.append(loss)
        y_pred = tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *preds)
        return _stack_group_gradients(grads), y_pred, tf.add_n(losses) / groups

    def _replica_group_gradients(self, x, y, sample_weight, groups):
        """Under tf.distribute: this replica's contribution to every group-mean gradient.

        Example i of this replica's shard has global index `replica_id * n_local + i` and belongs to
        group `global index // (global batch / groups)`. Row j of each returned tensor is
        Σ_{i in shard ∩ group j} w_i ∇ℓ_i / group_size + ∇(regularization) / R, so that the SUM over
        replicas is the mean gradient of group j, as on one device.
        """
        context = tf.distribute.get_replica_context()
        replicas = self.distribute_strategy.num_replicas_in_sync
        n_local = tf.shape(tf.nest.flatten(x)[0])[0]
        group_size = n_local * replicas // groups
        global_index = tf.cast(context.replica_id_in_sync_group, tf.int32) * n_local + tf.range(n_local)
        group_of_example = global_index // group_size
        loss_fn = per_example.per_example_loss_fn(self)
        with tf.GradientTape(persistent=True) as tape:
            y_pred = self(x, training=True)
            losses = tf.cast(loss_fn(y, y_pred), tf.float32)
            if sample_weight is not None:
                losses *= tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
            regularization = _regularization_loss(self) / replicas
            group_losses = [
                tf.reduce_sum(tf.where(group_of_example == j, losses, 0.0))
                / tf.cast(group_size, tf.float32) + regularization
                for j in range(groups)
            ]
        grads = [tape.gradient(loss, self.trainable_variables) for loss in group_losses]
        del tape
        mean_loss = tf.reduce_sum(losses) / tf.cast(n_local * replicas, tf.float32) + regularization
        return _stack_group_gradients(grads), y_pred, mean_loss

    # ---- winsorized gradient descent
    def _winsorized_train_step(self, x, y, sample_weight):
        if sample_weight is not None:
            raise ValueError("aggregation='winsorize' does not support sample weights.")
        if self.distribute_strategy.num_replicas_in_sync > 1:
            raise ValueError(
                "aggregation='winsorize' needs every per-example gradient of the batch on one "
                "device; it is not supported under a tf.distribute strategy with several replicas."
            )
        pct = self._cgh_options.winsorize_pct
        variables = self.trainable_variables
        winsorized = per_example.reduced_per_example_gradients(
            self, x, y, lambda g, axis: robust.winsorized_mean(g, pct, axis), training=True,
            reduce_outer=lambda a, b: robust.winsorized_mean_of_outer_products(a, b, pct))
        _, regularization_grads = _regularization_gradients(self)
        grads = _add_regularization(winsorized, regularization_grads)
        self.optimizer.apply(grads, variables)
        y_pred = self(x, training=True)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=None, training=True)
        return self._update_loss_and_metrics(loss, x, y, y_pred, None)

    def _update_loss_and_metrics(self, loss, x, y, y_pred, sample_weight):
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self._loss_tracker.update_state(loss, sample_weight=batch)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # ---- coherence of the training batch
    def _can_share_backward_pass(self, sample_weight):
        """True when the update gradient can come from the coherence pass itself.

        That pass uses the per-example loss in the coherence mode; it is the update gradient when the
        forward pass does not depend on `training` (or coherence is taken in training mode), no loss
        scaling is active, no sample weights are given and there is a single replica.
        """
        mode_independent = self._cgh_options.coherence_training or not any(
            _depends_on_training(layer) for layer in self._flatten_layers(include_self=False))
        return (mode_independent and sample_weight is None
                and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
                and self.distribute_strategy.num_replicas_in_sync == 1)

    def _should_measure(self):
        return tf.equal(self._cgh_state.step % self._cgh_options.coherence_every, 0)

    def _plain_step_with_shared_coherence(self, x, y):
        """coherence_every=1: a plain step whose update gradient comes from the fast pass itself.

        One forward and one backward pass give Σ_i g_i (→ the mean gradient) and the per-example
        squared norms. (For N > 1 a separate pass on the measured steps is cheaper on average than
        a `tf.cond` between two step bodies, which blocks graph optimisations on every step.)
        """
        variables = self.trainable_variables
        sums = per_example.gradients_and_sq_norms(
            self, x, y, per_example.per_example_loss_fn(self),
            training=self._cgh_options.coherence_training)
        losses = tf.cast(sums.losses, tf.float32)
        grad_sum = _zeros_for_none(sums.grad_sum, variables)
        m = tf.cast(tf.shape(losses)[0], tf.float32)
        regularization, regularization_grads = _regularization_gradients(self)
        grads = _add_regularization([g / tf.cast(m, g.dtype) for g in grad_sum],
                                    regularization_grads)
        self.optimizer.apply(grads, variables)
        self._record_coherence(grad_sum, sums.sq_norms, m, tf.constant(True))
        loss = tf.reduce_mean(losses) + regularization
        return self._update_loss_and_metrics(loss, x, y, sums.predictions, None)

    def _maybe_measure_coherence(self, x, y):
        """Separate fast-path pass on measured steps (used when the update cannot share it)."""
        if not self._cgh_options.coherence_every:
            return
        variables = self.trainable_variables
        loss_fn = per_example.per_example_loss_fn(self)
        training = self._cgh_options.coherence_training

        def measured():
            sums = per_example.gradients_and_sq_norms(self, x, y, loss_fn, training=training)
            return _zeros_for_none(sums.grad_sum, variables), tf.cast(sums.sq_norms, tf.float32)

        def unmeasured():
            m = tf.shape(tf.nest.flatten(x)[0])[0]
            return ([tf.zeros_like(v) for v in variables],
                    tf.zeros([m, len(variables)], tf.float32))

        measure = self._should_measure()
        grad_sum, sq_norms = tf.cond(measure, measured, unmeasured)
        m = tf.cast(tf.shape(sq_norms)[0], tf.float32)
        self._record_coherence(grad_sum, sq_norms, m, measure)

    def _record_coherence(self, grad_sum, sq_norms, m, measured):
        """Adds the batch's coherence to the running means, from S, per-example squared norms, m.

        Args:
          grad_sum: [variables] tensors S_v = Σ_i g_i restricted to variable v.
          sq_norms: [m, variables] float32, ‖g_i restricted to v‖².
          m: number of examples (float32 scalar).
          measured: bool scalar; the running means only count measured steps.

        Under tf.distribute S, Q and m are summed over replicas first, so the values equal the
        one-device values on the same global batch.
        """
        grad_sum = [tf.cast(g, tf.float32) for g in grad_sum]
        sum_of_sq_norms = tf.reduce_sum(tf.cast(sq_norms, tf.float32), axis=0)  # [variables]
        if self.distribute_strategy.num_replicas_in_sync > 1:
            context = tf.distribute.get_replica_context()
            grad_sum, sum_of_sq_norms, m = context.all_reduce(
                tf.distribute.ReduceOp.SUM, [grad_sum, sum_of_sq_norms, m])
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
