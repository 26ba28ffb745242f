"""cgh_tf.Model state that decides the next step survives `.keras` save / load (issue 22 item 5):
`steps_trained` picks the steps that measure coherence (`coherence_every=N`), so a run reloaded
between epochs must measure on the same steps, and log the same m-coherence, as one that was not."""

import keras
import numpy as np

import cgh_tf

EVERY, BATCH, STEPS_PER_EPOCH = 3, 4, 4


def _model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    model = cgh_tf.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(6, "tanh")(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), coherence_every=EVERY,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data():
    rng = np.random.default_rng(4)
    return rng.normal(size=(BATCH * STEPS_PER_EPOCH, 5)), rng.integers(0, 3, BATCH * STEPS_PER_EPOCH)


def _epoch(model):
    x, y = _data()
    return model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history


def test_reload_between_epochs_keeps_the_measurement_schedule(tmp_path):
    uninterrupted = _model()
    _epoch(uninterrupted)
    want = _epoch(uninterrupted)

    interrupted = _model()
    _epoch(interrupted)
    path = str(tmp_path / "model.keras")
    interrupted.save(path)
    reloaded = keras.models.load_model(path)
    assert int(reloaded.steps_trained.numpy()) == STEPS_PER_EPOCH
    got = _epoch(reloaded)
    assert int(reloaded.steps_trained.numpy()) == 2 * STEPS_PER_EPOCH
    # epoch 2 holds steps 4..7, of which only step 6 is measured; counting from 0 again would
    # measure steps 0 and 3 of the epoch (global 4 and 7) instead
    np.testing.assert_allclose(got["m_coherence"], want["m_coherence"], rtol=1e-6)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    for a, b in zip(reloaded.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_weights_file_keeps_steps_and_loads_into_a_model_compiled_later(tmp_path):
    model = _model()
    _epoch(model)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    fresh = _model()
    fresh.load_weights(path)
    assert int(fresh.steps_trained.numpy()) == STEPS_PER_EPOCH
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    uncompiled = cgh_tf.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(6, "tanh")(inputs)))
    uncompiled.load_weights(path)
    uncompiled.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", coherence_every=2)
    assert int(uncompiled.steps_trained.numpy()) == STEPS_PER_EPOCH
