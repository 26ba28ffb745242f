"""Trainer features: batch coherence, coherence monitor, f^p / f^c, winsorized GD, learning times,
and their config errors.

A subprocess run of `python -m trainers.train` (module fixture): a tiny
`configs/real_vs_random.py` run with 50 % label noise and every measurement on. Its outputs are checked against independent recomputations from the
final checkpoints (per-example gradients by one GradientTape per example, float64 NumPy sums).
In-process runs check resume (no duplicated CSV rows, byte-identical outputs) and winsorized GD.
"""

import csv
import glob
import json
import os
import subprocess
import sys

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

import cgh_tf
from configs import default, m3, real_vs_random, winsorize
from trainers import config_schema, factories, feature_callbacks, input_pipeline, schedule
from trainers import outputs
from trainers import run_state
from trainers import single_run
from trainers import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M = 32            # monitor sample size
EPOCHS = 2
BATCH = 50        # 300 / 50 = 6 steps per epoch
LT_EVERY = 4      # learning-times evaluations at steps 0, 4, 8, 12 (and the end: 12)
FEATURE_FLAGS = [
    "--config=configs/real_vs_random.py", "--config.max_train=300", "--config.max_test=100",
    f"--config.num_epochs={EPOCHS}", "--config.label_noise=0.5", "--config.model.kwargs.width=16",
    f"--config.batch_size={BATCH}", "--config.eval_batch_size=64",
    f"--config.coherence.monitor_samples={M}", f"--config.learning_times.every_steps={LT_EVERY}",
    "--config.coherence.monitor_every_steps=0", "--noprogress",
]


