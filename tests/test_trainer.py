"""End-to-end tests of `python -m trainers.train` (subprocesses) and of its factories (in process).

One reference run (module fixture) on a tiny config is shared by the read-back tests; a second
identical run checks byte-identical results; a third is killed with SIGKILL after its first
checkpoint and restarted, and must end byte-identical too. The tiny config uses RM3 around SGD with
momentum and a step decay, so resuming must restore the wrapper's gradient history, the momentum
and the schedule.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from trainers import config_schema, factories, input_pipeline, schedule
from trainers import outputs
from trainers import run_state
from trainers import single_run
from trainers import train

from native_log import program_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EPOCHS = 10
TINY_FLAGS = [
    "--config=configs/default.py", "--config.max_train=500", "--config.max_test=200",
    f"--config.num_epochs={NUM_EPOCHS}", "--config.model.kwargs.width=32", "--config.batch_size=32",
    "--config.optimizer.name=rm3", "--config.optimizer.momentum=0.9", "--config.learning_rate=0.05",
    "--config.lr_schedule.name=step", "--config.lr_schedule.decay_epochs=(5,)",
    "--config.eval_batch_size=128", "--noprogress",
]


def _command(workdir, extra=()):
    return [sys.executable, "-m", "trainers.train", *TINY_FLAGS, *extra, f"--workdir={workdir}"]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _start(workdir, extra=()):
    return subprocess.Popen(_command(workdir, extra), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process):
    """Wait for a `_start`ed run; returns `(returncode, stderr)`."""
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def _run(workdir, extra=()):
    return _finish(_start(workdir, extra))


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs started together (TF start-up overlaps): reference, its repeat, two bad configs, a killed one.

    Returns `{name: (workdir, returncode, stderr)}`.
    """
    root = tmp_path_factory.mktemp("runs")
    (root / "broken_config.py").write_text("def get_config(:\n")
    plans = {"reference": (), "repeat": (), "bad": ("--config.optimizer.momentum=1.5",),
             "misspelled": ("--config.num_epoch=3",), "killed": (),
             "config_path": ("--config=configs/defualt.py",),  # the last --config wins
             "config_broken": (f"--config={root / 'broken_config.py'}",),
             "winsorize_unset": ("--config.optimizer.name=sgd",
                                 "--config.optimizer.aggregation=winsorize"),
             "winsorize_pct_alone": ("--config.optimizer.name=sgd",
                                     "--config.optimizer.winsorize_pct=2"),
             "m3_coherence": ("--config.optimizer.name=m3", "--config.coherence.every=1")}
    started = {name: _start(str(root / name), extra) for name, extra in plans.items()}
    _kill_after_first_checkpoint(started["killed"], str(root / "killed"))
    return {name: (str(root / name), *_finish(process)) for name, process in started.items()}


def _kill_after_first_checkpoint(process, workdir):
    deadline = time.time() + 480  # 4 TF processes start together; slow on a busy machine
    while not run_state.list_checkpoints(workdir) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)


@pytest.fixture(scope="module")
def reference(runs):
    """Workdir of one complete tiny run."""
    workdir, returncode, stderr = runs["reference"]
    assert returncode == 0, stderr[-3000:]
    return workdir


def _results(workdir):
    with open(os.path.join(workdir, outputs.RESULTS_FILE)) as f:
        return json.load(f)


def _scalars(directory):
    """`{tag: {step: value}}` from all event files in `directory`."""
    found = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


