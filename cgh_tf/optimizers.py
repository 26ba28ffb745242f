"""M3, RM3, RA3: robust averages of gradients as Keras 3 optimizers (arXiv 2003.07422).

Each class wraps an *inner* Keras optimizer (SGD, SGD + momentum, Adam, ...) and hands it a robust
average of several gradients instead of the current mini-batch gradient:

| class                          | inner optimizer receives, per applied update                   | state (per variable)       |
|--------------------------------|-----------------------------------------------------------------|----------------------------|
| `M3(opt, groups=k)`            | coordinate-wise median of k group-mean gradients taken at the    | k - 1 gradient buffers     |
|                                | same weights: k consecutive mini-batches in `keras.Model`; in    | (none in `cgh_tf.Model`)   |
|                                | `cgh_tf.Model`, k contiguous groups of each batch (`compile`     |                            |
|                                | turns it into `aggregators.MedianOfMeans(k)` over `opt`)         |                            |
| `RM3(opt, window=k)`           | median of the current and the previous k - 1 mini-batch grads    | k - 1 gradient buffers     |
| `RA3(opt, window=k)`           | mean of the same k gradients (control: stale but not robust)     | k - 1 gradient buffers     |

Timeline in plain `model.fit` (d_t = mini-batch gradient at call t, "-" = weights unchanged):

| call t      | 1 | 2 | 3                | 4                | 5                | 6                |
|-------------|---|---|------------------|------------------|------------------|------------------|
| M3 (k = 3)  | - | - | med(d1, d2, d3)  | -                | -                | med(d4, d5, d6)  |
| RM3 (k = 3) | - | - | med(d1, d2, d3)  | med(d2, d3, d4)  | med(d3, d4, d5)  | med(d4, d5, d6)  |
| RA3 (k = 3) | - | - | mean(d1, d2, d3) | mean(d2, d3, d4) | mean(d3, d4, d5) | mean(d4, d5, d6) |

Semantics shared by all three:
* `iterations` and `learning_rate` are the inner optimizer's: learning-rate schedules count
  **applied updates**, not batches (M3 in `fit` applies one update every k batches).
* `l2` adds `l2 * w` to every gradient **before** the median (the authors' PyTorch semantics, i.e.
  coupled L2 regularisation). The inner optimizer's own `weight_decay` (decoupled, applied to the
  weights after the median) keeps working; so do its `clipnorm` / `clipvalue` / EMA, all applied
  to the robust average.
* Non-finite gradients are **skipped**: a gradient with any NaN / Inf entry is neither stored in
  the history nor applied, and `nonfinite_steps` (an int variable) is incremented. History is not
  poisoned: training continues exactly as if that batch had never been seen.
* Sparse gradients (`tf.IndexedSlices`, e.g. from `Embedding`) are densified before buffering.
  Variables with no gradient (None) pass through untouched and are never buffered.
* Gradients are cast to the variable's dtype before buffering: under the `mixed_float16` policy
  (Keras wraps the optimizer as `LossScaleOptimizer(M3(...))`) variables are float32, so the
  median is taken in float32 on unscaled gradients and loss scaling works as usual.
* Under `tf.distribute` the wrapper sums the replicas' gradients itself (one all-reduce) before the
  median, and disables the inner optimizer's own all-reduce; see `cgh_tf.distribute`.
* All state (history buffers, counters) lives in optimizer variables, so `model.save` /
  `keras.models.load_model` and `tf.train.Checkpoint` restore it mid-window.

Cost per step (besides the inner update): one finiteness reduction over the gradient, one
assignment into a history slot, and for an applied update one fused (XLA) median over k inputs.
`unwrap(model.optimizer)` finds the robust optimizer inside Keras' LossScaleOptimizer.

Factory for trainers: `build(name, learning_rate, ...)` with names `sgd`, `adam`, `m3`, `rm3`,
`ra3` and `m<k>` / `rm<k>` / `ra<k>` (e.g. `m5` = M3 with 5 groups).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import keras
import tensorflow as tf

from cgh_tf import aggregators, distribute, keras_internals, robust

LossScaleOptimizer = keras.optimizers.LossScaleOptimizer

_PACKAGE = "cgh_tf"


def _check_inner(optimizer):
    if isinstance(optimizer, (RobustAverage, LossScaleOptimizer)):
        raise TypeError(
            f"The inner optimizer must be a plain Keras optimizer, got a {type(optimizer).__name__}."
            " Robust optimizers cannot be nested, and loss scaling goes outside: with the "
            "'mixed_float16' policy Keras wraps the robust optimizer in a LossScaleOptimizer itself."
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "`optimizer` must be a keras.optimizers.Optimizer instance (e.g. "
            f"keras.optimizers.SGD(0.1)); got {type(optimizer).__name__}: {optimizer!r}."
        )
    if optimizer.gradient_accumulation_steps:
        raise ValueError(
            "The inner optimizer must not use gradient_accumulation_steps: the wrapper already "
            "reduces several gradients per update (use a larger batch, or M3's groups / RM3's "
            "window).")


def _densify(grad):
    if isinstance(grad, tf.IndexedSlices):
        return tf.convert_to_tensor(grad)
    return grad


class RobustAverage(keras.optimizers.Optimizer):
    """Base class: a wrapper that feeds an inner optimizer a robust average of k gradients.

    Subclasses define how incoming gradients are buffered (`_slot`), when an update is due
    (`_update_due`) and how the k gradients are reduced (`_reduce`). State lives in
    `history` (`history[i][j]`: slot j in 0..k-2 of trainable variable i), `accepted_steps`
    (finite gradients received) and `nonfinite_steps` (gradients skipped because of NaN / Inf).

    Args:
        optimizer: the inner `keras.optimizers.Optimizer` instance (not yet used elsewhere).
        size: k, the number of gradients reduced per update (int >= 2).
        l2: coefficient of the L2 term `l2 * w` added to each gradient before the reduction.
        name: optimizer name.
    """

    _size_name = "size"
    _median = True  # k = 2 warns: the median of two values is their mean

    def __init__(self, optimizer: keras.optimizers.Optimizer, size: int, l2: float = 0.0,
                 name: str | None = None, **kwargs: Any) -> None:
        if kwargs:
            raise ValueError(
                f"{type(self).__name__} does not take {sorted(kwargs)}; set such options on the "
                "inner optimizer instead."
            )
        _check_inner(optimizer)
        size = aggregators.check_count(
            self._size_name, size, "the median of 2 values is their mean" if self._median else None)
        l2 = aggregators.check_l2(l2)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.size = size
        self.l2 = l2
        # Loss scaling, if the user set it on the inner optimizer, is done by the wrapper (it sees
        # the scaled gradients first); keras' LossScaleOptimizer resets it on us when it wraps us.
        self.loss_scale_factor = optimizer.loss_scale_factor
        optimizer.loss_scale_factor = None

    # ----------------------------------------------------------------- state
    def build(self, var_list: Sequence[tf.Variable]) -> None:
        """Create the history buffers and counters, then build the inner optimizer."""
        var_list = list(var_list)
        # The wrapper all-reduces the gradients itself (cgh_tf.distribute); its inner optimizer
        # must not do it a second time. Done here, not in __init__, so that cgh_tf.Model can use
        # the inner optimizer of an M3 on its own (in-batch M3) with Keras' ordinary all-reduce.
        keras_internals.disable_all_reduce(self.inner_optimizer)
        # Its step counter is updated inside this wrapper's conditional update: replica-local, so
        # that no merge_call happens inside control flow (strategies without merge_call).
        keras_internals.make_step_counter_replica_local(self.inner_optimizer)
        # history[i][j]: slot j of variable i. Separate dense variables (no [k-1, ...] tensor
        # written by scatter): a scatter would switch TF's variable into copy-on-read mode.
        self.history = [
            [self._add_history(v, j) for j in range(self.size - 1)] for v in var_list
        ]
        self.accepted_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", aggregation="none", name="accepted_steps"
        )
        self.nonfinite_steps = self.add_variable(
            shape=(), dtype="int", initializer="zeros", aggregation="none", name="nonfinite_steps"
        )
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)

    def _add_history(self, variable, slot):
        name = f"{variable.path.replace('/', '_')}_history{slot}"
        value = variable.value if isinstance(variable, keras.Variable) else variable
        with keras_internals.optimizer_strategy(self).extended.colocate_vars_with(value):
            return self.add_variable(
                shape=tuple(variable.shape),
                dtype=variable.dtype,
                initializer="zeros",
                aggregation="none",
                name=name,
            )

    @property
    def variables(self) -> list:
        return keras_internals.optimizer_own_variables(self) + self.inner_optimizer.variables

    @property
    def iterations(self) -> tf.Variable:
        """The inner optimizer's step counter: number of *applied* updates (not batches)."""
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self) -> tf.Variable | Any:
        """The inner optimizer's learning rate (schedules see applied updates, not batches)."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def finalize_variable_values(self, var_list: Sequence[tf.Variable]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)

    # ------------------------------------------------------------- subclass API
    def _slot(self, count):
        """History slot (int tensor) for the `count`-th finite gradient; k - 1 means "don't store"."""
        raise NotImplementedError

    def _update_due(self, count):
        """Bool tensor: does the `count`-th finite gradient (0-based) trigger an update?"""
        raise NotImplementedError

    def _reduce(self, lists):
        """Reduce each list of k same-shaped tensors to one (median or mean); one list per
        variable, reduced together (one XLA launch for the medians)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ apply
    def apply(self, grads: Sequence[tf.Tensor | None],
              trainable_variables: Sequence[tf.Variable] | None = None) -> None:
        """Receive one mini-batch gradient; update the weights when an update is due.

        Args:
            grads: list of gradients (tensors, `tf.IndexedSlices` or None), one per variable.
            trainable_variables: the variables (required on the first call, which builds).
        """
        trainable_variables = self._resolve_variables(grads, trainable_variables)
        grads = self._prepare(grads, trainable_variables)
        distribute.in_cross_replica(self._buffered_step, grads, trainable_variables)

    def _resolve_variables(self, grads, trainable_variables):
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    f"{type(self).__name__} is not built: pass `trainable_variables` on the first "
                    "call or call `optimizer.build(variables)`."
                )
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        if len(list(grads)) != len(trainable_variables):
            raise ValueError(
                f"Got {len(list(grads))} gradients for {len(trainable_variables)} variables."
            )
        keras_internals.check_variables_are_known(self, trainable_variables)
        return trainable_variables

    def _prepare(self, grads, variables):
        """Densify, cast, unscale, sum over replicas and add the L2 term (replica context)."""
        grads = [None if g is None else tf.cast(_densify(g), v.dtype) for g, v in zip(grads, variables)]
        if self.loss_scale_factor is not None:
            grads = [None if g is None else g / self.loss_scale_factor for g in grads]
        grads = distribute.all_reduce_sum(grads)
        return self._add_l2(grads, variables)

    def _add_l2(self, grads, variables):
        if not self.l2:
            return grads
        return [
            None if g is None else g + tf.constant(self.l2, g.dtype) * tf.convert_to_tensor(v)
            for g, v in zip(grads, variables)
        ]

    def _buffered_step(self, grads, variables):
        """Skip if non-finite; else apply the reduction if due, then store the gradient.

        Runs in cross-replica context under merge-call strategies (grads are per-replica values
        with identical components) and in replica / default context otherwise.
        """
        finite = distribute.first_replica_value(distribute.for_each_replica(robust.all_finite, grads))

        def on_finite():
            count = tf.convert_to_tensor(self.accepted_steps)
            tf.cond(
                self._update_due(count),
                lambda: distribute.for_each_replica(self._apply_reduced, grads, variables),
                lambda: None,
            )
            distribute.for_each_replica(self._store, grads)

        tf.cond(finite, on_finite, self._count_nonfinite)

    def _apply_reduced(self, grads, variables):
        """Replica context: reduce (current gradient + history) and give it to the inner optimizer."""
        present = [[g] + [tf.convert_to_tensor(h) for h in slots]
                   for g, slots in zip(grads, self.history) if g is not None]
        reduced = iter(self._reduce(present) if present else [])
        self.inner_optimizer.apply([None if g is None else next(reduced) for g in grads], variables)

    def _store(self, grads):
        """Replica context: write the gradient into its history slot and count it."""
        slot = self._slot(tf.convert_to_tensor(self.accepted_steps))

        def write(j):
            def assign():
                for g, slots in zip(grads, self.history):
                    if g is not None:
                        slots[j].assign(g)
            return assign

        branches = [write(j) for j in range(self.size - 1)] + [lambda: None]
        tf.switch_case(tf.cast(slot, tf.int32), branches)
        self.accepted_steps.assign_add(1)

    def _count_nonfinite(self):
        self.nonfinite_steps.assign_add(1)

    # ------------------------------------------------------------ serialization
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            self._size_name: self.size,
            "l2": self.l2,
            "loss_scale_factor": self.loss_scale_factor,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> RobustAverage:
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        loss_scale_factor = config.pop("loss_scale_factor", None)
        optimizer = cls(inner, **config)
        optimizer.loss_scale_factor = loss_scale_factor
        return optimizer


