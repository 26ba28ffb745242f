"""`python -m trainers.train` under config field `distribution` (trainers/distributed_loop.py).

Two workers on 127.0.0.1 (`multi_worker`, each its own process and `TF_CONFIG`) must give the
`results.json` of one process (`none`) on the same config, for SGD and RM3 (M3 over consecutive
batches shares RM3's buffers and replica-local counters, and is checked against one device in
process by `tests/test_replica_groups.py`). Faults: in one SGD pair worker 1 kills itself
(SIGKILL at training step 12 of 16: `cgh_tf.fault_injection`); the chief must then stop by itself
with one line within `PEER_SECONDS`, and both are restarted (the chief restores, the other worker
gets the state by broadcast) to the `results.json` bytes of a pair never interrupted. In another
pair worker 1 hangs (alive) at that step: the chief stops with one line after
`collective_timeout` seconds. `mirrored` runs in this process,
over the logical CPUs of `tests/conftest.py` (six). Every subprocess is waited for with a deadline
and ended by its own handle in a `finally`; the one-process references run here meanwhile.
"""

import glob
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from configs import default
from trainers import config_schema
from trainers import outputs
from trainers import run_state
from trainers import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZERS = ("sgd", "rm3")  # M3 buffers and counts as RM3 does (cgh_tf.optimizers.RobustAverage)
DEADLINE_SECONDS = 420
PEER_SECONDS = 60  # a dead peer is seen by TF's heartbeats (~10-15 s), then one line and exit
KILL_AT = "train-step-12"  # epoch 2 of 2 (8 steps per epoch), after the chief's first checkpoint
HANG_TIMEOUT = 30  # collective_timeout of the pair whose worker 1 hangs (alive) at KILL_AT
# The default config shrunk: 500 examples (the last batch of 52 splits into 2 x 26), 2 epochs.
SHRUNK = {"max_train": 500, "max_test": 230, "num_epochs": 2, "model.kwargs.width": 32,
          "eval_batch_size": 100}
FLAGS = ["--config=configs/default.py", *(f"--config.{k}={v}" for k, v in SHRUNK.items()),
         "--noprogress"]
# For 6 replicas: batches of 48 = 6 x 8, the last one 18 = 6 x 3.
MIRRORED = {**SHRUNK, "max_train": 498, "batch_size": 48}


