"""Issue 13, experiment 4: real vs random labels across architectures (tiny real runs, < 40 s)."""

import glob
import json
import math

import numpy as np
import pytest

from trainers import real_vs_random_arch as rr
from trainers import crossings, graph_loop, runner
from trainers.experiment import Arm

TINY = {"dataset": "mnist1d", "max_train": 64, "max_test": 32, "coherence_samples": 16,
        "batch_size": 32, "epochs": 1, "log_epochs": (0, 0.5, 1), "width": 16, "depth": 1,
        "resnet_filters": (4,), "cnn_filters": (4,), "dense_width": 8}


def _hparams_tags(directory):
    import tensorflow as tf

    tags = set()
    for path in glob.glob(f"{directory}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    return tags


# ----------------------------------------------------------------------------------------------
# Pure logic against hand-computed examples
# ----------------------------------------------------------------------------------------------

def test_log_steps_round_fractions_to_updates_and_add_the_end():
    # 10 updates per epoch; 0.125 -> 1.25 -> update 1; 0.25 -> 2.5 -> 2 (banker's rounding);
    # 7 > epochs is dropped; the end (3 epochs = 30 updates) is always logged
    assert graph_loop.log_steps((0, 0.125, 0.25, 1, 2, 7), 3, 10) == {
        0: 0.0, 1: 0.1, 2: 0.2, 10: 1.0, 20: 2.0, 30: 3.0}
    # two epochs rounding to the same update are one log point, at the true epoch
    assert graph_loop.log_steps((0, 0.5, 0.6, 1), 1, 1) == {0: 0.0, 1: 1.0}


def test_crossing_and_max_ratio_hand_computed():
    epochs = [0, 0.5, 1, 2, 4, 8]
    real = [3.0, 2.0, 4.0, 3.0, 1.0, 1.0]
    random = [3.0, 1.0, 1.0, 2.0, 2.0, 1.5]
    # epoch 0 is ignored (init); real > random from 0.5, first below at 4
    assert crossings.crossing(epochs, real, random) == (1, 4)
    assert crossings.max_ratio(epochs, real, random) == (4.0, 1)
    # below first, then above; a tie and a missing value are skipped
    assert crossings.crossing(epochs, [9, 1, 2, None, 3, 1], [1, 2, 2, 1, 1, 1]) == (-1, 4)
    # every sign change, not only the first: above, below at 1, above at 2, below at 4, above at 8
    assert crossings.crossings(epochs, [0, 2, 0.5, 3, 0.5, 4], [9, 1, 1, 1, 1, 1]) == (1, [1, 2, 4, 8])
    assert crossings.crossings(epochs, [0, 2, 0.5, 3, 1, 4], [9, 1, 1, 1, 1, 1]) == (1, [1, 2])  # tie
    assert crossings.crossings(epochs, real, random) == (1, [4])
    # never cross
    assert crossings.crossing(epochs, [1, 2, 3, 4, 5, 6], [0, 1, 1, 1, 1, 1]) == (1, None)
    # never different
    assert crossings.crossing(epochs, [1.0] * 6, [1.0] * 6) == (0, None)
    assert crossings.ratio_curve([2.0, None, 1.0], [1.0, 1.0, 0.0]) == [2.0, None, None]
    assert crossings.max_ratio([0, 1], [5.0, None], [1.0, 2.0]) == (None, None)


def _fake(seed, real, m=16, epochs=(0, 1, 2)):
    """A run whose training sample's pairwise coherence (r − 1)/(m − 1) is `real`."""
    curves = {"epoch": list(epochs), "step": [0, 4, 8],
              "coherence/train/pairwise": list(real),
              "coherence/train/m_coherence": [1 + (m - 1) * p for p in real],
              "coherence/test/m_coherence": [1.0, 1.0, 1.0],
              "train_loss": [2.3, 2.0, 1.0], "train_accuracy": [0.1, 0.5, 0.9],
              "test_loss": [2.3, 2.1, 2.0], "test_accuracy": [0.1, 0.3, 0.4]}
    summary = rr.run_summary(curves, 1.0)
    summary["m"] = m
    return {"config": {"seed": seed}, "curves": curves, "summary": summary}


def test_run_summary_and_compare_hand_computed():
    s = _fake(0, [2.0, 6.0, 1.0])["summary"]
    assert (s["train_pairwise_init"], s["train_pairwise_early"], s["train_pairwise_end"]) == (
        2.0, 6.0, 1.0)
    assert (s["train_coh_init"], s["train_coh_early"], s["train_coh_end"]) == (31.0, 91.0, 16.0)
    assert (s["train_coh_max"], s["train_coh_epoch_of_max"]) == (91.0, 1)
    assert s["train_accuracy"] == 0.9 and s["test_accuracy"] == 0.4
    # an early epoch that was not logged gives None, never 0
    assert rr.run_summary(_fake(0, [1, 2, 3])["curves"], 0.5)["train_pairwise_early"] is None
    real = [_fake(0, [2.0, 6.0, 1.0]), _fake(1, [2.0, 4.0, 4.0])]
    random = [_fake(1, [2.0, 1.0, 2.0]), _fake(0, [1.0, 2.0, 2.0])]  # paired by seed, not order
    comp = crossings.compare(real, random)
    assert comp["seeds"] == [0, 1]
    assert comp["ratio_init"] == [2.0, 1.0]
    assert comp["ratio_early"] == [3.0, 4.0]
    assert comp["ratio_end"] == [0.5, 2.0]
    assert comp["max_ratio"] == [3.0, 4.0] and comp["epoch_of_max_ratio"] == [1, 1]
    assert comp["crossing_sign"] == [1, 1] and comp["crossing_epoch"] == [2, None]
    # mean curves: real (2, 5, 2.5), random (1.5, 1.5, 2): above at 1 and 2, no crossing
    assert (comp["mean_curve_crossing_sign"], comp["mean_curve_crossing_epoch"]) == (1, None)
    assert comp["mean_curve_max_ratio"] == pytest.approx(5 / 1.5)
    assert comp["mean_curve_crossings"] == []
    # a ratio to a non-positive random alignment is None, never a sign-flipped number
    assert crossings.compare([_fake(0, [0.1, 0.2, 0.3])], [_fake(0, [0.1, 0.0, -0.1])])[
        "ratio_end"] == [None]
    assert crossings._ratio_cell([2.0, None, 4.0]) == "3.00 ± 1.41 (2/3 seeds)"
    assert crossings._ratio_cell([2.0, 4.0]) == "3.00 ± 1.41"


def test_report_refuses_arms_measured_with_different_m(tmp_path):
    runs = [(Arm("mnist1d/mlp/real", "", "mnist1d/mlp", 0, None), _fake(0, [1, 2, 3], m=16)),
            (Arm("mnist1d/mlp/random", "", "mnist1d/mlp", 0, None), _fake(0, [1, 2, 3], m=32))]
    with pytest.raises(ValueError, match="mnist1d/mlp: the arms measured coherence on samples of different m"):
        rr.analyses(runs)


# ----------------------------------------------------------------------------------------------
# Arms and configs
# ----------------------------------------------------------------------------------------------

def test_arms_cover_every_architecture_real_and_random_with_the_same_m():
    plan = rr.arms("small", 2)
    assert len(plan) == 3 * 2 * 2
    assert {a.group for a in plan} == {f"mnist1d/{a}/{n}" for a in ("mlp", "cnn", "resnet")
                                       for n in ("real", "random")}
    assert {a.config.label_noise for a in plan} == {0.0, 1.0}
    assert {a.config.coherence_samples for a in plan} == {0}  # m = n: the whole training set
    assert {a.config.dataset for a in rr.arms("small", 1, {"dataset": "mnist5k"})} == {"mnist5k"}
    assert {a.config.dataset for a in rr.arms("full", 1)} == {"mnist1d", "mnist5k"}
    only = rr.arms("small", 1, {"arch": "cnn", "epochs": 3})
    assert [(a.group, a.config.epochs) for a in only] == [("mnist1d/cnn/real", 3),
                                                          ("mnist1d/cnn/random", 3)]
    assert rr.comparisons(plan)[0] == ("mnist1d/mlp/real", "mnist1d/mlp/random")
    assert [r.metric for r in rr.rules(plan)] == ["train_pairwise_early"] * 3


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "digits"}, "dataset='digits' is not available for real_vs_random_arch at scale 'small'; allowed"),
    ({"arch": "vgg"}, "arch='vgg' is unknown; allowed: mlp, cnn, resnet"),
    ({"label_noise": 1.0}, "label_noise is set by the arms"),
    ({"seed": 3}, "seed is set by the arms"),
    ({"noise_kind": "flip"}, "noise_kind='flip' is unknown"),
    ({"width": 0}, "width=0 must be an int >= 1"),
    ({"depth": 1.5}, "override depth=1.5: .*cannot be casted"),
    ({"depth": -1}, "depth=-1 must be an int >= 1"),
    ({"dense_width": 0}, "dense_width=0 must be an int >= 1"),
    ({"resnet_blocks": 0}, "resnet_blocks=0 must be an int >= 1"),
    ({"resnet_stem_stride": 0}, "resnet_stem_stride=0 must be an int >= 1"),
    ({"batch_size": 0}, "batch_size=0 must be an int >= 1"),
    ({"epochs": 0}, "epochs=0 must be an int >= 1"),
    ({"coherence_samples": -1}, "coherence_samples=-1 must be an int >= 0"),
    ({"coherence_samples": 1}, "coherence_samples=1 has no pair of examples"),
    ({"coherence_batch_size": 0}, "coherence_batch_size=0 must be an int >= 1"),
    ({"checkpoint_every_logs": 0}, "checkpoint_every_logs=0 must be an int >= 1"),
    ({"max_train": -1}, "max_train=-1 must be an int >= 0"),
    ({"max_test": -1}, "max_test=-1 must be an int >= 0"),
    ({"sample_seed": -1}, "sample_seed=-1 must be an int >= 0"),
    ({"data_seed": -2}, "data_seed=-2 must be an int >= 0, or -1"),
    ({"cnn_filters": ()}, "cnn_filters=.* must be a non-empty list of ints >= 1"),
    ({"resnet_filters": (8, 0)}, "resnet_filters=.* must be a non-empty list of ints >= 1"),
    ({"learning_rate": 0.0}, "learning_rate=0.0 must be a number > 0"),
    ({"momentum": 1.0}, "momentum=1.0 must be in"),
    ({"bn_momentum": -0.1}, "bn_momentum=-0.1 must be in"),
    ({"log_epochs": (0, -1)}, "log_epochs=.* must be numbers >= 0"),
    ({"early_epoch": 5}, "early_epoch=5 must be one of log_epochs"),
    ({"epochs": 1, "early_epoch": 2}, "early_epoch=2 must be one of log_epochs and <= epochs"),
    ({"max_train": 100, "coherence_samples": 256},
     "max_train=100 is smaller than coherence_samples=256"),
    ({"max_test": 10, "coherence_samples": 11}, "max_test=10 is smaller than coherence_samples"),
])
def test_bad_configs_fail_in_one_line_before_any_data_is_loaded(overrides, message,
                                                                monkeypatch):
    from cgh_tf import data

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(data, "load", no_loading)
    with pytest.raises(ValueError, match=message) as info:
        rr.arms("small", 1, overrides)
    assert "\n" not in str(info.value)


