"""The gradient sources of `cgh_tf.Model`'s train step: what an aggregator gets from one batch.

Every source differentiates `optimizer.scale_loss(loss)` (mixed precision through the public
LossScaleOptimizer API), and every per-example source differentiates the decomposition ℓ_i of
Keras' own batch loss (`cgh_tf.loss_decomposition`, docs/design.md §1.1), so that a mean
aggregator moves the weights as `keras.Model` does, masks, weights and several outputs included.

| source | returns | passes |
|---|---|---|
| `group_source` (k ≥ 1, one device) | rows: per variable [k, *shape], row j = group j's mean gradient (Keras' own loss of the group) | k forward / backward passes on the k slices |
| `engine_group_source` (shared with coherence) | the same rows, plus S, per-example squared norms and m | the per-example engine on each slice |
| `replica_group_source` (k > 1, R replicas) | the k group means of the global batch on every replica | one forward, ≤ ⌈k/R⌉ + 1 backward, one collective (`cgh_tf.replica_groups`) |
| `per_example_source` | the aggregate of the per-example gradients itself (e.g. winsorized mean) | `per_example.reduced_per_example_gradients` |
| `coherence_sums` | S, per-example squared norms (the separate coherence pass) | the per-example engine, in a conditional unless N = 1 |
"""

from typing import NamedTuple, Optional

import tensorflow as tf

from cgh_tf import per_example, precision, replica_groups


class Source(NamedTuple):
    """What a gradient source returns for one batch."""

    rows: Optional[list]      # group sources: per variable [k, *shape] group means (or None)
    reduced: Optional[list]   # per-example sources: the aggregate itself
    loss: tf.Tensor           # the mean loss of the batch (regularisation included), unscaled
    y_pred: object            # predictions for the metrics
    sums: Optional[tuple]     # shared pass: (S per variable, sq_norms [m, V], m) else None
    regularized: bool         # True if rows / reduced already include the regularisation
    replica_reduced: bool = False  # rows already cover the global batch on every replica


# ------------------------------------------------------------------------------ helpers
def group_sizes(n, groups):
    """Sizes of the k groups of a batch of n: example i is in group ⌊i·k/n⌋ (n static int or
    a scalar int tensor). Group j starts at ⌈j·n/k⌉."""
    if isinstance(n, int):
        starts = [(j * n + groups - 1) // groups for j in range(groups + 1)]
        return [b - a for a, b in zip(starts, starts[1:])]
    starts = (tf.range(groups + 1) * n + groups - 1) // groups
    return starts[1:] - starts[:-1]


def split_into_groups(structure, groups):
    """Splits every tensor of a nested structure into `groups` contiguous parts along axis 0."""
    if structure is None:
        return [None] * groups
    first = tf.nest.flatten(structure)[0]
    n = first.shape[0] if first.shape[0] is not None else tf.shape(first)[0]
    sizes = group_sizes(n, groups)
    parts = [tf.split(t, sizes, axis=0, num=groups) for t in tf.nest.flatten(structure)]
    return [tf.nest.pack_sequence_as(structure, [p[j] for p in parts]) for j in range(groups)]


def zeros_for_none(grads, variables):
    """Replaces None gradients by zeros of the variable's shape (tf.cond needs tensors)."""
    return [tf.zeros_like(v) if g is None else tf.cast(g, v.dtype) for g, v in zip(grads, variables)]


def add(grads, extra):
    """g + e per variable, treating None as zero (None + None stays None)."""
    return [g if e is None else (e if g is None else g + tf.cast(e, g.dtype))
            for g, e in zip(grads, extra)]


def stack(group_grads):
    """[groups][variables] gradients -> [variables] tensors [groups, *var.shape] (None if any is)."""
    stacked = []
    for per_variable in zip(*group_grads):
        if any(g is None for g in per_variable):
            stacked.append(None)
        else:
            stacked.append(tf.stack([tf.convert_to_tensor(g) for g in per_variable]))
    return stacked


def loss_scale(model):
    """The optimizer's loss scale (1.0 without loss scaling), a float32 scalar."""
    return model.optimizer.scale_loss(tf.constant(1.0))


def regularization_loss(model):
    """Sum of the model's added losses (weight regularizers, `add_loss`), a scalar (0 if none)."""
    losses = model.losses
    return tf.add_n([tf.cast(l, tf.float32) for l in losses]) if losses else tf.constant(0.0)


def regularization_gradients(model, scale):
    """Gradients of scale × (model.losses), None where they do not depend on a variable."""
    variables = model.trainable_variables
    if not model.losses:
        return [None] * len(variables)
    with tf.GradientTape() as tape:
        regularization = regularization_loss(model) * scale
    return tape.gradient(regularization, variables)


def _concat_predictions(preds):
    return preds[0] if len(preds) == 1 else tf.nest.map_structure(
        lambda *p: tf.concat(p, axis=0), *preds)


# ------------------------------------------------------------------------------ sources
def group_source(model, x, y, sample_weight, groups):
    """Rows: per variable [groups, *shape], row j = the gradient of group j's scaled Keras loss
    (`model.compute_loss`, regularisation included). Several replicas: `replica_group_source`."""
    if groups > 1 and model.distribute_strategy.num_replicas_in_sync > 1:
        return replica_group_source(model, x, y, sample_weight, groups)
    grads, preds, losses = [], [], []
    for xj, yj, swj in zip(split_into_groups(x, groups), split_into_groups(y, groups),
                           split_into_groups(sample_weight, groups)):
        with tf.GradientTape() as tape:
            y_pred = model(xj, training=True)
            loss = model.compute_loss(x=xj, y=yj, y_pred=y_pred, sample_weight=swj, training=True)
            scaled_loss = model.optimizer.scale_loss(loss)
        grads.append(tape.gradient(scaled_loss, model.trainable_variables))
        preds.append(y_pred)
        losses.append(loss)
    loss = tf.add_n(losses) / groups
    if model.distribute_strategy.num_replicas_in_sync > 1:  # Keras' per-replica scaling
        loss = loss * model.distribute_strategy.num_replicas_in_sync
    return Source(stack(grads), None, loss, _concat_predictions(preds), None, regularized=True)


def engine_group_source(model, x, y, sample_weight, groups, training):
    """The per-example engine on each group: one forward/backward pass per group gives the
    group's Σ_i g_i (its row, × 1/size) and its examples' squared norms (for Q). ℓ_i is the
    decomposition of the group's Keras loss, so the rows are those of `group_source`.
    training: the mode of the pass (the update's and the metric's)."""
    loss_fn = per_example.per_example_loss_fn(model)
    variables = model.trainable_variables
    scale = loss_scale(model)
    rows, sq_norms, preds, losses = [], [], [], []
    grad_sum = [None] * len(variables)
    for xj, yj, swj in zip(split_into_groups(x, groups), split_into_groups(y, groups),
                           split_into_groups(sample_weight, groups)):
        sums = per_example.gradients_and_sq_norms(model, xj, yj, loss_fn, training=training,
                                                  sample_weight=swj, loss_scale=scale)
        size = tf.shape(sums.losses)[0]
        rows.append([None if g is None else g / tf.cast(size, g.dtype) for g in sums.grad_sum])
        grad_sum = add(grad_sum, sums.grad_sum)
        sq_norms.append(tf.cast(sums.sq_norms, tf.float32))
        preds.append(sums.predictions)
        losses.append(tf.cast(sums.losses, tf.float32))
    losses = tf.concat(losses, axis=0) / scale
    sq_norms = tf.concat(sq_norms, axis=0)
    m = tf.cast(tf.shape(losses)[0], tf.float32)
    loss = tf.reduce_mean(losses) + regularization_loss(model)
    sums = (zeros_for_none(grad_sum, variables), sq_norms, m)
    return Source(stack(rows), None, loss, _concat_predictions(preds), sums, regularized=False)


def replica_group_source(model, x, y, sample_weight, groups):
    """Under tf.distribute: the k group means of the *global* batch, on every replica.

    One forward pass over this replica's shard and one backward pass per group the shard
    meets (at most ⌈k/R⌉ + 1; one when R is a multiple of k), then one collective
    (`cgh_tf.replica_groups`). The loss is this replica's mean, which Keras' loss tracker
    averages over replicas by shard size.
    """
    replicas = model.distribute_strategy.num_replicas_in_sync
    shard_size = tf.nest.flatten(x)[0].shape[0]
    place = replica_groups.layout(
        shard_size if shard_size is not None else tf.shape(tf.nest.flatten(x)[0])[0], replicas)
    loss_fn = per_example.per_example_loss_fn(model)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=True)
        losses = loss_fn(y, y_pred, sample_weight)
        by_group, group_of = replica_groups.group_losses(
            model.optimizer.scale_loss(losses), place, groups)
    rows = replica_groups.rows(tape, by_group, group_of, model.trainable_variables, replicas,
                               shard_size)
    del tape
    mean = tf.math.divide_no_nan(tf.reduce_sum(losses), tf.cast(place.size, losses.dtype))
    loss = tf.cast(mean, tf.float32) + regularization_loss(model)
    return Source(rows, None, loss, y_pred, None, regularized=False, replica_reduced=True)


