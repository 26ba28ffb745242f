"""`--dry_run` validates every arm of every experiment, writes plan.json and trains nothing."""

import json
import os
import subprocess
import sys

import pytest

from configs import default
from trainers import beyond_common
from trainers import catalog, config_schema, dry_run, experiment, factories, reproduce, runner
from trainers import single_run, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_training(monkeypatch):
    """Every way an arm could train raises instead."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run trained something")

    monkeypatch.setattr(runner, "run", refuse)
    monkeypatch.setattr(train, "train_and_evaluate", refuse)
    monkeypatch.setattr(single_run, "run", refuse, raising=False)
    monkeypatch.setattr(beyond_common.Checkpointer, "__init__", refuse)  # its checks still read


FAKE_TIMING = {"warmup": 2.0, "step": 0.01, "eval": 0.002, "scale": 1.0}


@pytest.fixture
def fake_timer(monkeypatch):
    """`dry_run.time_updates` returning `FAKE_TIMING` (the real one is tested once, below);
    records the configs it was asked to time."""
    timed = []

    def fake(config):
        timed.append(config)
        return FAKE_TIMING

    monkeypatch.setattr(dry_run, "time_updates", fake)
    return timed


@pytest.mark.parametrize("name", catalog.NAMES)
def test_dry_run_plans_every_arm_and_trains_nothing(name, tmp_path, no_training, fake_timer):
    lines = []
    assert reproduce.reproduce(name, str(tmp_path), dry_run=True, echo=lines.append) is None
    assert os.listdir(tmp_path) == [dry_run.PLAN_FILE]
    plan = json.loads((tmp_path / dry_run.PLAN_FILE).read_text())
    assert plan["experiment"] == name
    seeds = {int(path.rsplit("seed", 1)[1]) for path in plan["arms"]}
    assert seeds == set(range(max(3, len(seeds))))   # default: at least 3 seeds
    groups = {path.rsplit("/", 1)[0] for path in plan["arms"]}
    assert lines[0] == (f"{len(plan['arms'])} arms validated; configs in "
                        f"{tmp_path / dry_run.PLAN_FILE}")
    assert lines[1].startswith(f"{len(plan['arms'])} arms: {len(groups)} "
                               f"group{'s' * (len(groups) > 1)} × {len(seeds)} seeds")
    assert lines[-2].startswith("  groups: ")
    assert set(lines[-2][len("  groups: "):].split(", ")) == groups
    if catalog.declared(name).loop == "fit":  # trainer configs: timed (here: faked), per shape
        assert lines[-1].startswith("estimated time: ") and "timed in memory" in lines[-1]
        assert 0 < len(fake_timer) < len(plan["arms"])
    elif os.path.exists(dry_run.published_path(name)):  # the published run's training seconds
        assert lines[-1].startswith("estimated time: ") and "published run" in lines[-1]
        assert fake_timer == []
    else:
        assert lines[-1].startswith("estimated time: unknown (no earlier timings.json")
        assert fake_timer == []


def test_published_seconds_are_split_over_the_groups_seeds_and_used_only_unchanged(tmp_path):
    arms, _ = catalog.plan("double_descent", seeds=2)
    groups = list(dict.fromkeys(arm.group for arm in arms))
    published = tmp_path / "results.json"
    published.write_text(json.dumps({"training_seconds": {groups[0]: 90.0},
                                     "groups": {groups[0]: {"seeds": [0, 1, 2]}}}))
    first = [arm for arm in arms if arm.group == groups[0]]
    found = dry_run.estimate(first, None, published=str(published))
    assert found.seconds == 2 * 30.0 and "published run" in found.source
    assert dry_run.estimate(arms, None, published=str(published)).seconds is None  # a group lacks it
    lines = []
    reproduce.reproduce("double_descent", str(tmp_path / "w"), seeds=1, set_items=["epochs=2"],
                        dry_run=True, echo=lines.append)
    assert "published run" not in lines[-1]   # --set: the published setting's cost does not apply


@pytest.mark.parametrize("name", ["double_descent", "grokking", "memorisation"])
def test_dry_run_takes_seeds_and_set_like_a_run_and_rejects_bad_ones(name, tmp_path,
                                                                     no_training, fake_timer):
    field = {"memorisation": "num_epochs", "grokking": "steps"}.get(name, "epochs")
    reproduce.reproduce(name, str(tmp_path), seeds=1, set_items=[f"{field}=2"], dry_run=True,
                        echo=None or (lambda line: None))
    plan = json.loads((tmp_path / dry_run.PLAN_FILE).read_text())
    assert all(path.endswith("seed0") for path in plan["arms"])
    assert all(arm["config"][field] == 2 for arm in plan["arms"].values())
    with pytest.raises(ValueError, match="seeds=0 must be a positive int"):
        reproduce.reproduce(name, str(tmp_path / "bad"), seeds=0, dry_run=True)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("arm_dir", [False, True])
def test_a_dry_run_into_another_run_s_workdir_is_refused_and_writes_nothing(tmp_path, arm_dir,
                                                                           no_training):
    """The check `runner.run` makes first (was: plan.json written beside another experiment's
    report, or over an arm directory of another config, and a run then refused)."""
    from trainers import outputs

    if arm_dir:
        outputs.write_json(tmp_path / "mnist1d" / "width0004" / "seed0" / "results.json", {
            "config": {"epochs": 7}, "curves": {}, "finished": True, "summary": {}})
    else:
        outputs.write_json(tmp_path / "results.json", {"experiment": "scale", "groups": {}})
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(config_schema.ConfigError, match=r"holds the finished results of a run "
                       r"with a different config" if arm_dir else r"holds the results of "
                       r"experiment 'scale'; use another workdir for double_descent"):
        reproduce.reproduce("double_descent", str(tmp_path), seeds=1, dry_run=True,
                            set_items=["widths=(4,)", "dataset=mnist1d"], echo=None)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
def test_cli_dry_run_of_scale_trains_nothing(tmp_path):
    """The bug of issue 23: `--experiment=scale --dry_run` trained the whole experiment."""
    done = subprocess.run([sys.executable, "-m", "trainers.reproduce", "--experiment=scale",
                           f"--workdir={tmp_path}", "--dry_run"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "arms validated" in done.stdout
    assert "  groups: " in done.stdout  # the grid, then the estimate's line with its source
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("estimated time: ")
    assert ("published run" in last if os.path.exists(dry_run.published_path("scale"))
            else last.startswith("estimated time: unknown (no earlier"))
    assert os.listdir(tmp_path) == [dry_run.PLAN_FILE]


def _arm(config, group="run", seed=0):
    return experiment.Arm(group, group, "", seed, config)


def _default(**fields):
    config = default.get_config()
    for field, value in fields.items():
        config[field] = value
    return config


def test_estimate_is_the_timed_steps_times_the_run_s_batches(fake_timer):
    config = _default(num_epochs=2, max_train=1000, batch_size=64)
    estimate = dry_run.estimate([_arm(config)], None)
    # 1000 / 64 -> 16 batches; evaluation: 1000 train + 1000 test examples -> 32 batches of 64
    assert estimate.seconds == pytest.approx(2.0 + 2 * (16 * 0.01 + 32 * 0.002))
    assert estimate.source == ("estimated time: 2 s (1 arm from training steps timed in memory "
                               "for each of 1 model/optimizer shape; checkpoints, coherence "
                               "monitor and learning times not counted)")
    other_seed = _default(num_epochs=2, max_train=1000, batch_size=64, seed=5)
    dry_run.estimate([_arm(config), _arm(other_seed, seed=5)], None)
    assert len(fake_timer) == 2  # the seed changes no cost: timed once per call above


def test_a_feature_field_left_at_its_default_shares_the_timing_of_one_spelled_out(fake_timer):
    """A config without `coherence.training` costs what one with its default costs: one timing
    (was: two, the absent field keyed as None)."""
    spelled_out = _default()
    lacking = _default()
    del lacking.coherence["training"]
    assert "training" not in lacking.coherence and "training" in spelled_out.coherence
    dry_run.estimate([_arm(spelled_out, "a", 0), _arm(lacking, "b", 0)], None)
    assert len(fake_timer) == 1


def test_earlier_timings_are_used_before_measuring(tmp_path, fake_timer):
    arms = [_arm(_default(), "a", 0), _arm(_default(), "a", 1), _arm(_default(), "b", 0)]
    (tmp_path / "timings.json").write_text(json.dumps({"arms": {"a": 60.0}}))  # b: not run yet
    estimate = dry_run.estimate(arms, str(tmp_path))
    assert "2 arms from the timings.json of an earlier run; 1 arm from" in estimate.source
    assert len(fake_timer) == 1
    (tmp_path / "timings.json").write_text(json.dumps({"arms": {"a": 60.0, "b": 40.0}}))
    assert dry_run.estimate(arms, str(tmp_path)).seconds == pytest.approx(100.0)  # per group
    assert "3 arms from the timings.json" in dry_run.estimate(arms, str(tmp_path)).source


def test_grid_names_the_fields_that_differ_in_numeric_order():
    configs = [_default(batch_size=b, seed=s) for b in (192, 64) for s in (0, 1)]
    configs[0].optimizer.winsorize_pct = 2.0
    assert dry_run.grid(configs) == {"batch_size": ["64", "192"],
                                     "optimizer.winsorize_pct": ["None", "2.0"]}


def test_real_timing_of_a_sweep_writes_only_the_plan(tmp_path, no_training):
    """The real `time_updates` (one shape: real_vs_random's arms differ in their labels only)."""
    lines = []
    reproduce.reproduce("real_vs_random", str(tmp_path), seeds=1, set_items=["num_epochs=2"],
                        dry_run=True, echo=lines.append)
    assert os.listdir(tmp_path) == [dry_run.PLAN_FILE]
    assert lines[-1].startswith("estimated time: ")
    assert "2 arms from training steps timed in memory for each of 1 model/optimizer shape" \
        in lines[-1]
    m3_consecutive = default.get_config()
    m3_consecutive.optimizer.name = "m3"  # one update per 3 batches: timed over whole cycles
    for config in (default.get_config(), m3_consecutive):
        timing = dry_run.time_updates(config, steps=2)
        assert set(timing) == {"warmup", "step", "eval", "scale"} and timing["scale"] == 1.0
        assert 0 < timing["step"] < 10 and 0 < timing["eval"] < 10 and timing["warmup"] > 0


def test_dataset_sizes_are_those_of_the_loaded_datasets():
    from cgh_tf import data

    for name in ("mnist1d", "digits", "mnist5k"):
        try:
            loaded = data.load(name)
        except data.MissingExtraError:
            continue
        assert factories.DATASETS[name][2:] == (len(loaded.train), len(loaded.test)), name
    config = _default(max_train=100, max_test=10_000)
    assert factories.dataset_sizes(config) == (100, 1000)


def test_trainer_dry_run_prints_the_run_and_its_estimate_and_writes_nothing(tmp_path, no_training,
                                                                           fake_timer):
    lines = []
    workdir = tmp_path / "never"
    train.dry_run(_default(num_epochs=3, max_train=2000), str(workdir), echo=lines.append)
    assert lines[0] == ("config valid; nothing written. mnist1d (2000 train / 1000 test "
                        "examples), mlp, optimizer sgd: 3 epochs × 32 batches of 64")
    assert lines[1].startswith("estimated time: ") and len(lines) == 2
    assert not workdir.exists()
    # max_train=6000 passes validation (6000 % 33 = 27 splits into 3 groups), but MNIST-1D has
    # 4000 training examples: 4000 % 33 = 7 would not; a run finds it after loading, a dry run too
    in_batch = _default(max_train=6000, batch_size=33)
    in_batch.optimizer.name, in_batch.optimizer.m3_in_batch = "m3", True
    config_schema.validate(in_batch)
    with pytest.raises(config_schema.ConfigError, match="the last batch of an epoch holds 7 of "
                                                        "the 4000 training examples"):
        train.dry_run(in_batch, str(workdir), echo=lines.append)
    assert not workdir.exists()


@pytest.mark.slow
def test_cli_trainer_dry_run_writes_nothing_and_a_bad_config_is_one_line(tmp_path):
    command = [sys.executable, "-m", "trainers.train", "--config=configs/default.py",
               f"--workdir={tmp_path / 'run'}", "--dry_run", "--config.num_epochs=2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip().splitlines()
    assert printed[0].startswith("config valid; nothing written.") and len(printed) == 2
    assert printed[1].startswith("estimated time: ")
    bad = subprocess.run(command + ["--config.optimizer.aggregation=winsorize"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: invalid config: optimizer.aggregation='winsorize' needs optimizer.winsorize_pct")
    assert os.listdir(tmp_path) == []
