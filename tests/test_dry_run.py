"""`--dry_run` validates every arm of every experiment, writes plan.json and trains nothing."""

import json
import os
import subprocess
import sys

import pytest

from trainers import catalog, reproduce, runner, single_run, train
from trainers import beyond_common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_training(monkeypatch):
    """Every way an arm could train raises instead."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run trained something")

    monkeypatch.setattr(runner, "run", refuse)
    monkeypatch.setattr(train, "train_and_evaluate", refuse)
    monkeypatch.setattr(single_run, "run", refuse, raising=False)
    monkeypatch.setattr(beyond_common, "Checkpointer", refuse)


@pytest.mark.parametrize("name", catalog.NAMES)
def test_dry_run_plans_every_arm_and_trains_nothing(name, tmp_path, no_training):
    lines = []
    assert reproduce.reproduce(name, str(tmp_path), dry_run=True, echo=lines.append) is None
    assert os.listdir(tmp_path) == [runner.PLAN_FILE]
    plan = json.loads((tmp_path / runner.PLAN_FILE).read_text())
    assert plan["experiment"] == name
    seeds = {int(path.rsplit("seed", 1)[1]) for path in plan["arms"]}
    assert seeds == set(range(max(3, len(seeds))))   # default: at least 3 seeds
    assert lines == [f"{len(plan['arms'])} arms validated; configs in "
                     f"{tmp_path / runner.PLAN_FILE}"]


@pytest.mark.parametrize("name", ["double_descent", "grokking", "memorisation"])
def test_dry_run_takes_seeds_and_set_like_a_run_and_rejects_bad_ones(name, tmp_path,
                                                                     no_training):
    field = {"memorisation": "num_epochs", "grokking": "steps"}.get(name, "epochs")
    reproduce.reproduce(name, str(tmp_path), seeds=1, set_items=[f"{field}=2"], dry_run=True,
                        echo=None or (lambda line: None))
    plan = json.loads((tmp_path / runner.PLAN_FILE).read_text())
    assert all(path.endswith("seed0") for path in plan["arms"])
    assert all(arm["config"][field] == 2 for arm in plan["arms"].values())
    with pytest.raises(ValueError, match="seeds=0 must be a positive int"):
        reproduce.reproduce(name, str(tmp_path / "bad"), seeds=0, dry_run=True)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_cli_dry_run_of_scale_trains_nothing(tmp_path):
    """The bug of issue 23: `--experiment=scale --dry_run` trained the whole experiment."""
    done = subprocess.run([sys.executable, "-m", "trainers.reproduce", "--experiment=scale",
                           f"--workdir={tmp_path}", "--dry_run"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "arms validated" in done.stdout
    assert os.listdir(tmp_path) == [runner.PLAN_FILE]