@keras.saving.register_keras_serializable(package=_PACKAGE)
class M3(RobustAverage):
    """Median of `groups` group-mean gradients taken at the same weights (arXiv 2003.07422).

    Two realisations, identical on the same examples:

    * **Consecutive batches** (plain `keras.Model.fit`): every call of `apply` buffers the
      mini-batch gradient; on every `groups`-th call the inner optimizer receives the
      coordinate-wise median of the `groups` buffered gradients. In between the weights do not
      move, so all groups are evaluated at the same weights. `iterations` (and therefore any
      learning-rate schedule) advances once per `groups` batches.
    * **One batch split into groups** (`cgh_tf.Model`): `compile` turns this M3 into the
      aggregator `cgh_tf.aggregators.MedianOfMeans(groups, l2)` over the inner optimizer; the M3
      object itself is then not used (no history buffers are created).

    Args:
        optimizer: inner Keras optimizer instance (SGD, SGD with momentum, Adam, ...).
        groups: number of groups k (int >= 2). Even k: mean of the two middle values.
        l2: L2 coefficient; `l2 * w` is added to every group gradient before the median
            (authors' semantics). The inner optimizer's `weight_decay` is decoupled (after).
        name: optimizer name.

    Non-finite gradients are skipped (not buffered, not applied) and counted in
    `nonfinite_steps`. With `groups` = 3 the median is computed with 4 min/max ops.
    """

    _size_name = "groups"

    def __init__(self, optimizer: keras.optimizers.Optimizer, groups: int = 3, l2: float = 0.0,
                 name: str | None = None, **kwargs: Any) -> None:
        super().__init__(optimizer, size=groups, l2=l2, name=name, **kwargs)

    @property
    def groups(self) -> int:
        return self.size

    def _slot(self, count):
        # Calls 0 .. k-2 of a group are stored; the due call (k-1) is reduced directly, not stored.
        return count % self.size

    def _update_due(self, count):
        return tf.equal(count % self.size, self.size - 1)

    def _reduce(self, lists):
        return robust.fused_medians(lists)


