"""Per-example losses ℓ_i that decompose the loss Keras itself computes for a batch.

Keras 3.15 computes a compiled model's batch loss (regularisation aside) in its loss container
(`keras/src/trainers/compile_utils.py`, `CompileLoss`): one *leaf* per output that has a loss, each
a `keras.losses.Loss` called through `Loss.__call__` (`keras/src/losses/loss.py`):

    L = Σ_k λ_k R_k(V_k),   V_k = loss_k.call(y_k, ŷ_k)   (values, [m, ...], e.g. [m, T] per token)

λ_k is the leaf's `loss_weights` entry (1 if none), R_k is Keras' reduction: the mask carried by ŷ_k
(e.g. `Embedding(mask_zero=True)`) and by V_k is merged into the sample weight s_k (per example [m],
per token [m, T], nested per output, class weights arrive as per-example weights), then

| reduction                       | R(V) =                        | divisor D                        |
|---------------------------------|-------------------------------|----------------------------------|
| "sum_over_batch_size", "mean"   | Σ_e s_e V_e / D               | number of elements of V; with a  |
|                                 |                               | mask: number of unmasked elements|
|                                 |                               | (Keras weights valid entries by  |
|                                 |                               | total/valid), sample weights or  |
|                                 |                               | not                              |
| "mean_with_sample_weight"       | Σ_e s_e V_e / D               | Σ of the (mask-merged, rank-     |
|                                 |                               | matched) sample weights; number  |
|                                 |                               | of elements of V without any     |
| "sum"                           | Σ_e s_e V_e                   | 1                                |
| None / "none"                   | s ⊙ V (not reduced: Keras     | 1                                |
|                                 | differentiates its sum)       |                                  |

D (and s) depend on the batch — which tokens are masked, which weights — but not on the model's
weights, so every R_k is *linear* in V_k with coefficients C_k = ∂R_k/∂V_k that are constants of the
batch. This module takes C_k from Keras' own `Loss.__call__` (applied to the values through a
`Loss` whose `call` returns them, so masks, rank matching, divisors and the replica scaling are
Keras' own, not re-implemented), and defines

    ℓ_i = m · Σ_k λ_k Σ_{e ∈ example i} C_{k,e} V_{k,e}       so that   (1/m) Σ_i ℓ_i = L.

The 1/m convention keeps ℓ_i on the scale of a per-example loss (an unmasked, unweighted batch
gives ℓ_i = the mean over example i's elements), and makes the mean of the per-example gradients
g_i = ∇ℓ_i Keras' gradient ∇L. ℓ_i depends only on example i's prediction and its row of C, so
the per-example gradient paths (one example at a time) compute it from `Targets` sliced per
example. With several replicas the decomposition is of the replica's unscaled loss (Keras divides
the mean reductions by the number of replicas; that factor is taken out).

Supported: any built-in `keras.losses.Loss`, a loss name or a function `(y_true, y_pred) ->
values with the example axis first` (wrapped as Keras wraps it), every reduction above, masks on
ŷ and on the values, per-example and per-token sample weights, class weights, `loss_weights`, and
dict / list outputs with one loss each. Not decomposable, with a one-line error: a loss returning a
scalar (it reduces over the batch itself), a `Loss` subclass that overrides `__call__` (its own
reduction), a model that overrides `compute_loss`. A custom `call` that mixes examples (e.g. a
contrastive loss over the batch) cannot be detected structurally: its "per-example" gradients are
then the shares of each example's row, not a decomposition.
"""

from typing import NamedTuple, Optional

import keras
import tensorflow as tf

from cgh_tf import keras_internals

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


class Leaf(NamedTuple):
    """One loss of the container: `path` into y / ŷ (() for a single output), the loss, λ (or None)."""

    path: tuple
    loss: keras.losses.Loss
    weight: Optional[float]


class Targets(NamedTuple):
    """Per-example targets prepared on a batch: the labels `y` and, per leaf, the coefficients
    m·λ_k·C_k (each of the shape of the leaf's values, example axis first). Every tensor has the
    example axis first, so a slice of it is the targets of the sliced examples."""

    y: object
    coefficients: tuple


class _GivenValues(keras.losses.Loss):
    """A `Loss` whose `call` returns given values: Keras' own `Loss.__call__` then applies the mask
    of ŷ, the sample weights and the reduction to them."""

    def __init__(self, values, reduction, dtype):
        super().__init__(name="cgh_given_values", reduction=reduction, dtype=dtype)
        self._values = values

    def call(self, y_true, y_pred):
        return self._values


