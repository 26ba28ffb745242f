"""benchmarks/memory.py: one `--one` configuration on the tiny model prints a parsable result.

No memory or time thresholds: only that the measurement runs and reports numbers.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "memory.py")


def test_one_configuration_prints_a_parsable_peak():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, SCRIPT, "--one", "coherence", "mlp", "--model=tiny", "--steps=2", "--warmup=1"],
        env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out.stdout
    result = json.loads(lines[0][len("RESULT "):])
    assert (result["mode"], result["model"], result["params"]) == ("coherence", "tiny", 8 * 16 + 16 + 16 * 10 + 10)
    for key in ("step_extra_mb", "run_extra_mb", "peak_rss_mb"):
        assert isinstance(result[key], float), (key, result)
    assert result["peak_rss_mb"] > 0
