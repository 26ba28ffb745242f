"""`benchmarks/accelerator_check.py` on this CPU-only machine, in a subprocess with a deadline.

Without a GPU or TPU it must say so in one line and exit 0; `--force_cpu` runs the same checks on
the CPU (one replica, XLA) with the tiny model and must print PASS lines and exit 0. The GPU is
hidden (`CUDA_VISIBLE_DEVICES=""`) and `TPU_NAME` removed, so the result is the same anywhere.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_SECONDS = 240  # ≈ 25 s each on 2 quiet cores; the deadline allows for a loaded machine


def run_check(*args):
    env = {key: value for key, value in os.environ.items() if key != "TPU_NAME"}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=DEADLINE_SECONDS)


def test_without_gpu_or_tpu_it_says_so_and_exits_0():
    result = run_check()
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "no GPU or TPU" in lines[0], result.stdout


def test_force_cpu_runs_every_check_and_passes():
    result = run_check("--force_cpu", "--steps=2", "--model=tiny", "--rounds=1")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    passed = [line for line in result.stdout.splitlines() if line.startswith("PASS")]
    modes = {line.split("  ")[1].strip() for line in passed}
    assert modes == {"SGD", "M3 in-batch", "M3 in-batch, dynamic", "M3 consecutive", "RM3",
                     "coherence_every=1"}, result.stdout
    assert "FAIL" not in result.stdout
    assert "RM3 / SGD" in result.stdout and "all checks PASS" in result.stdout