def test_check_config_rejects_label_noise_outside_0_1_and_unknown_scale():
    from configs import real_vs_random_arch as rr_config

    config = rr_config.get_config()
    config.label_noise = 1.5
    with pytest.raises(ValueError, match=r"label_noise=1.5 must be in \[0, 1\]"):
        rr.check_config(config)
    with pytest.raises(ValueError, match="--scale=cifar10 is not available"):
        runner.plan(rr.EXPERIMENT, "cifar10")


def test_models_are_1d_on_mnist1d_and_2d_on_mnist5k_with_bn_in_the_resnet():
    from configs import real_vs_random_arch as rr_config

    config = rr_config.get_config()
    for arch in ("mlp", "cnn", "resnet"):
        config.arch = arch
        one = rr.build_model(config, (40,), 10)
        two = rr.build_model(config, (28, 28, 1), 10)
        assert one.output_shape == two.output_shape == (None, 10)
        kinds1 = {type(layer).__name__ for layer in one.layers}
        kinds2 = {type(layer).__name__ for layer in two.layers}
        if arch == "mlp":
            assert "Conv1D" not in kinds1 and "Conv2D" not in kinds2
        else:
            assert "Conv1D" in kinds1 and "Conv2D" not in kinds1 and "Conv2D" in kinds2
        assert ("BatchNormalization" in kinds2) == (arch == "resnet")
        assert ("Add" in kinds2) == (arch == "resnet")
    config.cnn_filters = (4, 8)
    config.dense_width = 5
    config.arch = "cnn"
    # conv1: 3*1*4 + 4; conv2: 3*4*8 + 8; 40 -> 20 -> 10 positions * 8; dense 80*5 + 5; out 5*10 + 10
    assert rr.build_model(config, (40,), 10).count_params() == 16 + 104 + 405 + 60


