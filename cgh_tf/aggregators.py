"""In-batch aggregators: how `cgh_tf.Model` turns one batch into the gradient its optimizer gets.

The train step of `cgh_tf.Model` is one path (docs/design.md §5):

    batch -> gradient source -> aggregator -> optimizer.apply (Keras' ordinary apply)

An aggregator is chosen in `compile(aggregation=...)` and says which source it needs:

| aggregator                  | source (`groups`, `per_example`)               | gradient handed to the optimizer                 |
|-----------------------------|------------------------------------------------|--------------------------------------------------|
| `Mean()` ("mean")           | 1 group: the batch                             | the mean gradient (plain Keras)                  |
| `MedianOfMeans(k)`          | k contiguous groups, one mean gradient each    | coordinate-wise median of the k group means (M3) |
| `Winsorize(c)` ("winsorize")| per-example gradients (one device)             | coordinate-wise winsorized mean, c % per side    |

Adding one: subclass `GroupAggregator` and implement `combine(rows)` (rows: one `[k, *var.shape]`
tensor per variable, or None; e.g. a trimmed mean, or a geometric median, which sees all
variables at once), or `PerExampleAggregator` and implement `reduce(values, axis)`. Register it
with `keras.saving.register_keras_serializable` so that `model.save` keeps it.

Contract every aggregator must meet (the step relies on it):
* **positively homogeneous**: agg(s·g) = s·agg(g) for s > 0. Under mixed precision the source
  returns gradients of the *scaled* loss and Keras' LossScaleOptimizer unscales the aggregate.
* **translation equivariant**: agg(g + c) = agg(g) + c. Regularisation gradients (`model.losses`)
  and the coupled L2 term `l2 · w` are the same for every group / example, so they are added
  after the aggregation instead of to every row.
* **non-finite in, non-finite out**: if any group row is NaN / Inf the aggregate is made
  non-finite (`GroupAggregator.__call__`), so that the LossScaleOptimizer skips the step and
  lowers the scale exactly as for a plain mean (a median would otherwise hide one bad group).

Per-example norm clipping (`NormClip`) and the mean at the winsorized mean's norm
(`NormMatchedMean`), the controls of winsorizing in the `winsorize_controls` experiment, act on
whole gradients, not coordinate-wise: they are gradient functions for custom loops
(`trainers/graph_loop.update_trainer`), not `cgh_tf.Model` aggregations (`get` and `compile`
refuse them). `Winsorize.changed_share` measures the share of
per-example gradient values winsorizing changes, the fraction a matched `NormClip` clips.

Cross-step buffering (M3 over consecutive batches, RM3, RA3) is not an aggregator: it stays in the
optimizer wrappers of `cgh_tf.optimizers`, which can be combined with any aggregator here.
"""

import numbers
import warnings

import keras
import tensorflow as tf

from cgh_tf import robust
from cgh_tf.api_types import LossSpec, Nest

_PACKAGE = "cgh_tf"


