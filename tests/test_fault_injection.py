"""Faults a trainer run must survive without losing work (issue 22; docs/guide/reliability.md).

A tiny config (200 examples, batches of 64: 4 steps per epoch, 2 epochs, MLP width 8):

| case                                   | how                                                          | must end in |
|----------------------------------------|--------------------------------------------------------------|-------------|
| SIGKILL at 10 points over both epochs and both checkpoint writes | `CGH_TF_KILL_AT` (`cgh_tf.fault_injection`): the trainer kills itself there; two chains of restarts, each restart killed at the next point | `results.json` byte-identical to an uninterrupted run |
| two concurrent starts on one workdir   | a second start while the first is held at its first step (`CGH_TF_HANG_UNTIL`) | one refused in one line naming the other; the other's results byte-identical |
| newest checkpoint damaged (3 ways) or `checkpoint` file garbage | data truncated, a data byte flipped, index truncated, then resumed (in process) | one line naming the damage; results byte-identical |
| disk full during a save                | a 2 MiB tmpfs filled just before epoch 2's save (in process) | one-line `CheckpointSaveError`, no staging left, epoch 1 intact; after freeing space results byte-identical |

Subprocesses run in threads started with the module (in-process cases run meanwhile), are waited
for with a deadline and ended by their own handle. Slow (`-m "not slow"` skips them locally).
"""

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from cgh_tf import checkpoints, workdir_lock
from trainers import config_schema, outputs, run_state, train

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_SECONDS = 600
TINY = {"max_train": 200, "max_test": 100, "num_epochs": 2, "model.kwargs.width": 8,
        "eval_batch_size": 100}
FLAGS = ["--config=configs/default.py", *(f"--config.{k}={v}" for k, v in TINY.items()),
         "--noprogress"]
# Kill points of cgh_tf.fault_injection over the run (steps 1-8, epochs 1-2, saves 1-2): one before
# any checkpoint, every stage of the first save, a step after it, the second save before and after
# its index, and after results.json.
CHAINS = {
    "chain_a": ["train-step-3", "epoch-end-1", "save-1-staged", "save-1-data-installed",
                "save-1-index-installed"],
    "chain_b": ["save-1-listed", "train-step-6", "save-2-staged", "save-2-listed",
                "results-written"],
}


def _env(**extra):
    kept = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**kept, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **extra}


_SPAWN = threading.Lock()  # held while this process's file-size limit is 0 (`_FullDisk`)


def _start(workdir, **env):
    with _SPAWN:  # a child would inherit the limit
        return subprocess.Popen(
            [sys.executable, "-m", "trainers.train", *FLAGS, f"--workdir={workdir}"], cwd=REPO,
            env=_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(process, deadline):
    """`(returncode, stderr)`; a process still running at `deadline` is killed (its own pid)."""
    try:
        _, stderr = process.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    return process.returncode, stderr


def _chain(workdir, points, deadline):
    """Start, killed at each point in turn, then once more to the end: `[(point, returncode,
    stderr)]`, the last with point None."""
    seen = []
    for point in [*points, None]:
        env = {"CGH_TF_KILL_AT": point} if point else {}
        seen.append((point, *_finish(_start(workdir, **env), deadline)))
        if seen[-1][1] != (-signal.SIGKILL if point else 0):
            break  # the next restarts would say nothing more
    return seen


def _concurrent(workdir, deadline):
    """A second start on `workdir` while the first holds it: the first is held after its first
    step until the second has ended (`CGH_TF_HANG_UNTIL`), so the two overlap however loaded the
    machine (two starts at once were not enough: the first could finish before the second's
    imports did, and both ended 0). `[(pid, returncode, stderr)] * 2`."""
    release = f"{workdir}.release"
    first = _start(workdir, CGH_TF_HANG_AT="train-step-1", CGH_TF_HANG_UNTIL=release)
    while (first.poll() is None and time.time() < deadline
           and f"pid {first.pid} " not in workdir_lock.holder(str(workdir))):
        time.sleep(0.1)
    second = _start(workdir)
    ended = _finish(second, deadline)
    open(release, "w").close()
    return [(first.pid, *_finish(first, deadline)), (second.pid, *ended)]


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory):
    """Starts every subprocess case in its own thread; `get(name)` waits for one's result."""
    root = tmp_path_factory.mktemp("faults")
    deadline = time.time() + DEADLINE_SECONDS
    jobs = {"reference": lambda: _finish(_start(root / "reference"), deadline),
            "concurrent": lambda: _concurrent(root / "concurrent", deadline),
            **{name: (lambda points=points, name=name: _chain(root / name, points, deadline))
               for name, points in CHAINS.items()}}
    results, threads = {}, []
    for name, job in jobs.items():
        thread = threading.Thread(target=lambda name=name, job=job: results.update({name: job()}))
        thread.start()
        threads.append(thread)

    def get(name):
        for thread in threads:
            thread.join(max(1.0, deadline - time.time()))
        return str(root / name), results[name]
    yield get
    for thread in threads:  # every process ends by the deadline (_finish kills it)
        thread.join(max(1.0, deadline + 30 - time.time()))