class _FunctionLoss(keras.losses.Loss):
    """A function (y_true, y_pred) -> values as a `Loss` with Keras' default reduction, as
    `compile(loss=function)` wraps it."""

    def __init__(self, fn):
        super().__init__(name=fn.__name__ if hasattr(fn, "__name__") else "loss")
        self._fn = fn

    def call(self, y_true, y_pred):
        return self._fn(y_true, y_pred)


def as_loss(loss) -> keras.losses.Loss:
    """A `keras.losses.Loss` for a Loss, a loss name or a function; TypeError otherwise."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        if type(loss).__call__ is not keras.losses.Loss.__call__:
            raise ValueError(
                f"The loss {type(loss).__name__} overrides Loss.__call__, so its reduction over the "
                "batch is its own and cannot be decomposed per example; implement `call` (values "
                "per example or per element) and keep Keras' __call__.")
        return loss
    if callable(loss):
        return _FunctionLoss(loss)
    raise TypeError(
        f"`loss` must be a keras.losses.Loss, a loss name, a callable or None; got {loss!r}.")


def _explicit_leaves(loss):
    """Leaves of a loss given by the caller: one loss, or a dict / list of losses (one per output)."""
    if isinstance(loss, dict):
        return [Leaf((key,), as_loss(value), None) for key, value in loss.items()
                if value is not None]
    if isinstance(loss, (list, tuple)):
        return [Leaf((index,), as_loss(value), None) for index, value in enumerate(loss)
                if value is not None]
    return [Leaf((), as_loss(loss), None)]


def _resolve(path, structure, output_names):
    """The part of `structure` (y, ŷ or sample weights) at a container path: dict keys, list
    indices, an output name into a list (by `output_names`); a single tensor is its own part."""
    for key in path:
        if isinstance(structure, dict):
            structure = structure[key]
        elif isinstance(structure, (list, tuple)):
            structure = structure[output_names.index(key) if isinstance(key, str) else key]
        # else: a single output addressed by its name
    return structure


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _replica_scale(dtype):
    """The factor (≈ 1/replicas) by which Keras scales a mean-reduced loss under tf.distribute,
    read from Keras' own reduction of a single 1 (it rounds 1/replicas through float32, so
    dividing by exactly this factor, not multiplying by the replica count, undoes it exactly)."""
    one = tf.ones([1], dtype)
    return _GivenValues(one, "sum_over_batch_size", dtype.name)(one, one)


class LossDecomposition:
    """`fn(y, y_pred) -> [m]` per-example losses ℓ_i of the module docstring, for a model's compiled
    loss (`loss=None`) or a given loss (a Loss, name, function, or a dict / list with one per output).

    `prepare(y, y_pred, sample_weight, scale)` computes the batch's `Targets`; calling the object
    with `Targets` (or a slice of them, for one example) gives ℓ_i × `scale`; calling it with plain
    labels prepares them on the given batch first.
    """

    def __init__(self, model, loss=None):
        self._model = model
        self._given = loss
        self._leaves = None if loss is None else _explicit_leaves(loss)
        if loss is None:
            _check_model_loss(model)

    def leaves(self, y=None, y_pred=None):
        """The container's leaves (built from a batch the first time, as Keras builds it)."""
        if self._leaves is None:
            self._leaves = [Leaf(*leaf) for leaf in
                            keras_internals.compiled_loss_leaves(self._model, y, y_pred)]
        return self._leaves

    def _output_names(self):
        return list(getattr(self._model, "output_names", None) or [])

    def _part(self, leaf, structure):
        return _resolve(leaf.path, structure, self._output_names())

    def _sample_weight(self, leaf, sample_weight):
        if sample_weight is None or not tf.nest.is_nested(sample_weight):
            return sample_weight
        return self._part(leaf, sample_weight)

    def prepare(self, y, y_pred, sample_weight=None, scale=None) -> Targets:
        """The batch's `Targets`: labels and coefficients m·λ_k·C_k (× `scale`, e.g. the loss
        scale of mixed precision), constants of the batch (no gradient flows through them).

        y, y_pred: the batch's labels and model output (ŷ carrying Keras' mask, as the model
        returns it); sample_weight: None, [m], [m, ...] (e.g. per token) or nested per output.
        """
        coefficients = []
        for leaf in self.leaves(y, y_pred):
            y_true, pred = self._part(leaf, y), self._part(leaf, y_pred)
            if y_true is None:
                raise ValueError(f"No labels for the output {leaf.path} of the loss "
                                 f"{leaf.loss.name}; pass y for every output that has a loss.")
            values = _values(leaf.loss, y_true, pred)
            weights = self._sample_weight(leaf, sample_weight)
            with tf.GradientTape() as tape:
                tape.watch(values)
                reduced = _GivenValues(values, leaf.loss.reduction, values.dtype.name)(
                    y_true, pred, weights)
            coefficient = tape.gradient(reduced, values)
            if coefficient is None:  # Keras returned no dependence on the values (e.g. empty)
                coefficient = tf.zeros_like(values)
            factor = tf.cast(tf.shape(values)[0], values.dtype)
            if leaf.loss.reduction in _MEAN_REDUCTIONS and _num_replicas() > 1:
                factor /= _replica_scale(values.dtype)
            if leaf.weight is not None:
                factor *= leaf.weight
            if scale is not None:
                factor *= tf.cast(scale, values.dtype)
            coefficients.append(tf.stop_gradient(coefficient * factor))
        return Targets(y, tuple(coefficients))

    def per_example(self, targets: Targets, y_pred):
        """[m] ℓ_i (× the prepared scale) for the examples of `targets` and `y_pred`."""
        total = None
        for leaf, coefficient in zip(self.leaves(), targets.coefficients):
            values = _values(leaf.loss, self._part(leaf, targets.y), self._part(leaf, y_pred))
            contribution = tf.cast(coefficient, values.dtype) * values
            if contribution.shape.rank > 1:
                contribution = tf.reduce_sum(contribution, axis=list(range(1, contribution.shape.rank)))
            if total is not None and total.dtype != contribution.dtype:
                total, contribution = tf.cast(total, tf.float64), tf.cast(contribution, tf.float64)
            total = contribution if total is None else total + contribution
        return total

    def __call__(self, y, y_pred, sample_weight=None):
        if not isinstance(y, Targets):
            y = self.prepare(y, y_pred, sample_weight)
        return self.per_example(y, y_pred)


