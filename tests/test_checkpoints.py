"""`cgh_tf.checkpoints.CheckpointStore`: staged saves, verification against TF's checksums,
damaged checkpoints reported and set aside (never deleted), the `checkpoint` file rebuilt, a failed
save in one line; real `tf.train.Checkpoint` files in a temporary directory."""

import os
import stat

import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import checkpoints


class Run:
    """A checkpoint of two variables whose values say which save they are (`set(n)`)."""

    def __init__(self, directory, keep=2):
        self.w = tf.Variable(np.zeros([64, 8], np.float32))
        self.step = tf.Variable(0, dtype=tf.int64)
        self.reports = []
        self.store = checkpoints.CheckpointStore(
            str(directory), tf.train.Checkpoint(w=self.w, step=self.step), "epoch", keep=keep,
            report=self.reports.append)

    def set(self, n):
        self.w.assign(np.full([64, 8], n, np.float32))
        self.step.assign(n)

    def save(self, n):
        self.set(n)
        return self.store.save(n)


def _numbers(store):
    return [n for n, _ in store.present()]


@pytest.fixture
def run(tmp_path):
    run = Run(tmp_path / "ckpt")
    for n in (1, 2, 3):
        run.save(n)
    return run


def test_saves_keep_the_newest_and_tf_reads_the_index(run):
    assert _numbers(run.store) == [2, 3]
    directory = run.store.directory
    assert sorted(os.listdir(directory)) == ["checkpoint", "epoch-2.data-00000-of-00001",
                                             "epoch-2.index", "epoch-3.data-00000-of-00001",
                                             "epoch-3.index"]  # no staging left
    assert tf.train.latest_checkpoint(directory) == os.path.join(directory, "epoch-3")
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["epoch-2", "epoch-3"]
    run.set(0)
    found = run.store.newest_intact()
    run.store.restore(found[1])
    assert found[0] == 3 and int(run.step.numpy()) == 3 and float(run.w.numpy()[5, 5]) == 3.0
    assert run.reports == []


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 3)  # inside w's values
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"\x00not a checkpoint\xff" * 5)


DAMAGE = {
    "data truncated": (".data-00000-of-00001", _truncate),
    "data byte flipped": (".data-00000-of-00001", _flip_byte),
    "data replaced": (".data-00000-of-00001", _garbage),
    "data deleted": (".data-00000-of-00001", os.remove),
    "index truncated": (".index", _truncate),
    "index byte flipped": (".index", _flip_byte),
    "index replaced": (".index", _garbage),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_newest_checkpoint_is_reported_set_aside_and_the_one_before_used(run, case):
    suffix, damage = DAMAGE[case]
    newest = os.path.join(run.store.directory, "epoch-3")
    damage(newest + suffix)
    damaged_files = {f: open(os.path.join(run.store.directory, f), "rb").read()
                     for f in os.listdir(run.store.directory) if f.startswith("epoch-3.")}
    assert checkpoints.verify(newest) is not None
    assert checkpoints.verify(os.path.join(run.store.directory, "epoch-2")) is None

    found = run.store.newest_intact()
    assert found == (2, os.path.join(run.store.directory, "epoch-2"))
    run.store.restore(found[1])
    assert int(run.step.numpy()) == 2 and float(run.w.numpy()[0, 0]) == 2.0
    (line,) = run.reports
    assert "\n" not in line and line.startswith(f"checkpoint {newest} is damaged (")
    assert "moved to" in line and line.endswith("trying the one before")
    # Never deleted: every byte of the damaged checkpoint is kept under damaged/.
    aside = os.path.join(run.store.directory, checkpoints.DAMAGED_DIR)
    (kept,) = {f.split(".")[0] + "." + f.split(".")[1] for f in os.listdir(aside)}
    for name, content in damaged_files.items():
        assert open(os.path.join(aside, kept + name[len("epoch-3"):]), "rb").read() == content
    assert _numbers(run.store) == [2]
    assert tf.train.latest_checkpoint(run.store.directory).endswith("epoch-2")
    # Training on saves epoch 3 again; the damaged copy stays aside.
    run.save(3)
    assert _numbers(run.store) == [2, 3] and len(os.listdir(aside)) == len(damaged_files)


def test_every_checkpoint_damaged_gives_none_and_keeps_them_all(run):
    for n in (2, 3):
        _truncate(os.path.join(run.store.directory, f"epoch-{n}.data-00000-of-00001"))
    assert run.store.newest_intact() is None
    assert len(run.reports) == 2
    assert len(os.listdir(os.path.join(run.store.directory, checkpoints.DAMAGED_DIR))) == 4
    assert not os.path.exists(os.path.join(run.store.directory, "checkpoint"))


def test_a_garbage_checkpoint_file_is_rebuilt_from_the_files_present(run):
    index = os.path.join(run.store.directory, "checkpoint")
    _garbage(index)
    found = run.store.newest_intact()
    assert found[0] == 3
    assert _numbers(run.store) == [2, 3]  # nothing deleted, nothing restarted
    (line,) = run.reports
    assert line == (f"{index} was not a checkpoint index; rebuilt it from the checkpoints "
                    f"present (epoch-2, epoch-3)")
    assert tf.train.latest_checkpoint(run.store.directory).endswith("epoch-3")
    run.reports.clear()
    os.remove(index)  # missing: rebuilt without a report
    run.store.newest_intact()
    assert os.path.exists(index) and run.reports == []


def test_a_failed_save_is_one_line_and_leaves_no_half_written_files(run, monkeypatch):
    directory = run.store.directory
    before = {f: open(os.path.join(directory, f), "rb").read() for f in os.listdir(directory)}
    real_write = run.store.checkpoint.write

    def write_then_fail(prefix):  # a part written, then the disk is full
        real_write(prefix)
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device\nmore lines")
    monkeypatch.setattr(run.store.checkpoint, "write", write_then_fail)
    with pytest.raises(checkpoints.CheckpointSaveError) as error:
        run.save(4)
    assert str(error.value) == (f"saving checkpoint {directory}/epoch-4 failed "
                                f"(ResourceExhaustedError: No space left on device); the earlier "
                                f"checkpoints are intact")
    after = {f: open(os.path.join(directory, f), "rb").read() for f in os.listdir(directory)}
    assert after == before


def test_the_staging_directory_of_a_killed_save_is_removed_that_of_a_live_one_kept(run):
    dead = os.path.join(run.store.directory, ".staging-epoch-4-999999999")
    live = os.path.join(run.store.directory, f".staging-epoch-4-{os.getppid()}")
    for path in (dead, live):
        os.makedirs(path)
        open(os.path.join(path, "epoch-4.index"), "wb").close()
    assert run.store.newest_intact()[0] == 3
    assert not os.path.exists(dead) and os.path.exists(live)
    assert _numbers(run.store) == [2, 3]


def test_files_are_as_readable_as_the_umask_says(tmp_path):
    old = os.umask(0o027)
    try:
        run = Run(tmp_path / "ckpt")
        run.save(1)
    finally:
        os.umask(old)
    modes = {f: stat.S_IMODE(os.stat(os.path.join(run.store.directory, f)).st_mode)
             for f in os.listdir(run.store.directory)}
    assert modes == {"checkpoint": 0o640, "epoch-1.index": 0o640,
                     "epoch-1.data-00000-of-00001": 0o640}


def test_keep_below_one_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="keeps at least 1"):
        checkpoints.CheckpointStore(str(tmp_path), None, keep=0)