def check_count(name: str, value: int, what: str | None = "the median of 2 values is their mean") -> int:
    """`value` as an int >= 2 (NumPy integers accepted); warns for 2 when `what` is given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2:
        raise ValueError(f"`{name}` must be an int >= 2; got {value!r}.")
    value = int(value)
    if value == 2 and what:
        warnings.warn(f"`{name}=2`: {what}, so this is not a robust average; use 3 or more.",
                      UserWarning, stacklevel=3)
    return value


def check_l2(l2: float) -> float:
    """`l2` as a float >= 0 (the coupled L2 coefficient)."""
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or l2 < 0:
        raise ValueError(f"`l2` must be a float >= 0; got {l2!r}.")
    return float(l2)


class Aggregator:
    """Base class. `groups`: contiguous groups the batch is split into (1 = the whole batch);
    `per_example`: needs every example's gradient on one device; `l2`: coupled L2 coefficient
    (`l2 · w` added to the aggregate, i.e. to every gradient before aggregating)."""

    groups = 1
    per_example = False

    def __init__(self, l2: float = 0.0):
        self.l2 = check_l2(l2)

    def get_config(self) -> dict:
        return {"l2": self.l2}

    @classmethod
    def from_config(cls, config: dict) -> "Aggregator":
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.get_config().items()))))


class GroupAggregator(Aggregator):
    """Aggregates the mean gradients of `groups` contiguous groups of the batch."""

    def combine(self, rows: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
        """rows: per variable a `[groups, *var.shape]` tensor (row j = group j's mean gradient) or
        None -> per variable the aggregate (None stays None)."""
        raise NotImplementedError

    def __call__(self, rows: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
        combined = self.combine(rows)
        if self.groups == 1:
            return combined
        marker = robust.nonfinite_marker(rows)
        return [None if c is None else c + tf.cast(marker, c.dtype) for c in combined]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Mean(GroupAggregator):
    """The plain mean gradient of the batch (Keras' own step)."""

    def combine(self, rows: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
        return [None if r is None else r[0] for r in rows]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MedianOfMeans(GroupAggregator):
    """M3 within one batch: median of the mean gradients of `groups` contiguous groups.

    `compile(optimizer=cgh_tf.M3(opt, groups=k, l2=λ))` on a `cgh_tf.Model` is
    `compile(optimizer=opt, aggregation=MedianOfMeans(k, l2=λ))`.
    """

    def __init__(self, groups: int = 3, l2: float = 0.0):
        super().__init__(l2)
        self.groups = check_count("groups", groups)

    def get_config(self) -> dict:
        return {"groups": self.groups, "l2": self.l2}

    def combine(self, rows: list[tf.Tensor | None]) -> list[tf.Tensor | None]:
        return [None if r is None else robust.median(r, axis=0) for r in rows]


class PerExampleAggregator(Aggregator):
    """Aggregates the m per-example gradients of the batch coordinate-wise."""

    per_example = True

    def reduce(self, values: tf.Tensor, axis: int) -> tf.Tensor:
        """values [..., m, ...] with the examples on `axis` -> the aggregate without that axis."""
        raise NotImplementedError

    def reduce_outer(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        """Optional fast form for Dense kernels: the reduction of the outer products a_i ⊗ b_i
        (a [m, fan_in], b [m, fan_out]) as [fan_in, fan_out], or None to use `reduce`."""
        return None


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Winsorize(PerExampleAggregator):
    """Winsorized gradient descent (arXiv 2002.10657): per coordinate, clip the m per-example
    gradients to their `pct`-th and (100 - pct)-th nearest-rank percentiles, then average."""

    def __init__(self, pct: float, l2: float = 0.0):
        super().__init__(l2)
        if isinstance(pct, bool) or not isinstance(pct, numbers.Real) or not 0.0 <= pct < 50.0:
            raise ValueError(f"winsorize_pct must be in [0, 50) (percent clipped on each side), "
                             f"got {pct!r}.")
        self.pct = float(pct)

    def get_config(self) -> dict:
        return {"pct": self.pct, "l2": self.l2}

    def reduce(self, values: tf.Tensor, axis: int) -> tf.Tensor:
        return robust.winsorized_mean(values, self.pct, axis)

    def changed_share(self, values: tf.Tensor, axis: int = 0) -> tf.Tensor:
        """The share (float scalar in [0, 1]) of the entries of `values` [..., m, ...] (m
        examples on `axis`) that winsorizing changes: those strictly below the `pct`-th or
        above the (100 − `pct`)-th nearest-rank percentile of their coordinate. At most
        2·round((m − 1)·pct / 100) / m; less where values tie (e.g. the zeros of ReLU units)."""
        values = tf.convert_to_tensor(values)
        if not self.pct:
            return tf.zeros([], values.dtype)
        bounds = robust.percentile_nearest(values, [self.pct, 100.0 - self.pct], axis=axis)
        low, high = tf.expand_dims(bounds[0], axis), tf.expand_dims(bounds[1], axis)
        return tf.reduce_mean(tf.cast((values < low) | (values > high), values.dtype))

    def reduce_outer(self, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        reduced = robust.winsorized_mean_of_outer_products(a, b, self.pct)
        if reduced is None and self.pct:
            warnings.warn(_SLOW_WINSORIZE.format(reason=_network_refusal(a.shape[0], self.pct)),
                          stacklevel=2)
        return reduced


class NormClip:
    """Per-example L2-norm clipping of a fixed share of every batch, then the mean.

    In a batch of m examples the k = round(m · `clip_pct` / 100) examples with the largest
    ‖g_i‖ (over all trainable variables) are scaled down to τ, the (k+1)-th largest norm; the
    result is (1/m) Σ_i min(1, τ / ‖g_i‖) g_i. k = 0 is the plain mean. The threshold follows
    the batch (a quantile, not a fixed C), so the clipped share stays `clip_pct` % all through
    training, as winsorizing's does.

    Two passes (TF Privacy's "fast clipping" idea): the norms from the engine's fast rules
    (`per_example.gradients_and_sq_norms`), then one backward pass of Σ_i w_i ℓ_i / m with the
    weights w_i held constant. Both passes must see the same function: a model with random layers
    (Dropout, noise) in training mode is refused.
    """

    def __init__(self, clip_pct: float):
        if (isinstance(clip_pct, bool) or not isinstance(clip_pct, numbers.Real)
                or not 0.0 <= clip_pct < 100.0):
            raise ValueError(f"clip_pct must be in [0, 100) (percent of each batch's examples "
                             f"clipped); got {clip_pct!r}.")
        self.clip_pct = float(clip_pct)

    def __repr__(self):
        return f"NormClip(clip_pct={self.clip_pct!r})"

    def weights(self, sq_norms: tf.Tensor) -> tf.Tensor:
        """[m] per-example squared norms ‖g_i‖² -> [m] weights min(1, τ / ‖g_i‖) (1 where
        ‖g_i‖ = 0)."""
        norms = tf.sqrt(tf.convert_to_tensor(sq_norms))
        m = tf.shape(norms)[0]
        k = tf.cast(tf.round(tf.cast(m, tf.float64) * (self.clip_pct / 100.0)), tf.int32)
        k = tf.minimum(k, m - 1)
        tau = tf.math.top_k(norms, k + 1, sorted=True).values[k]
        return tf.where(norms > tau, tau / tf.where(norms > 0, norms, 1), tf.ones_like(norms))

    def gradients(self, model: keras.Model, x: Nest, y: Nest, loss_fn: LossSpec = None,
                  training: bool = False) -> list:
        """The clipped mean gradient, a list aligned with `model.trainable_variables` (None where
        the loss does not depend on a variable); loss_fn as `per_example.per_example_loss_fn`."""
        from cgh_tf import keras_internals, per_example

        if training and any(hasattr(layer, "seed_generator")
                            for layer in keras_internals.flatten_layers(model)):
            raise ValueError(f"{self!r} runs the model twice per batch; a model with random layers "
                             "(Dropout, noise) in training mode would see two different functions. "
                             "Use training=False or a model without them.")
        loss_fn = per_example.per_example_loss_fn(model, loss_fn)
        sums = per_example.gradients_and_sq_norms(model, x, y, loss_fn, training=training)
        weights = tf.stop_gradient(self.weights(tf.reduce_sum(sums.sq_norms, axis=1)))
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = model(x, training=training)
            losses = loss_fn(loss_fn.prepare(y, y_pred, None, None), y_pred)
            total = tf.reduce_sum(tf.cast(weights, losses.dtype) * losses)
            total = total / tf.cast(tf.shape(losses)[0], losses.dtype)
        return tape.gradient(total, variables)


class NormMatchedMean:
    """The batch's mean gradient ḡ scaled to the norm of its winsorized mean at `pct`:
    ḡ · ‖wmean‖ / ‖ḡ‖ (norms over all trainable variables), winsorizing's step length without its
    direction. One per-example pass gives both (`per_example.reduced_per_example_gradients`
    with `with_sums`)."""

    def __init__(self, pct: float):
        self.winsorize = Winsorize(pct)

    def __repr__(self):
        return f"NormMatchedMean(pct={self.winsorize.pct!r})"

    def gradients(self, model: keras.Model, x: Nest, y: Nest, loss_fn: LossSpec = None,
                  training: bool = False) -> list:
        """A list aligned with `model.trainable_variables` (None where the loss does not depend
        on a variable)."""
        from cgh_tf import per_example

        reduced, sums = per_example.reduced_per_example_gradients(
            model, x, y, self.winsorize.reduce, loss_fn=loss_fn, training=training,
            reduce_outer=self.winsorize.reduce_outer, with_sums=True)
        mean = [None if g is None else g / tf.cast(tf.shape(sums.losses)[0], g.dtype)
                for g in sums.grad_sum]
        scale = tf.linalg.global_norm(reduced) / tf.linalg.global_norm(mean)
        return [None if g is None else g * tf.cast(scale, g.dtype) for g in mean]


_SLOW_WINSORIZE = (
    "cgh_tf Winsorize: {reason}, so Dense kernels are winsorized on materialised blocks of "
    "per-example gradients instead of the fused network (exact, but about 30x slower here).")


def _network_refusal(m, pct) -> str:
    """Why `robust.winsorized_mean_of_outer_products` returned None, and what to do."""
    if m is None:
        return ("the batch size is not known while tracing (a batch of shape [None, ...]); give "
                "batches a static size, e.g. tf.data `batch(B, drop_remainder=True)` or "
                "`tf.reshape(x, [B, ...])`")
    return (f"a batch of {m} examples with winsorize_pct={pct:g} needs a sorting network larger "
            f"than robust.MAX_NETWORK_SIZE={robust.MAX_NETWORK_SIZE}; use smaller batches or a "
            f"smaller pct")


NAMES = ("mean", "winsorize")


def get(aggregation: str | Aggregator | dict, winsorize_pct: float | None = None) -> Aggregator:
    """An `Aggregator` from a compile option: a name of `NAMES`, an instance, or its Keras config.

    Raises ValueError for an unknown name, for `winsorize_pct` > 0 with anything but
    "winsorize" (it would be ignored), and for "winsorize" without `winsorize_pct`: there is no
    default c (an implicit 0 was a plain mean at the cost of the per-example pass, and a non-zero
    one would be a hidden hyperparameter of the paper's method); 0 must be asked for.
    """
    if isinstance(aggregation, dict):
        aggregation = keras.saving.deserialize_keras_object(aggregation)
    if winsorize_pct and aggregation != "winsorize":
        raise ValueError(
            f"winsorize_pct={winsorize_pct!r} only applies to aggregation='winsorize' (got "
            f"aggregation={aggregation!r}); it would be ignored. Remove it, or use "
            "aggregation='winsorize' (or cgh_tf.aggregators.Winsorize(pct)).")
    if isinstance(aggregation, Aggregator):
        return aggregation
    if aggregation == "mean":
        return Mean()
    if aggregation == "winsorize":
        if winsorize_pct is None:
            raise ValueError(
                "aggregation='winsorize' needs winsorize_pct, the percent clipped on each side, "
                "in [0, 50) (e.g. winsorize_pct=2.0; 0 is a plain mean computed per example).")
        return Winsorize(winsorize_pct)
    raise ValueError(f"Unknown aggregation {aggregation!r}; valid: {', '.join(NAMES)}, or a "
                     "cgh_tf.aggregators.Aggregator instance.")
