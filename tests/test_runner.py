"""The experiment runner (trainers/runner.py) on a declared toy experiment: real files, no training.

The toy's runs are a pure function of (arm, seed), so every number of results.json / results.md is
checked against float64 NumPy and hand computations."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from cgh_tf import optimizers, statistics
from trainers import graph_loop, outputs, runner
from trainers.experiment import Arm, Column, Experiment

VALUES = {"sgd": [0.50, 0.55, 0.52], "m3": [0.10, 0.20, 0.15]}   # corrupted acc per seed


def _arms(scale, seeds, overrides):
    if overrides.get("bad"):
        raise ValueError("bad=True is not allowed")
    return [Arm(name, name.upper(), "", seed, ml_collections.ConfigDict(
        {"arm": name, "seed": seed})) for name in ("sgd", "m3") for seed in range(seeds)]


def _run_arm(config, run_dir, echo=None):
    value = VALUES[config.arm][config.seed]
    os.makedirs(run_dir, exist_ok=True)
    return {"config": config.to_dict(), "curves": {"step": [0, 1], "acc": [0.0, value]},
            "summary": {"acc": value, "other": 2 * value if config.seed else None},
            "seconds_last_invocation": 1.0}


TOY = Experiment(
    name="toy", title="Toy", arms=_arms, run_arm=_run_arm,
    columns=(Column("acc", "corrupted acc"), Column("other", "other")),
    comparisons=(("m3", "sgd"),), contrasts=(("other", "acc"),),
    rules=(statistics.PairedRule("m3 lowers acc", "acc", "m3", "sgd", prediction="lower"),),
    scales=("small",))


def test_run_writes_one_schema_with_paired_intervals_and_the_declared_verdict(tmp_path):
    arms = runner.plan(TOY, "small", 3, {})
    lines = []
    summary = runner.run(TOY, arms, str(tmp_path), "cmd", echo=lines.append)
    assert len(lines) == 6 and lines[0].startswith("[1/6] sgd/seed0")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    cell = on_disk["groups"]["m3"]["metrics"]["acc"]
    assert cell["per_seed"] == {"0": 0.1, "1": 0.2, "2": 0.15}
    assert cell["mean"] == pytest.approx(0.15, abs=1e-15)
    assert cell["sd"] == pytest.approx(np.std(VALUES["m3"], ddof=1), rel=1e-14)
    assert on_disk["groups"]["sgd"]["metrics"]["other"]["n"] == 2   # seed 0 has no value
    d = next(c for c in on_disk["comparisons"] if c["metric"] == "acc")
    diffs = np.subtract(VALUES["m3"], VALUES["sgd"])
    half = statistics.t_quantile(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)
    assert d["mean"] == pytest.approx(diffs.mean(), rel=1e-12)
    assert (d["low"], d["high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    within = on_disk["contrasts"][0]
    assert within["arm"] == "sgd" and within["n"] == 2   # other − acc = acc at seeds 1, 2
    assert within["mean"] == pytest.approx(0.535, abs=1e-15)
    verdict = on_disk["verdicts"][0]
    assert verdict["decided"] and verdict["text"].startswith("effect (m3 lower)")
    t = diffs.mean() / (np.std(diffs, ddof=1) / math.sqrt(3))
    assert verdict["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-9)  # df 2
    assert verdict["p_holm"] == verdict["p"] and verdict["survives_holm"]   # a family of one
    text = (tmp_path / "results.md").read_text()
    assert "excludes 0" in text and "Student t, paired by seed" in text
    assert "| sgd | 3 | 0.523 ± 0.025 | 1.070 ± 0.042 (2/3 seeds) |" in text
    assert summary["verdicts"] == on_disk["verdicts"]
    assert not (tmp_path / ".cgh_tf.lock").exists()           # the lock is released
    assert json.loads((tmp_path / outputs.TIMINGS_FILE).read_text())["arms"].keys() == {"sgd", "m3"}


def test_plan_rejects_bad_input_in_one_line_before_writing(tmp_path):
    with pytest.raises(ValueError, match="--scale=full is not available for toy; allowed: small"):
        runner.plan(TOY, "full", 3)
    with pytest.raises(ValueError, match="seeds=0 must be a positive int"):
        runner.plan(TOY, "small", 0)
    with pytest.raises(ValueError, match="bad=True is not allowed"):
        runner.plan(TOY, "small", 3, {"bad": True})
    stray = Experiment(**{**TOY.__dict__, "rules": (
        statistics.PairedRule("x", "acc", "adam", "sgd"),)})
    with pytest.raises(ValueError, match="rule 'x' names group 'adam', which is not planned"):
        runner.plan(stray, "small", 3)
    with pytest.raises(ValueError, match="loop='keras'"):
        Experiment(**{**TOY.__dict__, "loop": "keras"})


def test_epoch_updates_cut_the_permutation_into_whole_updates():
    perm = np.arange(23)[::-1]
    idx = graph_loop.epoch_updates(perm, batch_size=3, per_update=2)   # U = 6: 3 updates
    assert idx.shape == (3, 2, 3) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx.reshape(-1), perm[:18])
    assert graph_loop.capped_log_epochs((0, 1, 5, 9), 6) == [0, 1, 5, 6]


def test_predictor_traces_once_for_train_and_test_and_matches_numpy():
    """One trace for splits of different sizes and a last partial chunk (it retraced per shape),
    and the numbers of a float64 NumPy softmax cross-entropy."""
    import keras

    traces = []

    class Linear(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x, training=False):
            traces.append(x.shape)  # runs once per trace
            return self.dense(x)

    model = Linear()
    rng = np.random.default_rng(0)
    x_train, x_test = (rng.normal(size=(n, 4)).astype(np.float32) for n in (10, 7))
    y_train, y_test = (rng.integers(3, size=n).astype(np.int32) for n in (10, 7))
    model(x_train[:1])
    traces.clear()
    predict = graph_loop.predictor(model, chunk=4)
    for x, y in ((x_train, y_train), (x_test, y_test), (x_train, y_train)):
        preds, losses = predict(x, y)
        logits = x.astype(np.float64) @ model.dense.kernel.numpy() + model.dense.bias.numpy()
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        np.testing.assert_array_equal(preds, logits.argmax(-1))
        np.testing.assert_allclose(losses, -log_softmax[np.arange(len(y)), y], rtol=1e-5)
    assert len(traces) == 1


def test_optimizers_build_adamw_alone_and_as_the_inner_optimizer():
    import keras

    alone = optimizers.build("adamw", 1e-3, weight_decay=1.0, beta_2=0.98)
    assert isinstance(alone, keras.optimizers.AdamW)
    assert (alone.weight_decay, alone.beta_2) == (1.0, 0.98)
    wrapped = optimizers.build("m3", 1e-3, inner="adamw", weight_decay=0.5)
    inner = wrapped.inner_optimizer
    assert isinstance(inner, keras.optimizers.AdamW) and inner.weight_decay == 0.5
    with pytest.raises(ValueError, match="momentum"):
        optimizers.build("adamw", 1e-3, momentum=0.9)


def test_analysis_verdicts_join_the_family_and_results_md_reports_holm(tmp_path):
    """A hook's declared-rule verdicts ("verdicts" in its dict) are one Holm family with the
    experiment's rules: p_holm = min(1, 2 p) for the smaller p of two, results.md says it."""
    extra = statistics.PairedRule("acc vs itself", "acc", "sgd", "sgd").evaluate(
        {0: 1.0, 1: 2.0, 2: 3.5}, {0: 1.0, 1: 1.0, 2: 1.0}).entry("declared in the hook")
    toy = Experiment(**{**TOY.__dict__, "analyses": lambda runs: (
        ["hook line"], {"kept": 1, "verdicts": [extra]})})
    summary = runner.run(toy, runner.plan(toy, "small", 3, {}), str(tmp_path), "cmd", echo=None)
    first, second = summary["verdicts"]
    assert second["rule"] == "acc vs itself" and summary["analyses"] == {"kept": 1}
    assert first["p_holm"] == pytest.approx(min(1.0, 2 * min(first["p"], second["p"])))
    assert second["p_holm"] == pytest.approx(max(first["p_holm"], second["p"]))
    text = (tmp_path / "results.md").read_text()
    assert "Here: 1 decided at 95 %, " in text and "Holm over 2 rules: p = " in text
    assert text.index(runner.VERDICTS_HEADING) < text.index("hook line")


