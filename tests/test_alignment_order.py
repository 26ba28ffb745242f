"""alignment_order (issue 24): learning epochs, per-example records, the permutation null, and a
tiny real run whose statistics are recomputed from its own per-example records."""

import json
import os

import numpy as np
import pytest

from trainers import alignment_order, per_example_runs, runner

TINY = {"dataset": "mnist1d", "epochs": 3, "width": 16, "depth": 1, "batch_size": 256,
        "null_permutations": 3, "checkpoint_every_logs": 2}


def test_learning_epoch_is_the_first_epoch_from_which_an_example_stays_correct():
    correct = np.array([[0, 1, 1, 0, 1],
                        [1, 1, 0, 0, 1],
                        [1, 1, 1, 0, 0],
                        [1, 1, 1, 0, 1]], bool)   # rows: epochs 0, 1, 5, 9
    expected = [1, 0, 5, 10, 9]                  # 10 = not learnt (last epoch + 1)
    np.testing.assert_array_equal(per_example_runs.learning_epochs(correct, [0, 1, 5, 9]), expected)
    with pytest.raises(ValueError, match=r"correct must be \[len\(epochs\)=3, n\]"):
        per_example_runs.learning_epochs(correct, [0, 1, 5])


def test_epoch_records_survive_a_restart_and_name_what_is_missing(tmp_path):
    records = per_example_runs.EpochRecords(str(tmp_path))
    records.put(0, correct=np.array([True, False]), loss=np.array([0.5, 2.0]))
    records.put(1, correct=np.array([True, True]))
    records.put(1, correct=np.array([False, True]))  # a resumed run re-logs epoch 1
    again = per_example_runs.EpochRecords(str(tmp_path))
    np.testing.assert_array_equal(again.stacked("correct", [0, 1]), [[True, False], [False, True]])
    np.testing.assert_array_equal(again.get(0, "loss"), [0.5, 2.0])
    with pytest.raises(ValueError, match="has no 'loss' for epoch 1 .* delete the run's directory"):
        again.get(1, "loss")


@pytest.mark.parametrize("size", [0, 40])
def test_damaged_epoch_records_are_one_line_naming_the_file(tmp_path, size):
    """per_example.npz emptied or cut (was: EOFError / BadZipFile traceback)."""
    records = per_example_runs.EpochRecords(str(tmp_path))
    records.put(0, correct=np.array([True, False]))
    with open(records.path, "r+b") as f:
        f.truncate(size)
    with pytest.raises(ValueError) as error:
        per_example_runs.EpochRecords(str(tmp_path))
    assert str(error.value).startswith(f"{records.path} is damaged (")
    assert "delete the run's directory and run it again" in str(error.value)
    assert "\n" not in str(error.value)


def test_permutation_null_breaks_the_pairing():
    a = np.arange(200.0)
    same = per_example_runs.permutation_null(lambda u, v: np.corrcoef(u, v)[0, 1], a, a, 0, 20)
    assert abs(same) < 0.1   # a correlates perfectly with itself, not with its permutations


def _partial_spearman_by_residuals(x, y, z):
    """Independent reference: Pearson r of the residuals of rank(x), rank(y) on rank(z)."""
    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):          # ties: the mean rank
            r[v == value] = r[v == value].mean()
        return r

    design = np.column_stack([np.ones(len(z)), ranks(z)])
    residual = [ranks(v) - design @ np.linalg.lstsq(design, ranks(v), rcond=None)[0] for v in (x, y)]
    return np.corrcoef(*residual)[0, 1]


def test_alignment_order_tiny_run_recomputes_from_its_records(tmp_path):
    experiment = alignment_order.EXPERIMENT
    assert {a.config.dataset for a in alignment_order.arms("small", 1)} == {"mnist1d", "mnist5k"}
    arms = runner.plan(experiment, "small", 2, TINY)
    summary = runner.run(experiment, arms, str(tmp_path), "test", echo=None)
    run_dir = tmp_path / "mnist1d" / "seed1"
    result = json.loads((run_dir / "results.json").read_text())
    records = per_example_runs.EpochRecords(str(run_dir))
    assert result["curves"]["epoch"] == [0, 1, 2, 3]
    correct = records.stacked("correct", [0, 1, 2, 3])
    times = np.array([next((e for e in range(4) if correct[e:, i].all()), 4)
                      for i in range(correct.shape[1])])
    a, loss = records.get(0, "alignment"), records.get(0, "loss")
    assert len(a) == result["num_train"] == 4000 and not np.isnan(a).any()
    assert result["summary"]["partial_spearman"] == pytest.approx(
        _partial_spearman_by_residuals(a, times, loss), abs=1e-9)
    assert result["summary"]["not_learnt"] == pytest.approx(np.mean(times == 4))
    assert abs(result["summary"]["partial_spearman_permuted"]) < 0.1
    assert result["curves"]["train_accuracy"][-1] == pytest.approx(correct[-1].mean())
    (verdict,) = summary["verdicts"]
    assert verdict["rule"].startswith("mnist1d: examples supported at initialisation")
    assert verdict["decided"] == (not (summary["verdicts"][0]["text"].startswith(("no", "und"))))
    assert (tmp_path / "alignment_order.png").stat().st_size > 0
    assert "partial ρ(a_i, t_i ∣ ℓ_i)" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "digits"}, "dataset='digits' is not available for alignment_order"),
    ({"learning_rate": -0.1}, "learning_rate=-0.1 must be a number > 0"),
    ({"null_permutations": 0}, "null_permutations=0 must be an int >= 1"),
])
def test_alignment_order_rejects_bad_configs_before_any_run(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        runner.plan(alignment_order.EXPERIMENT, "small", 1, overrides)
    assert not os.listdir(tmp_path)


def test_alignment_order_resumed_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """A run killed between two checkpoints (here: its epoch-3 log fails, after the epoch-2
    checkpoint) resumes from the checkpoint, re-logs epoch 3 and ends with the per-example records
    and summary of a run that was never interrupted."""
    (arm,) = [a for a in runner.plan(alignment_order.EXPERIMENT, "small", 1, TINY)
              if a.group == "mnist1d"]
    clean = alignment_order.EXPERIMENT.run_arm(arm.config, str(tmp_path / "clean"), echo=None)
    put = per_example_runs.EpochRecords.put

    def crash_at_epoch_3(self, epoch, **arrays):
        if epoch == 3:
            raise KeyboardInterrupt("killed")
        put(self, epoch, **arrays)

    monkeypatch.setattr(per_example_runs.EpochRecords, "put", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        alignment_order.EXPERIMENT.run_arm(arm.config, str(tmp_path / "resumed"), echo=None)
    assert not (tmp_path / "resumed" / "results.json").exists()
    monkeypatch.setattr(per_example_runs.EpochRecords, "put", put)
    lines = []
    resumed = alignment_order.EXPERIMENT.run_arm(arm.config, str(tmp_path / "resumed"),
                                                 echo=lines.append)
    assert any("resumed" in line and "epoch 2" in line for line in lines)
    assert resumed["summary"] == clean["summary"]
    assert resumed["curves"] == clean["curves"]
