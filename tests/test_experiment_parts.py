"""The shared parts of the custom-loop experiments (issue 23): probes, curve statistics, config and
arm helpers, update rules, the correlation hook, against hand-computed or independent references."""

import math

import ml_collections
import numpy as np
import pytest

from cgh_tf import statistics
from trainers import beyond_common as common
from trainers import config_schema, correlations, curve_stats, probes, update_rules
from trainers.experiment import Arm


def test_curve_stats_hand_computed():
    curves = {"epoch": [0, 1, 2, 3], "step": [0, 10, 20, 30],
              "acc": [0.2, None, 0.7, 0.7], "loss": [2.0, 1.0, float("nan"), 1.0]}
    assert curve_stats.last_values(curves) == {"acc": 0.7, "loss": 1.0}
    assert curve_stats.best_index(curves["acc"]) == 2           # the first of two maxima
    assert curve_stats.best_index(curves["loss"], highest=False) == 1  # NaN skipped
    assert curve_stats.best_index([None, None]) is None
    assert curve_stats.best_at(curves, "acc") == (0.7, 2)
    assert curve_stats.best_at({"epoch": [0], "acc": [None]}, "acc") == (None, None)
    assert curve_stats.first_reaching(curves, "acc", 0.5) == 20
    assert curve_stats.first_reaching(curves, "acc", 0.5, "epoch") == 2
    assert curve_stats.first_reaching(curves, "acc", 0.9) is None
    assert curve_stats.value_at(curves, "acc", 20) == 0.7
    assert curve_stats.value_at(curves, "acc", 2.0 + 1e-12, "epoch") == 0.7
    assert curve_stats.value_at(curves, "acc", None) is None
    assert curve_stats.value_at(curves, "missing", 0) is None
    assert curve_stats.value_at(curves, "acc", 5) is None


def test_accuracy_probes_and_label_pair_density_hand_computed():
    pred = np.array([0, 1, 2, 2, 1, 0])
    y = np.array([0, 1, 1, 2, 0, 0])           # training (noisy) labels
    original = np.array([0, 1, 2, 1, 2, 0])    # true labels
    corrupted = original != y                   # examples 2, 3, 4
    assert probes.accuracy(pred, y) == pytest.approx(4 / 6)
    assert probes.accuracy(pred, y, np.zeros(6, bool)) is None
    assert probes.label_accuracies(pred, y, corrupted, original) == {
        "pristine_accuracy": 1.0, "corrupted_accuracy": pytest.approx(1 / 3),
        "corrupted_true_accuracy": pytest.approx(1 / 3)}
    assert set(probes.label_accuracies(pred, y, corrupted)) == {"pristine_accuracy",
                                                                "corrupted_accuracy"}
    # pairs (true, noisy): (2, 1), (1, 2), (2, 0); K = 3 -> 6 off-diagonal pairs, one empty
    # ((0, 1), (0, 2), (1, 0) have none): mean 3 / 6, fewest 0
    assert probes.label_pair_density(original, y, corrupted, 3) == {
        "corrupted_per_label_pair": 0.5, "label_pair_min": 0}
    uniform = np.repeat(np.arange(3), 2)
    noisy = np.array([1, 2, 0, 2, 0, 1])
    assert probes.label_pair_density(uniform, noisy, uniform != noisy, 3) == {
        "corrupted_per_label_pair": 1.0, "label_pair_min": 1}


def test_streamed_loss_accuracy_matches_a_float64_reference():
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5)).astype(np.float32)
    y = rng.integers(0, 4, 23).astype(np.int32)
    loss, acc = probes.streamed_loss_accuracy(model, chunk=7)(x, y)
    logits = model(x, training=False).numpy().astype(np.float64)
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    assert loss == pytest.approx(float(-log_softmax[np.arange(23), y].mean()), rel=1e-6)
    assert acc == float(np.mean(logits.argmax(1) == y))
    rows = probes.split_metrics(lambda xs, ys: (1.5, 0.25), {"train": (x, y), "test": (x, y)})
    assert rows == {"train_loss": 1.5, "train_accuracy": 0.25, "test_loss": 1.5,
                    "test_accuracy": 0.25}


def test_coherence_row_pairwise_is_r_minus_one_over_m_minus_one():
    from cgh_tf.coherence import stats_from_sums

    stats = stats_from_sums(9.0, 3.0, 4, per_layer={"dense": stats_from_sums(2.0, 1.0, 4)})
    row = probes.coherence_row("coherence/train", stats, pairwise=True)
    assert row["coherence/train/m_coherence"] == pytest.approx(3.0)
    assert row["coherence/train/pairwise"] == pytest.approx((3.0 - 1) / 3)
    assert row["coherence/train/dense/pairwise"] == pytest.approx((2.0 - 1) / 3)
    assert "coherence/train/pairwise" not in probes.coherence_row("coherence/train", stats)
    assert probes.layer_names(row, "coherence/train") == ["dense"]