def _start(flags, workdir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "trainers.train", *flags,
                             f"--workdir={workdir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{name: workdir}` of the subprocess run (asserting it succeeded)."""
    root = tmp_path_factory.mktemp("feature_runs")
    plans = {"features": FEATURE_FLAGS}
    started = {name: _start(flags, str(root / name)) for name, flags in plans.items()}
    workdirs = {}
    for name, process in started.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        workdirs[name] = str(root / name)
    return workdirs


def _results(workdir):
    with open(os.path.join(workdir, outputs.RESULTS_FILE)) as f:
        return json.load(f)


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _scalars(directory):
    """`{tag: {step: value}}` of the scalar summaries of the event files in `directory`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, {})[event.step] = float(
                        tf.make_ndarray(value.tensor))
    return found


def _tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def _final_model(workdir):
    """(config, data, model at the final checkpoint) of a finished trainer workdir."""
    results = _results(workdir)
    config = ml_collections.ConfigDict(results["config"])
    data = factories.load_data(config)
    model = factories.build_model(config, data.input_shape, data.num_classes)
    optimizer = factories.build_optimizer(config, schedule.build_schedule(config))
    factories.compile_model(model, optimizer, config)
    run_state.restore_model(run_state.checkpoint_path(workdir, results["epochs_completed"]), model)
    return config, data, model


def _per_example_gradients(model, x, y):
    """`[m, P]` float64 per-example gradients (one tape per example) and the layer of each column."""
    rows = []
    for xi, yi in zip(x, y):
        with tf.GradientTape() as tape:
            logits = model(xi[None], training=False)
            loss = -tf.nn.log_softmax(logits)[0, int(yi)]
        grads = tape.gradient(loss, model.trainable_variables)
        rows.append(np.concatenate([np.ravel(g.numpy()).astype(np.float64) for g in grads]))
    layers = np.concatenate([[v.path.split("/")[0]] * int(np.prod(v.shape))
                             for v in model.trainable_variables])
    return np.stack(rows), layers


def _m_coherence(grads):
    """‖Σ g_i‖² / Σ ‖g_i‖² (docs/design.md §1) of rows g_i, in float64."""
    return float(np.sum(grads.sum(axis=0) ** 2) / np.sum(grads ** 2))


# ---------------------------------------------------------------------------- batch coherence

def test_batch_coherence_is_logged_per_epoch_in_results_and_tensorboard(runs):
    history = _results(runs["features"])["history"]
    scalars = _scalars(os.path.join(runs["features"], "tensorboard", "train"))
    keys = ["m_coherence", "alpha", "m_coherence/dense_0", "m_coherence/dense_1",
            "m_coherence/logits"]
    for key in keys:
        assert len(history[key]) == EPOCHS and all(np.isfinite(history[key])), key
        assert sorted(scalars[f"epoch_{key}"]) == list(range(EPOCHS)), key
        np.testing.assert_allclose([scalars[f"epoch_{key}"][e] for e in range(EPOCHS)],
                                   history[key], rtol=1e-6, err_msg=key)
    # Every batch has m = 50 examples, so the epoch means obey alpha = m-coherence / m.
    np.testing.assert_allclose(np.array(history["alpha"]) * BATCH, history["m_coherence"],
                               rtol=1e-5)
    assert all(0 < r < BATCH for r in history["m_coherence"])


# --------------------------------------------------------------------------- coherence monitor

def test_monitor_csv_has_every_sample_and_layer_once_per_epoch(runs):
    rows = _csv_rows(os.path.join(runs["features"], feature_callbacks.COHERENCE_CSV))
    keys = [(int(r["epoch"]), r["sample"], r["layer"]) for r in rows]
    expected = [(e, s, layer) for e in range(EPOCHS)
                for s in ("train", "test", "pristine", "corrupted")
                for layer in ("", "dense_0", "dense_1", "logits")]
    assert keys == expected
    assert {int(r["m"]) for r in rows} == {M}
    assert {(int(r["epoch"]), int(r["step"])) for r in rows} == {(0, 6), (1, 12)}
    history = _results(runs["features"])["history"]
    for r in rows:
        name = f"coherence/{r['sample']}/" + (f"{r['layer']}/" if r["layer"] else "") + \
            "m_coherence"
        assert history[name][int(r["epoch"])] == pytest.approx(float(r["m_coherence"]),
                                                               rel=1e-12)
    scalars = _scalars(os.path.join(runs["features"], "tensorboard", "train"))
    assert sorted(scalars["epoch_coherence/test/m_coherence"]) == list(range(EPOCHS))


def test_monitor_values_equal_a_recomputation_on_the_final_checkpoint(runs):
    config, data, model = _final_model(runs["features"])
    samples = feature_callbacks.monitor_samples(data, M, config.seed)
    assert {n: len(s) for n, s in samples.items()} == dict.fromkeys(
        ("train", "test", "pristine", "corrupted"), M)
    assert not samples["pristine"].corrupted.any() and samples["corrupted"].corrupted.all()
    rows = {(r["sample"], r["layer"]): r
            for r in _csv_rows(os.path.join(runs["features"], feature_callbacks.COHERENCE_CSV))
            if int(r["epoch"]) == EPOCHS - 1}
    for name in ("test", "corrupted"):
        grads, layers = _per_example_gradients(model, samples[name].x, samples[name].y)
        logged = rows[(name, "")]
        assert float(logged["m_coherence"]) == pytest.approx(_m_coherence(grads), rel=1e-4)
        assert float(logged["alpha"]) == pytest.approx(_m_coherence(grads) / M, rel=1e-4)
        for layer in ("dense_0", "logits"):
            assert float(rows[(name, layer)]["m_coherence"]) == pytest.approx(
                _m_coherence(grads[:, layers == layer]), rel=1e-4)


def test_loss_reduction_fractions_equal_their_definition(runs):
    history = _results(runs["features"])["history"]
    np.testing.assert_allclose(np.add(history["f_pristine"], history["f_corrupt"]), 1.0,
                               atol=1e-12)
    config, data, model = _final_model(runs["features"])
    sample = feature_callbacks.monitor_samples(data, M, config.seed)["train"]
    grads, _ = _per_example_gradients(model, sample.x, sample.y)
    g_p, g_c = grads[~sample.corrupted].sum(axis=0), grads[sample.corrupted].sum(axis=0)
    g = g_p + g_c
    assert 0 < sample.corrupted.sum() < M
    assert history["f_pristine"][-1] == pytest.approx(g @ g_p / (g @ g), rel=1e-4, abs=1e-5)
    sq_norms = np.sum(grads ** 2, axis=1)  # f^p's null Q_p/Q (cgh_tf/nulls.py), brute force
    assert history["f_pristine_null"][-1] == pytest.approx(
        sq_norms[~sample.corrupted].sum() / sq_norms.sum(), rel=1e-4)


# ------------------------------------------------------------------------------ learning times

def test_learning_times_csv_is_consistent_with_the_final_model(runs):
    config, data, model = _final_model(runs["features"])
    rows = _csv_rows(os.path.join(runs["features"], feature_callbacks.LEARNING_TIMES_CSV))
    column = {k: np.array([int(r[k]) for r in rows]) for k in rows[0]}
    np.testing.assert_array_equal(column["example_id"], data.train.example_id)
    np.testing.assert_array_equal(column["label"], data.train.y)
    np.testing.assert_array_equal(column["corrupted"].astype(bool), data.train.corrupted)
    predicted = np.argmax(model.predict(data.train.x, verbose=0), axis=1)
    np.testing.assert_array_equal(column["last_prediction"], predicted)  # evaluated at train end
    correct = predicted == data.train.y
    np.testing.assert_array_equal(column["stable_since_step"] >= 0, correct)
    first, stable = column["first_correct_step"], column["stable_since_step"]
    grid = set(range(0, EPOCHS * 6 + 1, LT_EVERY))
    assert set(first[first >= 0]) <= grid and set(stable[stable >= 0]) <= grid
    assert np.all(first[stable >= 0] <= stable[stable >= 0])
    assert np.all(first[correct] >= 0)
    tags = _tags(os.path.join(runs["features"], "tensorboard", "learning_times"))
    assert {"learning_times/pristine/first_correct_step",
            "learning_times/corrupted/fraction_correct"} <= tags


# -------------------------------------------------------------------------- in-process helpers

def _tiny(base=real_vs_random, **overrides):
    """A tiny version of a config module's config, with `{"a.b": value}` overrides."""
    config = config_schema.add_feature_fields(base.get_config())
    config.max_train, config.max_test, config.num_epochs = 300, 64, EPOCHS
    config.model.kwargs.width = 8
    config.eval_batch_size = 64
    return config_schema.apply_overrides(config, overrides)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _checkpoint_weights(workdir, epoch):
    """The model weights of the run's checkpoint after `epoch` epochs (its last)."""
    assert _results(workdir)["epochs_completed"] == epoch
    return _final_model(workdir)[2].get_weights()


# ----------------------------------------------------------------------------------- resume

def test_resume_keeps_monitor_learning_times_and_step_counter_identical(tmp_path):
    # 300 / 60 = 5 steps per epoch and coherence every 2 steps: a resumed run that restarted the
    # step counter at 0 would measure other batches (5, 7, 9 instead of 6, 8).
    config = _tiny(**{"batch_size": 60, "coherence.every": 2, "coherence.per_layer": False,
                      "label_noise": 0.5, "coherence.monitor_samples": 16,
                      "learning_times.every_steps": 3})
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    train.train_and_evaluate(config, whole, progress=False)

    first = ml_collections.ConfigDict(config.to_dict())
    first.num_epochs = 1
    train.train_and_evaluate(first, resumed, progress=False)
    coherence_csv = os.path.join(resumed, feature_callbacks.COHERENCE_CSV)
    with open(coherence_csv, "a") as f:  # what a kill after the monitor, before the checkpoint leaves
        f.write("1,10,test,,16,0.5,0.0625,8.0\n1,10,tr")
    train.train_and_evaluate(config, resumed, progress=False)

    for name in (outputs.RESULTS_FILE, feature_callbacks.COHERENCE_CSV, feature_callbacks.LEARNING_TIMES_CSV):
        assert _read(os.path.join(resumed, name)) == _read(os.path.join(whole, name)), name
    assert len(_results(whole)["history"]["m_coherence"]) == EPOCHS
    record = run_state.read_record(run_state.list_checkpoints(resumed)[-1][1])
    assert record["learning_times"]["steps_seen"] == EPOCHS * 5  # the state went into the checkpoint


def _step_reference(model, sample):
    """float64 reference (m-coherence, f^p) of one mixed training sample at the model's weights."""
    grads, _ = _per_example_gradients(model, sample.x, sample.y)
    g_p, g_c = grads[~sample.corrupted].sum(axis=0), grads[sample.corrupted].sum(axis=0)
    g = g_p + g_c
    return _m_coherence(grads), float(g @ g_p / (g @ g))


def test_monitor_every_steps_series_is_resume_safe_and_matches_references(tmp_path):
    # 300 / 60 = 5 steps per epoch, measurements every 2 steps: step 0 (initial weights), 2, 4,
    # 5 (end of epoch 1), 6, 8, 10 (= end of epoch 2: measured once, not twice).
    config = _tiny(**{"batch_size": 60, "coherence.every": 0, "coherence.per_layer": False,
                      "label_noise": 0.5, "coherence.monitor_samples": 16,
                      "coherence.monitor_every_steps": 2, "learning_times.every_steps": 0})
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    initial = single_run.prepare(config, str(tmp_path / "unused")).model  # writes nothing
    train.train_and_evaluate(config, whole, progress=False)

    first = ml_collections.ConfigDict(config.to_dict())
    first.num_epochs = 1
    train.train_and_evaluate(first, resumed, progress=False)
    coherence_csv = os.path.join(resumed, feature_callbacks.COHERENCE_CSV)
    with open(coherence_csv, "a") as f:  # a kill after a step measurement of epoch 2
        f.write("1,6,train,,16,0.5,0.0625,8.0\n1,6,te")
    train.train_and_evaluate(config, resumed, progress=False)
    for name in (outputs.RESULTS_FILE, feature_callbacks.COHERENCE_CSV):
        assert _read(os.path.join(resumed, name)) == _read(os.path.join(whole, name)), name

    results = _results(whole)
    steps = results["step_history"]
    assert steps["step"] == [0, 2, 4, 5, 6, 8, 10]
    assert steps["epoch"] == [0, 0, 0, 0, 1, 1, 1]
    rows = [r for r in _csv_rows(os.path.join(whole, feature_callbacks.COHERENCE_CSV))
            if r["sample"] == "train"]
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == list(zip(steps["epoch"],
                                                                         steps["step"]))
    coherence_key = "coherence/train/m_coherence"
    assert [float(r["m_coherence"]) for r in rows] == pytest.approx(steps[coherence_key],
                                                                    rel=1e-12)
    # Epoch ends: the per-epoch history holds the same measurements as the step series.
    history = results["history"]
    for key in (coherence_key, "f_pristine", "loss"):
        assert [steps[key][3], steps[key][6]] == pytest.approx(history[key], rel=1e-12), key
    assert steps["loss"][0] is None and all(v > 0 for v in steps["loss"][1:])
    np.testing.assert_allclose(np.add(steps["f_pristine"], steps["f_corrupt"]), 1.0, atol=1e-12)
    # Step 0 and the last step against float64 per-example references.
    _, data, final = _final_model(whole)
    sample = feature_callbacks.monitor_samples(data, 16, config.seed)["train"]
    assert 0 < sample.corrupted.sum() < 16
    for index, model in ((0, initial), (-1, final)):
        coherence, f_p = _step_reference(model, sample)
        assert steps[coherence_key][index] == pytest.approx(coherence, rel=1e-4)
        assert steps["f_pristine"][index] == pytest.approx(f_p, rel=1e-4, abs=1e-5)
    # TensorBoard: every measurement at its global step.
    scalars = _scalars(os.path.join(whole, "tensorboard", feature_callbacks.STEP_TENSORBOARD_RUN))
    assert scalars[coherence_key] == pytest.approx(dict(zip(steps["step"], steps[coherence_key])))
    assert sorted(scalars["loss"]) == steps["step"][1:]


def test_monitor_every_steps_needs_the_monitor():
    config = _tiny(**{"coherence.monitor_samples": 0, "coherence.monitor_every_steps": 5})
    with pytest.raises(config_schema.ConfigError, match="coherence.monitor_every_steps=5 has no effect"):
        config_schema.validate(config)
    config = _tiny(**{"coherence.monitor_every_steps": -1})
    with pytest.raises(config_schema.ConfigError, match="must be an int >= 0"):
        config_schema.validate(config)


def test_truncate_csv_epochs_drops_later_epochs_and_cut_lines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("step,epoch,v\n0,0,a\n1,0,b\n2,1,c\n3,2,d\n4,2,")
    feature_callbacks.truncate_csv_epochs(str(path), 2)
    assert path.read_text() == "step,epoch,v\n0,0,a\n1,0,b\n2,1,c\n"
    feature_callbacks.truncate_csv_epochs(str(path), 0)
    assert path.read_text() == "step,epoch,v\n"
    feature_callbacks.truncate_csv_epochs(str(tmp_path / "absent.csv"), 0)  # no-op


# ----------------------------------------------------------------------------- winsorized GD

def _winsorize_config(**overrides):
    base = {"max_train": 200, "num_epochs": 1, "batch_size": 50, "label_noise": 0.5}
    return _tiny(winsorize, **{**base, **overrides})


def test_winsorize_with_c0_gives_the_weights_of_plain_sgd(tmp_path):
    winsorized = _winsorize_config(**{"optimizer.winsorize_pct": 0.0})
    plain = _winsorize_config(**{"optimizer.aggregation": "mean", "optimizer.winsorize_pct": 0.0})
    clipped = _winsorize_config(**{"optimizer.winsorize_pct": 8.0})
    for name, config in (("c0", winsorized), ("sgd", plain), ("c8", clipped)):
        train.train_and_evaluate(config, str(tmp_path / name), progress=False)
    c0, sgd, c8 = (_checkpoint_weights(str(tmp_path / n), 1) for n in ("c0", "sgd", "c8"))
    for a, b in zip(c0, sgd):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.max(np.abs(a - b)) for a, b in zip(c8, sgd)) > 1e-4
    assert all(np.all(np.isfinite(w)) for w in c8)


