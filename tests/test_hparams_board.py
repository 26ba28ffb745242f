"""`trainers/hparams_board.py`: TensorBoard's HParams dashboard, read back from the event files."""

import glob
import os

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from trainers import hparams_board


def _events(logdir):
    """[(tag, plugin name, value or None, metadata content)] of every event file in `logdir`."""
    found = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          and value.metadata.plugin_data.plugin_name == "scalars" else None)
                found.append((value.tag, value.metadata.plugin_data.plugin_name, number,
                              value.metadata.plugin_data.content, event.step))
    return found


def _session_hparams(logdir):
    start = [c for tag, _, _, c, _ in _events(logdir) if tag == "_hparams_/session_start_info"]
    assert len(start) == 1
    data = plugin_data_pb2.HParamsPluginData.FromString(start[0])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in data.session_start_info.hparams.items()}


def test_a_sweep_writes_one_session_per_run_with_its_axes_and_numbers(tmp_path):
    runs = []
    for i, (noise, method) in enumerate([(0.25, "sgd"), (0.5, "sgd"), (0.5, "m3")]):
        config = {"label_noise": noise, "optimizer": {"name": method, "lr": 0.1}, "seed": 0,
                  "widths": (1, 2)}
        metrics = {"test": 0.5 + i / 10, "missing": float("nan"), "text": "n/a"}
        runs.append((str(tmp_path / f"run{i}"), config, {"group": f"g{i}"}, metrics,
                     {"step": [0, 10], "loss": [2.0, None]}))
    hparams_board.write_sweep(str(tmp_path), runs)
    hparams_board.write_sweep(str(tmp_path), runs)  # rewriting replaces, never duplicates

    for i, (run_dir, config, _, _, _) in enumerate(runs):
        session = os.path.join(run_dir, hparams_board.SESSION_DIR)
        # Only the fields that vary between runs (and the extra ones) are hparams.
        assert _session_hparams(session) == {"group": f"g{i}", "label_noise": config["label_noise"],
                                             "optimizer.name": config["optimizer"]["name"]}
        scalars = {(tag, step): v for tag, plugin, v, _, step in _events(session)
                   if plugin == "scalars"}
        assert scalars == {("final/test", 0): pytest.approx(0.5 + i / 10), ("loss", 0): 2.0}
    top = _events(str(tmp_path))
    assert [t for t, *_ in top] == ["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(top[0][3]).experiment
    assert sorted(h.name for h in experiment.hparam_infos) == ["group", "label_noise",
                                                               "optimizer.name"]
    assert [m.name.tag for m in experiment.metric_infos] == ["final/test"]  # numbers only


def test_flatten_names_nested_fields_with_dots():
    assert hparams_board.flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {
        "a.b": 1, "a.c.d": "x", "e": "[1, 2]"}
