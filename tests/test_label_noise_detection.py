"""label_noise_detection (issue 24): a tiny real run whose AUROCs, precisions and forgetting
counts are recomputed by brute force from the run's own per-example records."""

import json
import os

import numpy as np
import pytest

from cgh_tf import data
from trainers import label_noise_detection, per_example_runs, runner

TINY = {"dataset": "mnist1d", "label_noise": 0.4, "epochs": 3, "score_epochs": (0, 1, 3),
        "width": 16, "depth": 1, "batch_size": 256, "null_permutations": 3}


def _auroc_by_pairs(score, corrupted):
    """P(score of a corrupted example > a clean one's) + ½ P(tie), over every pair."""
    c, p = score[corrupted][:, None], score[~corrupted][None, :]
    return float(np.mean((c > p) + 0.5 * (c == p)))


def test_label_noise_detection_tiny_run_recomputes_from_its_records(tmp_path):
    experiment = label_noise_detection.EXPERIMENT
    assert {a.group for a in label_noise_detection.arms("small", 1)} == {
        "mnist1d/noise20", "mnist1d/noise40", "mnist5k/noise20", "mnist5k/noise40"}
    arms = runner.plan(experiment, "small", 2, TINY)
    assert [(a.group, a.config.data_seed) for a in arms] == [("mnist1d/noise40", 0),
                                                             ("mnist1d/noise40", 1)]
    summary = runner.run(experiment, arms, str(tmp_path), "test", echo=None)
    masks = []
    for seed in (0, 1):
        run_dir = tmp_path / "mnist1d" / "noise40" / f"seed{seed}"
        result = json.loads((run_dir / "results.json").read_text())
        corrupted = data.load("mnist1d", label_noise=0.4, noise_kind="other", seed=seed).train.corrupted
        masks.append(corrupted)
        assert result["num_corrupted"] == int(corrupted.sum()) == 1600
        records = per_example_runs.EpochRecords(str(run_dir))
        correct = records.stacked("correct", [1, 2, 3])
        forgetting = np.array([sum(correct[t, i] and not correct[t + 1, i] for t in range(2))
                               if correct[:, i].any() else np.inf for i in range(correct.shape[1])])
        np.testing.assert_array_equal(records.get(3, "score/forgetting"), forgetting)
        for epoch in (0, 1, 3):
            for name in ("alignment", "loss") + (("forgetting",) if epoch == 3 else ()):
                score = records.get(epoch, f"score/{name}")
                score = np.nan_to_num(score, posinf=1e300, neginf=-1e300)
                assert result["summary"][f"auroc/{name}/e{epoch}"] == pytest.approx(
                    _auroc_by_pairs(score, corrupted), abs=1e-12)
                flagged = np.argsort(-score, kind="stable")[:1600]
                if len(np.unique(score)) == len(score):   # no ties at the threshold
                    assert result["summary"][f"precision/{name}/e{epoch}"] == pytest.approx(
                        corrupted[flagged].mean())
        assert "auroc/forgetting/e1" not in result["summary"]
        assert abs(result["summary"]["auroc/alignment_permuted/e0"] - 0.5) < 0.05
    assert not np.array_equal(*masks)   # each seed corrupts its own labels
    assert len(summary["verdicts"]) == 1 + 3 + 1
    assert (tmp_path / "label_noise_detection.png").stat().st_size > 0
    assert "AUROC −a_i, epoch 0" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"score_epochs": (1, 3)}, r"score_epochs=\(1, 3\) must be increasing ints from 0"),
    ({"score_epochs": (0, 9)}, r"score_epochs=\(0, 9\) must be .* at most epochs=5"),
    ({"label_noise": 0.0}, r"label_noise=0.0 must be in \(0, 1\)"),
    ({"noise_kind": "pair"}, "noise_kind='pair' is unknown; allowed: other, uniform"),
])
def test_label_noise_detection_rejects_bad_configs_before_any_run(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        runner.plan(label_noise_detection.EXPERIMENT, "small", 1, overrides)
    with pytest.raises(ValueError, match="--scale=full is not available"):
        runner.plan(label_noise_detection.EXPERIMENT, "full", 1)
    assert not os.listdir(tmp_path)
