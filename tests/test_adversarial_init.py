"""trainers/adversarial_init.py: random-label pretraining (phase 1) then real labels (phase 2)."""

import glob
import json
import os

import numpy as np
import pytest

from trainers import adversarial_init as ai
from trainers import adversarial_phase1 as ap
from trainers import runner

# 256 training / 128 test examples, a narrow MLP, a few epochs: real training, seconds per run.
TINY = {"max_train": 256, "max_test": 128, "width": 32, "depth": 1, "epochs": 3,
        "log_epochs": (0, 1, 2, 3), "checkpoint_every_logs": 1, "batch_size": 16,
        "phase1_max_epochs": 3, "phase1_checkpoint_every": 1, "phase1_batch_size": 64,
        "coherence_samples": 8}


class _Interrupt(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Logic against hand-computed examples
# ----------------------------------------------------------------------------------------------

def test_phase1_stop_rule():
    assert ap.phase1_stop(0.5, 3, 0.99, 10) is None
    assert ap.phase1_stop(0.99, 3, 0.99, 10) == "target"  # >= target
    assert ap.phase1_stop(0.9899, 10, 0.99, 10) == "max_epochs"
    assert ap.phase1_stop(1.0, 10, 0.99, 10) == "target"  # target wins at the last epoch
    assert ap.phase1_stop(0.2, 11, 0.99, 10) == "max_epochs"


def test_batches_per_epoch_ends_on_an_update():
    assert ap.batches_per_epoch(4000, 64, 1) == 62     # 62 full batches, 32 examples left out
    assert ap.batches_per_epoch(4000, 64, 3) == 60     # M3: 20 updates of 3 batches
    assert ap.batches_per_epoch(4000, 192, 1) == 20    # its control: 20 updates of 192
    assert ap.batches_per_epoch(100, 64, 3) == 0


def test_summary_numbers_and_paired_differences():
    coh, alpha = "coherence/train/m_coherence", "coherence/train/alpha"
    curves = {"epoch": [0, 1, 5], "step": [0, 1, 5],
              "train_accuracy": [0.1, 0.995, 1.0], "test_accuracy": [0.1, 0.6, 0.55],
              "train_loss": [2.3, 0.1, 0.01], coh: [1.5, 4.0, 2.0],
              alpha: [0.002, 0.01, 0.005], "weight_norm": [30.0, 31.0, 33.0]}
    s = ai.summarize(curves)
    assert s["test_acc_final"] == 0.55 and s["train_acc_final"] == 1.0
    assert s["gap_final"] == pytest.approx(0.45)
    assert s["max_test_acc"] == 0.6 and s["epoch_of_max_test_acc"] == 1
    assert s["epoch_train_acc_99"] == 1
    assert (s["coh_start"], s["alpha_start"], s["coh_max"], s["coh_final"]) == (1.5, 0.002, 4.0,
                                                                                2.0)
    assert (s["wnorm_start"], s["wnorm_final"]) == (30.0, 33.0)
    assert (s["epoch_at_fit"], s["test_acc_at_fit"], s["train_acc_at_fit"]) == (1, 0.6, 0.995)
    s = ai.summarize(curves, fit=1.0)
    assert (s["epoch_at_fit"], s["test_acc_at_fit"], s["train_acc_at_fit"]) == (5, 0.55, 1.0)
    s = ai.summarize({**curves, "train_accuracy": [0.1, 0.2, 0.3]})
    assert s["epoch_at_fit"] is None and s["test_acc_at_fit"] is None
    # a coherence missing at a log is None, never 0, and is skipped by the max
    s = ai.summarize({**curves, coh: [None, 4.0, 2.0]}, fit=0.75)
    assert s["coh_start"] is None and s["coh_max"] == 4.0
    assert ai.summarize({**curves, "train_accuracy": [0.1, 0.5, 0.9]})["epoch_train_acc_99"] is None

    plan = ai.arms("small", 1, None, ("m3", "sgd_batch3x"))
    assert ai.comparisons(plan) == [("mnist1d/adversarial_m3", "mnist1d/fresh_m3"),
                                    ("mnist1d/adversarial_sgd_batch3x",
                                     "mnist1d/fresh_sgd_batch3x")]
    assert [(r.metric, r.prediction) for r in ai.rules(plan)] == [("test_acc_final", "lower")] * 2


def test_arms_cover_starts_and_optimizers_with_matched_controls():
    plan = ai.arms("small", 2)
    groups = list(dict.fromkeys(a.group for a in plan))
    assert len(plan) == 2 * 5 * 2 and groups[0] == "mnist1d/adversarial_sgd"
    by = {(a.group, a.seed): a.config for a in plan}
    control, m3 = by[("mnist1d/fresh_sgd_batch3x", 1)], by[("mnist1d/fresh_m3", 1)]
    assert control.batch_size == 3 * m3.batch_size == 3 * 64
    assert by[("mnist1d/fresh_sgd_batch3x", 1)].optimizer == "sgd"
    assert by[("mnist1d/adversarial_ra3", 0)].optimizer == "ra3"
    assert {a.config.seed for a in plan} == {0, 1}
    mnist5k = ai.arms("small", 1, {"dataset": "mnist5k", "epochs": 7})
    assert {a.config.dataset for a in mnist5k} == {"mnist5k"} and mnist5k[0].config.epochs == 7
    assert {a.config.dataset for a in ai.arms("full", 1)} == {"mnist1d", "mnist5k"}


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "nope"}, "dataset='nope' is not available for adversarial_init at scale 'small'"),
    ({"start": "fresh"}, "start is set by the arms"),
    ({"optimizer": "adam"}, "optimizer is set by the arms"),
    ({"learning_rate": 0.0}, "learning_rate=0.0 must be a number > 0"),
    ({"phase1_learning_rate": -1.0}, "phase1_learning_rate=-1.0 must be a number > 0"),
    ({"compare_train_acc": 0.0}, r"compare_train_acc=0.0 must be in \(0, 1\]"),
    ({"phase1_target": 1.5}, r"phase1_target=1.5 must be in \(0, 1\]"),
    ({"width": 0}, "width=0 must be an int >= 1"),
    ({"depth": 0}, "depth=0 must be an int >= 1"),
    ({"batch_size": 0}, "batch_size=0 must be an int >= 1"),
    ({"phase1_batch_size": 0}, "phase1_batch_size=0 must be an int >= 1"),
    ({"epochs": 0}, "epochs=0 must be an int >= 1"),
    ({"phase1_max_epochs": 0}, "phase1_max_epochs=0 must be an int >= 1"),
    ({"phase1_checkpoint_every": 0}, "phase1_checkpoint_every=0 must be an int >= 1"),
    ({"coherence_samples": 0}, "coherence_samples=0 must be an int >= 1"),
    ({"checkpoint_every_logs": 0}, "checkpoint_every_logs=0 must be an int >= 1"),
    ({"seed": -1}, "seed=-1 must be an int >= 0"),
    ({"data_seed": -1}, "data_seed=-1 must be an int >= 0"),
    ({"log_epochs": (0, -1)}, r"log_epochs=\(0, -1\) must be a non-empty list of ints >= 0"),
    ({"max_train": 0}, r"max_train=0 must be None \(all\) or an int >= 1"),
    ({"max_test": 0}, r"max_test=0 must be None \(all\) or an int >= 1"),
    ({"no_such_field": 1}, "no field 'no_such_field'"),
])
def test_bad_configs_fail_in_one_line_before_any_data(overrides, message, monkeypatch):
    from cgh_tf import data

    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ValueError, match=message) as error:
        ai.arms("small", 1, overrides)
    assert "\n" not in str(error.value)