def test_an_override_every_arm_replaces_is_refused_as_ignored():
    """`--set` of a field every planned arm sets itself (the seed, memorisation's noise level)
    would change nothing: one line naming it (was: planned and run as if it applied)."""
    from trainers import catalog

    with pytest.raises(ValueError, match=r"--set=seed=7 would be ignored: every arm of toy sets "
                                         r"seed itself \(0, 1, 2\)"):
        runner.plan(TOY, "small", 3, {"seed": 7})
    assert len(runner.plan(TOY, "small", 3, {"other": 1})) == 6  # not a field of the arms' configs
    with pytest.raises(ValueError, match=r"--set=seed=5 would be ignored: every arm of "
                                         r"double_descent sets seed itself \(0, 1\)"):
        catalog.plan("double_descent", "small", 2, {"seed": 5})
    with pytest.raises(ValueError, match=r"--set=label_noise=0.3 would be ignored: every arm "
                                         r"of memorisation sets label_noise itself \(0.0, 0.25, "
                                         r"0.5\)"):
        catalog.plan("memorisation", "small", 1, {"label_noise": 0.3})
    arms, _ = catalog.plan("memorisation", "small", 1, {"batch_size": 32,
                                                        "lr_schedule.decay_epochs": (3, 6)})
    assert {arm.config.batch_size for arm in arms} == {32, 96}   # sgd_x3: 3 × the batch


