"""LearningTimes: per-example first-correct / stable-since steps against a hand-computed sequence.

The model is a real Keras Dense layer on one-hot inputs (example i has input e_i, so its prediction
is argmax of kernel row i). A `ScheduledWeights` callback placed *before* LearningTimes sets the
kernel at every step to a known table of predictions; fit uses SGD with learning rate 0, so
training never moves the weights away from the table. The expected learning times below are
written out by hand from the table (docs/design.md §1, "Easy / hard examples").
"""

import csv
import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import data
from cgh_tf.callbacks import LEARNING_TIMES_CSV_COLUMNS, LearningTimes, easy_mask

LABELS = np.array([0, 1, 0, 1, 0])
CORRUPTED = np.array([False, True, False, True, False])
ORIGINAL = np.where(CORRUPTED, 1 - LABELS, LABELS)
IDS = np.array([10, 11, 12, 13, 14])
N = len(LABELS)

# Predictions of examples 0..4 at each step (step = batches seen; 0 = before training).
# Odd steps are "everything flipped": evaluating there by mistake changes the results.
EVEN = {
    0: [0, 0, 1, 0, 0],
    2: [0, 1, 1, 0, 1],
    4: [0, 0, 1, 1, 0],
    6: [0, 1, 1, 1, 0],
}
FINAL_STEP = 7  # 7 batches: evaluations at 0, 2, 4, 6 and (train end) 7
FINAL = [0, 1, 1, 0, 0]


def predictions_at(step):
    if step == FINAL_STEP:
        return np.array(FINAL)
    if step in EVEN:
        return np.array(EVEN[step])
    return 1 - LABELS  # all wrong


# Hand-computed from the table (labels 0 1 0 1 0), evaluations at steps 0, 2, 4, 6, 7:
#   ex 0: right at 0,2,4,6,7                      -> first 0, stable 0
#   ex 1: wrong 0, right 2, wrong 4, right 6,7    -> first 2, stable 6   (right, wrong, right again)
#   ex 2: never right                             -> first -1, stable -1
#   ex 3: wrong 0,2, right 4,6, wrong 7           -> first 4, stable -1 (not right now)
#   ex 4: right 0, wrong 2, right 4,6,7           -> first 0, stable 4
EXPECTED_FIRST = [0, 2, -1, 4, 0]
EXPECTED_STABLE = [0, 6, -1, -1, 4]


class ScheduledWeights(keras.callbacks.Callback):
    """Sets kernel row i to the one-hot of the scheduled prediction of example i at every step."""

    def __init__(self):
        super().__init__()
        self.step = 0

    def _set(self):
        kernel = np.eye(2)[predictions_at(self.step)]
        self.model.layers[0].kernel.assign(kernel.astype(np.float32))

    def on_train_begin(self, logs=None):
        self._set()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._set()


def split():
    return data.Split(x=np.eye(N, dtype=np.float32), y=LABELS.astype(np.int32),
                      original_y=ORIGINAL.astype(np.int32), corrupted=CORRUPTED, example_id=IDS)