def test_one_winsorized_step_equals_a_numpy_reference(tmp_path):
    """One step (50 examples, c = 4: 2 clipped per side) against per-example gradients in NumPy."""
    pct, lr = 4.0, 0.1
    config = _winsorize_config(**{"max_train": 50, "optimizer.winsorize_pct": pct,
                                  "learning_rate": lr})
    experiment = single_run.prepare(config, str(tmp_path / "run"))  # writes nothing
    model, data = experiment.model, experiment.data
    initial = model.get_weights()
    order = input_pipeline.epoch_order(len(data.train), config.seed, 0)
    grads, _ = _per_example_gradients(model, data.train.x[order], data.train.y[order])
    low, high = np.percentile(grads, [pct, 100 - pct], axis=0, method="nearest")
    update = np.clip(grads, low, high).mean(axis=0)
    expected = np.concatenate([w.ravel() for w in initial]) - lr * update

    train.train_and_evaluate(config, str(tmp_path / "run"), progress=False)
    trained = np.concatenate([w.ravel() for w in _checkpoint_weights(str(tmp_path / "run"), 1)])
    np.testing.assert_allclose(trained, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(update, grads.mean(axis=0), atol=1e-6)  # clipping changed the step


# ------------------------------------------------------------------------------ config errors

@pytest.mark.parametrize("overrides, message", [
    ({"optimizer.aggregation": "median"}, "optimizer.aggregation='median' is unknown; allowed: "
                                          "mean, winsorize"),
    ({"optimizer.winsorize_pct": 50.0}, "optimizer.winsorize_pct=50.0 must be a percentage in "
                                        "[0, 50)"),
    ({"optimizer.winsorize_pct": -1.0}, "optimizer.winsorize_pct=-1.0 must be a percentage"),
    ({"optimizer.aggregation": "mean"}, "winsorize_pct=2.0 has no effect with "
                                        "optimizer.aggregation='mean'"),
    ({"coherence.every": -1}, "coherence.every=-1 must be an int >= 0"),
    ({"mode": "sweep"}, "mode='sweep' is unknown; allowed: train"),
    ({"optimizer.name": "m3", "optimizer.aggregation": "mean", "optimizer.winsorize_pct": 0.0,
      "coherence.every": 1}, "in-batch M3 (cgh_tf.Model splits each batch into the groups; "
                             "per-step coherence needs it) wants all of: "
                             "--config.optimizer.m3_in_batch=True --config.batch_size=66 (a "
                             "multiple of the 3 M3 groups; now 64) (or coherence.every=0 and "
                             "optimizer.m3_in_batch=False: M3 over consecutive batches)"),
    ({"optimizer.name": "m3", "optimizer.winsorize_pct": 2.0},
     "optimizer.aggregation='winsorize' and M3 are two aggregators of the same batch"),
    ({"optimizer.name": "m3", "optimizer.aggregation": "mean", "optimizer.winsorize_pct": 0.0,
      "optimizer.m3_in_batch": True}, "wants all of: --config.batch_size=66 (a multiple of the "
                                      "3 M3 groups; now 64) (or"),
    ({"optimizer.winsorize_pct": None}, "optimizer.aggregation='winsorize' needs "
                                        "optimizer.winsorize_pct, the percent clipped on each "
                                        "side, in [0, 50)"),
    ({"coherence.monitor_samples": 500}, "coherence.monitor_samples=500 but the train examples "
                                         "number only 300"),
])
def test_feature_config_errors_are_reported_before_training(tmp_path, overrides, message):
    workdir = tmp_path / "never"
    config = _tiny(winsorize, **overrides)
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(config, str(workdir), progress=False)
    assert message in str(error.value)
    assert not workdir.exists()


# ------------------------------------------------------------------------------------ configs

def _without_feature_fields(config):
    """`config` with every feature field removed (a config written before they existed)."""
    plain = config.to_dict()
    for dotted in config_schema.FEATURE_FIELDS:
        *parents, leaf = dotted.split(".")
        node = plain
        for part in parents:
            node = node[part]
        del node[leaf]
    for subtree in ("coherence", "learning_times"):
        assert not plain[subtree], subtree  # nothing else lived there
        del plain[subtree]
    return ml_collections.ConfigDict(plain)


def test_feature_defaults_keep_the_plain_trainer():
    config = _without_feature_fields(default.get_config())
    assert "coherence" not in config and "aggregation" not in config.optimizer
    config_schema.validate(config)
    assert config_schema.setting(config, "coherence.every") == 0
    assert config_schema.setting(config, "optimizer.aggregation") == "mean"
    assert factories.cgh_compile_options(config) == {
        "coherence_every": 0, "coherence_per_layer": False, "coherence_training": False,
        "aggregation": "mean", "winsorize_pct": None}
    # The defaults are the values of configs/default.py, written there only.
    with_fields = config_schema.add_feature_fields(config)
    assert with_fields.to_dict() == default.get_config().to_dict()
    changed = default.get_config()
    changed.coherence.every = 7
    assert config_schema.setting(_without_feature_fields(changed), "coherence.every") == 0
    assert config_schema.setting(changed, "coherence.every") == 7
    assert isinstance(factories.build_model(config, (40,), 10), cgh_tf.Model)
    # M3 over consecutive batches (the authors' realisation) stays a plain keras.Model.
    m3_model = factories.build_model(m3.get_config(), (40,), 10)
    assert isinstance(m3_model, keras.Model) and not isinstance(m3_model, cgh_tf.Model)
    in_batch = config_schema.add_feature_fields(m3.get_config())
    in_batch.optimizer.m3_in_batch, in_batch.batch_size, in_batch.drop_remainder = True, 66, True
    config_schema.validate(in_batch)
    assert isinstance(factories.build_model(in_batch, (40,), 10), cgh_tf.Model)


@pytest.mark.parametrize("module", [real_vs_random, winsorize])
def test_new_configs_validate(module):
    config_schema.validate(module.get_config())


def test_sweeps_list_the_arms():
    assert tuple(winsorize.get_config().sweep["values"]) == (0.0, 2.0, 4.0, 8.0)
    assert winsorize.get_config().sweep["field"] == "optimizer.winsorize_pct"
    config = winsorize.get_config()  # the README winsorization table's setup
    assert config.optimizer.winsorize_pct == 2.0 and config.batch_size == 64
    assert config.learning_rate == 0.2 and config.num_epochs == 30 and config.drop_remainder
    assert config.model.kwargs.depth == 2 and config.model.kwargs.width == 256
    assert tuple(real_vs_random.get_config().sweep["values"]) == (0.0, 1.0)