def test_workdir_holds_all_outputs(reference):
    names = set(os.listdir(reference))
    assert {"results.json", "timings.json", "curves.png", "checkpoints", "tensorboard"} <= names
    assert [e for e, _ in run_state.list_checkpoints(reference)] == [NUM_EPOCHS]  # keep_checkpoints=1
    assert _read_bytes(os.path.join(reference, "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert not glob.glob(os.path.join(reference, "**", ".*tmp-*"), recursive=True)
    assert "seconds" not in json.dumps(_results(reference))  # wall-clock only in timings.json


def test_tensorboard_has_every_curve_for_every_epoch(reference):
    history = _results(reference)["history"]
    train_scalars = _scalars(os.path.join(reference, "tensorboard", "train"))
    test_scalars = _scalars(os.path.join(reference, "tensorboard", "validation"))
    expected = [
        (train_scalars, "epoch_loss", "loss"), (train_scalars, "epoch_accuracy", "accuracy"),
        (train_scalars, "epoch_pristine_accuracy", "pristine_accuracy"),
        (train_scalars, "epoch_corrupted_accuracy", "corrupted_accuracy"),
        (train_scalars, "epoch_learning_rate", "learning_rate"),
        (test_scalars, "epoch_loss", "val_loss"), (test_scalars, "epoch_accuracy", "val_accuracy"),
    ]
    for scalars, tag, key in expected:
        assert sorted(scalars[tag]) == list(range(NUM_EPOCHS)), tag
        logged = [scalars[tag][step] for step in range(NUM_EPOCHS)]
        np.testing.assert_allclose(logged, history[key], rtol=1e-6, err_msg=tag)


def test_results_match_a_recomputation_from_the_checkpoint(reference):
    results = _results(reference)
    config = ml_collections.ConfigDict(results["config"])
    data = factories.load_data(config)
    assert results["dataset"]["num_train"] == len(data.train) == 500
    assert results["dataset"]["num_train_corrupted"] == int(data.train.corrupted.sum()) > 0
    assert results["epochs_completed"] == NUM_EPOCHS
    assert all(len(v) == NUM_EPOCHS for v in results["history"].values())
    assert results["history"]["learning_rate"] == pytest.approx([0.05] * 5 + [0.005] * 5)

    model = factories.build_model(config, data.input_shape, data.num_classes)
    optimizer = factories.build_optimizer(config, schedule.build_schedule(config))
    factories.compile_model(model, optimizer)
    run_state.restore_model(run_state.checkpoint_path(reference, NUM_EPOCHS), model)

    def accuracy(split, mask):
        logits = model.predict(split.x[mask], verbose=0)
        return np.mean(np.argmax(logits, axis=1) == split.y[mask])

    def mean_cross_entropy(split):
        logits = model.predict(split.x, verbose=0).astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.mean(log_p[np.arange(len(split)), split.y])

    corrupted = data.train.corrupted
    final = results["final"]
    assert final["pristine_train_accuracy"] == pytest.approx(accuracy(data.train, ~corrupted),
                                                             abs=1e-9)
    assert final["corrupted_train_accuracy"] == pytest.approx(accuracy(data.train, corrupted),
                                                              abs=1e-9)
    all_test = np.ones(len(data.test), bool)
    assert final["test_accuracy"] == pytest.approx(accuracy(data.test, all_test), abs=1e-6)
    assert final["test_loss"] == pytest.approx(mean_cross_entropy(data.test), rel=1e-4)
    assert final["pristine_train_accuracy"] == results["history"]["pristine_accuracy"][-1]


def test_same_command_twice_gives_byte_identical_results(reference, runs):
    workdir, returncode, stderr = runs["repeat"]
    assert returncode == 0, stderr[-3000:]
    assert _read_bytes(os.path.join(workdir, "results.json")) == \
        _read_bytes(os.path.join(reference, "results.json"))


def test_resume_after_sigkill_gives_byte_identical_results(reference, runs):
    workdir, returncode, _ = runs["killed"]
    assert returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_after = run_state.list_checkpoints(workdir)[-1][0]
    assert killed_after < NUM_EPOCHS, "killed after the last epoch: the resume would train nothing"
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    returncode, stderr = _run(workdir)
    assert returncode == 0, stderr[-3000:]
    assert f"after epoch {killed_after}" in stderr  # resumed from the newest checkpoint
    assert _read_bytes(os.path.join(workdir, "results.json")) == \
        _read_bytes(os.path.join(reference, "results.json"))
    scalars = _scalars(os.path.join(workdir, "tensorboard", "train"))
    assert sorted(scalars["epoch_corrupted_accuracy"]) == list(range(NUM_EPOCHS))


@pytest.mark.parametrize("run, message", [
    ("bad", "error: invalid config: optimizer.momentum=1.5 must be in [0, 1)"),
    ("misspelled", "error: --config.num_epoch: the config has no field 'num_epoch' Did you mean "
                   "\"num_epochs\" instead of \"num_epoch\"?"),
    ("config_path", "error: --config=configs/defualt.py: no such file; give a config file such as "
                    "configs/default.py"),
    ("config_broken", "error: --config={root}/broken_config.py: the config file failed to load: "
                      "SyntaxError: invalid syntax (broken_config.py, line 1)"),
    ("winsorize_unset", "error: invalid config: optimizer.aggregation='winsorize' needs "
                        "optimizer.winsorize_pct, the percent clipped on each side, in [0, 50) "
                        "(e.g. --config.optimizer.winsorize_pct=2; 0 is a plain mean computed "
                        "per example)"),
    ("winsorize_pct_alone", "error: invalid config: optimizer.winsorize_pct=2.0 has no effect "
                            "with optimizer.aggregation='mean'; set "
                            "optimizer.aggregation='winsorize' or winsorize_pct=0"),
    # everything M3 with coherence needs, in one line (max_train=500, batch 32: 500 % 33 = 5)
    ("m3_coherence", "error: invalid config: in-batch M3 (cgh_tf.Model splits each batch into "
                     "the groups; per-step coherence needs it) wants all of: "
                     "--config.optimizer.m3_in_batch=True --config.batch_size=33 (a multiple of "
                     "the 3 M3 groups; now 32) --config.drop_remainder=True (the last batch of "
                     "an epoch must split into the groups too) (or coherence.every=0 and "
                     "optimizer.m3_in_batch=False: M3 over consecutive batches)"),
])
def test_bad_config_exits_with_one_line_and_writes_nothing(runs, run, message):
    workdir, returncode, stderr = runs[run]
    assert returncode == 1
    assert stderr.rstrip().splitlines()[-1] == message.format(root=os.path.dirname(workdir))
    assert "Traceback" not in stderr
    assert not os.path.exists(workdir)


def _tiny_config(**overrides):
    """The default config shrunk to 100 examples and 1 epoch, with `{"a.b": value}` overrides."""
    config = default.get_config()
    config.max_train, config.max_test, config.num_epochs = 100, 50, 1
    config.model.kwargs.width = 8
    return config_schema.apply_overrides(config, overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "nope"}, "dataset='nope' is unknown"),
    ({"model.name": "nope"}, "model.name='nope' is unknown; allowed: mlp"),
    ({"optimizer.name": "nope"}, "optimizer.name='nope' is unknown; allowed: sgd, adam, adamw"),
    ({"optimizer.name": "m3", "optimizer.groups": None},  # was a TypeError from parse_name
     "optimizer.groups=None must be a positive int"),
    ({"num_epochs": 0}, "num_epochs=0 must be a positive int"),
    ({"label_noise": 1.5}, "label_noise=1.5 must be a fraction in [0, 1]"),
    ({"learning_rate": -0.1}, "learning_rate=-0.1 must be a positive number"),
    ({"lr_schedule.decay_epochs": (5, 3)}, "decay_epochs=(5, 3) must be strictly increasing"),
    ({"lr_schedule.name": "cosine"}, "lr_schedule.name='cosine' is unknown"),
    ({"noise_kind": "flip"}, "noise_kind='flip' is unknown"),
    ({"seed": 2**32}, "seed=4294967296 must be an int in [0, 2**32)"),  # NumPy's seed range
])
def test_config_errors_name_the_field_and_write_nothing(tmp_path, monkeypatch, overrides, message):
    def load_data(config):
        raise AssertionError("data was loaded before the config error")

    monkeypatch.setattr(factories, "load_data", load_data)
    workdir = tmp_path / "never"
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(_tiny_config(**overrides), str(workdir), progress=False)
    assert message in str(error.value) and "\n" not in str(error.value)  # one line
    assert not workdir.exists()


