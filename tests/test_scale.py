"""The `scale` experiment (trainers/scale.py): memorisation suppression vs training-set size."""

import glob
import json
import math
import os
import shutil

import pytest

from cgh_tf import data
from trainers import memorisation_run, runner, scale, scale_trend

from trainers.config_schema import apply_overrides

TINY = {"epochs": 2, "log_epochs": (0, 1, 2), "width": 16, "batch_size": 10}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cgh_tf cache holding the default mnist1d file (copied, never regenerated)."""
    directory = tmp_path / "cache"
    directory.mkdir()
    user = os.path.join(data.cache_dir(), data._MNIST1D_CACHE_FILE)
    if os.path.exists(user):
        shutil.copy(user, directory / data._MNIST1D_CACHE_FILE)
    monkeypatch.setenv(data.CACHE_ENV_VAR, str(directory))
    return directory


def _config(**changes):
    from configs import scale as scale_config

    return apply_overrides(scale_config.get_config(), {**TINY, **changes})


# ------------------------------------------------------------------ arms and config checks

def test_arms_cover_the_brief_without_loading_data(monkeypatch):
    monkeypatch.setattr(data, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    plan = scale.arms("small", seeds=2)
    groups = sorted({a.group for a in plan})
    assert len(plan) == 3 * 6 * 2 and len(groups) == 18
    by = {(a.group, a.seed): a.config for a in plan}
    sgd = by[("mnist1d/n0001000/sgd", 0)]
    m3 = by[("mnist1d/n0001000/m3", 1)]
    x3 = by[("mnist1d/n0016000/sgd_x3", 0)]
    wins = by[("mnist1d/n0004000/winsorize", 0)]
    assert (sgd.optimizer, sgd.batch_size, sgd.aggregation, sgd.seed) == ("sgd", 64, "mean", 0)
    assert (m3.optimizer, m3.batch_size, m3.seed) == ("m3", 64, 1)
    assert (x3.optimizer, x3.batch_size, x3.train_size) == ("sgd", 192, 16000)
    assert (wins.aggregation, wins.winsorize_pct, wins.batch_size) == ("winsorize", 2.0, 64)
    assert {a.config.train_size for a in plan} == {1000, 4000, 16000}
    assert {a.config.epochs for a in plan} == {20}
    five = scale.arms("small", seeds=1, overrides={"dataset": "mnist5k", "batch_size": 32})
    assert {a.config.train_size for a in five} == {1000, 2000, 4000}
    assert {a.config.batch_size for a in five if a.group.endswith("sgd_x3")} == {96}
    assert {a.config.dataset for a in five} == {"mnist5k"}
    full = scale.arms("full", seeds=1)
    assert {a.config.train_size for a in full} >= {64000}
    only = scale.arms("small", seeds=1, overrides={"train_size": 500}, arm_names=("sgd", "rm3"))
    assert [(a.group, a.config.train_size) for a in only] == [("mnist1d/n0000500/sgd", 500),
                                                             ("mnist1d/n0000500/rm3", 500)]
    # declared comparisons and rules: per size, each robust arm against its matched control
    assert ("mnist1d/n0000500/rm3", "mnist1d/n0000500/sgd") in scale.comparisons(only)
    assert [(r.arm, r.control, r.prediction) for r in scale.rules(scale.arms("small", 1))][:3] \
        == [("mnist1d/n0001000/m3", "mnist1d/n0001000/sgd_x3", "lower"),
            ("mnist1d/n0001000/rm3", "mnist1d/n0001000/ra3", "lower"),
            ("mnist1d/n0001000/winsorize", "mnist1d/n0001000/sgd", "lower")]


@pytest.mark.parametrize("changes, message", [
    ({"dataset": "cifar10"}, "dataset='cifar10' is unknown; allowed: mnist1d, mnist5k"),
    ({"train_size": 0}, "train_size=0 must be an int >= 1"),
    ({"width": 0}, "width=0 must be"),
    ({"depth": 0}, "depth=0 must be"),
    ({"batch_size": 0}, "batch_size=0 must be"),
    ({"epochs": 0}, "epochs=0 must be"),
    ({"checkpoint_every_logs": 0}, "checkpoint_every_logs=0 must be"),
    ({"train_size": 1005}, "multiple of 10 for mnist1d"),
    ({"dataset": "mnist5k", "train_size": 5000}, "must be <= 4000 for mnist5k"),
    ({"label_noise": 0.0}, "label_noise=0.0 must be in"),
    ({"label_noise": 1.0}, "label_noise=1.0 must be in"),
    ({"noise_kind": "flip"}, "noise_kind='flip' is unknown"),
    ({"optimizer": "adam"}, "optimizer='adam' is unknown"),
    ({"aggregation": "trim"}, "aggregation='trim' is unknown"),
    ({"arm": "sgd_x9"}, "arm='sgd_x9' is unknown"),
    ({"arm": "m3"}, "arm='m3' needs optimizer='m3'"),
    ({"arm": "winsorize", "aggregation": "winsorize", "winsorize_pct": 60.0},
     "winsorize_pct=60.0 must be a percentage"),
    ({"winsorize_pct": 2.0}, "winsorize_pct=2.0 has no effect"),
    ({"learning_rate": 0.0}, "learning_rate=0.0 must be"),
    ({"arm": "m3", "optimizer": "m3", "train_size": 20}, "exceeds train_size=20"),
    ({"log_epochs": (1, -1)}, "log_epochs=.* must be"),
    ({"log_epochs": ()}, "log_epochs=.* must be"),
])
def test_check_config_rejects_in_one_line(changes, message):
    config = _config(**changes)
    with pytest.raises(ValueError, match=message) as info:
        scale.check_config(config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "huge"}, "--scale=huge is not available for scale"),
    ({"overrides": {"optimizer": "m3"}}, "optimizer is set by each arm"),
    ({"overrides": {"arm": "m3"}}, "arm is set by each arm"),
    ({"overrides": {"dataset": "digits"}}, "dataset='digits' is not available for scale at scale 'small'"),
    ({"overrides": {"epochs": 0}}, "epochs=0 must be"),
    ({"overrides": {"train_size": 1005}}, "multiple of 10"),
    ({"overrides": {"arms": ("sgd", "adam")}}, "arm 'adam' is unknown"),
])
def test_bad_runs_fail_before_any_data_is_loaded(kwargs, message, monkeypatch, tmp_path):
    monkeypatch.setattr(data, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    with pytest.raises(ValueError, match=message):
        runner.plan(scale.EXPERIMENT, kwargs.get("scale", "small"), 1, kwargs.get("overrides"))
    assert not (tmp_path / "w").exists()


def _reproduce(workdir, overrides):
    arms = runner.plan(scale.EXPERIMENT, "small", 1, overrides)
    return runner.run(scale.EXPERIMENT, arms, str(workdir), "test", echo=None)


# ------------------------------------------------------------------ summary numbers by hand

def test_trend_matches_a_hand_computed_fit():
    # x = log10 n = 1, 1, 2, 2; v = 0, .2, .2, .4: slope .2, intercept -.1, SSR .04, s² = .02
    fit = scale_trend.trend([10, 10, 100, 100], [0.0, 0.2, 0.2, 0.4], at=1000)
    assert fit["slope_per_decade"] == pytest.approx(0.2)
    assert fit["intercept"] == pytest.approx(-0.1)
    assert fit["slope_se"] == pytest.approx(math.sqrt(0.02))
    assert fit["predicted"] == pytest.approx(0.5)
    assert fit["predicted_se"] == pytest.approx(math.sqrt(0.02 * (0.25 + 2.25)))
    assert fit["predicted_95"][1] == pytest.approx(0.5 + 4.302652729749464 * math.sqrt(0.05))
    assert fit["r2"] == pytest.approx(0.5) and fit["dof"] == 2
    assert fit["decades_extrapolated"] == pytest.approx(1.0)
    assert "no clear trend" in scale_trend.verdict(fit)
    steep = scale_trend.trend([10, 10, 100, 100], [0.0, 0.02, 0.4, 0.42], at=1000)
    assert scale_trend.verdict(steep).startswith("grows with n")
    assert scale_trend.verdict(scale_trend.trend([10, 10, 100, 100], [0.4, 0.42, 0.0, 0.02], at=1000)
                         ).startswith("shrinks with n")
    assert scale_trend.trend([10, 10, 10], [0.1, 0.2, 0.3], at=1000) is None  # one size
    assert scale_trend.trend([10, 100], [0.1, 0.2], at=1000) is None  # two points
    assert "not enough sizes" in scale_trend.verdict(None)


def test_suppression_is_control_minus_arm_over_the_seeds_both_have():
    from trainers.experiment import Arm

    def run(group, seed, value):
        return Arm(group, group, "p", seed, None), {"summary": {"corrupted_accuracy": value}}

    runs = [run("p/m3", 0, 0.25), run("p/m3", 1, 0.5), run("p/m3", 2, None), run("p/sgd", 0, 0.75),
            run("p/sgd", 1, 0.5), run("p/sgd", 2, 0.125), run("p/sgd", 3, 1.0), run("q/m3", 0, 0.0)]
    assert scale_trend.suppression(runs, "p", "m3", "sgd") == {0: 0.5, 1: 0.0}
    assert scale_trend.suppression(runs, "q", "m3", "sgd") == {}


def test_summarize_takes_the_last_values_and_the_best_test_epoch():
    curves = {"epoch": [0, 1, 2], "step": [0, 1, 2], "updates": [0, 5, 10],
              "test_accuracy": [0.1, 0.4, 0.3], "corrupted_accuracy": [0.1, None, 0.6]}
    s = memorisation_run.summarize(curves)
    assert s["updates"] == 10 and s["corrupted_accuracy"] == 0.6 and s["test_accuracy"] == 0.3
    assert s["best_test_accuracy"] == 0.4 and s["epoch_of_best_test"] == 1
    assert "epoch" not in s and "step" not in s


# ------------------------------------------------------------------ real training, tiny

def test_tiny_end_to_end_writes_everything_and_counts_updates(cache, tmp_path):
    workdir = tmp_path / "w"
    summary = _reproduce(workdir, {**TINY, "arms": ("sgd", "m3"), "sizes": (60, 120, 240)})
    for name in ("results.md", "results.json", "scale_mnist1d_curves.png",
                 "scale_mnist1d_suppression.png"):
        assert (workdir / name).stat().st_size > 0
    text = (workdir / "results.md").read_text()
    assert "suppression against log10(n)" in text and "1,281,167" in text
    fit = summary["analyses"]["trend"]["mnist1d"]["sgd − m3"]
    assert fit["points"] == 3 and math.isfinite(fit["slope_per_decade"])
    on_disk = json.loads((workdir / "results.json").read_text())
    assert set(on_disk["groups"]) == {f"mnist1d/n{n:07d}/{a}" for n in (60, 120, 240)
                                      for a in ("sgd", "m3")}
    for n in (60, 120, 240):
        runs = {arm: json.loads((workdir / f"mnist1d/n{n:07d}/{arm}/seed0/results.json")
                                .read_text()) for arm in ("sgd", "m3")}
        # SGD: ⌊n / B⌋ updates per epoch; M3 one per 3 batches: ⌊n / 3B⌋ (SGD ×3's count)
        assert runs["sgd"]["curves"]["updates"] == [0, n // 10, 2 * (n // 10)]
        assert runs["m3"]["curves"]["updates"] == [0, n // 30, 2 * (n // 30)]
        assert runs["m3"]["curves"]["examples"] == [0, 30 * (n // 30), 60 * (n // 30)]
        assert runs["m3"]["num_test"] == 1000 and runs["m3"]["num_train"] == n
        s = runs["m3"]["summary"]
        assert 0 <= s["corrupted_accuracy"] <= 1 and 0 <= s["test_accuracy"] <= 1
    # the paired differences in the json are computed from the runs (one seed: no interval)
    by_pair = {(d["arm"], d["control"], d["metric"]): d for d in summary["comparisons"]}
    for n in (60, 120, 240):
        runs = [json.loads((workdir / f"mnist1d/n{n:07d}/{arm}/seed0/results.json").read_text())
                for arm in ("sgd", "m3")]
        d = by_pair[(f"mnist1d/n{n:07d}/m3", f"mnist1d/n{n:07d}/sgd", "corrupted_accuracy")]
        assert list(d["differences"]) == [runs[1]["summary"]["corrupted_accuracy"]
                                    - runs[0]["summary"]["corrupted_accuracy"]]
        assert d["low"] is None and d["n"] == 1
    # HParams: a session per run and the experiment's column config at the root
    import tensorflow as tf

    events = glob.glob(str(workdir / "mnist1d/n0000060/m3/seed0/hparams/events.*"))
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e)
            for v in ev.summary.value}
    assert "_hparams_/session_start_info" in tags and "final/corrupted_accuracy" in tags
    assert glob.glob(str(workdir / "events.out.tfevents.*"))
    # a second reproduce skips every finished run and gives the same numbers
    again = _reproduce(workdir, {**TINY, "arms": ("sgd", "m3"), "sizes": (60, 120, 240)})
    assert again["analyses"] == summary["analyses"]


class _Interrupt(Exception):
    pass


def test_interrupted_rm3_run_resumes_to_the_same_numbers(cache, tmp_path):
    config = _config(arm="rm3", optimizer="rm3", train_size=100, epochs=3,
                     log_epochs=(0, 1, 2, 3))
    reference = scale.run(config, str(tmp_path / "reference"), echo=None)
    # RM3: every batch is one call; the first 2 calls only fill the history
    assert reference["summary"]["updates"] == 3 * 10 - 2
    calls = []

    def interrupt(line):
        calls.append(line)
        if len(calls) == 2:  # after the checkpoint of epoch 1, while logging epoch 2
            raise _Interrupt

    with pytest.raises(_Interrupt):
        scale.run(config, str(tmp_path / "resumed"), echo=interrupt)
    assert not os.path.exists(tmp_path / "resumed/results.json")
    lines = []
    resumed = scale.run(config, str(tmp_path / "resumed"), echo=lines.append)
    assert any("resumed" in line and "epoch 1" in line for line in lines)
    assert resumed["summary"] == reference["summary"]
    assert resumed["curves"] == reference["curves"]


def test_winsorized_arm_is_the_mean_when_nothing_is_clipped(cache, tmp_path):
    base = dict(train_size=40, epochs=1, log_epochs=(0, 1), width=4, batch_size=10)
    plain = scale.run(_config(**base), str(tmp_path / "sgd"), echo=None)
    # batch 10, c = 1 %: the nearest-rank percentiles are the min and the max: nothing clipped
    wins = dict(base, arm="winsorize", aggregation="winsorize")
    none = scale.run(_config(**wins, winsorize_pct=1.0), str(tmp_path / "c1"), echo=None)
    clipped = scale.run(_config(**wins, winsorize_pct=20.0), str(tmp_path / "c20"), echo=None)
    assert none["summary"]["train_loss"] == pytest.approx(plain["summary"]["train_loss"],
                                                          rel=1e-5)
    assert clipped["summary"]["train_loss"] != pytest.approx(plain["summary"]["train_loss"],
                                                             rel=1e-5)
    assert none["summary"]["updates"] == clipped["summary"]["updates"] == 4