class _RunningAverage(RobustAverage):
    """Running reduction over the current and the previous `window - 1` mini-batch gradients."""

    _size_name = "window"
    _median = True

    def __init__(self, optimizer: keras.optimizers.Optimizer, window: int = 3, l2: float = 0.0,
                 name: str | None = None, **kwargs):
        super().__init__(optimizer, size=window, l2=l2, name=name, **kwargs)

    @property
    def window(self):
        return self.size

    def _slot(self, count):
        return count % (self.size - 1)

    def _update_due(self, count):
        return count >= self.size - 1


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RM3(_RunningAverage):
    """Running median of the last `window` mini-batch gradients (arXiv 2003.07422).

    Call t (1-based) uses d_t, the gradient at the current weights. Calls 1 .. window-1 only fill
    the history (weights unchanged, `iterations` unchanged); from call `window` on the inner
    optimizer receives median(d_t, d_{t-1}, ..., d_{t-window+1}) every call.

    Args:
        optimizer: inner Keras optimizer instance.
        window: number of gradients in the running median (int >= 2; even: mean of the middle two).
        l2: L2 coefficient added as `l2 * w` to each gradient before the median (each stored
            gradient keeps the L2 term of the weights it was computed at).
        name: optimizer name.

    Non-finite gradients are skipped and counted in `nonfinite_steps`; they never enter the window.
    """

    def _reduce(self, lists):
        return robust.fused_medians(lists)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RA3(_RunningAverage):
    """Running mean of the last `window` mini-batch gradients: the control for RM3.

    Same timeline, state and arguments as `RM3` with the median replaced by the mean, so it
    isolates "robust" from "stale" gradients.
    """

    _median = False

    def _reduce(self, lists):
        return robust.means(lists)


