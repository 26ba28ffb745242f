"""`cgh_tf.input_checks` through `coherence.measure`: a NaN / Inf in the sample or a label outside
the model's classes is one line naming the examples, raised before any gradient is computed."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import coherence, input_checks


def _model(outputs=3, loss="sparse_categorical_crossentropy"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(outputs)(keras.layers.Dense(5)(inputs)))
    model.compile(loss=loss)
    return model


def _sample(m=20):
    rng = np.random.default_rng(0)
    return rng.normal(size=(m, 4)).astype("float32"), rng.integers(0, 3, m)


@pytest.fixture
def no_gradients(monkeypatch):
    """Fails the test if a per-example gradient is computed."""
    from cgh_tf import per_example

    def never(*args, **kwargs):
        raise AssertionError("gradients computed before the input error")
    monkeypatch.setattr(per_example, "gradients_and_sq_norms", never)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_input_names_its_examples(no_gradients, value):
    x, y = _sample()
    x[3, 1] = x[17, 0] = value
    with pytest.raises(ValueError) as error:
        coherence.measure(_model(), x, y)
    assert str(error.value) == ("coherence.measure(): NaN or Inf in examples 3, 17 (2 of 20); "
                                "their per-example gradients are not finite: remove or repair them")


def test_many_bad_examples_are_counted_not_all_listed(no_gradients):
    x, y = _sample()
    x[2:10] = np.nan
    with pytest.raises(ValueError, match=r"examples 2, 3, 4, 5, 6, ... \(3 more\) \(8 of 20\)"):
        coherence.measure(_model(), x, y)


def test_a_label_out_of_range_names_the_example_and_range(no_gradients):
    x, y = _sample()
    y[5], y[11] = 3, -1
    with pytest.raises(ValueError) as error:
        coherence.measure(_model(), x, y)
    assert str(error.value) == ("coherence.measure(): labels outside [0, 3) (the model has 3 "
                                "outputs): example 5 (label 3), example 11 (label -1)")


def test_a_dataset_is_checked_as_it_streams_with_example_numbers_from_its_start():
    x, y = _sample(40)
    x[33, 2] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match=r"NaN or Inf in example 33 \(1 of 8\)"):
        coherence.measure(_model(), dataset)
    y[33] = 7
    x[33, 2] = 0.0
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match=r"outside \[0, 3\).*example 33 \(label 7\)"):
        coherence.measure(_model(), dataset)


def test_other_losses_and_one_hot_labels_get_no_label_range_check():
    x, _ = _sample()
    targets = np.full((20, 3), 9.0, np.float32)  # regression targets "out of range": fine
    assert np.isfinite(coherence.measure(_model(loss="mse"), x, targets).m_coherence)
    with pytest.raises(ValueError, match=r"NaN or Inf in example 4 "):
        targets[4, 0] = np.nan
        coherence.measure(_model(loss="mse"), x, targets)


def test_clean_samples_measure_as_before():
    """The checks change nothing: the same numbers as the unchecked batches."""
    x, y = _sample()
    model = _model()
    checked = coherence.measure(model, x, y)
    expected = coherence.measure(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(256))
    assert checked.m_coherence == pytest.approx(expected.m_coherence, rel=1e-12)


def test_a_binary_model_accepts_labels_0_and_1_only():
    x, y = _sample()
    with pytest.raises(ValueError, match=r"outside \[0, 2\) \(the model has 1 output\): "
                                         r"example 0 \(label 2\)"):
        input_checks.check_examples(x, np.where(np.arange(20) == 0, 2, y % 2), classes=1)
    input_checks.check_examples(x, y % 2, classes=1)


def test_shape_errors_are_left_to_measure():
    x, y = _sample()
    with pytest.raises(ValueError, match="x has 20 examples but y has 19"):
        coherence.measure(_model(), x, y[:19])
