"""Checkpoints that survive kills, damage and full disks: a directory of numbered `tf.train.Checkpoint`s.

    store = checkpoints.CheckpointStore(directory, tf.train.Checkpoint(model=model, ...), "epoch", keep=2)
    found = store.newest_intact()            # (number, prefix) or None; damaged ones reported, set aside
    if found: store.restore(found[1])
    ...
    store.save(number)                       # CheckpointSaveError (one line) if it fails

A checkpoint `NAME-N` is the files `NAME-N.index` and `NAME-N.data-*` (TF's bundle format); the
directory's `checkpoint` file lists them for TF's own tools (`tf.train.latest_checkpoint`).

| concern          | rule                                                                        |
|------------------|-----------------------------------------------------------------------------|
| save             | `tf.train.Checkpoint.write` into `.staging-NAME-N-<pid>/`, fsync, rename the data files then the `.index` into the directory, then rewrite the `checkpoint` file atomically, then drop the oldest beyond `keep` |
| present          | a checkpoint is present when its `.index` is: renamed last, so a kill never leaves a present half |
| failed save      | (disk full, permissions) the staging directory is removed and `CheckpointSaveError` says in one line which checkpoint, where and why; the earlier checkpoints are untouched |
| killed save      | leaves only `.staging-*-<pid>/`, removed by the next store whose pid is dead |
| verify           | `verify(prefix)`: the index read with `tf.train.load_checkpoint` and every tensor read (TF checks each tensor's CRC32C): the reason it is unreadable, or None |
| restore          | newest first, each verified; a damaged one is reported in one line and moved to `damaged/` (never deleted) and the next older one tried |
| `checkpoint` file| rebuilt from the checkpoints present when it does not read as TF's format (reported) or lists others |
| rotation         | after a save, present checkpoints numbered below the new one beyond the newest `keep` are deleted (`.index` first) |
| modes            | files as the umask says (TF's writer and `cgh_tf.atomic_files`) |

Single writer: the store assumes one process writes the directory (`cgh_tf.workdir_lock`).
"""

import contextlib
import os
import re
import shutil
import time

import tensorflow as tf
from absl import logging

from cgh_tf import fault_injection
from cgh_tf.atomic_files import atomic_open

INDEX_FILE = "checkpoint"
DAMAGED_DIR = "damaged"
_STAGING = ".staging-"
_INDEX_LINE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths): "[^"\n]*"$|'
                         r'^(all_model_checkpoint_timestamps|last_preserved_timestamp): [0-9.e+-]+$')


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (message: one line; earlier checkpoints are intact)."""


def verify(prefix: str):
    """None if the checkpoint at `prefix` reads completely (index, every tensor with its
    checksum); else one line saying why not."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in sorted(reader.get_variable_to_dtype_map()):
            reader.get_tensor(key)
    except Exception as error:  # noqa: BLE001 -- any failure to read is damage, reported in one line
        return _one_line(error)
    return None


def present(directory: str, name: str) -> list:
    """`[(number, prefix), ...]` of the checkpoints `name-N` whose `.index` is in `directory`,
    oldest first (not verified)."""
    pattern = re.compile(rf"^{re.escape(name)}-(\d+)\.index$")
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, m.group(0)[:-len(".index")]))
             for m in map(pattern.match, entries) if m]
    return sorted(found)


