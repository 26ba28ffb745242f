"""trainers/early_stopping.py: stopping rules, log schedule, checks, a tiny real run, resume."""

import glob
import json
import os

import numpy as np
import pytest

from trainers import early_stopping as es
from trainers import outputs
from trainers import runner, stopping_rules
from trainers import beyond_common as common

TINY = {"max_train": 300, "max_test": 200, "epochs": 2, "early_epochs": 1,
        "early_logs_per_epoch": 2, "coherence_samples": 16, "batch_size": 64, "width": 16,
        "checkpoint_every_logs": 1}


# ----------------------------------------------------------------------------------------------
# pure logic against hand-computed examples
# ----------------------------------------------------------------------------------------------

def test_first_best_takes_the_first_maximum_and_skips_missing_values():
    assert stopping_rules.first_best([0.1, None, 0.5, 0.3, 0.5]) == 2
    assert stopping_rules.first_best([None, float("nan")]) is None


def test_coherence_drop_uses_the_running_maximum():
    # running max: 2, 4, 4, 4, 4 -> thresholds 1, 2, 2, 2, 2: 3 > 2, 2.5 > 2, 2 <= 2 fires at 4
    assert stopping_rules.coherence_drop_index([2.0, 4.0, 3.0, 2.5, 2.0], 0.5) == 4
    assert stopping_rules.coherence_drop_index([2.0, 1.0, 4.0], 0.5) == 1  # 1 <= 0.5 * 2 (max so far)
    assert stopping_rules.coherence_drop_index([1.0, 2.0, 3.0], 0.5) is None
    assert stopping_rules.coherence_drop_index([4.0, None, 1.9], 0.5) == 2


def test_plateau_is_relative_to_the_range_of_the_whole_run():
    # min 1, max 11: threshold 1 + 0.1 * 10 = 2; first value <= 2 is 1.5 at index 3
    assert stopping_rules.plateau_index([5.0, 11.0, 3.0, 1.5, 1.0, 1.2], 0.1) == 3
    assert stopping_rules.plateau_index([None, None], 0.1) is None


def test_onset_is_the_first_rise_after_the_minimum():
    # minimum 0.02 at index 2; first value >= 0.07 after it: 0.08 at index 4 (0.05 < 0.07)
    assert stopping_rules.onset_index([0.1, 0.03, 0.02, 0.05, 0.08, 0.5], 0.05) == 4
    assert stopping_rules.onset_index([0.1, 0.03, 0.02, 0.03], 0.05) is None
    assert stopping_rules.onset_index([0.1, 0.2, 0.3], 0.05) == 1  # minimum at the start


def test_stopping_summary_on_hand_made_curves():
    curves = {"step": [0, 10, 20, 30, 40], "epoch": [0.0, 0.5, 1.0, 1.5, 2.0],
              "test_accuracy": [0.1, 0.8, 0.9, 0.85, 0.7],
              "validation_accuracy": [0.1, 0.6, 0.62, 0.64, 0.5],
              "corrupted_accuracy": [0.1, 0.02, 0.05, 0.2, 0.6],
              "pristine_accuracy": [0.1, 0.8, 0.9, 0.95, 0.99],
              stopping_rules.TRAIN_SAMPLE_KEY: [2.0, 6.0, 4.0, 2.9, 1.0]}
    s = stopping_rules.stopping_summary(curves, drop=0.5, plateau=0.1, rise=0.05)
    assert s["epoch/final"] == 2.0 and s["test_accuracy/final"] == 0.7
    assert s["epoch/validation"] == 1.5 and s["test_accuracy/validation"] == 0.85
    assert s["epoch/coherence_drop"] == 1.5 and s["coherence_drop_fired"] == 1  # 2.9 <= 3
    assert s["epoch/coherence_plateau"] == 2.0  # threshold 1 + 0.1 * 5 = 1.5
    assert s["epoch/oracle"] == 1.0 and s["test_accuracy/oracle"] == 0.9
    assert s["corrupted_accuracy/coherence_drop"] == 0.2
    assert s["epoch/memorisation_onset"] == 1.5  # min 0.02 at 0.5; 0.05 < 0.07; 0.2 at 1.5
    assert s["gap/coherence_drop_minus_onset"] == 0.0
    assert s["gap/oracle_minus_onset"] == -0.5
    assert s["max_m_coherence"] == 6.0 and s["epoch/max_m_coherence"] == 0.5
    # a drop that never fires picks the last point and says so
    curves[stopping_rules.TRAIN_SAMPLE_KEY] = [1.0, 2.0, 3.0, 4.0, 5.0]
    s = stopping_rules.stopping_summary(curves, drop=0.5, plateau=0.1, rise=0.05)
    assert s["coherence_drop_fired"] == 0 and s["epoch/coherence_drop"] == 2.0
    # without a memorisation onset the gaps are None, never 0
    curves["corrupted_accuracy"] = [0.5, 0.4, 0.3, 0.2, 0.1]
    s = stopping_rules.stopping_summary(curves, drop=0.5, plateau=0.1, rise=0.05)
    assert s["epoch/memorisation_onset"] is None and s["gap/coherence_drop_minus_onset"] is None