# ----------------------------------------------------------------------------------------------
# Real tiny runs
# ----------------------------------------------------------------------------------------------

def test_tiny_end_to_end_writes_results_figures_and_hparams(tmp_path):
    lines = []
    arms = runner.plan(rr.EXPERIMENT, "small", 1, {**TINY, "arch": "resnet"})  # the BN ResNet
    summary = runner.run(rr.EXPERIMENT, arms, str(tmp_path), "test", echo=lines.append)
    assert set(summary["groups"]) == {"mnist1d/resnet/real", "mnist1d/resnet/random"}
    for name in ("results.md", "results.json", "real_vs_random_arch_mnist1d.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert summary["analyses"]["m"] == {"mnist1d/resnet": 16}
    for arch in ("resnet",):
        results = [json.loads((tmp_path / f"mnist1d/{arch}/{arm}/seed0/results.json").read_text())
                   for arm in ("real", "random")]
        for arm, result in zip(("real", "random"), results):
            curves = result["curves"]
            assert curves["step"] == [0, 1, 2] and curves["epoch"] == [0.0, 0.5, 1.0]
            for key in ("train_accuracy", "test_accuracy", "coherence/train/m_coherence",
                        "coherence/test/m_coherence"):
                assert all(v is not None and math.isfinite(v) for v in curves[key]), key
            assert 0 < curves["coherence/train/m_coherence"][0] <= 16
            assert result["layers"], "per-layer curves"
            for layer in result["layers"]:
                assert len(curves[f"coherence/train/{layer}/m_coherence"]) == 3
            assert "_hparams_/session_start_info" in _hparams_tags(
                tmp_path / f"mnist1d/{arch}/{arm}/seed0/hparams")
        real, random = results
        # same initial weights and same sample inputs: the test sample (real labels for both)
        # has the same m-coherence at epoch 0; the training sample differs by its labels
        assert real["curves"]["coherence/test/m_coherence"][0] == pytest.approx(
            random["curves"]["coherence/test/m_coherence"][0], rel=1e-5)
        assert real["num_corrupted"] == 0 and random["num_corrupted"] > 40
        comp = summary["analyses"]["comparisons"][f"mnist1d/{arch}"]
        pairwise = [r["summary"]["train_pairwise_end"] for r in (real, random)]
        assert pairwise == pytest.approx([(r["summary"]["train_coh_end"] - 1) / 15
                                          for r in (real, random)])
        assert comp["ratio_end"][0] == (pairwise[0] / pairwise[1] if pairwise[1] > 0 else None)
    resnet_layers = json.loads((tmp_path / "mnist1d/resnet/real/seed0/results.json")
                               .read_text())["layers"]
    assert {"stem_conv", "stem_bn", "s1b1_1_conv", "s1b1_2_bn", "out"} <= set(resnet_layers)
    text = (tmp_path / "results.md").read_text()
    assert "mnist1d/resnet/random" in text and "ratio early" in text
    assert "_hparams_/experiment" in _hparams_tags(tmp_path)
    assert any(line.startswith("[2/2] mnist1d/resnet/random/seed0") for line in lines)


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    config = rr.arms("small", 1, {**TINY, "epochs": 2, "log_epochs": (0, 0.5, 1, 1.5, 2),
                                  "batch_size": 16}, ("mlp",))[1].config
    assert config.label_noise == 1.0
    reference = rr.run(config, str(tmp_path / "reference"), echo=None)

    def interrupt(line):
        if "epoch 1.5 " in line:  # logged at 1.5 (mid-epoch), killed before its checkpoint
            raise _Interrupt

    with pytest.raises(_Interrupt):
        rr.run(config, str(tmp_path / "resumed"), echo=interrupt)
    assert not (tmp_path / "resumed/results.json").exists()
    lines = []
    resumed = rr.run(config, str(tmp_path / "resumed"), echo=lines.append)
    assert "resumed" in lines[0] and "at update 4" in lines[0]
    assert resumed["curves"]["epoch"] == reference["curves"]["epoch"] == [0, 0.5, 1, 1.5, 2]
    for key, value in reference["summary"].items():
        if value is None:
            assert resumed["summary"][key] is None, key
        else:
            assert resumed["summary"][key] == pytest.approx(value, rel=1e-5), key
    np.testing.assert_allclose(resumed["curves"]["coherence/train/m_coherence"],
                               reference["curves"]["coherence/train/m_coherence"], rtol=1e-5)
    # a finished run is skipped and returns the same results
    assert rr.run(config, str(tmp_path / "resumed"), echo=None)["curves"] == resumed["curves"]


def test_tiny_run_measures_the_whole_training_set_streamed_as_one_batch_does(tmp_path):
    """coherence_samples=0: m = n (issue 24), streamed in batches of 16; its r at epoch 0 equals
    a direct one-batch measure of the same initial model on the whole training set, and the
    logged pairwise coherence is (r − 1)/(m − 1)."""
    import keras

    from cgh_tf import coherence, data

    config = rr.arms("small", 1, {**TINY, "coherence_samples": 0, "coherence_batch_size": 16},
                     ("mlp",))[0].config
    result = rr.run(config, str(tmp_path / "run"), echo=None)
    assert result["summary"]["m"] == 64 and result["num_train"] == 64
    ds = data.load("mnist1d", label_noise=0.0, seed=0, max_train=64, max_test=32)
    keras.utils.set_random_seed(0)
    model = rr.build_model(config, ds.input_shape, ds.num_classes)
    x, y = ds.train.x.astype(np.float32), ds.train.y.astype(np.int32)
    reference = coherence.measure(model, x, y, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), batch_size=64)
    curves = result["curves"]
    assert curves["coherence/train/m_coherence"][0] == pytest.approx(reference.m_coherence,
                                                                      rel=1e-5)
    np.testing.assert_allclose(curves["coherence/train/pairwise"],
                               (np.array(curves["coherence/train/m_coherence"]) - 1) / 63,
                               rtol=1e-12)
    assert result["summary"]["train_pairwise_init"] == curves["coherence/train/pairwise"][0]