def unwrap(optimizer: keras.optimizers.Optimizer) -> "RobustAverage | None":
    """The `RobustAverage` in `optimizer` (itself, or inside a LossScaleOptimizer), else None."""
    if isinstance(optimizer, LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, RobustAverage) else None


# --------------------------------------------------------------------------- factory
_BASE_NAMES = ("sgd", "adam", "m3", "rm3", "ra3", "adamw")
_SIZED_NAME = re.compile(r"^(m|rm|ra)(\d+)$")
_WRAPPERS = {"m": M3, "rm": RM3, "ra": RA3}


def _inner(inner, learning_rate, momentum, **kw):
    if inner == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, **kw)
    if inner == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, **kw)
    if inner == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, **kw)
    raise ValueError(f"Unknown inner optimizer {inner!r}; valid: 'sgd', 'adam', 'adamw'.")


def parse_name(name: str, groups: int = 3, window: int = 3) -> tuple[str, int | None]:
    """`(kind, k)` of an optimizer name of `build`: kind "sgd" / "adam" / "adamw" (k None), "m" (M3 with k
    groups), "rm" / "ra" (RM3 / RA3 with window k); `m3` / `rm3` / `ra3` take k from `groups` /
    `window`. The one parser of the name grammar (the trainers count updates with it).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    key = str(name).lower()
    if key in ("sgd", "adam", "adamw"):
        return key, None
    match = _SIZED_NAME.match(key)
    if not match:
        raise ValueError(
            f"Unknown optimizer {name!r}; valid: {', '.join(_BASE_NAMES)}, "
            "or m<k> / rm<k> / ra<k> with an int k >= 2 (e.g. 'm5')."
        )
    kind = match.group(1)
    if key in ("m3", "rm3", "ra3"):
        return kind, int(groups if kind == "m" else window)
    return kind, int(match.group(2))


def build(name: str, learning_rate: float, momentum: float = 0.0, groups: int = 3, window: int = 3,
          l2: float = 0.0, inner: str = "sgd", **kw: Any) -> keras.optimizers.Optimizer:
    """Build an optimizer by name (for trainers and configs).

    | name              | result                                                              |
    |-------------------|---------------------------------------------------------------------|
    | `sgd`             | `keras.optimizers.SGD(learning_rate, momentum, **kw)`               |
    | `adam`            | `keras.optimizers.Adam(learning_rate, **kw)`                        |
    | `adamw`           | `keras.optimizers.AdamW(learning_rate, **kw)` (e.g. `weight_decay`, `beta_2`) |
    | `m3`              | `M3(inner, groups=groups, l2=l2)`                                   |
    | `rm3` / `ra3`     | `RM3` / `RA3(inner, window=window, l2=l2)`                          |
    | `m<k>`            | `M3` with `groups=k` (e.g. `m5`); `rm<k>`, `ra<k>`: `window=k`       |

    `inner` ("sgd", "adam" or "adamw") is the wrapped optimizer, built with `learning_rate`, `momentum`
    (SGD only) and `**kw` (e.g. `weight_decay`, `nesterov`). For `sgd` / `adam` `l2` must be 0
    (use `weight_decay`, which is decoupled).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    kind, size = parse_name(name, groups=groups, window=window)
    if size is None:
        return _inner_only(kind, learning_rate, momentum, l2, kw)
    wrapped = _inner(inner, learning_rate, momentum, **kw)
    if kind == "m":
        return M3(wrapped, groups=size, l2=l2)
    return _WRAPPERS[kind](wrapped, window=size, l2=l2)


def _inner_only(key, learning_rate, momentum, l2, kw):
    if l2:
        raise ValueError(
            f"`l2` is only used by the robust optimizers; for {key!r} pass weight_decay=... instead."
        )
    if key in ("adam", "adamw") and momentum:
        raise ValueError("`momentum` applies to SGD only; Adam takes beta_1 / beta_2.")
    return _inner(key, learning_rate, momentum, **kw)
