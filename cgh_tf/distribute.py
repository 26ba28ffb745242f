"""Cross-replica plumbing for the robust optimizers (M3, RM3, RA3) under `tf.distribute`.

A median does not commute with a sum, so the robust optimizers cannot let each replica reduce its
own gradient: they first **sum the replica contributions** (Keras already scales each replica's loss
by 1 / num_replicas, so the SUM is the global mean gradient), then every replica computes the *same*
median from the same numbers and applies the same update to its copy of the variables.

| step                               | context          | helper                          | communicated per step            |
|------------------------------------|------------------|---------------------------------|----------------------------------|
| sum mini-batch gradients (RM3, RA3, M3 consecutive) | replica | `all_reduce_sum`          | one all-reduce of P values       |
| group rows (M3 in one batch, `cgh_tf.Model`) | replica | `all_reduce_stacked_sum` or `all_gather_stacked` | one collective (`cgh_tf.replica_groups`), then Keras' own all-reduce of P |
| "is the update finite / due?"      | cross-replica    | `in_cross_replica` (merge_call) | none (a barrier, no tensor)      |
| store into history buffers         | each replica     | `for_each_replica`              | none (local copies, identical)   |
| inner optimizer's update           | each replica     | `for_each_replica`              | none: its all-reduce is disabled |

P = number of trainable parameters, k = `groups`, R replicas, b bytes per value. Ring bytes per
replica per step: 2 (R−1)/R · P · b for RM3 / RA3 / consecutive M3 -- the same as plain
data-parallel SGD. M3 in one batch: the replicas' shards are cut into the k groups of the global
batch (J ≤ ⌈k/R⌉ + 1 backward passes per replica, one when R is a multiple of k) and one collective
of the partial rows, the cheaper of an all-reduce of [k, P] (2 (R−1)/R · k · P · b) and, for equal
static shards, an all-gather of [J, P] ((R−1) · J · P · b); see `cgh_tf.replica_groups`.

How the same code runs on every strategy:
* `MirroredStrategy`, `MultiWorkerMirroredStrategy` (one or many hosts, CPU/GPU): the optimizer
  update is reached through `merge_call`; the `tf.cond`s that skip non-finite or not-yet-due updates
  run in cross-replica context and the branches use `call_for_each_replica` (the pattern of
  `keras.optimizers.LossScaleOptimizer._tf_apply`, since a `cond` in replica context must not
  contain a `merge_call`). The all-reduces are collective ops (NCCL / ring), which are the only
  traffic; the merge_call itself moves no tensors.
* `TPUStrategy`, and Mirrored under XLA on GPUs: strategies that can run without merge_call get
  the same function called directly in replica context (`strategy_supports_no_merge_call()`); the
  `cond`s are then per replica and agree because their inputs were all-reduced. No variable they
  update needs a merge_call: the wrappers' variables, and the inner optimizer's step counter
  (`keras_internals.make_step_counter_replica_local`), have aggregation "none". Tested on CPUs
  by forcing that path (tests/test_replica_groups.py).
* Default (no) strategy: no communication, the same code path as "no merge_call".

Variables of the robust optimizers (history buffers, counters) use aggregation "none" and are
written with identical values on every replica, so all copies stay equal without communication.

Private API used (all through `cgh_tf.keras_internals`, each checked and pinned by
tests/test_keras_internals.py): `TFOptimizer._all_reduce_sum_gradients`, replaced on the *inner*
optimizer of a wrapper when the wrapper is built (`keras_internals.disable_all_reduce`), so that
the already summed gradient is not summed a second time; and
`tf.__internal__.distribute.strategy_supports_no_merge_call`; `keras.Variable._value` (the step
counter). The public alternative to the hook (hand the inner optimizer median / R and let it
all-reduce) moves 2 P values per step instead of P. In-batch M3 (`cgh_tf.Model`) uses that public
form: its optimizer is the user's ordinary Keras optimizer, left as it is, so Keras' own all-reduce
of the update (P values) follows the rows' collective.
"""

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from cgh_tf import keras_internals


