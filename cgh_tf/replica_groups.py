"""In-batch M3 under tf.distribute: the replicas' shards cut into the k groups of the global batch.

tf.distribute hands each replica a contiguous shard of the global batch, in order: replica r holds
examples [o_r, o_r + s_r) of the n. Example g belongs to group ⌊g·k/n⌋, exactly as on one device
(`cgh_tf.training`: contiguous groups whose sizes differ by at most one). Row j of the group source
is the mean gradient of group j, and a replica computes the part of it that its shard holds:

    row_j = Σ_r Σ_{g ∈ shard_r ∩ G_j} ∇(w_g ℓ_g) / |G_j|.

One forward pass gives the replica's k masked group losses L_j = Σ_{g ∈ shard ∩ G_j} w_g ℓ_g / |G_j|
(a [k] vector); each group its shard meets costs one backward pass (the vector-Jacobian product of
that vector with a one-hot). With equal shards of n/R examples a shard meets at most

    J(R, k) = max_r ⌈(r+1)k/R⌉ − ⌊rk/R⌋      (1 when R is a multiple of k, at most ⌈k/R⌉ + 1)

groups, so a replica runs J backward passes instead of the k of one device. One collective then
turns the partial rows into the rows:

| collective | each replica sends                            | ring bytes per replica per step | used when                     |
|------------|-----------------------------------------------|---------------------------------|-------------------------------|
| all-reduce | its partial rows written into zeros [k, P]    | 2 (R−1)/R · k · P · b           | otherwise                     |
| all-gather | its J partial rows [J, P]                     | (R−1) · J · P · b               | static shards and R·J < 2k    |

(P trainable parameters, b bytes per value; group ids need no communication: every replica knows
every shard's groups.) Every replica then holds the same k rows and computes the same median; the
model's own optimizer all-reduces the update once more (P values, the public path: it is the user's
Keras optimizer, left untouched).

Shard sizes. With a static per-replica batch dimension (`drop_remainder=True`, or XLA) the shards
are equal and the groups each replica meets are known while tracing. Otherwise (Keras' array
pipelines, whose last partial batch tf.distribute splits unevenly, possibly leaving a shard empty)
the R shard sizes are all-reduced first (R values); a replica whose shard then meets more than J
groups runs the extra passes too (up to k in all), so every batch gets the one-device groups, with
and without XLA.
"""

from typing import NamedTuple

import tensorflow as tf

from cgh_tf import distribute


class Layout(NamedTuple):
    """Where this replica's shard sits in the global batch (int32 scalars)."""

    offset: tf.Tensor      # global index of the shard's first example
    size: tf.Tensor        # examples in the shard (may be 0)
    total: tf.Tensor       # n, the global batch size