def per_example_source(model, x, y, sample_weight, aggregator, training, shared):
    """The aggregate of the per-example gradients (`aggregator.reduce` per coordinate); with
    `shared`, also the coherence sums of the same pass. One device only (a one-line error
    otherwise)."""
    if model.distribute_strategy.num_replicas_in_sync > 1:
        raise ValueError(
            f"{aggregator!r} needs every per-example gradient of the batch on one device; it is "
            "not supported under a tf.distribute strategy with several replicas.")
    scale = loss_scale(model)
    reduced, sums = per_example.reduced_per_example_gradients(
        model, x, y, aggregator.reduce, training=training, reduce_outer=aggregator.reduce_outer,
        with_sums=True, sample_weight=sample_weight, loss_scale=scale)
    losses = tf.cast(sums.losses, tf.float32) / scale
    loss = tf.reduce_mean(losses) + regularization_loss(model)
    coherence = None
    if shared:
        m = tf.cast(tf.shape(losses)[0], tf.float32)
        coherence = (zeros_for_none(sums.grad_sum, model.trainable_variables), sums.sq_norms, m)
    return Source(None, reduced, loss, sums.predictions, coherence, regularized=False)


def coherence_sums(model, x, y, sample_weight, training, measure, coherence_dtype=None):
    """The separate coherence pass (when the update cannot share its pass): (S per variable,
    sq_norms [m, V] float32), zeros when `measure` (a bool scalar tensor, or True: no
    conditional, which under XLA on a CPU costs ~4× more) is false. `coherence_dtype`: as in
    `cgh_tf.precision.computed_in`."""
    variables = model.trainable_variables
    loss_fn = per_example.per_example_loss_fn(model)

    def measured():
        with precision.computed_in(model, coherence_dtype):
            sums = per_example.gradients_and_sq_norms(model, x, y, loss_fn, training=training,
                                                      sample_weight=sample_weight)
        return zeros_for_none(sums.grad_sum, variables), tf.cast(sums.sq_norms, tf.float32)

    def unmeasured():
        m = tf.shape(tf.nest.flatten(x)[0])[0]
        return ([tf.zeros_like(v) for v in variables], tf.zeros([m, len(variables)], tf.float32))

    if measure is True:
        return measured()
    return tf.cond(measure, measured, unmeasured)