def num_replicas_in_sync() -> int:
    """Number of replicas of the current strategy (1 without a strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _require_replica_context(what):
    if tf.distribute.in_cross_replica_context():
        raise ValueError(f"{what} must be called in a replica context (e.g. inside strategy.run).")


def all_reduce_sum(tensors: Sequence[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """SUM-all-reduce a list of tensors (None entries pass through) across replicas.

    Called in replica context; without a strategy or with one replica the tensors are returned
    unchanged. One collective for the whole list (TF packs the list).

    Args:
        tensors: list of dense tensors or None.

    Returns:
        List of the same structure with every tensor replaced by its sum over replicas.
    """
    _require_replica_context("all_reduce_sum")
    tensors = list(tensors)
    present = [t for t in tensors if t is not None]
    if num_replicas_in_sync() == 1 or not present:
        return tensors
    reduced = iter(tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, present))
    return [None if t is None else next(reduced) for t in tensors]


def all_reduce_stacked_sum(stacked: Sequence[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """SUM-all-reduce per-variable stacks `[k, *var.shape]` with exactly one all-reduce.

    The stacks are flattened into one `[k, P]` tensor (P = total parameter count), reduced with a
    single collective and split back. None entries pass through.

    Args:
        stacked: list (one per variable) of tensors `[k, *shape_i]` of one dtype, or None.

    Returns:
        List with the same shapes, each summed over replicas.
    """
    _require_replica_context("all_reduce_stacked_sum")
    context = tf.distribute.get_replica_context()
    return _on_flat_stacks(stacked, lambda flat: context.all_reduce(tf.distribute.ReduceOp.SUM, flat))


def all_gather_stacked(stacked: Sequence[tf.Tensor | None]) -> list[tf.Tensor | None]:
    """All-gather per-variable stacks `[J, *var.shape]` along axis 0 with exactly one all-gather.

    Args:
        stacked: list (one per variable) of tensors `[J, *shape_i]` of one dtype, or None.

    Returns:
        List of `[R * J, *shape_i]` tensors: replica 0's J rows, then replica 1's, ...
    """
    _require_replica_context("all_gather_stacked")
    context = tf.distribute.get_replica_context()
    return _on_flat_stacks(stacked, lambda flat: context.all_gather(flat, axis=0))


def _on_flat_stacks(stacked, collective):
    """Applies `collective` to the stacks flattened into one `[rows, P]` tensor, then splits the
    result (whose row count may differ) back per variable. Without replicas: unchanged."""
    stacked = list(stacked)
    present = [t for t in stacked if t is not None]
    if num_replicas_in_sync() == 1 or not present:
        return stacked
    if not all(t.shape.is_fully_defined() for t in present):
        raise ValueError("Stacked collectives need statically shaped gradients.")
    rows = present[0].shape[0]
    sizes = [t.shape[1:].num_elements() for t in present]
    flat = collective(tf.concat([tf.reshape(t, [rows, -1]) for t in present], axis=1))
    pieces = iter(tf.reshape(p, [-1, *t.shape[1:]])
                  for p, t in zip(tf.split(flat, sizes, axis=1), present))
    return [None if t is None else next(pieces) for t in stacked]


def in_cross_replica(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` where conditional optimizer updates are allowed.

    With a strategy that needs merge_call (Mirrored, MultiWorkerMirrored on CPU/GPU) `fn` runs in
    cross-replica context via `merge_call` and tensor arguments arrive as per-replica values; with
    no strategy or a strategy that supports no merge_call, `fn` simply runs here.
    Must be called in replica context.
    """
    _require_replica_context("An optimizer's apply")
    if keras_internals.strategy_supports_no_merge_call():
        return fn(*args)
    return tf.distribute.get_replica_context().merge_call(lambda _, *a: fn(*a), args=args)


def _in_real_cross_replica_context():
    return tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context()


def for_each_replica(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn(*args)` once per replica (from cross-replica context) or just once (elsewhere).

    Returns the per-replica result object in cross-replica context, else `fn`'s result.
    """
    if _in_real_cross_replica_context():
        strategy = tf.distribute.get_strategy()
        return strategy.extended.call_for_each_replica(fn, args=args)
    return fn(*args)


def first_replica_value(value: Any) -> Any:
    """The first replica's component of a per-replica value (the value itself otherwise)."""
    if _in_real_cross_replica_context():
        return tf.distribute.get_strategy().experimental_local_results(value)[0]
    return value
