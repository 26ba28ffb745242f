"""trainers/graph_loop.py's declared run: `declared_run(setup, check_config)` over a tiny linear
model. References: an eager per-batch loop over the same permutations (the weights), the
uninterrupted run (a resumed one's numbers), and the run's own results.json (skip if finished)."""

import json
import os

import ml_collections
import numpy as np
import pytest

from trainers import beyond_common as common
from trainers import graph_loop

N, BATCH, EPOCHS = 10, 4, 3  # 3 batches per epoch, the last partial


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 3)).astype(np.float32), rng.integers(0, 2, N).astype(np.int32)


def _model():
    import keras

    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])


def _setup(config, run_dir, echo, built=None):
    import keras

    x, y = _data()
    model, optimizer = _model(), keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train = graph_loop.epoch_trainer(model, optimizer, loss_fn, x, y, BATCH)
    if built is not None:
        built.append(model)

    def log(epoch):
        echo(f"  logged epoch {epoch}")
        return {"epoch": epoch, "step": epoch, "w_sum": float(sum(
            np.sum(v.numpy(), dtype=np.float64) for v in model.trainable_variables))}

    return graph_loop.Training(
        model, optimizer, log=log, summarize=lambda curves: {"last": curves["w_sum"][-1]},
        extra=lambda curves: {"logs": len(curves["step"])},
        **graph_loop.epoch_schedule(train, config, N))


def _check(config):
    common.require_ints(config, ("epochs",))


RUN = graph_loop.declared_run(_setup, _check)


def _config(**changes):
    return ml_collections.ConfigDict({"seed": 3, "epochs": EPOCHS, "log_epochs": (0, 1, 2, 9),
                                      "checkpoint_every_logs": 1, **changes})


def _eager_weights(config):
    """The weights after `epochs` epochs by an eager loop over the same batches."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(config.seed))
    x, y = _data()
    model, optimizer = _model(), keras.optimizers.SGD(0.1)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for epoch in range(config.epochs):
        perm = graph_loop.epoch_permutation(config.seed, epoch, N)
        for k in range(0, N, BATCH):
            idx = perm[k:k + BATCH]
            with tf.GradientTape() as tape:
                loss = loss_fn(y[idx], model(x[idx], training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
    return model.get_weights()


def test_declared_run_trains_logs_summarises_and_skips_when_finished(tmp_path):
    config, lines, built = _config(), [], []
    run = graph_loop.declared_run(lambda *a: _setup(*a, built=built), _check)
    result = run(config, str(tmp_path), echo=lines.append)
    assert result["curves"]["epoch"] == [0, 1, 2, 3]   # log_epochs capped at epochs, plus it
    assert result["summary"] == {"last": result["curves"]["w_sum"][-1]}
    assert result["logs"] == 4 and result["finished"]
    for got, want in zip(built[0].get_weights(), _eager_weights(config)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert lines == [f"  logged epoch {e}" for e in range(4)]
    again = []
    assert run(config, str(tmp_path), echo=again.append) == result and again == []


def test_declared_run_resumed_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    reference = RUN(_config(), str(tmp_path / "whole"), echo=None)

    def kill_at_epoch_2(line):
        if line == "  logged epoch 2":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        RUN(_config(), str(tmp_path / "killed"), echo=kill_at_epoch_2)
    assert not os.path.exists(tmp_path / "killed" / "results.json")
    lines = []
    resumed = RUN(_config(), str(tmp_path / "killed"), echo=lines.append)
    assert lines[0] == f"  resumed {tmp_path / 'killed'} at epoch 1"
    assert resumed["curves"] == reference["curves"]
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["summary"] == (
        reference["summary"])


def test_declared_run_rejects_a_bad_config_before_writing(tmp_path):
    with pytest.raises(ValueError, match="epochs=0 must be an int >= 1"):
        RUN(_config(epochs=0), str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")