def _result(fired, onset, gap, test=0.8):
    summary = {"coherence_drop_fired": fired, "epoch/memorisation_onset": onset,
               "gap/coherence_drop_minus_onset": gap}
    summary.update({f"test_accuracy/{rule}": test for rule in stopping_rules.RULES})
    return {"summary": summary}


def test_verdict_needs_every_seed_to_fire_within_the_tolerance():
    # onset 8: tolerance max(1, 2) = 2 epochs; gaps -1.5 and 2.0 are inside
    yes = stopping_rules.verdict([_result(1, 8.0, -1.5), _result(1, 8.0, 2.0)])
    assert "fired in 2/2 seeds" in yes and "0.25 epochs after the onset" in yes
    assert "**yes**" in yes
    assert "**no**" in stopping_rules.verdict([_result(1, 8.0, -1.5), _result(1, 8.0, 2.5)])  # 2.5 > 2
    # onset 2: tolerance 1 epoch (not 0.5)
    assert "**yes**" in stopping_rules.verdict([_result(1, 2.0, 0.9), _result(1, 2.0, -1.0)])
    # a seed where it never fired: no, and its gap is not averaged in
    text = stopping_rules.verdict([_result(1, 8.0, -1.0), _result(0, 8.0, 30.0)])
    assert "fired in 1/2 seeds" in text and "1.00 epochs before" in text and "**no**" in text
    assert "No c1 gap" in stopping_rules.verdict([_result(0, 8.0, 30.0), _result(0, None, None)])


def test_log_steps_are_dense_early_then_once_per_epoch():
    config = es.arms("small", 1, {"epochs": 4, "early_epochs": 2, "early_logs_per_epoch": 4})[0].config
    # 25 steps per epoch: quarters 6.25, 12.5, 18.75, ... rounded (half to even)
    assert es.log_steps(config, 25) == [0, 6, 12, 19, 25, 31, 38, 44, 50, 75, 100]
    config.early_epochs = 0
    assert es.log_steps(config, 25) == [0, 25, 50, 75, 100]


def test_validation_split_is_fixed_and_disjoint():
    train, val = common.split_indices(100, 0.2, 0)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    np.testing.assert_array_equal(val, common.split_indices(100, 0.2, 0)[1])
    assert not np.array_equal(val, common.split_indices(100, 0.2, 1)[1])


