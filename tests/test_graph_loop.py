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


def _setup(config, run_dir, echo, built=None, until=None):
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
        extra=lambda curves: {"logs": len(curves["step"])}, until=until,
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


def test_until_ends_the_run_early_checkpointed_and_a_rerun_does_not_go_on(tmp_path):
    """`until` true after epoch 1 of 3, where no checkpoint is planned (every 2nd log: 0, 2)."""
    config = _config(checkpoint_every_logs=2)
    run = graph_loop.declared_run(
        lambda *a: _setup(*a, until=lambda curves: curves["epoch"][-1] >= 1), _check)
    result = run(config, str(tmp_path), echo=None)
    assert result["curves"]["epoch"] == [0, 1]
    os.remove(tmp_path / "results.json")   # killed before its results were written
    lines = []
    again = run(config, str(tmp_path), echo=lines.append)
    assert lines == [f"  resumed {tmp_path} at epoch 1"] and again["curves"] == result["curves"]


@pytest.mark.parametrize("point", ["save-2-staged", "save-2-data-installed",
                                   "save-2-index-installed", "save-2-listed"])
def test_a_kill_inside_a_checkpoint_save_resumes_with_every_log_row(tmp_path, monkeypatch, point):
    """Killed at each stage of epoch 2's save (the checkpoint and curves.json are two files):
    the resumed run logs every epoch once and ends with the uninterrupted run's numbers."""
    from cgh_tf import fault_injection

    reference = RUN(_config(), str(tmp_path / "whole"), echo=None)

    def kill(name):
        if name == point:
            raise KeyboardInterrupt

    monkeypatch.setattr(fault_injection, "point", kill)
    with pytest.raises(KeyboardInterrupt):
        RUN(_config(), str(tmp_path / "killed"), echo=None)
    monkeypatch.undo()
    resumed = RUN(_config(), str(tmp_path / "killed"), echo=None)
    assert resumed["curves"] == reference["curves"]
    assert resumed["summary"] == reference["summary"]


def test_a_checkpoint_ahead_of_the_curves_is_not_resumed_from(tmp_path):
    """curves.json of epoch 1 beside checkpoints 1 and 2 (a run of an older version killed
    between the two writes): the run resumes at epoch 1, not at 2 with epoch 2's row missing."""
    reference = RUN(_config(), str(tmp_path / "whole"), echo=None)
    killed = tmp_path / "killed"
    RUN(_config(epochs=2), str(killed), echo=None)   # checkpoints 1, 2 and curves of epoch 2
    saved = json.loads((killed / "curves.json").read_text())
    saved["curves"] = {k: v[:2] for k, v in saved["curves"].items()}
    saved["step"], saved["config"]["epochs"] = 1, EPOCHS
    (killed / "curves.json").write_text(json.dumps(saved))
    os.remove(killed / "results.json")
    lines = []
    resumed = RUN(_config(), str(killed), echo=lines.append)
    assert lines[0] == f"  resumed {killed} at epoch 1"
    assert resumed["curves"] == reference["curves"]


@pytest.mark.parametrize("file, text", [("results.json", ""), ("results.json", "[1]"),
                                        ("results.json", '{"finished": true}'),
                                        ("curves.json", "{"), ("curves.json", "3")])
def test_a_damaged_record_is_refused_in_one_line_naming_it_then_rebuilt(tmp_path, file, text):
    """A run's results.json / curves.json that is not the record it should be: one line naming
    the file (no traceback, nothing written); moved away, the run is rebuilt with the same numbers."""
    from trainers import config_schema

    reference = RUN(_config(), str(tmp_path), echo=None)
    if file == "curves.json":
        os.remove(tmp_path / "results.json")   # else the finished results are read first
    (tmp_path / file).write_text(text)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(config_schema.ConfigError) as error:
        RUN(_config(), str(tmp_path), echo=None)
    assert str(tmp_path / file) in str(error.value) and "\n" not in str(error.value)
    assert "move it away" in str(error.value) and sorted(os.listdir(tmp_path)) == before
    os.rename(tmp_path / file, tmp_path / "moved")
    assert RUN(_config(), str(tmp_path), echo=None)["curves"] == reference["curves"]
