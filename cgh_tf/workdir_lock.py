"""One writer per workdir: an advisory `fcntl.flock` on `WORKDIR/.cgh_tf.lock`, held for a run's life.

    with workdir_lock.hold(workdir, "trainer"):   # WorkdirBusy (one line) if another process holds it
        ...                                       # train, write results

| property            | how                                                                       |
|---------------------|---------------------------------------------------------------------------|
| refusal             | `WorkdirBusy`, one line naming the holder: what, pid, host, start time (UTC) |
| `kill -9`           | the OS drops a dead process's flock, so no stale lock is ever left: the next start takes it |
| leftover file       | after a kill the file stays (with the dead holder's line); it means nothing without the flock |
| clean exit          | the lock file is removed; so is the workdir if this lock created it and it is empty (a config error raised inside the block leaves no trace) |
| replaced file       | a lock taken on a file that was meanwhile unlinked (the holder exited) is retaken on the new one (inode check) |

Advisory: only processes that take the lock are kept out. `flock` works on local filesystems and
on NFS v4 (Linux emulates it with POSIX locks there); it is not for several hosts sharing a
filesystem without lock support.
"""

import contextlib
import datetime
import fcntl
import os
import socket

LOCK_FILE = ".cgh_tf.lock"


class WorkdirBusy(RuntimeError):
    """Another live process holds the workdir's lock (message: one line naming it)."""


class BadWorkdir(ValueError):
    """The workdir given is empty (it would silently be the current directory)."""


@contextlib.contextmanager
def hold(workdir: str, what: str = "run"):
    """Hold the lock of `workdir` (created if missing) for the `with` block; `what` names this
    process in the lock file (e.g. "trainer", "experiment depth_width"). Raises `WorkdirBusy`,
    or `BadWorkdir` for an empty path."""
    if not os.fspath(workdir):
        raise BadWorkdir("the workdir is empty (''); give a directory, e.g. --workdir=/tmp/run")
    workdir = os.path.abspath(os.fspath(workdir))
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = _acquire(path, workdir)
    try:
        _write_holder(fd, what)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # while still holding it: a waiter then retakes the new file
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # only if empty
                os.rmdir(workdir)


def holder(workdir: str) -> str:
    """The line of the process that holds (or last held) the lock of `workdir`; "" if none."""
    try:
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _acquire(path: str, workdir: str) -> int:
    """A descriptor of `path` holding its exclusive flock; WorkdirBusy if a live process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirBusy(f"workdir {workdir} is in use by {holder(workdir) or 'another process'}"
                              f"; wait for it to finish, stop it, or choose another workdir") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder removed this file as it exited: take the current one


def _same_file(fd: int, path: str) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _write_holder(fd: int, what: str) -> None:
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    line = f"{what} pid {os.getpid()} on host {socket.gethostname()} since {started}\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, line.encode(), 0)