def test_arms_cover_both_noise_levels_seeds_and_datasets():
    plan = es.arms("small", 2)
    assert [(a.group, a.seed, a.config.label_noise) for a in plan] == [
        ("mnist5k/noise25", 0, 0.25), ("mnist5k/noise25", 1, 0.25),
        ("mnist5k/noise50", 0, 0.5), ("mnist5k/noise50", 1, 0.5)]
    assert {a.config.dataset for a in es.arms("small", 1, {"dataset": "mnist1d"})} == {"mnist1d"}
    assert {a.config.dataset for a in es.arms("full", 1)} == {"mnist5k", "mnist1d"}
    assert es.arms("small", 1, {"epochs": 7})[0].config.epochs == 7
    assert [(r.metric, r.control_metric) for r in es.rules(plan)[:2]] == [
        ("test_accuracy/validation", "test_accuracy/final"),
        ("test_accuracy/coherence_drop", "test_accuracy/validation")]


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "cifar10"}, r"dataset='cifar10' is not available for early_stopping at scale"),
    ({"noise_kind": "flip"}, r"noise_kind='flip' is unknown; allowed: uniform, other, permute"),
    ({"noise_levels": (0.25, 1.0)}, r"noise_levels=.* must be a non-empty tuple of numbers"),
    ({"noise_levels": ()}, r"noise_levels=.* must be a non-empty tuple"),
    ({"label_noise": 0.3}, r"label_noise=0.3 is set per run from noise_levels"),
    ({"optimizer": "rmsprop"}, r"optimizer='rmsprop' is unknown; allowed: adam, sgd"),
    ({"learning_rate": 0.0}, r"learning_rate=0.0 must be a number > 0"),
    ({"validation_fraction": 1.0}, r"validation_fraction=1.0 must be a number in \(0, 1\)"),
    ({"width": 0}, r"width=0 must be an int >= 1"),
    ({"depth": 0}, r"depth=0 must be an int >= 1"),
    ({"batch_size": 0}, r"batch_size=0 must be an int >= 1"),
    ({"epochs": 0}, r"epochs=0 must be an int >= 1"),
    ({"early_logs_per_epoch": 0}, r"early_logs_per_epoch=0 must be an int >= 1"),
    ({"coherence_samples": 0}, r"coherence_samples=0 must be an int >= 1"),
    ({"checkpoint_every_logs": 0}, r"checkpoint_every_logs=0 must be an int >= 1"),
    ({"early_epochs": -1}, r"early_epochs=-1 must be an int >= 0"),
    ({"max_train": 1}, r"max_train=1 must be None \(all\) or an int >= 2"),
    ({"max_train": 3, "validation_fraction": 0.9},
     r"validation_fraction=0.9 leaves 0 training / 3 validation examples of 3"),
    ({"max_train": 2, "validation_fraction": 0.1},
     r"validation_fraction=0.1 leaves 2 training / 0 validation examples of 2"),
    ({"max_test": "all"}, r"max_test='all' must be None \(all\) or an int >= 2"),
    ({"coherence_drop": 1.0}, r"coherence_drop=1.0 must be a number in \(0, 1\)"),
    ({"plateau_fraction": 0.0}, r"plateau_fraction=0.0 must be a number in \(0, 1\)"),
    ({"onset_rise": -0.1}, r"onset_rise=-0.1 must be a number in \(0, 1\)"),
    ({"seed": -1}, r"seed=-1 must be an int >= 0"),
    ({"data_seed": -2}, r"data_seed=-2 must be an int >= 0"),
    ({"no_such_field": 1}, r"the config has no field 'no_such_field'"),
])
def test_bad_configs_fail_in_one_line_before_any_data(overrides, message, monkeypatch):
    from cgh_tf import data

    def no_load(*args, **kwargs):
        raise AssertionError("data loaded before the config was checked")

    monkeypatch.setattr(data, "load", no_load)
    with pytest.raises(ValueError, match=message) as error:
        runner.plan(es.EXPERIMENT, "small", 1, overrides)
    assert "\n" not in str(error.value)


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="--scale=huge is not available for early_stopping"):
        runner.plan(es.EXPERIMENT, "huge", 1)


# ----------------------------------------------------------------------------------------------
# real (tiny) training
# ----------------------------------------------------------------------------------------------

def _events_tags(logdir):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


TINY_RUN = {**TINY, "noise_levels": (0.5,), "epochs": 3}


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """The default dataset (mnist5k, first 300 training digits), 50 % noise, 2 seeds, 3 epochs."""
    path = tmp_path_factory.mktemp("early_stopping")
    arms = runner.plan(es.EXPERIMENT, "small", 2, TINY_RUN)
    return path, runner.run(es.EXPERIMENT, arms, str(path), "test", echo=None)