def test_a_workdir_that_cannot_be_a_directory_is_one_line_before_any_data(tmp_path, monkeypatch):
    def load_data(config):
        raise AssertionError("data was loaded before the workdir error")

    monkeypatch.setattr(factories, "load_data", load_data)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(_tiny_config(), str(blocker / "run"), progress=False)
    assert str(error.value) == (f"--workdir={blocker / 'run'}: {blocker} is not a directory; "
                                f"choose a writable directory")


def test_workdir_of_another_config_is_refused_untouched(reference):
    def snapshot():
        paths = glob.glob(os.path.join(reference, "**"), recursive=True)
        return {p: (os.path.getmtime(p), os.path.getsize(p)) for p in paths}

    before = snapshot()
    with pytest.raises(config_schema.ConfigError, match="different config"):
        train.train_and_evaluate(_tiny_config(), reference, progress=False)
    assert snapshot() == before


def test_a_workdir_of_the_older_checkpoint_format_is_refused_before_any_data(tmp_path,
                                                                             monkeypatch):
    def load_data(config):
        raise AssertionError("data was loaded before the workdir error")

    monkeypatch.setattr(factories, "load_data", load_data)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch-0001.npz").write_bytes(b"")
    with pytest.raises(config_schema.ConfigError, match="older cgh_tf trainer.*another workdir"):
        train.train_and_evaluate(_tiny_config(), str(tmp_path), progress=False)


