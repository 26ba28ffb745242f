"""Issue 14: the grokking and double-descent experiments, tiny versions end to end (< 60 s)."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cgh_tf import modular
from trainers import catalog, double_descent, grokking, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# cgh_tf.modular
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operation, fn", [("add", lambda a, b: a + b),
                                           ("subtract", lambda a, b: a - b),
                                           ("multiply", lambda a, b: a * b)])
def test_modular_labels_split_and_encodings(operation, fn):
    p = 7
    tokens = modular.make(p, operation, 0.4, seed=3, encoding="tokens")
    onehot = modular.make(p, operation, 0.4, seed=3, encoding="onehot")
    n_train = round(0.4 * p * p)
    assert len(tokens["x_train"]) == n_train and len(tokens["x_test"]) == p * p - n_train
    pairs = np.concatenate([tokens["pairs_train"], tokens["pairs_test"]])
    assert len({tuple(q) for q in pairs}) == p * p  # every pair exactly once
    labels = np.concatenate([tokens["y_train"], tokens["y_test"]])
    np.testing.assert_array_equal(labels, fn(pairs[:, 0], pairs[:, 1]) % p)
    a, b = tokens["pairs_train"].T
    np.testing.assert_array_equal(tokens["x_train"], np.stack([a, p + b, np.full_like(a, 2 * p)], 1))
    assert tokens["x_train"].max() < modular.vocabulary_size(p)
    np.testing.assert_array_equal(onehot["x_train"].argmax(1), a)
    np.testing.assert_array_equal(onehot["x_train"][:, p:].argmax(1), b)
    assert onehot["x_train"].sum(1).tolist() == [2.0] * n_train
    np.testing.assert_array_equal(onehot["y_train"], tokens["y_train"])
    again = modular.make(p, operation, 0.4, seed=3)
    np.testing.assert_array_equal(again["pairs_train"], tokens["pairs_train"])
    assert not np.array_equal(modular.make(p, operation, 0.4, seed=4)["pairs_train"],
                              tokens["pairs_train"])


def test_modular_rejects_bad_arguments():
    with pytest.raises(ValueError, match="operation"):
        modular.make(7, "divide")
    with pytest.raises(ValueError, match="train_fraction"):
        modular.make(7, "add", 1.0)
    with pytest.raises(ValueError, match="encoding"):
        modular.make(7, "add", 0.5, encoding="bits")


# ----------------------------------------------------------------------------------------------
# grokking
# ----------------------------------------------------------------------------------------------

TINY_GROK = {"p": 7, "steps": 6, "log_every": 2, "checkpoint_every": 2, "print_every_logs": 1,
             "coherence_samples": 8, "batch_size": 8, "width": 16}


def test_grokking_arms_cover_the_issue():
    plan = grokking.arms("small", seeds=2)
    groups = {a.group: a.config for a in plan}
    assert {c.optimizer for c in groups.values()} == {"adamw", "m3", "rm3", "ra3"}
    assert {c.model for c in groups.values()} == {"mlp", "transformer"}
    assert groups["mlp_adamw_wd0"].weight_decay == 0.0 and groups["mlp_adamw"].weight_decay == 1.0
    assert groups["mlp_adamw_x3"].batch_size == 3 * groups["mlp_m3"].batch_size
    assert groups["mlp_subtract"].operation == "subtract"
    assert {c.aggregation for c in groups.values()} == {"mean", "winsorize"}
    wins, control = groups["mlp_winsorize"], groups["mlp_adamw_b128"]
    assert wins.winsorize_pct > 0 and control.aggregation == "mean"
    assert {k: v for k, v in wins.items() if k not in ("aggregation", "winsorize_pct")} == \
        {k: v for k, v in control.items() if k not in ("aggregation", "winsorize_pct")}
    assert 0.3 <= groups["transformer_adamw"].train_fraction <= 0.5  # the issue's range
    assert len(plan) == 2 * len(groups)
    full = {a.group: a.config for a in grokking.arms("full", seeds=1)}
    assert (full["mlp_adamw"].p, full["mlp_adamw"].train_fraction) == (113, 0.3)
    assert 0.3 <= full["transformer_adamw"].train_fraction <= 0.5
    with pytest.raises(ValueError, match="--scale=cifar10 is not available for grokking"):
        runner.plan(grokking.EXPERIMENT, "cifar10")
    assert grokking.comparisons(plan)[:3] == [("mlp_m3", "mlp_adamw_x3"), ("mlp_rm3", "mlp_ra3"),
                                              ("mlp_winsorize", "mlp_adamw_b128")]
    assert [r.metric for r in grokking.rules(plan)] == ["t_grok"] * 3


@pytest.mark.parametrize("overrides, message", [
    ({"winsorize_pct": 2.0}, "winsorize_pct=2.0 has no effect with aggregation='mean'"),
    ({"aggregation": "trimmed"}, "aggregation='trimmed' is unknown"),
    ({"aggregation": "winsorize", "winsorize_pct": 50.0}, "must be a percentage in"),
    ({"optimizer": "sgd"}, "optimizer='sgd' is unknown"),
    ({"steps": 0}, "steps=0 must be an int >= 1"),
    ({"aggregation": "winsorize"}, "aggregation='winsorize' needs winsorize_pct"),  # no c = 0
])
def test_grokking_rejects_bad_configs_before_any_run(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        grokking.arms("small", 1, overrides, ("mlp_adamw",))


def test_grokking_tiny_end_to_end_with_per_layer_coherence(tmp_path):
    arms = runner.plan(grokking.EXPERIMENT, "small", 1,
                       {**TINY_GROK, "groups": ("transformer_adamw",)})
    summary = runner.run(grokking.EXPERIMENT, arms, str(tmp_path), "test", echo=None)
    for name in ("results.md", "results.json", "grokking_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert set(summary["groups"]) == {"transformer_adamw"}
    assert _hparams_of(tmp_path / "transformer_adamw/seed0") == {"group": "transformer_adamw"}
    tf_curves = json.loads((tmp_path / "transformer_adamw/seed0/results.json").read_text())
    curves = tf_curves["curves"]
    assert curves["step"] == [0, 2, 4, 6]
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss", "weight_norm",
                "coherence/train/m_coherence", "coherence/test/alpha",
                "coherence/train/attn1/query/m_coherence", "coherence/train/embed/m_coherence"):
        assert len(curves[key]) == 4 and all(v is not None for v in curves[key]), key
    # finished runs are skipped: same results, no retraining
    again = grokking.run(grokking.arms("small", 1, TINY_GROK, ("transformer_adamw",))[0].config,
                         str(tmp_path / "transformer_adamw/seed0"), echo=None)
    assert again["curves"] == curves


def test_grokking_winsorized_arm_runs_and_is_the_mean_at_c0(tmp_path):
    """The winsorized-GD path (per-example gradients, cgh_tf.aggregators.Winsorize) at c = 0 is
    the plain mean: same curves as the AdamW arm; at c > 0 it clips and the curves differ."""
    tiny = {**TINY_GROK, "batch_size": 8}
    plain = grokking.run(grokking.arms("small", 1, tiny, ("mlp_adamw",))[0].config,
                         str(tmp_path / "plain"), echo=None)
    zero = grokking.arms("small", 1, {**tiny, "winsorize_pct": 0.0}, ("mlp_winsorize",))[0].config
    assert zero.aggregation == "winsorize" and zero.batch_size == 8
    at_zero = grokking.run(zero, str(tmp_path / "c0"), echo=None)
    for key in ("train_loss", "test_accuracy", "coherence/train/m_coherence", "weight_norm"):
        np.testing.assert_allclose(at_zero["curves"][key], plain["curves"][key], rtol=1e-4,
                                   err_msg=key)
    clipped = grokking.run(grokking.arms("small", 1, {**tiny, "winsorize_pct": 20.0},
                                         ("mlp_winsorize",))[0].config, str(tmp_path / "c20"),
                           echo=None)
    assert clipped["curves"]["weight_norm"][-1] != pytest.approx(plain["curves"]["weight_norm"][-1])


class _Interrupt(Exception):
    pass


def _as_saved_before_c_was_unset(path):
    """Rewrite a run file as the version whose default was winsorize_pct = 0 wrote it (its config
    with 0.0, no `config_version`: version 1)."""
    saved = json.loads(path.read_text())
    assert saved["config"]["winsorize_pct"] is None and saved.pop("config_version") == 2
    path.write_text(json.dumps({**saved, "config": {**saved["config"], "winsorize_pct": 0.0}}))


def test_grokking_m3_resumes_from_its_checkpoint_to_the_same_curves(tmp_path):
    """M3's buffers and AdamW's moments are in the checkpoint: a resumed run equals a whole one,
    also in a workdir of the version whose default was c = 0 (`winsorize_pct: 0.0` saved)."""
    config = grokking.arms("small", 1, {**TINY_GROK, "steps": 8}, ("mlp_m3",))[0].config
    reference = grokking.run(config, str(tmp_path / "reference"), echo=None)
    assert reference["batches_per_update"] == 3
    assert "coherence/test/hidden1/m_coherence" in reference["curves"]

    def interrupt(line):
        if "update 6/" in line:  # logged at 6, killed before the checkpoint of step 6
            raise _Interrupt

    with pytest.raises(_Interrupt):
        grokking.run(config, str(tmp_path / "resumed"), echo=interrupt)
    assert not (tmp_path / "resumed/results.json").exists()
    _as_saved_before_c_was_unset(tmp_path / "resumed/curves.json")
    lines = []
    resumed = grokking.run(config, str(tmp_path / "resumed"), echo=lines.append)
    assert lines[0].strip().startswith("resumed") and "update 4" in lines[0]
    for key in ("step", "train_loss", "test_accuracy", "coherence/train/m_coherence",
                "weight_norm"):
        np.testing.assert_allclose(resumed["curves"][key], reference["curves"][key], rtol=1e-5,
                                   err_msg=key)
    _as_saved_before_c_was_unset(tmp_path / "reference/results.json")
    assert grokking.run(config, str(tmp_path / "reference"), echo=None)["curves"] == \
        reference["curves"]  # a finished run of the old default is read, not trained again


# ----------------------------------------------------------------------------------------------
# double descent
# ----------------------------------------------------------------------------------------------

def test_double_descent_tiny_end_to_end(tmp_path):
    overrides = {"epochs": 2, "log_epochs": (0, 1, 2), "coherence_samples": 16,
                 "fraction_samples": 32, "batch_size": 512}
    assert len(double_descent.arms("small", 2)) == 2 * 11  # the small width sweep
    assert {a.config.dataset for a in double_descent.arms("full", 1)} == {"mnist1d", "mnist5k"}
    mnist5k = double_descent.arms("small", 2, {"dataset": "mnist5k"})
    assert {a.config.dataset for a in mnist5k} == {"mnist5k"} and len(mnist5k) == 2 * 11
    assert double_descent.arms("small", 1, {"dataset": "mnist5k", "epochs": 7})[0].config.epochs == 7
    summary = _run(tmp_path, 2, {**overrides, "widths": (4, 32)})
    assert set(summary["groups"]) == {"mnist1d/width0004", "mnist1d/width0032"}
    # the one results.json schema: per-seed values, their mean / sd, the paired contrast
    cell = summary["groups"]["mnist1d/width0004"]["metrics"]["test_error"]
    errors = [json.loads((tmp_path / f"mnist1d/width0004/seed{s}/results.json").read_text())
              ["summary"]["test_error"] for s in (0, 1)]
    assert list(cell["per_seed"].values()) == errors and cell["n"] == 2
    assert cell["mean"] == pytest.approx(np.mean(errors), abs=1e-15)
    assert cell["sd"] == pytest.approx(np.std(errors, ddof=1), abs=1e-15)
    contrast = summary["contrasts"][0]
    assert contrast["method"] == "Student t, paired by seed" and contrast["n"] == 2
    for name in ("results.md", "results.json", "double_descent_mnist1d_width.png",
                 "double_descent_mnist1d_epoch.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "mnist1d/width0004/seed0/results.json").read_text())
    curves = result["curves"]
    assert curves["epoch"] == [0, 1, 2]
    assert result["num_corrupted"] == 600  # 15 % of 4000, "other": every one really changed
    for key in ("test_error", "pristine_accuracy", "corrupted_accuracy", "f_pristine",
                "coherence/pristine/m_coherence", "coherence/corrupted/m_coherence",
                "coherence/corrupted/hidden1/m_coherence"):
        assert all(v is not None for v in curves[key]), key
    assert 0 < curves["coherence/pristine/m_coherence"][0] <= 16
    text = (tmp_path / "results.md").read_text()
    assert "mnist1d/width0032" in text and "f^p" in text
    assert "training_seconds" in json.loads((tmp_path / "results.json").read_text())
    assert _hparams_of(tmp_path / "mnist1d/width0004/seed0") == {"group": "mnist1d/width0004",
                                                                 "width": 4, "seed": 0}
    assert glob.glob(str(tmp_path / "events.out.tfevents.*.hparams_config"))


def test_reproduce_cli_routes_to_the_experiment_and_checks_the_scale(tmp_path):
    """`trainers.reproduce` accepts the name, routes it here, and rejects a trainer-only scale.

    (The runs behind it are the in-process tests above; a whole CLI run compiles every arm.)
    """
    bad = subprocess.run([sys.executable, "-m", "trainers.reproduce",
                          "--experiment=double_descent", f"--workdir={tmp_path}",
                          "--scale=cifar10"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0
    assert "--scale=cifar10 is not available for double_descent; allowed: small, full" in bad.stderr
    with pytest.raises(ValueError, match="--scale=imagenet is not available for grokking"):
        catalog.plan("grokking", scale="imagenet")


def test_double_descent_mnist5k_tiny_end_to_end(tmp_path):
    overrides = {"dataset": "mnist5k", "epochs": 1, "coherence_samples": 16,
                 "fraction_samples": 32, "batch_size": 1000}
    summary = _run(tmp_path, 1, {**overrides, "widths": (4,)})
    assert set(summary["groups"]) == {"mnist5k/width0004"}
    assert (tmp_path / "double_descent_mnist5k_width.png").stat().st_size > 0
    result = json.loads((tmp_path / "mnist5k/width0004/seed0/results.json").read_text())
    assert result["num_train"] == 4000 and result["num_corrupted"] == 600
    assert result["curves"]["epoch"] == [0, 1]
    assert result["summary"]["num_params"] == 784 * 4 + 4 + 4 * 10 + 10
    assert "mnist5k: MLP with 1 hidden layer(s)" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("overrides, message", [
    ({"dataset": "digits"}, "dataset='digits' is not available for double_descent at scale 'small'"),
    ({"label_noise": 0.0}, "label_noise=0.0 must be in"),
    ({"log_epochs": (0, -1)}, "log_epochs=.* must be a non-empty list of ints >= 0"),
    ({"checkpoint_every_logs": 0}, "checkpoint_every_logs=0 must be an int >= 1"),
])
def test_double_descent_rejects_bad_configs_before_any_run(overrides, message):
    with pytest.raises(ValueError, match=message):
        double_descent.arms("small", 1, overrides)


def _run(workdir, seeds, overrides):
    experiment = double_descent.EXPERIMENT
    arms = runner.plan(experiment, "small", seeds, overrides)
    return runner.run(experiment, arms, str(workdir), "test", echo=None)


def _hparams_of(run_dir):
    """The hyperparameters of the HParams session a run wrote (`trainers/hparams_board.py`)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = []
    for path in glob.glob(str(run_dir / "hparams" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    info = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content).session_start_info
                    found.append({k: getattr(v, v.WhichOneof("kind"))
                                  for k, v in info.hparams.items()})
    assert len(found) == 1, found
    return found[0]
