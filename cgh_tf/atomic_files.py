"""The one atomic file writer of the package and its trainers: temp file + fsync + `os.replace`.

A reader sees the old content or the new, never a part: on an exception the temp file is removed
and `path` keeps its previous content; after a kill the temp file stays as `.<name>.tmp-*`, which
readers ignore. The file gets the mode a plain `open` would give it (0666 less the process'
umask; `mkstemp` alone gives 0600, which collaborators on a shared filesystem cannot read).
"""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **open_kwargs):
    """Open a temp file next to `path` (its directory created if missing); on success fsync it
    and `os.replace` it onto `path`. `mode` "w" or "wb"; `open_kwargs` go to `open` (e.g.
    `newline=""`)."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def current_umask() -> int:
    """The process' umask (from /proc/self/status on Linux; else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