def test_an_override_some_arms_ignore_is_refused_naming_them():
    """An arm whose config is the same with and without the `--set`, though it holds the field
    with another value, would run without the user's value (was: accepted when another arm kept
    it); an arm deriving its value from it (sgd_x3's batch) or a field of the plan is used."""
    from trainers import catalog

    with pytest.raises(ValueError, match=r"^--set=arm='sgd' would be ignored: 3 of the 6 arms of "
                                         r"toy \(m3\) set arm themselves \(\"m3\"\)$"):
        runner.plan(TOY, "small", 3, {"arm": "sgd"})
    with pytest.raises(ValueError, match=r"--set=label_noise=0.5 would be ignored: 10 of the 18 "
                                         r"arms of memorisation \(noise00/sgd, .*, noise25/sgd_x3\) "
                                         r"set label_noise themselves \(0.0, 0.25\)$"):
        catalog.plan("memorisation", "small", 1, {"label_noise": 0.5})
    with pytest.raises(ValueError, match=r"--set=optimizer.name='m3' would be ignored: 15 of the "
                                         r"18 arms of memorisation"):
        catalog.plan("memorisation", "small", 1, {"optimizer.name": "m3"})
    arms, _ = catalog.plan("real_vs_random_arch", "small", 1, {"arch": "cnn"})  # picks the arms
    assert {arm.group.split("/")[1] for arm in arms} == {"cnn"}


def test_a_rereport_keeps_each_arm_s_seconds_of_the_invocation_that_ran_it(tmp_path):
    """A second run that only reads the finished arms reports per group the seconds the arms
    recorded when they finished (was: 0, the reading's wall-clock, in results.json and
    timings.json, which the dry run's estimate reads); results.json holds them once."""

    def run_arm(config, run_dir, echo=None):
        path = os.path.join(run_dir, "results.json")
        if not os.path.exists(path):
            os.makedirs(run_dir)
            with open(path, "w") as f:
                json.dump({**_run_arm(config, run_dir), "finished": True,
                           "seconds_last_invocation": 0.1}, f)  # 3 × 0.1 != 0.3 in floats
        with open(path) as f:
            return json.load(f)

    experiment = Experiment(**{**TOY.__dict__, "run_arm": run_arm})
    arms = runner.plan(experiment, "small", 3)
    runner.run(experiment, arms, str(tmp_path), echo=None)
    summary = runner.run(experiment, arms, str(tmp_path), echo=None)
    assert summary["training_seconds"] == {"sgd": 0.3, "m3": 0.3}
    assert "seconds" not in summary
    assert json.loads((tmp_path / "timings.json").read_text()) == {
        "arms": {"sgd": 0.3, "m3": 0.3}, "total_seconds": 0.6}


@pytest.mark.parametrize("loop", ["graph", "fit"])
def test_a_run_dir_of_another_config_is_refused_before_any_arm_runs(tmp_path, loop):
    """The last arm's directory holds another config's finished run: one line naming it, before
    the first arm trains (was: the arms before it trained, then the run stopped there)."""
    from trainers import config_schema, outputs

    ran = []
    experiment = Experiment(**{**TOY.__dict__, "loop": loop, "run_arm": lambda c, d, echo=None: (
        ran.append(d), _run_arm(c, d))[1]})
    arms = [Arm(a.group, a.label, a.panel, a.seed, ml_collections.ConfigDict(
        {**a.config.to_dict(), "num_epochs": 1})) for a in runner.plan(experiment, "small", 3)]
    outputs.write_json(tmp_path / "m3" / "seed2" / "results.json", {
        "config": {"arm": "m3", "seed": 7, "num_epochs": 1}, "curves": {}, "finished": True,
        "summary": {}, "epochs_completed": 1})
    with pytest.raises(config_schema.ConfigError, match=r"m3/seed2 holds the finished results "
                                                        r"of a run with a different config"):
        runner.run(experiment, arms, str(tmp_path), echo=None)
    assert ran == [] and sorted(os.listdir(tmp_path)) == ["m3"]


@pytest.mark.parametrize("report, message", [
    ({"experiment": "scale", "groups": {}}, "holds the results of experiment 'scale'"),
    ({"config": {"seed": 0}, "epochs_completed": 1}, r"is not a run's record \(no experiment\)")])
def test_a_workdir_of_another_experiment_or_a_trainer_run_is_refused(tmp_path, report, message):
    """Its results.json would be overwritten by this experiment's report (was: silently)."""
    from trainers import config_schema, outputs

    outputs.write_json(tmp_path / "results.json", report)
    with pytest.raises(config_schema.ConfigError, match=message):
        runner.run(TOY, runner.plan(TOY, "small", 3), str(tmp_path), echo=None)
    assert os.listdir(tmp_path) == ["results.json"]
    assert json.loads((tmp_path / "results.json").read_text()) == report