def test_tiny_end_to_end_writes_results_figure_and_hparams(tiny_workdir):
    path, summary = tiny_workdir
    assert set(summary["groups"]) == {"mnist5k/noise50"}
    for name in ("results.md", "results.json", "early_stopping_mnist5k.png"):
        assert (path / name).stat().st_size > 0
    assert summary["figures"] == ["early_stopping_mnist5k.png"]
    result = json.loads((path / "mnist5k/noise50/seed1/results.json").read_text())
    assert result["num_validation"] == 60 and result["num_train"] == 240
    assert result["steps_per_epoch"] == 4  # 240 / 64 rounded up
    curves = result["curves"]
    assert curves["step"] == [0, 2, 4, 8, 12]  # half epochs for 1 epoch, then every epoch
    assert curves["epoch"] == [0.0, 0.5, 1.0, 2.0, 3.0]
    for key in ("test_accuracy", "validation_accuracy", "pristine_accuracy",
                "corrupted_accuracy", "f_pristine", stopping_rules.TRAIN_SAMPLE_KEY,
                "coherence/pristine/alpha", "coherence/corrupted/alpha",
                "coherence/corrupted/hidden1/m_coherence"):
        assert len(curves[key]) == 5 and all(v is not None for v in curves[key]), key
    assert 0 < curves[stopping_rules.TRAIN_SAMPLE_KEY][0] <= 16
    # the summary is the rules applied to the stored curves
    s = result["summary"]
    expected = stopping_rules.stopping_summary(curves, 0.5, 0.1, 0.05)
    assert {k: v for k, v in s.items() if not k.startswith("last/")} == expected
    assert s["test_accuracy/oracle"] == max(curves["test_accuracy"])
    assert s["last/test_accuracy"] == curves["test_accuracy"][-1]
    group = summary["groups"]["mnist5k/noise50"]["metrics"]["test_accuracy/final"]
    values = list(group["per_seed"].values())
    assert group["n"] == 2 and group["mean"] == pytest.approx(np.mean(values))
    assert values[1] == s["test_accuracy/final"]
    within = {(d["metric"], d["control_metric"]): d for d in summary["contrasts"]}
    d = within[("test_accuracy/validation", "test_accuracy/final")]
    assert d["n"] == 2 and d["method"] == "Student t, paired by seed"
    assert len(summary["verdicts"]) == 2
    text = (path / "results.md").read_text()
    assert "| mnist5k/noise50 | 2 |" in text and "±" in text
    assert "(b) best noisy-validation accuracy" in text and "same noise" in text
    assert "Does the training-sample coherence tell when memorisation begins?" in text
    # HParams: one session per run, the column config at the root
    assert "_hparams_/session_start_info" in _events_tags(
        str(path / "mnist5k/noise50/seed0/hparams"))
    assert "_hparams_/experiment" in _events_tags(str(path))


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_summary(tiny_workdir, tmp_path):
    path, _ = tiny_workdir
    reference = json.loads((path / "mnist5k/noise50/seed0/results.json").read_text())
    config = es.arms("small", 1, TINY_RUN)[0].config
    assert reference["config"] == outputs.json_roundtrip(config.to_dict())
    logged = []

    def interrupt(line):
        logged.append(line)
        if len(logged) == 4:  # the 4th log point (step 8), before its checkpoint
            raise _Interrupt

    with pytest.raises(_Interrupt):
        es.run(config, str(tmp_path), echo=interrupt)
    assert not (tmp_path / "results.json").exists()
    lines = []
    resumed = es.run(config, str(tmp_path), echo=lines.append)
    assert lines[0].strip().startswith("resumed") and "at step 4" in lines[0]
    assert len(lines) == 1 + 2  # the resume line, then steps 8 and 12 only
    assert resumed["curves"]["step"] == reference["curves"]["step"] == [0, 2, 4, 8, 12]
    assert resumed["summary"].keys() == reference["summary"].keys()
    for key, value in reference["summary"].items():
        if value is None:
            assert resumed["summary"][key] is None, key
        else:
            assert resumed["summary"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(resumed["curves"][stopping_rules.TRAIN_SAMPLE_KEY],
                               reference["curves"][stopping_rules.TRAIN_SAMPLE_KEY], rtol=1e-4)
    # finished: a rerun is skipped and returns the stored result
    again = es.run(config, str(tmp_path), echo=lambda line: pytest.fail(line))
    assert again["summary"] == resumed["summary"]