def _env(**extra):
    """A clean environment: nothing inherited but the basics (no TF_CONFIG, no devices)."""
    kept = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**kept, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **extra}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start_workers(workdir, optimizer, worker1_env=None, extra=()):
    """Two multi_worker processes (worker 0 = chief), same command line (plus `extra` flags) and
    `--workdir`; `worker1_env`: worker 1's extra environment (`cgh_tf.fault_injection` points).

    Output goes to files: a pipe could fill up and stall a worker while the test waits for its
    partner, which would then wait in a collective forever.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    command = [sys.executable, "-m", "trainers.train", *FLAGS,
               f"--config.optimizer.name={optimizer}", "--config.distribution=multi_worker",
               *extra, f"--workdir={workdir}"]
    processes = []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        fault = (worker1_env or {}) if index == 1 else {}
        with open(f"{workdir}.worker{index}.log", "a") as log:
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                       env=_env(TF_CONFIG=json.dumps(tf_config), **fault))
        process.log_path = log.name
        processes.append(process)
    return processes


def _wait(processes, deadline):
    """`[(returncode, output)]`; a process still running at `deadline` is killed (returncode -9)."""
    finished = []
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with open(process.log_path) as f:
            finished.append((process.returncode, f.read()))
    return finished


def _peer_dies(processes, workdir, deadline):
    """Wait for worker 1 to kill itself, then for the chief to stop by itself; returns
    `{"after": epochs of the newest checkpoint, "chief": (returncode, output), "seconds": the
    chief's stop after worker 1's death}` (a chief still running at the deadline is killed)."""
    chief, worker = processes
    worker.wait(timeout=max(1.0, deadline - time.time()))
    died = time.time()
    (code, output), = _wait([chief], min(deadline, died + PEER_SECONDS))
    checkpoints = run_state.list_checkpoints(workdir)
    return {"after": checkpoints[-1][0] if checkpoints else None, "worker": worker.returncode,
            "chief": (code, output), "seconds": time.time() - died}


def _in_process(workdir, overrides):
    config = config_schema.apply_overrides(default.get_config(), overrides)
    return train.train_and_evaluate(config, workdir, progress=False)


def _results(workdir):
    with open(os.path.join(workdir, outputs.RESULTS_FILE)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{name: (workdir, [(returncode, output) per worker])}`, `"killed"`: what `_peer_dies` saw, and
    `"none"` / `"mirrored"`: `{name: results}` of the runs in this process."""
    root = tmp_path_factory.mktemp("distributed")
    deadline = time.time() + DEADLINE_SECONDS
    started = {f"{optimizer}-multi_worker": (str(root / f"{optimizer}-multi_worker"), [])
               for optimizer in OPTIMIZERS}
    started["sgd-multi_worker-whole"] = (str(root / "sgd-multi_worker-whole"), [])  # not killed
    killed, hung = {}, {}

    def kill_and_restart():  # runs while this process trains the references
        workdir, processes = started["sgd-multi_worker"]
        killed.update(_peer_dies(processes, workdir, deadline))
        started["sgd-multi_worker"] = (workdir, _start_workers(workdir, "sgd"))

    def stop_the_hung_one(processes):  # the chief must stop by itself; worker 1 sleeps: ended here
        hung["chief"], = _wait(processes[:1], deadline)
        hung["stopped"] = _seconds_of_day(datetime.datetime.now())
        processes[1].kill()
        processes[1].wait()

    hung_pair = []
    try:
        for optimizer in OPTIMIZERS:
            workdir, processes = started[f"{optimizer}-multi_worker"]
            processes += _start_workers(workdir, optimizer,
                                        {"CGH_TF_KILL_AT": KILL_AT} if optimizer == "sgd" else None)
        started["sgd-multi_worker-whole"][1].extend(
            _start_workers(started["sgd-multi_worker-whole"][0], "sgd"))
        hung_pair += _start_workers(str(root / "sgd-multi_worker-hung"), "sgd",
                                    {"CGH_TF_HANG_AT": KILL_AT},
                                    [f"--config.collective_timeout={HANG_TIMEOUT}",
                                     "--verbosity=1"])  # the per-epoch absl line is DEBUG
        watchers = [threading.Thread(target=kill_and_restart),
                    threading.Thread(target=stop_the_hung_one, args=(hung_pair,))]
        for watcher in watchers:
            watcher.start()
        single = {optimizer: _in_process(str(root / f"{optimizer}-none"),
                                         {**SHRUNK, "optimizer.name": optimizer})
                  for optimizer in OPTIMIZERS}
        mirrored = {distribution: _in_process(str(root / f"mirrored-{distribution}"),
                                              {**MIRRORED, "distribution": distribution})
                    for distribution in ("none", "mirrored")}
        for watcher in watchers:
            watcher.join(max(1.0, deadline - time.time()))
        finished = {name: (workdir, _wait(processes, deadline))
                    for name, (workdir, processes) in started.items()}
        return {**finished, "killed": killed, "hung": hung, "none": single, "mirrored": mirrored,
                "root": str(root)}
    finally:
        for processes in [hung_pair, *(processes for _, processes in started.values())]:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()


def _completed(runs, name):
    workdir, processes = runs[name]
    for index, (code, output) in enumerate(processes):
        assert code == 0, f"{name} worker {index}: {output[-3000:]}"
    return workdir, [output for _, output in processes]


