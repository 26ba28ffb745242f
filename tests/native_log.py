"""TensorFlow's own C++ log lines in a subprocess' stderr, which are not the program's output:
"E0000 00:00:…" (TF >= 2.19), "2026-12-07 23:23:05.833422: E external/…" (TF 2.18) and absl's
"WARNING: All log messages before …"."""

import re

NATIVE_LOG = re.compile(r"[IWEF]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [IWEF] |WARNING: All log messages")


def program_lines(stderr: str) -> list:
    """The lines of `stderr` that are not TensorFlow's native log lines."""
    return [line for line in stderr.splitlines() if not NATIVE_LOG.match(line)]