class CheckpointStore:
    """The numbered checkpoints `name-N` of `checkpoint` (a `tf.train.Checkpoint`) in `directory`.

    keep: how many to keep (the newest); report: where one-line warnings go (damage, rebuilt index).
    """

    def __init__(self, directory: str, checkpoint, name: str = "ckpt", keep: int = 1,
                 report=logging.warning):
        if int(keep) < 1:
            raise ValueError(f"keep={keep!r}: a store keeps at least 1 checkpoint")
        self.directory, self.checkpoint, self.name = directory, checkpoint, name
        self.keep, self.report = int(keep), report

    def present(self) -> list:
        """`[(number, prefix)]` of the checkpoints present, oldest first (not verified)."""
        return present(self.directory, self.name)

    def newest_intact(self, at_most=None):
        """`(number, prefix)` of the newest checkpoint numbered ≤ `at_most` (None: any) that
        `verify` accepts, or None.

        Each newer damaged one is reported in one line and moved to `directory/damaged/`; a
        `checkpoint` file that does not list what is present is rebuilt."""
        self._remove_dead_staging()
        found = None
        for number, prefix in reversed(self.present()):
            if at_most is not None and number > at_most:
                continue
            reason = verify(prefix)
            if reason is None:
                found = (number, prefix)
                break
            kept = self._set_aside(prefix)
            self.report(f"checkpoint {prefix} is damaged ({reason}); moved to {kept}, "
                        f"trying the one before")
        self._sync_index()
        return found

    def restore(self, prefix: str) -> None:
        """Load the checkpoint at `prefix`; every object saved in it must find its variable."""
        self.checkpoint.restore(prefix).assert_existing_objects_matched()

    def save(self, number: int) -> str:
        """Write checkpoint `name-number` (replacing one of that number), update the `checkpoint`
        file, drop the oldest beyond `keep`; its prefix. CheckpointSaveError on failure."""
        prefix = os.path.join(self.directory, f"{self.name}-{int(number)}")
        staging = os.path.join(self.directory, f"{_STAGING}{self.name}-{int(number)}-{os.getpid()}")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            self.checkpoint.save_counter  # created now, as `restore` creates it: both match
            written = self.checkpoint.write(os.path.join(staging, os.path.basename(prefix)))
            fault_injection.point(f"save-{int(number)}-staged")
            self._install(written, prefix, int(number))
        except Exception as error:  # noqa: BLE001 -- disk full, permissions, ...: one line
            shutil.rmtree(staging, ignore_errors=True)
            raise CheckpointSaveError(f"saving checkpoint {prefix} failed ({_one_line(error)}); "
                                      f"the earlier checkpoints are intact") from error
        shutil.rmtree(staging, ignore_errors=True)
        self._sync_index()
        fault_injection.point(f"save-{int(number)}-listed")
        self._rotate(int(number))
        return prefix

    def _install(self, written: str, prefix: str, number: int) -> None:
        """Move the staged files of `written` to `prefix`: data files first, the index last."""
        staged = sorted(f for f in os.listdir(os.path.dirname(written))
                        if f.startswith(os.path.basename(written) + "."))
        staged.sort(key=lambda f: f.endswith(".index"))
        for file in staged:
            if file.endswith(".index"):
                _fsync_directory(self.directory)
                fault_injection.point(f"save-{number}-data-installed")
            source = os.path.join(os.path.dirname(written), file)
            with open(source, "rb") as f:
                os.fsync(f.fileno())
            os.replace(source, prefix + file[len(os.path.basename(written)):])
        _fsync_directory(self.directory)
        fault_injection.point(f"save-{number}-index-installed")

    def _rotate(self, newest: int) -> None:
        older = [(n, p) for n, p in self.present() if n < newest]
        for _, prefix in older[:max(0, len(older) - (self.keep - 1))]:
            _remove_checkpoint(prefix)
        if older:
            self._sync_index()

    def _set_aside(self, prefix: str) -> str:
        """Move every file of `prefix` to `damaged/<name>.<unix time>`; the new prefix."""
        target = os.path.join(self.directory, DAMAGED_DIR,
                              f"{os.path.basename(prefix)}.{time.time_ns()}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        for file in _files_of(prefix):
            os.replace(file, target + file[len(prefix):])
        return target

    def _sync_index(self) -> None:
        """Rewrite the `checkpoint` file unless it lists exactly the checkpoints present."""
        path = os.path.join(self.directory, INDEX_FILE)
        found = [os.path.basename(p) for _, p in self.present()]
        wanted = "".join([f'model_checkpoint_path: "{found[-1]}"\n'] if found else []) + "".join(
            f'all_model_checkpoint_paths: "{name}"\n' for name in found)
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            text = None
        if text == wanted or (text is None and not found):
            return
        if text is not None and not all(_INDEX_LINE.match(line) for line in text.splitlines()):
            self.report(f"{path} was not a checkpoint index; rebuilt it from the checkpoints "
                        f"present ({', '.join(found) or 'none'})")
        if found:
            with atomic_open(path, "w") as f:
                f.write(wanted)
        else:
            os.remove(path)

    def _remove_dead_staging(self) -> None:
        """Remove the staging directories of saves whose process no longer runs (killed)."""
        pattern = re.compile(rf"^{re.escape(_STAGING)}.*-(\d+)$")
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.directory):
                match = pattern.match(entry)
                if match and not _alive(int(match.group(1))):
                    shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)


def _files_of(prefix: str) -> list:
    directory, base = os.path.split(prefix)
    return [os.path.join(directory, f) for f in sorted(os.listdir(directory))
            if f == base + ".index" or f.startswith(base + ".data-")]


def _remove_checkpoint(prefix: str) -> None:
    """Delete a checkpoint's files, the index first (a kill leaves no present half)."""
    files = _files_of(prefix)
    files.sort(key=lambda f: not f.endswith(".index"))
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(error) -> str:
    """`TypeName: first line of the message` (TF's messages run over many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