def scheduled_model():
    model = keras.Sequential([keras.Input((N,)), keras.layers.Dense(2, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def run(callback, epochs=1, batches_per_epoch=7):
    """fit on dummy data with batch size 1: exactly epochs * batches_per_epoch steps."""
    model = scheduled_model()
    x = np.zeros((batches_per_epoch, N), np.float32)
    y = np.zeros(batches_per_epoch, np.int32)
    model.fit(x, y, batch_size=1, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[ScheduledWeights(), callback])
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("learning_times")
    callback = LearningTimes(split(), every_steps=2, batch_size=2,
                             csv_path=str(directory / "times.csv"), log_dir=str(directory / "tb"))
    run(callback)
    return callback, directory


def test_learning_times_match_hand_computed_sequence(trained):
    callback, _ = trained
    results = callback.results()
    assert callback.evaluated_steps == [0, 2, 4, 6, 7]
    np.testing.assert_array_equal(results["first_correct_step"], EXPECTED_FIRST)
    np.testing.assert_array_equal(results["stable_since_step"], EXPECTED_STABLE)
    np.testing.assert_array_equal(results["last_prediction"], FINAL)
    np.testing.assert_array_equal(results["example_id"], IDS)
    np.testing.assert_array_equal(results["label"], LABELS)
    np.testing.assert_array_equal(results["original_label"], ORIGINAL)
    np.testing.assert_array_equal(results["corrupted"], CORRUPTED)


def test_csv_written_at_train_end(trained):
    _, directory = trained
    with open(directory / "times.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(LEARNING_TIMES_CSV_COLUMNS)
    table = {name: [int(r[name]) for r in rows] for name in LEARNING_TIMES_CSV_COLUMNS}
    assert table["example_id"] == IDS.tolist()
    assert table["original_label"] == ORIGINAL.tolist() and table["label"] == LABELS.tolist()
    assert table["corrupted"] == CORRUPTED.astype(int).tolist()
    assert table["first_correct_step"] == EXPECTED_FIRST
    assert table["stable_since_step"] == EXPECTED_STABLE
    assert table["last_prediction"] == FINAL
    assert not [p for p in os.listdir(directory) if p.startswith(".tmp-")]


def test_histograms_of_learning_times_per_group(trained):
    _, directory = trained
    histograms, fractions = {}, {}
    for path in glob.glob(str(directory / "tb" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if value.metadata.plugin_data.plugin_name == "histograms":
                    histograms[(value.tag, event.step)] = array  # [buckets, 3]: left, right, count
                else:
                    fractions[(value.tag, event.step)] = float(array)
    final = histograms[("learning_times/pristine/first_correct_step", 7)]
    assert final[:, 2].sum() == 2  # pristine examples 0, 4 learned (at 0); example 2 never
    assert final[:, 0].min() == 0 and final[:, 1].max() == 0
    final_corrupted = histograms[("learning_times/corrupted/first_correct_step", 7)]
    assert final_corrupted[:, 2].sum() == 2  # examples 1 (step 2) and 3 (step 4)
    assert final_corrupted[:, 0].min() == 2 and final_corrupted[:, 1].max() == 4
    assert fractions[("learning_times/corrupted/fraction_correct", 4)] == 0.5  # ex 3 right, ex 1 wrong
    assert fractions[("learning_times/pristine/fraction_correct", 7)] == pytest.approx(2 / 3)


def test_easy_mask_feeds_easy_hard_datasets(trained):
    callback, _ = trained
    easy = easy_mask(callback.results())
    np.testing.assert_array_equal(easy, [True, True, False, False, True])
    np.testing.assert_array_equal(easy_mask(callback), easy)
    train = split()
    dataset = data.Dataset(name="toy", train=train, test=train, num_classes=2, input_shape=(N,))
    easy_ds, hard_ds = data.easy_hard_datasets(dataset, easy, test_fraction=0.0)
    assert sorted(easy_ds.train.example_id) == [10, 11, 14]
    assert sorted(hard_ds.train.example_id) == [12, 13]


def test_steps_count_batches_across_epochs_and_fits():
    callback = LearningTimes(split(), every_steps=2)
    model = run(callback, epochs=2, batches_per_epoch=3)  # 6 steps over two epochs
    assert callback.evaluated_steps == [0, 2, 4, 6]
    # Table steps 0, 2, 4, 6 give: ex 0 first 0 stable 0; ex 1 first 2 stable 6; ex 3 first 4 stable 4;
    # ex 4 first 0 stable 4.
    np.testing.assert_array_equal(callback.results()["first_correct_step"], [0, 2, -1, 4, 0])
    np.testing.assert_array_equal(callback.results()["stable_since_step"], [0, 6, -1, 4, 4])
    # A second fit continues the count (no re-evaluation at its start; 1 more step -> train end at 7).
    schedule = ScheduledWeights()
    schedule.step = 6
    model.fit(np.zeros((1, N), np.float32), np.zeros(1, np.int32), batch_size=1, verbose=0,
              callbacks=[schedule, callback])
    assert callback.evaluated_steps == [0, 2, 4, 6, 7]
    np.testing.assert_array_equal(callback.results()["stable_since_step"], EXPECTED_STABLE)


def test_training_is_not_disturbed():
    """Weights after fit with and without LearningTimes are identical (same seed, real SGD)."""
    def train(with_callback):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((N,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        callbacks = [LearningTimes(split(), every_steps=1)] if with_callback else []
        history = model.fit(np.eye(N, dtype=np.float32), LABELS, batch_size=2, epochs=2,
                            shuffle=False, verbose=0, callbacks=callbacks)
        return [w.numpy() for w in model.weights], history.history

    weights_a, history_a = train(True)
    weights_b, history_b = train(False)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    assert history_a == history_b


@pytest.mark.parametrize("kwargs,error,match", [
    ({"every_steps": 0}, ValueError, "every_steps"),
    ({"every_steps": 1.5}, ValueError, "every_steps"),
    ({"every_steps": 2, "batch_size": 0}, ValueError, "batch_size"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LearningTimes(split(), **kwargs)


def test_split_of_wrong_type_and_empty():
    with pytest.raises(TypeError, match="cgh_tf.data.Split"):
        LearningTimes((np.eye(N), LABELS), every_steps=1)
    with pytest.raises(ValueError, match="empty"):
        LearningTimes(split().subset(np.zeros(N, bool)), every_steps=1)


def test_easy_mask_errors():
    with pytest.raises(ValueError, match="never evaluated"):
        easy_mask(LearningTimes(split(), every_steps=1).results())
    with pytest.raises(TypeError, match="results"):
        easy_mask([1, 2])


def test_single_output_model_is_rejected():
    model = keras.Sequential([keras.Input((N,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    with pytest.raises(ValueError, match="num_classes >= 2"):
        model.fit(np.eye(N, dtype=np.float32), LABELS, verbose=0,
                  callbacks=[LearningTimes(split(), every_steps=1)])