def test_spearman_of_group_points_skips_missing_and_says_none():
    assert correlations.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert correlations.spearman([1, 2, None, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert correlations.spearman([1, 2, None], [1, 2, 3]) is None   # 2 pairs
    assert correlations.spearman([1, 2, 3], [5, 5, 5]) is None       # a constant side
    # monotone but not linear: Pearson < 1, Spearman = 1
    assert statistics.correlation([1, 2, 3, 4], [1, 4, 9, 100]).r < 0.95
    assert correlations.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)


def _config(**fields):
    return ml_collections.ConfigDict(fields)


def test_config_check_helpers_say_one_line():
    with pytest.raises(ValueError, match=r"^width=0 must be an int >= 1$"):
        common.require_ints(_config(width=0, depth=1), ("depth", "width"))
    with pytest.raises(ValueError, match=r"^seed=-1 must be an int >= 0$"):
        common.require_ints(_config(seed=-1), ("seed",), 0)
    with pytest.raises(ValueError, match=r"must be None \(all\) or an int >= 2"):
        common.require_optional_ints(_config(max_train=1), ("max_train",), 2)
    common.require_optional_ints(_config(max_train=None), ("max_train",), 2)
    with pytest.raises(ValueError, match=r"lr=True must be a number > 0"):
        common.require_positive(_config(lr=True), ("lr",))
    with pytest.raises(ValueError, match=r"drop=1.0 must be a number in \(0, 1\)"):
        common.require_fractions(_config(drop=1.0), ("drop",))
    with pytest.raises(ValueError, match=r"log_epochs=\(\) must be a non-empty list"):
        common.require_int_list(_config(log_epochs=()), "log_epochs")
    with pytest.raises(ValueError, match=r"label_noise=0 must be in \(0, 1\)"):
        common.require_label_noise(_config(label_noise=0))
    assert not config_schema.is_number(float("inf")) and not config_schema.is_number(True)


def test_arm_helpers():
    overrides = {"arms": ("b",), "x": 1}
    assert common.chosen(overrides, "arms", None, ("a", "b"), "arm") == ("b",)
    assert overrides == {"x": 1}
    assert common.chosen({}, "arms", None, ("a", "b"), "arm") == ("a", "b")
    with pytest.raises(ValueError, match="arm 'c' is unknown; allowed: a, b"):
        common.chosen({"arms": ("c",)}, "arms", None, ("a", "b"), "arm")
    with pytest.raises(ValueError, match="^seed is set per arm; it cannot be overridden"):
        common.refuse_overrides({"seed": 1}, ("labels", "seed"), "set per arm")
    checked = []
    arms = common.seeded_arms("g", "G", "p", _config(seed=9, lr=0.1), 2, checked.append,
                              tags=("width",))
    assert [a.config.seed for a in arms] == [0, 1] and len(checked) == 1
    assert arms[1].path == "g/seed1" and arms[0].tags == ("width",)
    plan = [Arm(f"{p}/{g}", g, p, 0, None) for p in ("n1", "n2") for g in ("m3", "sgd")]
    plan.append(Arm("n3/m3", "m3", "n3", 0, None))
    assert common.planned_pairs(plan, (("m3", "sgd", True), ("rm3", "sgd", True))) == [
        ("n1/m3", "n1/sgd", True), ("n2/m3", "n2/sgd", True)]
    bare = [Arm(g, g, "", 0, None) for g in ("a", "b")]
    assert common.planned_pairs(bare, (("a", "b"),)) == [("a", "b")]
    kept, held = common.split_indices(10, 0.3, 0)
    assert len(held) == 3 and sorted(np.concatenate([kept, held])) == list(range(10))


def test_update_rules():
    assert update_rules.batches_per_update("adamw") == {"adamw": 1, "m3": 3, "rm3": 1, "ra3": 1}
    update_rules.check_aggregation(_config(aggregation="winsorize", winsorize_pct=2.0))
    with pytest.raises(ValueError, match="winsorize_pct=2.0 has no effect"):
        update_rules.check_aggregation(_config(aggregation="mean", winsorize_pct=2.0))
    with pytest.raises(ValueError, match="aggregation='trim' is unknown"):
        update_rules.check_aggregation(_config(aggregation="trim", winsorize_pct=0.0))
    optimizer, per_update, aggregator = update_rules.build(
        _config(optimizer="m3", learning_rate=0.1, aggregation="mean", winsorize_pct=0.0),
        update_rules.batches_per_update("sgd"))
    assert per_update == 3 and aggregator is None and type(optimizer).__name__ == "M3"
    _, _, winsorizer = update_rules.build(
        _config(optimizer="sgd", learning_rate=0.1, aggregation="winsorize", winsorize_pct=5.0),
        update_rules.batches_per_update("sgd"))
    assert winsorizer is not None


def test_correlations_hook_across_groups():
    rule = statistics.CorrelationRule("x predicts y", "x", "y", prediction="positive")
    runs = []
    for g, (x, y) in enumerate([(1, 2), (2, 4.5), (3, 5.5), (4, 8.5), (5, 10)]):
        for seed, noise in enumerate((-0.5, 0.5)):
            runs.append((Arm(f"d/m{g}", "", "d", seed, _config(kind="real")),
                         {"summary": {"x": x, "y": y + noise}}))
    runs.append((Arm("d/other", "", "d", 0, _config(kind="random")), {"summary": {"x": 9,
                                                                                 "y": -9}}))
    means = correlations.group_means(runs, ("x", "y"), lambda a: a.config.kind == "real")
    assert means == {"x": [1, 2, 3, 4, 5], "y": [2, 4.5, 5.5, 8.5, 10]}
    lines, out, verdicts = correlations.per_panel(runs, (rule,), {"all": lambda a: True},
                                        lambda a: a.config.kind == "real", lambda p: f"## {p}")
    stat = out["d"]["all/x predicts y"]
    assert stat["spearman"] == pytest.approx(1.0)
    assert stat["r"] == pytest.approx(statistics.correlation(means["x"], means["y"]).r)
    assert lines[0] == "## d" and any(line.startswith("| x predicts y | all |") for line in lines)
    assert math.isfinite(stat["r"])
