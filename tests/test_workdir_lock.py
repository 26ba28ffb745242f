"""`cgh_tf.workdir_lock`: one writer per workdir, refusals in one line naming the holder, no stale
lock after `kill -9`; and the trainers that take it (`trainers/train.py`, `trainers.runner.run`).

The holders in other processes load the module from its file (no TensorFlow import: fast), are
waited for with a deadline and ended by their own pid.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

from cgh_tf import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir_lock", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
with module.hold(sys.argv[2], "test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder_process(tmp_path):
    """Start a process holding the lock of `tmp_path / "work"`; yields it (ended by its pid)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, os.path.join(REPO, "cgh_tf", "workdir_lock.py"),
         str(tmp_path / "work")], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_a_second_holder_is_refused_in_one_line_naming_the_first(holder_process, tmp_path):
    with pytest.raises(workdir_lock.WorkdirBusy) as error:
        with workdir_lock.hold(tmp_path / "work", "trainer"):
            pass
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"workdir {tmp_path / 'work'} is in use by test holder pid "
                              f"{holder_process.pid} on host {socket.gethostname()} since 20")
    assert message.endswith("UTC; wait for it to finish, stop it, or choose another workdir")


def test_kill_9_leaves_no_stale_lock(holder_process, tmp_path):
    os.kill(holder_process.pid, signal.SIGKILL)
    holder_process.wait(timeout=30)
    assert f"pid {holder_process.pid}" in workdir_lock.holder(tmp_path / "work")  # the file stays
    with workdir_lock.hold(tmp_path / "work", "trainer") as path:
        assert f"trainer pid {os.getpid()} " in open(path).read()


def test_a_second_hold_in_the_same_process_is_refused_too(tmp_path):
    with workdir_lock.hold(tmp_path, "first"):
        with pytest.raises(workdir_lock.WorkdirBusy, match=f"in use by first pid {os.getpid()}"):
            with workdir_lock.hold(tmp_path, "second"):
                pass
    with workdir_lock.hold(tmp_path, "third"):  # released on exit
        pass


def test_release_removes_the_lock_file_and_a_workdir_it_created_empty(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "results.json").write_text("{}")
    with workdir_lock.hold(existing):
        assert (existing / workdir_lock.LOCK_FILE).exists()
    assert sorted(os.listdir(existing)) == ["results.json"]
    with pytest.raises(KeyError):  # e.g. a config error inside the block: no trace left
        with workdir_lock.hold(tmp_path / "new" / "run"):
            raise KeyError("bad")
    assert not (tmp_path / "new" / "run").exists()
    with workdir_lock.hold(tmp_path / "kept"):
        (tmp_path / "kept" / "out.txt").write_text("x")
    assert os.listdir(tmp_path / "kept") == ["out.txt"]


def test_a_lock_file_replaced_by_an_exiting_holder_is_retaken(tmp_path, monkeypatch):
    """The race the inode check closes: flock won on a file the holder unlinked meanwhile."""
    calls = []
    real = workdir_lock._same_file

    def first_stale(fd, path):
        calls.append(path)
        return len(calls) > 1 and real(fd, path)
    monkeypatch.setattr(workdir_lock, "_same_file", first_stale)
    with workdir_lock.hold(tmp_path, "retaker"):
        assert len(calls) == 2
        assert "retaker" in workdir_lock.holder(tmp_path)


# ------------------------------------------------------------------------ the trainers take it


def _tiny_config(**overrides):
    from configs import default
    from trainers import config_schema

    config = default.get_config()
    config.max_train, config.max_test, config.num_epochs = 100, 50, 1
    config.model.kwargs.width = 8
    return config_schema.apply_overrides(config, overrides)


@pytest.fixture
def no_data(monkeypatch):
    from trainers import factories

    def load_data(config):
        raise AssertionError("data was loaded")
    monkeypatch.setattr(factories, "load_data", load_data)


def test_the_trainer_refuses_a_workdir_in_use_before_any_data(tmp_path, no_data):
    from trainers import train

    with workdir_lock.hold(tmp_path, "other trainer"):
        with pytest.raises(workdir_lock.WorkdirBusy, match="in use by other trainer pid"):
            train.train_and_evaluate(_tiny_config(), str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("change, fields", [({"seed": 1}, ["seed"]),
                                            ({"num_epochs": 2}, ["num_epochs"])])
def test_the_finished_results_of_another_config_are_refused_untouched(tmp_path, no_data, change,
                                                                      fields):
    """No checkpoint left (deleted), only the results.json: still refused (issue 22)."""
    from trainers import config_schema, outputs, train

    finished = outputs.json_roundtrip(_tiny_config(**change).to_dict())
    outputs.write_json(tmp_path / "results.json", {"config": finished, "epochs_completed": 1})
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(_tiny_config(), str(tmp_path), progress=False)
    assert str(error.value) == (f"workdir {tmp_path} holds the finished results of a run with a "
                                f"different config (fields {fields} differ); use another workdir")
    assert os.listdir(tmp_path) == ["results.json"]
    assert (tmp_path / "results.json").read_bytes() == before


@pytest.mark.parametrize("text", ["[1, 2]", "7", "{", '{"experiment": "scale", "groups": {}}'])
def test_a_results_json_that_is_no_run_record_is_refused_untouched(tmp_path, no_data, text):
    """No checkpoint, a results.json that is not a trainer run's (not a JSON object, an
    experiment's report): one line naming it (was: a list, a number or an experiment's report
    was overwritten by the run, not-JSON refused without the file's path)."""
    from trainers import config_schema, train

    (tmp_path / "results.json").write_text(text)
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(_tiny_config(), str(tmp_path), progress=False)
    assert str(error.value).startswith(f"{tmp_path / 'results.json'} is not a run's record (")
    assert os.listdir(tmp_path) == ["results.json"]
    assert (tmp_path / "results.json").read_text() == text


def test_an_experiment_refuses_a_run_dir_of_another_config(tmp_path):
    from trainers import beyond_common, config_schema, outputs

    outputs.write_json(tmp_path / "results.json", {"config": {"seed": 1}, "finished": True,
                                                   "summary": {}, "curves": {}})
    with pytest.raises(config_schema.ConfigError, match=r"fields \['seed'\] differ"):
        beyond_common.finished_result(str(tmp_path), {"seed": 0})
    assert beyond_common.finished_result(str(tmp_path), {"seed": 1})["finished"]


def test_an_experiment_workdir_in_use_is_refused(tmp_path):
    from trainers import runner
    from trainers.experiment import Arm, Experiment

    def never(config, run_dir, echo=None):
        raise AssertionError("ran")
    toy = Experiment(name="toy", title="toy", arms=None, run_arm=never, columns=())
    with workdir_lock.hold(tmp_path, "experiment"):
        with pytest.raises(workdir_lock.WorkdirBusy):
            runner.run(toy, [Arm("g", "g", "", 0, None)], str(tmp_path), echo=None)


def test_an_empty_workdir_is_refused_not_taken_as_the_current_directory(tmp_path, monkeypatch):
    """`--workdir=` (empty): one line; was the current directory (reproduce --dry_run wrote
    plan.json there, a run would have trained into it)."""
    from trainers import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(workdir_lock.BadWorkdir, match="the workdir is empty"):
        with workdir_lock.hold(""):
            pass
    assert os.listdir(tmp_path) == [] and workdir_lock.BadWorkdir in train.RUN_ERRORS