@pytest.fixture(scope="module", autouse=True)
def _start_subprocesses_first(subprocess_runs):
    """The subprocesses run while the in-process cases below train."""


# ----------------------------------------------------------- in process: damage and a full disk


def test_a_hang_ends_when_its_release_file_appears(tmp_path, monkeypatch):
    from cgh_tf import fault_injection

    release = tmp_path / "go"
    monkeypatch.setenv(fault_injection.HANG_VARIABLE, "here")
    monkeypatch.setenv(fault_injection.RELEASE_VARIABLE, str(release))
    monkeypatch.setattr(fault_injection, "HANG_SECONDS", 30.0)
    timer = threading.Timer(0.3, release.touch)
    started = time.monotonic()
    timer.start()
    fault_injection.point("here")
    assert 0.3 <= time.monotonic() - started < 10.0
    fault_injection.point("elsewhere")   # not a hang point: returns at once
    monkeypatch.setattr(fault_injection, "HANG_SECONDS", 0.2)
    release.unlink()
    started = time.monotonic()
    fault_injection.point("here")        # no release file: ends after HANG_SECONDS
    assert 0.2 <= time.monotonic() - started < 10.0


def _config(**fields):
    from configs import default

    return config_schema.apply_overrides(default.get_config(), {**TINY, **fields})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted in-process run keeping both checkpoints: (workdir, results.json bytes)."""
    workdir = str(tmp_path_factory.mktemp("inprocess") / "reference")
    train.train_and_evaluate(_config(keep_checkpoints=2), workdir, progress=False)
    assert [e for e, _ in run_state.list_checkpoints(workdir)] == [1, 2]
    return workdir, _bytes(os.path.join(workdir, outputs.RESULTS_FILE))


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _flip(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"garbage \xff\x00" * 9)


DATA, INDEX = "epoch-2.data-00000-of-00001", "epoch-2.index"
# The cases of issue 22 (every kind of damage is also in tests/test_checkpoints.py, cheaply).
DAMAGE = {"data truncated": (DATA, _truncate), "data byte flipped": (DATA, _flip),
          "index truncated": (INDEX, _truncate),
          "checkpoint file garbage": ("checkpoint", _garbage)}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_checkpoint_resumes_to_the_same_results(finished, tmp_path, caplog, case):
    reference, expected = finished
    workdir = str(tmp_path / "run")
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, outputs.RESULTS_FILE))
    name, damage = DAMAGE[case]
    damage(os.path.join(workdir, run_state.CHECKPOINT_DIR, name))
    caplog.set_level("INFO")
    train.train_and_evaluate(_config(keep_checkpoints=2), workdir, progress=False)
    assert _bytes(os.path.join(workdir, outputs.RESULTS_FILE)) == expected
    lines = [r.getMessage() for r in caplog.records if "checkpoint" in r.getMessage()]
    if name == "checkpoint":  # nothing lost: resumed from the newest, the index rebuilt
        assert any(l.endswith("rebuilt it from the checkpoints present (epoch-1, epoch-2)")
                   for l in lines), lines
        assert any(l.endswith("epoch-2 after epoch 2") for l in lines), lines
    else:
        (damaged,) = [l for l in lines if "is damaged" in l]
        assert "\n" not in damaged and damaged.endswith("trying the one before")
        assert any(l.endswith("epoch-1 after epoch 1") for l in lines), lines
        kept = os.listdir(os.path.join(workdir, run_state.CHECKPOINT_DIR, checkpoints.DAMAGED_DIR))
        assert len(kept) == 2  # both files of the damaged checkpoint kept, never deleted


class _FullDisk:
    """Writes that fail as on a full disk, switched on by `fill()` and off by `free()`.

    "tmpfs": a 2 MB tmpfs mounted at `path`, filled by a file (ENOSPC); where mounting is refused
    (no CAP_SYS_ADMIN) the file-size kind stands in, and the test says which ran.
    "file size": the process's file-size limit set to 0 (RLIMIT_FSIZE; SIGXFSZ ignored meanwhile),
    so every write to a regular file fails (EFBIG) until `free()` restores the limit; no
    subprocess of this module starts meanwhile (`_SPAWN`: it would inherit both).
    """

    def __init__(self, kind, path):
        os.makedirs(path)
        self.path, self.kind, self.filler, self.saved = str(path), kind, None, None
        if kind == "tmpfs" and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", self.path],
                capture_output=True).returncode:
            self.kind = "file size"

    def fill(self):
        if self.kind == "tmpfs":
            self.filler = _fill(self.path)
        else:
            _SPAWN.acquire()
            self.saved = (signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
                          resource.getrlimit(resource.RLIMIT_FSIZE))
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, self.saved[1][1]))

    def free(self):
        if self.filler:
            os.remove(self.filler)
        elif self.saved:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.saved[1])
            signal.signal(signal.SIGXFSZ, self.saved[0])
            _SPAWN.release()
        self.filler = self.saved = None

    def unmount(self):
        self.free()
        if self.kind == "tmpfs":
            subprocess.run(["umount", "--lazy", self.path], check=True)  # files TF left open


def _fill(directory):
    """Write a file into `directory` until its filesystem is full; returns its path."""
    path = os.path.join(directory, "filler")
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    return path


@pytest.mark.parametrize("kind", ["tmpfs", "file size"])
def test_a_full_disk_during_a_save_is_one_line_and_loses_nothing(finished, tmp_path,
                                                                  monkeypatch, kind):
    _, expected = finished
    real_save = run_state.RunState.save
    disk = _FullDisk(kind, tmp_path / "disk")

    def save_on_a_full_disk(self, epoch, record):
        if epoch != 2:
            return real_save(self, epoch, record)
        disk.fill()
        try:
            return real_save(self, epoch, record)
        finally:
            if disk.kind == "file size":
                disk.free()  # the limit would also stop the test's own files

    try:
        workdir = os.path.join(disk.path, "run")
        monkeypatch.setattr(run_state.RunState, "save", save_on_a_full_disk)
        with pytest.raises(checkpoints.CheckpointSaveError) as error:
            train.train_and_evaluate(_config(keep_checkpoints=2), workdir, progress=False)
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"saving checkpoint {workdir}/checkpoints/epoch-2 failed (")
        assert message.endswith("); the earlier checkpoints are intact")
        directory = os.path.join(workdir, run_state.CHECKPOINT_DIR)
        assert [e for e, _ in run_state.list_checkpoints(workdir)] == [1]
        assert not [f for f in os.listdir(directory) if f.startswith(".staging")]
        assert checkpoints.verify(os.path.join(directory, "epoch-1")) is None
        assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))  # released
        disk.free()  # space freed: the same command resumes
        monkeypatch.setattr(run_state.RunState, "save", real_save)
        train.train_and_evaluate(_config(keep_checkpoints=2), workdir, progress=False)
        assert _bytes(os.path.join(workdir, outputs.RESULTS_FILE)) == expected
    finally:
        disk.unmount()


# ------------------------------------------------------------- subprocesses: kills, two starts


def test_the_reference_run_finishes(subprocess_runs):
    workdir, (code, stderr) = subprocess_runs("reference")
    assert code == 0, stderr[-3000:]


@pytest.mark.parametrize("chain", CHAINS)
def test_sigkill_at_every_point_resumes_to_byte_identical_results(subprocess_runs, chain):
    reference, _ = subprocess_runs("reference")
    workdir, seen = subprocess_runs(chain)
    for point, code, stderr in seen[:-1]:
        assert code == -signal.SIGKILL, f"{point}: not killed there: {stderr[-3000:]}"
    assert [p for p, _, _ in seen] == [*CHAINS[chain], None]
    assert seen[-1][1] == 0, seen[-1][2][-3000:]
    assert "Traceback" not in "".join(stderr for _, _, stderr in seen)
    assert (_bytes(os.path.join(workdir, outputs.RESULTS_FILE))
            == _bytes(os.path.join(reference, outputs.RESULTS_FILE)))
    # No staging directory, nothing set aside, every file part of a present checkpoint (a kill
    # before rotation may leave the previous one: the next save drops it).
    files = os.listdir(os.path.join(workdir, run_state.CHECKPOINT_DIR))
    prefixes = {os.path.basename(p) for _, p in run_state.list_checkpoints(workdir)}
    assert {f.split(".")[0] for f in files} == prefixes | {"checkpoint"}
    assert {"epoch-2"} <= prefixes


def test_two_concurrent_starts_one_refused_in_one_line_the_other_finishes(subprocess_runs):
    reference, _ = subprocess_runs("reference")
    workdir, starts = subprocess_runs("concurrent")
    (winner, _, won), = [s for s in starts if s[1] == 0]
    (_, code, refused), = [s for s in starts if s[1] != 0]
    assert code == 1, refused[-3000:]
    line = refused.rstrip().splitlines()[-1]
    assert line.startswith(f"error: workdir {workdir} is in use by trainer (train) pid {winner} "
                           f"on host ")
    assert "Traceback" not in refused
    assert (_bytes(os.path.join(workdir, outputs.RESULTS_FILE))
            == _bytes(os.path.join(reference, outputs.RESULTS_FILE)))