def _assert_same_results(distributed, single):
    """Equal keys; numbers equal to 1e-6; configs equal except `distribution`."""
    distributed, single = json.loads(json.dumps(distributed)), json.loads(json.dumps(single))
    assert (distributed["config"].pop("distribution"), single["config"].pop("distribution")) \
        in {("multi_worker", "none"), ("mirrored", "none")}
    assert distributed["config"] == single["config"]
    assert distributed["dataset"] == single["dataset"]
    assert distributed["epochs_completed"] == single["epochs_completed"] == 2
    for section in ("history", "final"):
        assert distributed[section].keys() == single[section].keys(), section
        for key, value in single[section].items():
            assert distributed[section][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_two_workers_give_the_results_of_one_process(runs, optimizer):
    single_dir = os.path.join(runs["root"], f"{optimizer}-none")
    workdir, outputs = _completed(runs, f"{optimizer}-multi_worker")
    assert "distribution=multi_worker: 2 replicas, 2 workers" in outputs[0]
    _assert_same_results(_results(workdir), _results(single_dir))
    # The chief wrote what one process writes; the other worker wrote nothing.
    assert sorted(os.listdir(workdir)) == sorted(os.listdir(single_dir))
    for run in ("train", "validation"):
        assert glob.glob(os.path.join(workdir, "tensorboard", run, "events.out.tfevents.*"))
    assert "worker done: the chief writes the results" in outputs[1]


def test_when_a_worker_dies_the_chief_stops_in_one_line_and_all_resume(runs):
    killed = runs["killed"]
    assert killed["worker"] == -signal.SIGKILL
    code, output = killed["chief"]
    assert code == 1, output[-3000:]
    assert killed["seconds"] < PEER_SECONDS
    assert output.rstrip().splitlines()[-1].startswith(
        "error: distribution='multi_worker': stopped because another worker died or hung (")
    assert "Traceback" not in output
    assert killed["after"] == 1, "the chief had no checkpoint, or finished, before the kill"
    workdir, outputs = _completed(runs, "sgd-multi_worker")
    assert "after epoch 1" in outputs[0]  # the chief resumed
    whole, _ = _completed(runs, "sgd-multi_worker-whole")
    with open(os.path.join(workdir, "results.json"), "rb") as resumed, \
            open(os.path.join(whole, "results.json"), "rb") as uninterrupted:
        assert resumed.read() == uninterrupted.read()


def _log_time(line):
    """Seconds of the day of an absl log line (`I1207 06:25:55.197110 ...`)."""
    hours, minutes, seconds = line.split()[1].split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def _seconds_of_day(moment):
    """Seconds of the day of a local `datetime`, as `_log_time` reads absl's lines."""
    return 3600 * moment.hour + 60 * moment.minute + moment.second + moment.microsecond / 1e6


def test_when_a_worker_hangs_the_chief_stops_after_the_configured_timeout(runs):
    code, output = runs["hung"]["chief"]
    assert code == 1, output[-3000:]
    last = output.rstrip().splitlines()[-1]
    assert last.startswith("error: distribution='multi_worker': stopped because another worker "
                           "died or hung (DeadlineExceededError: Collective has timed out")
    assert "Traceback" not in output
    absl = [line for line in output.splitlines() if line[:1] in "IE" and line[1:5].isdigit()]
    epoch_1 = next(_log_time(line) for line in absl if "epoch 1/2:" in line)
    assert HANG_TIMEOUT <= runs["hung"]["stopped"] - epoch_1 < HANG_TIMEOUT + 30  # then the wait


def test_mirrored_over_the_logical_cpus_gives_the_results_of_one_process(runs):
    import tensorflow as tf

    from trainers import distributed_loop

    assert distributed_loop.replicas(distributed_loop.build_strategy("mirrored")) == 6 == \
        len(tf.config.list_logical_devices("CPU"))
    _assert_same_results(runs["mirrored"]["mirrored"], runs["mirrored"]["none"])


# ------------------------------------------------------------------ one-line errors, before data


def _tiny_config(**fields):
    from configs import default

    config = default.get_config()
    config.max_train, config.max_test, config.num_epochs = 100, 50, 1
    for name, value in fields.items():
        config[name] = value
    return config


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if the trainer loads data."""
    from trainers import factories

    def load_data(config):
        raise AssertionError("data was loaded before the config error")
    monkeypatch.setattr(factories, "load_data", load_data)


@pytest.mark.parametrize("value", ["gpu", "", None, "Mirrored"])
def test_bad_distribution_is_one_line_naming_the_field_and_values(tmp_path, no_data, value):
    from trainers import config_schema, train

    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(_tiny_config(distribution=value), str(tmp_path / "w"), False)
    assert str(error.value) == (f"invalid config: distribution={value!r} is unknown; allowed: "
                                f"none, mirrored, multi_worker, tpu")
    assert not (tmp_path / "w").exists()


def test_tpu_without_a_tpu_is_a_one_line_error(tmp_path, no_data, monkeypatch):
    from trainers import config_schema, train

    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(config_schema.ConfigError) as error:
        train.train_and_evaluate(_tiny_config(distribution="tpu"), str(tmp_path / "w"), False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("distribution='tpu': no TPU found by TPUClusterResolver")
    assert not (tmp_path / "w").exists()


def test_multi_worker_without_tf_config_is_a_one_line_error(tmp_path, no_data, monkeypatch):
    from trainers import config_schema, train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(config_schema.ConfigError, match="needs the TF_CONFIG environment variable"):
        train.train_and_evaluate(_tiny_config(distribution="multi_worker"), str(tmp_path / "w"),
                                 False)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(config_schema.ConfigError, match="TF_CONFIG is not a cluster spec"):
        train.train_and_evaluate(_tiny_config(distribution="multi_worker"), str(tmp_path / "w"),
                                 False)
    assert not (tmp_path / "w").exists()


def test_every_batch_must_split_into_equal_shards():
    from trainers import config_schema, distributed_loop

    distributed_loop.check_even_shards(500, 64, False, 2)  # last batch 52 = 2 x 26
    distributed_loop.check_even_shards(501, 64, True, 2)   # the last batch is dropped
    distributed_loop.check_even_shards(7, 3, False, 1)
    with pytest.raises(config_schema.ConfigError, match="give a batch of 53; use a batch_size"):
        distributed_loop.check_even_shards(501, 64, False, 2)
    with pytest.raises(config_schema.ConfigError, match="batch_size=64 give a batch of 64"):
        distributed_loop.check_even_shards(640, 64, False, 3)


@pytest.mark.parametrize("name, fields", [("sgd", {}), ("rm3", {}), ("m3", {}),
                                          ("m3", {"m3_in_batch": True})])
def test_workers_get_every_variable_the_chief_restores(tmp_path, name, fields):
    """What the chief broadcasts after a restore (`run_variables`) is every variable of the run's
    checkpoint (weights, optimizer and wrapped optimizer state, steps_trained) but the schedule's
    epoch, which every worker sets at each epoch start."""
    import keras
    import tensorflow as tf
    from trainers import distributed_loop, single_run

    config = _tiny_config(batch_size=48, drop_remainder=True,  # in-batch M3: 3 groups of 16
                          num_epochs=2)  # 4 batches: RM3's / M3's first update after 3
    config.optimizer.name = name
    config.optimizer.update(fields)
    prepared = single_run.prepare(config, str(tmp_path / "unused"))  # writes nothing
    restored = [v for v in tf.train.TrackableView(prepared.state.checkpoint).descendants()
                if isinstance(v, (tf.Variable, keras.Variable))]
    broadcast = {id(v) for v in distributed_loop.run_variables(prepared.model)}
    assert len(restored) > len(prepared.model.weights)
    assert [v for v in restored if id(v) not in broadcast] == [prepared.schedule.epoch]
