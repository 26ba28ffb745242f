"""Which layers compute differently in training and inference mode, by evidence, not by class.

    mode_dependent_layers(model) -> [layer name]   (empty: one pass serves update and metric)
    depends_on_training(layer) -> bool             (the layer itself, not its sublayers)
    example_mixing_layers(model) -> [layer name]   (layers whose training mode couples the examples)
    check_examples_independent(model, training, what)  (one-line ValueError where they are not)

`cgh_tf.Model` with `coherence_every=1` measures coherence in inference mode; when the model
computes the same in both modes the update's own pass gives the metric, otherwise a second pass is
needed (about 2x a plain step). A layer counts as mode-dependent when its `call` takes `training`
(read from the public signature, as Keras does), unless it is one of Keras' own layers running
Keras' own `call` (not overridden by a subclass) for which the evidence says otherwise:

| Keras layer (own `call`)                                     | mode-dependent when             |
|--------------------------------------------------------------|---------------------------------|
| Dense, EinsumDense                                           | float8 quantization only        |
| Dropout                                                      | rate > 0                        |
| BatchNormalization                                           | trainable (frozen: inference    |
|                                                              | mode in both, Keras 3)          |
| LSTMCell, GRUCell, SimpleRNNCell, ConvLSTMCell               | dropout > 0 or                  |
|                                                              | recurrent_dropout > 0           |
| Functional / Sequential models, MultiHeadAttention,          | never by itself: it only passes |
| GroupQueryAttention, RNN, LSTM, GRU, SimpleRNN, ConvLSTM1-3D,| `training` on to sublayers (a   |
| StackedRNNCells, Bidirectional, TimeDistributed              | Dropout, a cell, the wrapped    |
|                                                              | layer), which are checked on    |
|                                                              | their own                       |

Every layer reachable from the model is checked (`keras_internals.flatten_layers`), so a wrapper or
an RNN is mode-dependent exactly when something inside it is: `Bidirectional(LSTM(8))` is not,
`Bidirectional(LSTM(8, dropout=0.2))` is (through its cells), `TimeDistributed(Dropout(0.5))` is.
Any other layer whose `call` takes `training` (noise layers, user layers, a Keras subclass that
overrides `call`) is counted, since nothing says it ignores the flag.
"""

import functools
import inspect

import keras

from cgh_tf import keras_internals

L = keras.layers

# Keras layers whose own call only hands `training` to sublayers (checked on their own). The RNN
# layers also need their own `inner_loop`, where LSTM / GRU apply the cell's dropout themselves.
_PASS_TRAINING_ON = (keras_internals.Functional, keras.Sequential, L.MultiHeadAttention,
                     L.GroupQueryAttention, L.Bidirectional, L.TimeDistributed,
                     L.StackedRNNCells)
_RNN_LAYERS = (L.RNN, L.LSTM, L.GRU, L.SimpleRNN, L.ConvLSTM1D, L.ConvLSTM2D, L.ConvLSTM3D)


@functools.cache
def _dropout_cells():
    """The RNN cell classes whose dropout attributes decide their mode dependence. Built on first
    use, not at import: a Keras layer made at import would start TF's eager runtime before a
    program can configure it (MultiWorkerMirroredStrategy must come first)."""
    return (L.LSTMCell, L.GRUCell, L.SimpleRNNCell, _conv_lstm_cell_class())


def _conv_lstm_cell_class():
    """The class of a ConvLSTM layer's cell (Keras exports no name for it), if it has the dropout
    attributes this table reads; else LSTMCell again (no exemption for it)."""
    cell = L.ConvLSTM1D(1, 1).cell
    if not all(hasattr(cell, name) for name in ("dropout", "recurrent_dropout")):
        return L.LSTMCell
    return type(cell)


def depends_on_training(layer) -> bool:
    """Whether `layer` itself (not counting its sublayers) may compute differently in training and
    inference mode (see the module table)."""
    if "training" not in inspect.signature(layer.call).parameters:
        return False
    for base in (L.Dense, L.EinsumDense):
        if _keras_own(layer, base, "call"):
            return getattr(layer, "quantization_mode", None) == "float8"
    if _keras_own(layer, L.Dropout, "call"):
        return layer.rate > 0
    if _keras_own(layer, L.BatchNormalization, "call"):
        return layer.trainable
    if _is_dropout_cell(layer):
        return layer.dropout > 0 or layer.recurrent_dropout > 0
    if any(_keras_own(layer, base, "call", "inner_loop") for base in _RNN_LAYERS):
        return False
    return not any(_keras_own(layer, base, "call") for base in _PASS_TRAINING_ON)


def mode_dependent_layers(model):
    """Names of the layers below `model` (any depth) that compute differently in training mode."""
    return [layer.name for layer in keras_internals.flatten_layers(model, include_self=False)
            if depends_on_training(layer)]


def _is_dropout_cell(layer):
    """A Keras RNN cell (with dropout and recurrent_dropout) running its own `call`."""
    return any(_keras_own(layer, base, "call") for base in _dropout_cells())


def _keras_own(layer, base, *methods):
    """`layer` is a `base` running Keras' own `base.<method>` for every method (not overridden)."""
    return isinstance(layer, base) and all(
        getattr(type(layer), name) is getattr(base, name) for name in methods)


def example_mixing_layers(model):
    """Names of the layers below `model` whose training-mode output for one example depends on the
    other examples of the batch: a trainable BatchNormalization (batch statistics; frozen, Keras 3
    uses the moving ones). A user layer that mixes examples cannot be detected."""
    return [layer.name for layer in keras_internals.flatten_layers(model, include_self=False)
            if isinstance(layer, L.BatchNormalization) and layer.trainable]


def check_examples_independent(model, training, what):
    """ValueError (one line) when `what` needs each example's gradient on its own (one example at
    a time, or a second pass that differentiates each ℓ_i through the batch) but `training` makes
    `model`'s examples interact (`example_mixing_layers`): a batch of one normalises by its own
    statistics, a different gradient from the batch's, silently."""
    mixing = example_mixing_layers(model) if training else []
    if mixing:
        raise ValueError(
            f"{what} with training=True: layers {mixing} (BatchNormalization) normalise with the "
            "batch's statistics in training mode, so the examples interact and each example's "
            "gradient taken on its own is not its share of the batch's; use training=False "
            "(inference mode), or freeze them (layer.trainable = False: moving statistics).")
