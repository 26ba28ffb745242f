"""Issue 13, experiment 3 (`trainers/depth_width.py`): tiny runs end to end, resume, statistics,
the sweep, and every config error (whole file < 40 s)."""

import glob
import json
import os

import numpy as np
import pytest

from cgh_tf import rank_correlation
from trainers import config_schema, correlations, curve_stats, model_sweep, runner
from trainers import depth_width as dw

TINY = {"dataset": "mnist1d", "max_train": 64, "coherence_samples": 8, "batch_size": 32,
        "epochs": 2, "log_epochs": (0, 1, 2)}


# ----------------------------------------------------------------------------------------------
# statistics and summary numbers against hand-computed values
# ----------------------------------------------------------------------------------------------

def test_ranks_and_the_declared_correlation_rules_hand_computed():
    # ties: ranks (1, 2.5, 2.5, 4); Spearman = Pearson of the ranks = 4.5 / sqrt(22.5)
    np.testing.assert_allclose(rank_correlation.midranks([1, 2, 2, 3]), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(rank_correlation.midranks([3, 1, 2]), [3, 1, 2])
    assert correlations.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    gap_rule, test_rule = dw.CORRELATION_RULES
    assert (gap_rule.x, gap_rule.y, gap_rule.prediction) == ("m_coherence_epoch1", "gap",
                                                             "negative")
    assert test_rule.prediction == "positive"


def test_summary_reads_epoch_0_and_1_and_leaves_unmeasured_as_none():
    curves = {"epoch": [0, 1, 5], "step": [0, 1, 5], "train_accuracy": [0.1, 0.5, 0.9],
              "test_accuracy": [0.1, 0.4, 0.7], "gap": [0.0, 0.1, 0.2],
              "train_loss": [2.3, 1.0, 0.2], "coherence/m_coherence": [3.0, 1.5, None],
              "coherence/alpha": [0.2, 0.05, None]}
    s = dw.summarize(curves, num_params=7)
    assert (s["m_coherence_init"], s["m_coherence_epoch1"]) == (3.0, 1.5)
    assert (s["alpha_init"], s["alpha_epoch1"]) == (0.2, 0.05)
    assert (s["train_accuracy"], s["test_accuracy"], s["gap"], s["epochs"]) == (0.9, 0.7, 0.2, 5)
    no_epoch1 = {k: [v[0], v[2]] for k, v in curves.items()}
    no_epoch1["epoch"] = [0, 5]
    assert dw.summarize(no_epoch1, 7)["m_coherence_epoch1"] is None
    assert curve_stats.value_at(curves, "nonexistent", 0, "epoch") is None


def test_cross_and_grid_sweeps_and_arms():
    from configs import depth_width as cfg

    c = config_schema.apply_overrides(cfg.get_config(), {"widths": (32, 64, 256), "fixed_depth": 1,
                                                   "depths": (1, 2, 3), "fixed_width": 256})
    assert model_sweep.models(c) == [(1, 32, ("width",)), (1, 64, ("width",)),
                            (1, 256, ("depth", "width")), (2, 256, ("depth",)),
                            (3, 256, ("depth",))]
    grid = model_sweep.models(config_schema.apply_overrides(c, {"grid": True, "depths": (1, 2)}))
    assert len(grid) == 6 and (2, 32, ()) in grid and (2, 256, ("depth",)) in grid
    plan = dw.arms("small", 2)  # default cross: 7 widths at depth 1 + depths 2..6 at width 256
    assert len(plan) == (7 + 5) * 2 * 2
    assert {a.config.dataset for a in plan} == {"mnist1d"} and plan[0].config.epochs == 40
    assert {a.config.labels for a in plan} == {"real", "random"}
    assert not any("widths" in a.config for a in plan)  # sweep fields are not in a run config
    assert plan[0].tags == ("width",) and dw.comparisons(plan)[0] == (
        "mnist1d/d1_w0032/real", "mnist1d/d1_w0032/random")
    assert dw.rules(plan)[0].prediction == "higher"
    mnist5k = dw.arms("small", 1, {"dataset": "mnist5k"})
    assert {a.config.dataset for a in mnist5k} == {"mnist5k"} and mnist5k[0].config.epochs == 10
    one = dw.arms("small", 1, {"dataset": "mnist1d"})
    assert {a.config.dataset for a in dw.arms("full", 1)} == {"mnist5k", "mnist1d"}
    assert len(dw.arms("full", 1, {"dataset": "mnist1d"})) == 7 * 6 * 2
    assert dw.schedule(one[0].config)["log_points"] == [0, 1, 2, 5, 10, 20, 30, 40]
    random = dw.schedule([a.config for a in one if a.config.labels == "random"][0])
    assert random["total"] == 1 and random["log_points"] == [0, 1]


# ----------------------------------------------------------------------------------------------
# tiny runs: end to end, HParams, resume
# ----------------------------------------------------------------------------------------------

def _hparams_tags(logdir):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


TINY_SWEEP = {**TINY, "widths": (4,), "depths": (1, 2), "fixed_depth": 1, "fixed_width": 4}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A whole tiny reproduce: models (depth 1, width 4) and (2, 4), real and random, one seed."""
    workdir = tmp_path_factory.mktemp("depth_width")
    arms = runner.plan(dw.EXPERIMENT, "small", 1, TINY_SWEEP)
    return workdir, runner.run(dw.EXPERIMENT, arms, str(workdir), "test", echo=None)


def test_tiny_end_to_end(tiny_sweep):
    tmp_path, summary = tiny_sweep
    assert set(summary["groups"]) == {f"mnist1d/{m}/{lab}" for m in ("d1_w0004", "d2_w0004")
                                      for lab in ("real", "random")}
    for name in ("results.md", "results.json", "depth_width_mnist1d_width.png",
                 "depth_width_mnist1d_depth.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    real = json.loads((tmp_path / "mnist1d/d2_w0004/real/seed0/results.json").read_text())
    rnd = json.loads((tmp_path / "mnist1d/d2_w0004/random/seed0/results.json").read_text())
    assert real["curves"]["epoch"] == [0, 1, 2] and rnd["curves"]["epoch"] == [0, 1]
    assert real["coherence_sample"] == rnd["coherence_sample"]  # same examples in every arm
    assert len(real["coherence_sample"]) == 8
    coh = real["curves"]["coherence/m_coherence"]
    assert coh[2] is None and all(0 < v <= 8 for v in coh[:2])  # not measured at epoch 2
    assert real["curves"]["coherence/hidden2/m_coherence"][0] is not None
    s = real["summary"]
    assert s["gap"] == pytest.approx(s["train_accuracy"] - s["test_accuracy"])
    assert s["num_params"] == 40 * 4 + 4 + 4 * 4 + 4 + 4 * 10 + 10
    assert s["m_coherence_epoch1"] == coh[1] and rnd["summary"]["epochs"] == 1
    # random labels: 100 % uniform (about 1/10 keep their label), the same for both models
    assert rnd["curves"]["train_true_accuracy"][0] is not None
    # the table and the correlations, recomputed from the per-run numbers
    text = (tmp_path / "results.md").read_text()
    assert "| mnist1d/d2_w0004/real | 1 | 234 |" in text
    corr = summary["analyses"]["correlations"]["mnist1d"]["depth/coherence predicts a smaller gap"]
    assert corr["n"] == 2 and corr["r"] is None  # two points: no correlation, not 0
    assert "| coherence predicts a smaller gap | depth | undetermined" in text
    cell = summary["groups"]["mnist1d/d2_w0004/real"]["metrics"]["gap"]
    assert cell["per_seed"]["0"] == s["gap"]
    paired = [d for d in summary["comparisons"] if d["metric"] == "m_coherence_epoch1"]
    assert [d["differences"][0] for d in paired][-1] == pytest.approx(
        s["m_coherence_epoch1"] - rnd["summary"]["m_coherence_epoch1"])
    # HParams: one session per run, the column config at the root
    assert "_hparams_/session_start_info" in _hparams_tags(
        tmp_path / "mnist1d/d1_w0004/random/seed0/hparams")
    assert "_hparams_/experiment" in _hparams_tags(tmp_path)


def test_finished_runs_are_skipped(tiny_sweep):
    tmp_path, summary = tiny_sweep
    lines = []
    for arm in dw.arms("small", 1, TINY_SWEEP):
        result = dw.run(arm.config, str(tmp_path / arm.path), echo=lines.append)
        assert result["summary"]["gap"] == summary["groups"][arm.group]["metrics"]["gap"][
            "per_seed"]["0"]
    assert lines == []  # no run logged an epoch again


def test_interrupted_run_resumes_to_the_same_numbers(tiny_sweep, tmp_path):
    workdir, _ = tiny_sweep
    config = [a.config for a in dw.arms("small", 1, TINY_SWEEP)
              if a.group.endswith("d2_w0004/real")][0]
    full = json.loads((workdir / "mnist1d/d2_w0004/real/seed0/results.json").read_text())

    class Stop(Exception):
        pass

    def stop_after_epoch_1(line):
        if "epoch 2:" in line:  # echoed while logging epoch 2, after the checkpoint of epoch 1
            raise Stop

    with pytest.raises(Stop):
        dw.run(config, str(tmp_path / "cut"), echo=stop_after_epoch_1)
    assert not (tmp_path / "cut/results.json").exists()
    assert json.loads((tmp_path / "cut/curves.json").read_text())["step"] == 1
    lines = []
    resumed = dw.run(config, str(tmp_path / "cut"), echo=lines.append)
    assert "resumed" in lines[0] and "epoch 1" in lines[0]
    assert [line.split(": ")[0].split()[-1] for line in lines[1:]] == ["2"]  # only epoch 2 ran
    assert resumed["curves"]["epoch"] == [0, 1, 2]
    for key, value in full["summary"].items():
        assert resumed["summary"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def _config(**changes):

    return config_schema.apply_overrides(dw.arms("small", 1, TINY_SWEEP)[0].config, changes)


# ----------------------------------------------------------------------------------------------
# config errors: one line, before any data is loaded
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "digits"}, "dataset='digits' is not available for depth_width at scale 'small'"),
    ({"no_such_field": 1}, "the config has no field 'no_such_field'"),
    ({"width": 8}, "width is set by the sweep"),
    ({"labels": "real"}, "labels is set per arm"),
    ({"widths": ()}, r"widths=\(\) must be a non-empty tuple of distinct ints >= 1"),
    ({"depths": (1, 1)}, "depths=.* must be a non-empty tuple of distinct"),
    ({"fixed_width": 0}, "fixed_width=0 must be an int >= 1"),
    ({"grid": "yes"}, "field 'grid'.*cannot be casted"),
    ({"epochs": 0}, "epochs=0 must be an int >= 1"),
    ({"random_epochs": 1.5}, "field 'random_epochs'.*cannot be casted"),
    ({"random_epochs": 0}, "random_epochs=0 must be an int >= 1"),
    ({"batch_size": 0}, "batch_size=0 must be an int >= 1"),
    ({"coherence_samples": 1}, "coherence_samples=1 must be >= 2"),
    ({"checkpoint_every_logs": 0}, "checkpoint_every_logs=0 must be an int >= 1"),
    ({"learning_rate": 0}, r"learning_rate=0(\.0)? must be a number > 0"),
    ({"log_epochs": (0, -1)}, "log_epochs=.* must be a non-empty list of ints >= 0"),
    ({"coherence_epochs": (0, 2)}, "coherence_epochs=.* must contain 0 and 1"),
    ({"max_train": 1}, "max_train=1 must be None or an int >= 2"),
    ({"max_train": 100, "coherence_samples": 200}, "coherence_samples=200 must be <= max_train"),
])
def test_bad_configs_fail_in_one_line_before_any_run(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message) as error:
        runner.plan(dw.EXPERIMENT, "small", 1, overrides)
    assert "\n" not in str(error.value)
    assert not os.listdir(tmp_path)  # nothing run, nothing written


def test_check_config_rejects_bad_run_fields():
    with pytest.raises(ValueError, match="labels='noisy' is unknown; allowed: real, random"):
        dw.check_config(_config(labels="noisy"))
    with pytest.raises(ValueError, match="dataset='cifar10' is not supported"):
        dw.check_config(_config(dataset="cifar10"))
    with pytest.raises(ValueError, match="depth=0 must be an int >= 1"):
        dw.check_config(_config(depth=0))
    with pytest.raises(ValueError, match="--scale=huge is not available for depth_width"):
        runner.plan(dw.EXPERIMENT, "huge", 1)
    dw.check_config(_config())  # the tiny config itself is fine