def test_reproduce_rejects_a_bad_config_before_creating_anything(tmp_path):
    with pytest.raises(ValueError, match="phase1_target=2.0 must be in"):
        runner.plan(ai.EXPERIMENT, "small", 1, {"phase1_target": 2.0})
    assert not (tmp_path / "w").exists()


def test_bad_arm_names_and_bad_single_configs():
    from configs import adversarial_init as ai_config

    with pytest.raises(ValueError, match="optimizer arm 'adam' is unknown"):
        ai.arms("small", 1, None, ("adam",))
    with pytest.raises(ValueError, match="--scale=huge is not available for adversarial_init"):
        runner.plan(ai.EXPERIMENT, "huge", 1)
    config = ai_config.get_config()
    for field, value, message in (("dataset", "nope", "dataset='nope' is unknown"),
                                  ("start", "warm", "start='warm' is unknown"),
                                  ("optimizer", "adam", "optimizer='adam' is unknown")):
        bad = ai_config.get_config()
        bad[field] = value
        with pytest.raises(ValueError, match=message):
            ai.check_config(bad)
    ai.check_config(config)


# ----------------------------------------------------------------------------------------------
# Real training, tiny
# ----------------------------------------------------------------------------------------------

def _events_tags(logdir):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny reproduce run (SGD and M3, both starts, one seed), shared by the tests below."""
    workdir = tmp_path_factory.mktemp("tiny")
    lines = []
    arms = runner.plan(ai.EXPERIMENT, "small", 1, {**TINY, "optimizers": ("sgd", "m3")})
    summary = runner.run(ai.EXPERIMENT, arms, str(workdir), "test", echo=lines.append,
                         progress=True)
    return workdir, summary, lines


def test_tiny_end_to_end_shares_phase1_and_writes_the_report(tiny):
    tmp_path, summary, lines = tiny
    assert set(summary["groups"]) == {"mnist1d/adversarial_sgd", "mnist1d/adversarial_m3",
                                      "mnist1d/fresh_sgd", "mnist1d/fresh_m3"}
    for name in ("results.md", "results.json", "adversarial_init_mnist1d_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert summary["figures"] == ["adversarial_init_mnist1d_curves.png"]
    # phase 1 ran once for the seed, and stopped at its epoch budget (3 epochs are far from 0.99)
    assert sum(line.startswith("  phase 1 epoch 3") for line in lines) == 1
    assert os.listdir(tmp_path / "mnist1d/phase1") == ["seed0"]
    p1 = json.loads((tmp_path / "mnist1d/phase1/seed0/results.json").read_text())
    assert p1["summary"]["phase1_epochs"] == 3
    assert p1["summary"]["phase1_stopped_by"] == "max_epochs"
    assert p1["curves"]["epoch"] == [0, 1, 2, 3]
    assert 0.0 < p1["summary"]["labels_kept"] < 0.25  # 100 % random labels: ~1/10 kept by chance
    runs = {g: json.loads((tmp_path / g / "seed0/results.json").read_text())
            for g in summary["groups"]}
    for group, result in runs.items():
        c = result["curves"]
        assert c["epoch"] == [0, 1, 2, 3], group
        for key in ("test_accuracy", "train_accuracy", "coherence/train/m_coherence",
                    "coherence/train/alpha", "coherence/train/hidden1/m_coherence",
                    "weight_norm"):
            assert all(v is not None for v in c[key]), (group, key)
        assert 0 < c["coherence/train/m_coherence"][0] <= 8
    # fresh starts from phase 1's initial weights; adversarial from its final weights
    for opt in ("sgd", "m3"):
        s_adv = runs[f"mnist1d/adversarial_{opt}"]["summary"]
        s_fresh = runs[f"mnist1d/fresh_{opt}"]["summary"]
        assert s_fresh["wnorm_start"] == pytest.approx(p1["curves"]["weight_norm"][0], rel=1e-6)
        assert s_adv["wnorm_start"] == pytest.approx(p1["curves"]["weight_norm"][-1], rel=1e-6)
        assert s_adv["wnorm_start"] != pytest.approx(s_fresh["wnorm_start"], rel=1e-4)
    # M3 makes one update per 3 batches: 256 // (16 * 3) = 5 updates per epoch, SGD 16
    assert runs["mnist1d/fresh_m3"]["summary"]["updates_per_epoch"] == 5
    assert runs["mnist1d/fresh_sgd"]["summary"]["updates_per_epoch"] == 16
    diff = next(d for d in summary["comparisons"] if d["arm"] == "mnist1d/adversarial_sgd"
                and d["metric"] == "test_acc_final")
    assert list(diff["differences"]) == pytest.approx(
        [runs["mnist1d/adversarial_sgd"]["summary"]["test_acc_final"]
         - runs["mnist1d/fresh_sgd"]["summary"]["test_acc_final"]])
    assert summary["analyses"]["phase1"]["mnist1d"]["seed0"] == p1["summary"]
    text = (tmp_path / "results.md").read_text()
    assert "mnist1d/fresh_m3" in text and "Arm − control" in text and "max_epochs" in text
    # HParams: one session per phase-2 run, the column config at the root
    start_info = "_hparams_/session_start_info"
    for group in runs:
        assert start_info in _events_tags(tmp_path / group / "seed0/hparams"), group
    assert "_hparams_/experiment" in _events_tags(tmp_path)
    # a second invocation reuses every finished run (no training lines)
    again = []
    runner.run(ai.EXPERIMENT, runner.plan(ai.EXPERIMENT, "small", 1, {
        **TINY, "optimizers": ("sgd", "m3")}), str(tmp_path), "test", echo=again.append,
        progress=True)
    assert not any(line.startswith(("  adversarial/", "  fresh/", "  phase 1 epoch"))
                   for line in again)
    assert any(line.startswith("  fresh/") for line in lines)  # the check above can fail


def test_interrupted_phase1_and_phase2_resume_to_the_same_numbers(tiny, tmp_path):
    """The uninterrupted reference is the tiny run's adversarial M3 arm (same config)."""
    config = next(a.config for a in ai.arms("small", 1, TINY, ("m3",))
                  if a.group.endswith("adversarial_m3"))
    reference = json.loads((tiny[0] / "mnist1d/adversarial_m3/seed0/results.json").read_text())
    assert reference["config"] == json.loads(json.dumps(config.to_dict()))

    def interrupt_at(text):
        def echo(line):
            if text in line:
                raise _Interrupt
        return echo

    run_dir = str(tmp_path / "resumed")
    with pytest.raises(_Interrupt):  # phase 1 killed at its epoch-2 log (checkpoint of epoch 1)
        ai.run(config, run_dir, echo=interrupt_at("phase 1 epoch 2"))
    with pytest.raises(_Interrupt):  # phase 2 killed at its epoch-3 log (checkpoint of epoch 2)
        ai.run(config, run_dir, echo=interrupt_at("epoch 3/3"))
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
    lines = []
    resumed = ai.run(config, run_dir, echo=lines.append)
    assert lines[0].strip().startswith("resumed") and "epoch 2" in lines[0]
    assert set(resumed["summary"]) == set(reference["summary"])
    for key, value in reference["summary"].items():
        if value is None:
            assert resumed["summary"][key] is None, key
        else:
            assert resumed["summary"][key] == pytest.approx(value, rel=1e-5), key
    for key in ("test_accuracy", "coherence/train/m_coherence", "weight_norm"):
        np.testing.assert_allclose(resumed["curves"][key], reference["curves"][key], rtol=1e-5)


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_damaged_phase1_weights_file_is_rebuilt_from_its_checkpoint(tiny, tmp_path, damage):
    """Phase 1 finished, its final.weights.h5 damaged afterwards: rebuilt from phase 1's last
    checkpoint, the phase-2 numbers equal the tiny run's (was: an h5py error without the path)."""
    import shutil

    config = next(a.config for a in ai.arms("small", 1, TINY, ("sgd",))
                  if a.group.endswith("adversarial_sgd"))
    reference = json.loads((tiny[0] / "mnist1d/adversarial_sgd/seed0/results.json").read_text())
    phase1 = tmp_path / "phase1"
    shutil.copytree(tiny[0] / "mnist1d/phase1/seed0", phase1)
    with open(phase1 / "final.weights.h5", "r+b") as f:
        f.truncate(100 if damage == "truncated" else 0)
    resumed = ai.run(config, str(tmp_path / "arm"), echo=None, phase1_dir=str(phase1))
    assert resumed["summary"] == reference["summary"]
    assert resumed["curves"] == reference["curves"]