def test_epoch_order_is_a_seeded_permutation_per_epoch():
    first = input_pipeline.epoch_order(1000, seed=3, epoch=0)
    assert sorted(first) == list(range(1000))
    np.testing.assert_array_equal(first, input_pipeline.epoch_order(1000, seed=3, epoch=0))
    assert not np.array_equal(first, input_pipeline.epoch_order(1000, seed=3, epoch=1))
    assert not np.array_equal(first, input_pipeline.epoch_order(1000, seed=4, epoch=0))


def test_train_dataset_visits_each_epoch_in_its_order_without_straddling():
    x = np.arange(10, dtype=np.float32)[:, None] * 10
    y = np.arange(10, dtype=np.int32)
    batches = list(input_pipeline.train_dataset(x, y, batch_size=4, seed=1, first_epoch=2, num_epochs=4))
    assert [len(b[1]) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch, chunk in ((2, batches[:3]), (3, batches[3:])):
        labels = np.concatenate([b[1].numpy() for b in chunk])
        np.testing.assert_array_equal(labels, input_pipeline.epoch_order(10, seed=1, epoch=epoch))
        np.testing.assert_array_equal(np.concatenate([b[0].numpy()[:, 0] for b in chunk]),
                                      labels * 10)
    assert input_pipeline.steps_per_epoch(10, 4, drop_remainder=False) == 3
    assert input_pipeline.steps_per_epoch(10, 4, drop_remainder=True) == 2


def test_step_schedule_follows_the_epoch_variable():
    decay = schedule.EpochStepDecay(0.1, decay_epochs=(30, 60), decay_factor=0.1)
    for epoch, expected in ((0, 0.1), (29, 0.1), (30, 0.01), (59, 0.01), (60, 0.001), (89, 0.001)):
        decay.set_epoch(epoch)
        assert float(decay(tf.constant(12345))) == pytest.approx(expected, rel=1e-6)
        assert decay.value_at(epoch) == pytest.approx(expected, rel=1e-12)
    assert float(schedule.EpochStepDecay(0.3)(0)) == pytest.approx(0.3)


def test_demo_arms_and_workdir_safety(tmp_path):
    from trainers import demo

    assert demo.parse_arms("sgd, rm3") == ["sgd", "rm3"]
    with pytest.raises(ValueError, match="allowed: sgd, m3, rm3"):
        demo.parse_arms("sgd,adamw")
    previous = tmp_path / "sgd"
    (previous / "checkpoints").mkdir(parents=True)
    (previous / "results.json").write_text("{}")
    demo.clear_arm_dir(str(previous))
    assert not previous.exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("")
    with pytest.raises(ValueError, match="not a trainer workdir"):
        demo.clear_arm_dir(str(foreign))
    assert (foreign / "thesis.tex").exists()


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_dataset_specs_match_the_loaded_embedded_datasets(name):
    data = factories.load_data(_tiny_config(dataset=name, label_noise=0.0))
    assert factories.dataset_spec(name) == (tuple(data.input_shape), data.num_classes)


def test_digits_trains_end_to_end_for_one_epoch(tmp_path):
    results = train.train_and_evaluate(_tiny_config(dataset="digits"), str(tmp_path / "digits"),
                                       progress=False)
    assert results["dataset"]["name"] == "digits"
    assert results["dataset"]["input_shape"] == [8, 8, 1]
    assert results["epochs_completed"] == 1
    assert 0.0 <= results["final"]["test_accuracy"] <= 1.0
    assert os.path.exists(tmp_path / "digits" / "results.json")


def test_distribution_defaults_to_one_device_and_is_resumable():
    config = default.get_config()
    assert config.distribution == "none"
    assert "distribution" in single_run.RESUMABLE_FIELDS


@pytest.mark.slow
def test_a_config_file_that_raises_or_a_bad_flag_is_one_line(tmp_path):
    """get_config raising ValueError / KeyError, a `file.py:argument` the config does not take, a
    value of the wrong type, an unknown flag: one line each (was: absl's 'FATAL Flags parsing
    error' with the config's traceback indented in it, or 'the config has no field x')."""
    (tmp_path / "value.py").write_text("def get_config():\n    raise ValueError('lr must be set')\n")
    (tmp_path / "key.py").write_text("def get_config():\n    return {}['learning_rate']\n")
    (tmp_path / "none.py").write_text("CONFIG = 1\n")
    cases = {
        f"--config={tmp_path / 'value.py'}": f"error: --config={tmp_path / 'value.py'}: the config "
                                             "file failed to load: ValueError: lr must be set",
        f"--config={tmp_path / 'key.py'}": f"error: --config={tmp_path / 'key.py'}: the config "
                                           "file failed to load: KeyError: 'learning_rate'",
        f"--config={tmp_path / 'none.py'}": f"error: --config={tmp_path / 'none.py'}: the config "
                                            "file failed to load: AttributeError: module "
                                            "'config_config' has no attribute 'get_config'",
        "--config=configs/default.py:big": "error: --config=configs/default.py:big: the config "
                                           "file failed to load: TypeError: get_config() takes 0 "
                                           "positional arguments but 1 was given",
        "--config=configs/default.py --config.num_epochs=1.5": "error: flag --config.num_epochs="
                                                              "1.5: invalid literal for int() "
                                                              "with base 10: '1.5'",
        "--config=configs/default.py --nonsense=1": "error: Unknown command line flag 'nonsense'"}
    started = {flag: subprocess.Popen(
        [sys.executable, "-m", "trainers.train", *flag.split(" "), f"--workdir={tmp_path / 'run'}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for flag in cases}
    for flag, message in cases.items():
        returncode, stderr = _finish(started[flag])
        lines = program_lines(stderr)
        assert (returncode, lines[-1:]) == (1, [message]), stderr[-2000:]
        assert "Traceback" not in stderr and "FATAL" not in stderr
    assert not (tmp_path / "run").exists()
