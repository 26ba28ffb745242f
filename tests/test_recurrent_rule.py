"""The recurrent rule (cgh_tf/layer_rules/recurrent.py): SimpleRNN, LSTM, GRU, Bidirectional, with
masks, go_backwards, return_state and initial states, against a float64 loop of batch-1
GradientTapes (tests/test_layer_rules.py's `brute_force`), every layer ruled (a fallback fails)."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from cgh_tf import exact_fallback, per_example
from cgh_tf.layer_rules import recurrent
from test_layer_rules import SCCE, brute_force, check, rules_of

L = keras.layers
M, T, F = 5, 4, 3


@pytest.fixture(autouse=True)
def float64(float64_keras):
    """Float64 Keras for every test (see conftest)."""


def classifier(inputs, hidden, seed=0):
    model = keras.Model(inputs, L.Dense(3)(hidden))
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:  # non-zero biases, no symmetric start
        v.assign(v + rng.normal(scale=0.3, size=v.shape))
    return model


def sequences(seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(M, T, F)), rng.integers(0, 3, M)


@pytest.mark.parametrize("make", [
    lambda: L.SimpleRNN(4),
    lambda: L.LSTM(4),
    lambda: L.GRU(4),
    lambda: L.GRU(4, use_bias=False),
    lambda: L.LSTM(4, go_backwards=True, activation="relu"),
    lambda: L.GRU(4, go_backwards=True, recurrent_activation="hard_sigmoid"),
    lambda: L.LSTM(4, unroll=True),
])
def test_last_output(make):
    inputs = keras.Input((T, F))
    model = classifier(inputs, make()(inputs))
    x, y = sequences()
    check(model, x, y, SCCE)
    assert set(rules_of(model).values()) == {"dense", "recurrent"}


@pytest.mark.parametrize("cls", [L.LSTM, L.GRU, L.SimpleRNN])
def test_bidirectional_sequences_then_last(cls):
    inputs = keras.Input((T, F))
    h = L.Bidirectional(cls(3, return_sequences=True))(inputs)
    model = classifier(inputs, L.Bidirectional(L.GRU(2))(h))
    x, y = sequences()
    check(model, x, y, SCCE)


@pytest.mark.parametrize("zero_output", [False, True])
def test_padding_mask_from_embedding(zero_output):
    """Embedding(mask_zero) -> LSTM(sequences) -> GRU: masked steps keep the states; the
    outputs there are zeros or the previous output (zero_output_for_mask)."""
    inputs = keras.Input((T,), dtype="int32")
    e = L.Embedding(7, F, mask_zero=True)(inputs)
    lstm = L.LSTM(3, return_sequences=True, zero_output_for_mask=zero_output)
    model = classifier(inputs, L.GRU(2)(lstm(e)))
    ids = np.array([[1, 2, 3, 4], [5, 6, 0, 0], [2, 0, 0, 0], [3, 4, 5, 0], [6, 1, 0, 0]])
    check(model, ids, np.array([0, 1, 2, 0, 1]), SCCE)


def test_return_state_and_initial_state():
    """An encoder's final states start a decoder (return_state, initial_state)."""
    inputs = keras.Input((T, F))
    _, h, c = L.LSTM(3, return_state=True)(inputs)
    decoded = L.LSTM(3, return_sequences=True)(inputs, initial_state=[h, c])
    model = classifier(inputs, L.Flatten()(decoded))
    x, y = sequences()
    check(model, x, y, SCCE)


def test_not_matched_take_the_fallback():
    """Dropout, stateful, GRU(reset_after=False), a custom cell: no rule."""
    for layer in (L.LSTM(2, dropout=0.1), L.GRU(2, reset_after=False),
                  L.RNN(L.SimpleRNNCell(2)), L.SimpleRNN(2, recurrent_dropout=0.2)):
        assert not recurrent.RecurrentRule.matches(layer), layer

    class MyLSTM(L.LSTM):
        def call(self, sequences, initial_state=None, mask=None, training=False):
            return super().call(sequences, initial_state, mask, training)

    assert not recurrent.RecurrentRule.matches(MyLSTM(2))


def test_explain_names_the_rule_for_the_cells():
    inputs = keras.Input((T, F))
    model = classifier(inputs, L.Bidirectional(L.LSTM(2))(inputs))
    plans = {p.layer_class: (p.rule, p.reason) for p in per_example.explain(model)}
    assert plans["LSTMCell"] == ("recurrent", "")


def test_unknown_batch_and_length_in_a_traced_step():
    inputs = keras.Input((None, F))
    model = classifier(inputs, L.GRU(3)(L.LSTM(2, return_sequences=True)(inputs)))
    x, y = sequences()
    loss_fn = per_example.per_example_loss_fn(model, SCCE)

    @tf.function(input_signature=[tf.TensorSpec([None, None, F], tf.float64),
                                  tf.TensorSpec([None], tf.int64)])
    def sums(x, y):
        return per_example.gradients_and_sq_norms(model, x, y, loss_fn).sq_norms

    rows, _ = brute_force(model, x, y, SCCE)
    np.testing.assert_allclose(sums(x, y).numpy(), rows, rtol=1e-6)
    assert exact_fallback.last_selected_method(model) is None  # the fallback never ran