def _compute_dtype(loss, y_pred):
    """The dtype the values are computed in: Keras' `Loss.__call__` converts to the loss dtype
    (float32 under mixed precision, where ŷ is 16-bit); a float64 ŷ keeps its precision."""
    pred_dtype = tf.nest.flatten(y_pred)[0].dtype
    return tf.float64 if pred_dtype == tf.float64 else tf.as_dtype(loss.dtype)


def _values(loss, y_true, y_pred):
    """`loss.call` with `Loss.__call__`'s conversions (both to the compute dtype); checks that the
    values keep the example axis (a scalar couples the examples: not decomposable)."""
    dtype = _compute_dtype(loss, y_pred)
    y_pred = tf.nest.map_structure(lambda t: keras.ops.convert_to_tensor(t, dtype), y_pred)
    y_true = tf.nest.map_structure(lambda t: keras.ops.convert_to_tensor(t, dtype), y_true)
    values = tf.convert_to_tensor(loss.call(y_true, y_pred))
    if values.shape.rank == 0:
        raise ValueError(
            f"The loss {loss.name} returned a scalar for the batch, so it reduces over the examples "
            "itself and cannot be computed per example; it must return one value per example or "
            "per element (shape [m] or [m, ...]).")
    m_pred, m_values = tf.nest.flatten(y_pred)[0].shape[0], values.shape[0]
    if m_pred is not None and m_values is not None and m_pred != m_values:
        raise ValueError(
            f"The loss {loss.name} returned shape {values.shape} for {m_pred} examples; the first "
            "axis must be the example axis.")
    return values


def _check_model_loss(model):
    """The model's compiled loss is decomposable: it has one and `compute_loss` is Keras' own."""
    if getattr(model, "loss", None) is None:
        raise ValueError(
            "No loss: the model is not compiled with a loss. Pass `loss=` (a keras.losses.Loss, a "
            "loss name or a function (y_true, y_pred) -> per-example losses) or compile the model.")
    if type(model).compute_loss is not keras.Model.compute_loss:
        raise ValueError(
            f"{type(model).__name__} overrides compute_loss, so the loss of a batch is its own and "
            "its per-example decomposition is unknown; pass `loss=` explicitly (coherence.measure), "
            "or train with aggregation='mean' and coherence_every=0.")


def for_model(model, loss=None) -> LossDecomposition:
    """The decomposition of `loss` (None: the model's compiled loss); a decomposition is returned
    as it is."""
    if isinstance(loss, LossDecomposition):
        return loss
    return LossDecomposition(model, loss)