def passes_per_replica(replicas, groups, shard_size=None):
    """J: the most groups one replica's shard meets.

    Args:
      replicas: R.  groups: k.
      shard_size: the static per-replica batch size s (equal shards, n = R·s), or None for the
        bound with k | n, J(R, k) of the module docstring.
    """
    if shard_size is None:
        return max(-(-(r + 1) * groups // replicas) - r * groups // replicas
                   for r in range(replicas))
    return max(len(groups_met(r, shard_size, replicas, groups)) for r in range(replicas))


def groups_met(replica, shard_size, replicas, groups):
    """Python list of the groups that replica `replica`'s shard of `shard_size` examples meets."""
    n = shard_size * replicas
    members = range(replica * shard_size, (replica + 1) * shard_size)
    return sorted({g * groups // n for g in members})


def collective(replicas, groups, passes, static):
    """"all_gather" or "all_reduce", whichever moves fewer bytes (the all-gather needs equal,
    statically known shards)."""
    return "all_gather" if static and replicas * passes < 2 * groups else "all_reduce"


def bytes_per_replica(kind, replicas, groups, passes, parameters, value_bytes=4):
    """Bytes one replica sends per step in the rows' collective (ring algorithms)."""
    if kind == "all_gather":
        return (replicas - 1) * passes * parameters * value_bytes
    return 2 * (replicas - 1) / replicas * groups * parameters * value_bytes


def layout(shard_size, replicas):
    """The shard's `Layout`; all-reduces the R shard sizes unless `shard_size` is static (int)."""
    replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
    if isinstance(shard_size, int):
        return Layout(replica * shard_size, tf.constant(shard_size), tf.constant(
            shard_size * replicas))
    mine = tf.one_hot(replica, replicas, dtype=tf.float32) * tf.cast(shard_size, tf.float32)
    sizes = tf.cast(distribute.all_reduce_sum([mine])[0], tf.int32)  # exact below 2**24
    offset = tf.reduce_sum(tf.where(tf.range(replicas) < replica, sizes, 0))
    return Layout(offset, tf.cast(shard_size, tf.int32), tf.reduce_sum(sizes))


def group_losses(losses, place, groups):
    """[k] masked group losses L_j = Σ_{examples of group j in the shard} ℓ_i / |G_j|.

    Args:
      losses: [s] per-example (weighted, scaled) losses of the shard.
      place: the shard's `Layout`.
    Returns:
      ([k] tensor of losses' dtype, [s] int32 group of each example).
    """
    index = place.offset + tf.range(place.size)
    group_of = index * groups // tf.maximum(place.total, 1)
    starts = (tf.range(groups + 1) * place.total + groups - 1) // groups
    sizes = tf.cast(starts[1:] - starts[:-1], losses.dtype)
    sums = tf.math.unsorted_segment_sum(losses, group_of, groups)
    return tf.math.divide_no_nan(sums, sizes), group_of


def partial_rows(tape, losses_by_group, variables, targets):
    """Per variable [len(targets), *shape]: the gradient of L_j for each target group j.

    `targets` is a list of (int32 group, bool valid) scalars; an invalid target gives zeros.
    """
    groups = losses_by_group.shape[0]
    grads = []
    for group, valid in targets:
        select = tf.one_hot(tf.minimum(group, groups - 1), groups, dtype=losses_by_group.dtype)
        grads.append(tape.gradient(losses_by_group, variables,
                                   output_gradients=select * tf.cast(valid, select.dtype)))
    return [None if any(g is None for g in per_var) else
            tf.stack([tf.convert_to_tensor(g) for g in per_var])
            for per_var in zip(*grads)]


def rows(tape, losses_by_group, group_of, variables, replicas, shard_size):
    """Per variable [k, *shape]: the k group-mean rows of the global batch, on every replica.

    Args:
      tape: the persistent tape that recorded `losses_by_group` from the variables.
      losses_by_group, group_of: `group_losses` of the shard.
      variables: the trainable variables.
      replicas: R.  shard_size: the static per-replica batch size (int) or None (dynamic).
    """
    groups = losses_by_group.shape[0]
    static = isinstance(shard_size, int)
    passes = passes_per_replica(replicas, groups, shard_size if static else None)
    if collective(replicas, groups, passes, static) == "all_gather":
        return rows_all_gather(tape, losses_by_group, variables, shard_size, replicas)
    return rows_all_reduce(tape, losses_by_group, group_of, variables, passes,
                           extra_passes=not static)


def rows_all_reduce(tape, losses_by_group, group_of, variables, passes, extra_passes):
    """The k rows via one SUM all-reduce of the [k, P] partial rows.

    `extra_passes`: shards may be uneven (dynamic sizes): a shard meeting more than `passes`
    groups runs the others too (a `tf.cond`, taken only on such a batch; no collective inside).
    """
    groups = losses_by_group.shape[0]
    first = tf.reduce_min(tf.concat([group_of, [groups]], 0))  # k, -1 for an empty shard
    last = tf.reduce_max(tf.concat([group_of, [-1]], 0))
    rows = _rows_of_passes(tape, losses_by_group, variables, first, last, 0, passes)
    if extra_passes and passes < groups:
        def with_extra():
            more = _rows_of_passes(tape, losses_by_group, variables, first, last, passes, groups)
            return [r + m for r, m in zip(rows, more) if r is not None]
        present = [r for r in rows if r is not None]
        summed = iter(tf.cond(last - first + 1 > passes, with_extra, lambda: present))
        rows = [None if r is None else next(summed) for r in rows]
    return distribute.all_reduce_stacked_sum(rows)


def _rows_of_passes(tape, losses_by_group, variables, first, last, start, stop):
    """Per variable [k, *shape]: passes start..stop-1 (group first + t, if ≤ last) summed into
    their groups."""
    groups = losses_by_group.shape[0]
    targets = [(first + t, first + t <= last) for t in range(start, stop)]
    partial = partial_rows(tape, losses_by_group, variables, targets)
    return _into_groups(partial, tf.minimum(tf.stack([g for g, _ in targets]), groups - 1), groups)


def _into_groups(rows, owners, groups):
    """Per variable [k, *shape]: `rows` [n, *shape] summed into their groups `owners` [n]."""
    return [None if r is None else tf.math.unsorted_segment_sum(r, owners, groups) for r in rows]


def rows_all_gather(tape, losses_by_group, variables, shard_size, replicas):
    """The k rows via one all-gather of every replica's J partial rows (equal, static shards)."""
    groups = losses_by_group.shape[0]
    met = [groups_met(r, shard_size, replicas, groups) for r in range(replicas)]
    passes = max(len(m) for m in met)
    replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
    first = tf.gather([m[0] for m in met], replica)
    last = tf.gather([m[-1] for m in met], replica)
    targets = [(first + t, first + t <= last) for t in range(passes)]
    gathered = distribute.all_gather_stacked(partial_rows(tape, losses_by_group, variables, targets))
    owners = tf.constant([min(m[0] + t, groups - 1) for m in met for t in range(passes)], tf.int32)
    return _into_groups(gathered, owners, groups)
