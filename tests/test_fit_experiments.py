"""The declared Keras-`fit` experiments (`trainers/fit_arm.py`, `memorisation`, `real_vs_random`):
real trainer runs at a tiny size, every table number recomputed here from the arms' own trainer
`results.json` with NumPy, the controls and rules as declared, finished arms read not retrained."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from trainers import catalog, fit_arm, memorisation, real_vs_random, runner, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"num_epochs": 1, "max_train": 300, "max_test": 100}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json(path):
    with open(path) as f:
        return json.load(f)


def _cell(values, fmt):
    """Independent reference for a results.md cell: NumPy mean ± sample sd (ddof 1)."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(np.mean(values), fmt)} ± {format(np.std(values, ddof=1), fmt)}"


def _rows(workdir):
    """The first table of results.md as {arm group: {header: cell}}."""
    lines = (workdir / runner.RESULTS_MD).read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| arm | seeds"))
    header = [c.strip() for c in lines[first].strip("|").split("|")]
    rows = {}
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def _trainer_results(workdir, group, seeds):
    return [_json(workdir / group / f"seed{s}" / "results.json") for s in range(seeds)]


@pytest.fixture(scope="module")
def tiny_memorisation(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("memorisation")
    arms = memorisation.arms("small", 2, TINY, noise_levels=(0.0, 0.5),
                             methods=("sgd", "m3", "sgd_x3"), winsorize_pcts=(2.0,))
    lines = []
    summary = runner.run(memorisation.EXPERIMENT, arms, str(workdir), "test", echo=lines.append)
    assert len(lines) == len(arms) == 14
    return workdir, arms, summary


def test_memorisation_table_is_the_trainer_runs_numbers(tiny_memorisation):
    workdir, arms, summary = tiny_memorisation
    rows = _rows(workdir)
    updates = {"sgd": 5, "m3": 1, "sgd_x3": 2, "winsor2": 4}  # 300 examples: ceil(300/64) = 5
    # batches of 64, M3 one update per 3 (floor(5/3)), SGD×3 ceil(300/192), winsorized drops the
    # partial batch (floor(300/64))
    for group in dict.fromkeys(a.group for a in arms):
        results = _trainer_results(workdir, group, 2)
        row = rows[group]
        for header, key in (("pristine train acc", "pristine_train_accuracy"),
                            ("corrupted train acc (vs noisy label)", "corrupted_train_accuracy"),
                            ("test acc", "test_accuracy")):
            assert row[header] == _cell([r["final"][key] for r in results], ".3f"), (group, header)
        assert row["best test acc (any epoch)"] == _cell(
            [max(r["history"]["val_accuracy"]) for r in results], ".3f")
        assert row["updates"] == f"{updates[group.split('/')[1]]} ± 0"
    assert rows["noise00/sgd"]["corrupted train acc (vs noisy label)"] == "n/a"  # none corrupted
    for name in ("memorisation.png", "winsorization.png"):
        assert (workdir / name).read_bytes()[:8] == PNG_MAGIC


def test_memorisation_controls_and_rules_as_declared(tiny_memorisation):
    workdir, arms, summary = tiny_memorisation
    pairs = {(d["arm"], d["control"], d["metric"]): d for d in summary["comparisons"]}
    assert {(a, c) for a, c, _ in pairs} == {
        (f"noise{n}/m3", f"noise{n}/sgd_x3") for n in ("00", "50")} | {
        (f"noise{n}/m3", f"noise{n}/sgd") for n in ("00", "50")} | {
        ("noise50/winsor2", "noise50/sgd")}
    d = pairs[("noise50/m3", "noise50/sgd_x3", "corrupted")]
    m3, x3 = ([r["final"]["corrupted_train_accuracy"] for r in _trainer_results(workdir, g, 2)]
              for g in ("noise50/m3", "noise50/sgd_x3"))
    np.testing.assert_allclose(d["differences"], np.subtract(m3, x3), rtol=0, atol=1e-15)
    assert d["mean"] == pytest.approx(np.mean(np.subtract(m3, x3)), abs=1e-15)
    # rules at 50 % noise, on memorisation; RM3's is absent because RM3 was not planned
    assert [v["rule"] for v in summary["verdicts"]] == ["m3_vs_update_count_control",
                                                        "m3_vs_sgd", "winsor2_vs_sgd"]
    rule = memorisation.rules(arms)[0]
    assert (rule.metric, rule.arm, rule.control, rule.prediction) == (
        "corrupted", "noise50/m3", "noise50/sgd_x3", "lower")


def test_memorisation_tiny_rerun_reads_finished_arms(tiny_memorisation, monkeypatch):
    workdir, arms, _ = tiny_memorisation
    before = (workdir / runner.RESULTS_MD).read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr(train, "train_and_evaluate", refuse)
    runner.run(memorisation.EXPERIMENT, arms, str(workdir), "test", echo=None)
    assert (workdir / runner.RESULTS_MD).read_bytes() == before


def test_real_vs_random_tiny_pairwise_coherence_and_rules(tmp_path):
    m, every = 8, 2
    arms = real_vs_random.arms("small", 1, {**TINY, "coherence.monitor_samples": m,
                                            "coherence.monitor_every_steps": every,
                                            "learning_times.every_steps": 0})
    assert [(a.group, a.config.label_noise) for a in arms] == [("real", 0.0), ("random", 1.0)]
    summary = runner.run(real_vs_random.EXPERIMENT, arms, str(tmp_path), "test", echo=None)
    for group in ("real", "random"):
        (result,) = _trainer_results(tmp_path, group, 1)
        steps = result["step_history"]
        assert steps["step"] == [0, 2, 4, 5]  # 5 batches: step 0, every 2, the epoch end
        r = np.array(steps["coherence/train/m_coherence"])
        np.testing.assert_allclose(steps["coherence/train/pairwise_coherence"], (r - 1) / (m - 1),
                                   rtol=1e-5)  # logged in float32 by the monitor
        metrics = summary["groups"][group]["metrics"]
        value = {k: v["mean"] for k, v in metrics.items()}
        assert value["pw_train_first"] == steps["coherence/train/pairwise_coherence"][0]
        assert value["pw_train_early"] == steps["coherence/train/pairwise_coherence"][1]
        assert value["pw_train_max"] == max(steps["coherence/train/pairwise_coherence"])
        assert value["coh_train_argmax"] == steps["step"][int(np.argmax(r))]
        assert value["pw_test_last"] == result["history"]["coherence/test/pairwise_coherence"][-1]
    assert {d["metric"] for d in summary["comparisons"]} == set(real_vs_random.COMPARED)
    assert all((d["arm"], d["control"]) == ("real", "random") for d in summary["comparisons"])
    assert [v["rule"] for v in summary["verdicts"]] == [r.name for r in real_vs_random.RULES]
    assert all(v["text"].startswith("undetermined") for v in summary["verdicts"])  # one seed
    for name in summary["figures"]:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert summary["figures"] == ["coherence_vs_step.png", "coherence_per_layer.png",
                                  "coherence_vs_epoch.png"]


def test_update_counts_and_readings_by_hand():
    result = {"config": {"batch_size": 64, "drop_remainder": False,
                         "optimizer": {"name": "m3", "groups": 3, "window": 3},
                         "coherence": {"monitor_every_steps": 9}},
              "dataset": {"num_train": 4000}, "epochs_completed": 30,
              "final": {"test_accuracy": 0.5}, "history": {"f": [0.3, None, 0.1, 0.2]}}
    assert fit_arm.count_updates(result) == 63 * 30 // 3  # 630
    result["config"]["optimizer"]["m3_in_batch"] = True  # k groups of one batch: every batch
    assert fit_arm.count_updates(result) == 63 * 30
    result["config"]["optimizer"].update(name="m5", m3_in_batch=False)
    assert fit_arm.count_updates(result) == 63 * 30 // 5
    result["config"]["optimizer"]["name"] = "rm3"
    assert fit_arm.count_updates(result) == 63 * 30 - 2
    result["config"]["optimizer"]["name"] = "sgd"
    result["config"]["batch_size"] = 192
    assert fit_arm.count_updates(result) == 21 * 30  # = M3's 630: the update-count control
    result["config"]["drop_remainder"] = True
    assert fit_arm.count_updates(result) == 20 * 30
    for reducer, expected in (("first", 0.3), ("last", 0.2), ("max", 0.3), ("min", 0.1),
                              ("mean", 0.2)):
        assert fit_arm.read(result, ("history", "f", reducer)) == pytest.approx(expected,
                                                                                 rel=1e-15)
    assert fit_arm.read(result, ("history", "absent", "last")) is None
    assert fit_arm.read(result, ("final", "test_accuracy")) == 0.5
    result["step_history"] = {"step": [0, 9, 18, 20], "f": [0.5, 0.9, None, 0.7]}
    assert fit_arm.read(result, ("step_history", "f", "min")) == 0.5
    assert fit_arm.read(result, ("step_at", "f", "every")) == 0.9
    assert fit_arm.read(result, ("step_of_max", "f")) == 9.0
    result["config"]["coherence"]["monitor_every_steps"] = 0
    assert fit_arm.read(result, ("step_at", "f", "every")) is None
    with pytest.raises(ValueError, match="unknown source"):
        fit_arm.read(result, ("epoch", "f"))


@pytest.mark.parametrize("scale, dataset, lr, batch, decay", [
    ("cifar10", "cifar10", 0.1, 128, 5e-4), ("imagenet", "imagenet2012", 0.1, 256, 1e-4)])
def test_larger_scales_use_the_authors_recipes(scale, dataset, lr, batch, decay):
    configs = {a.group: a.config for a in catalog.plan("memorisation", scale, 1)[0]}
    m3, sgd = configs["noise50/m3"], configs["noise50/sgd"]
    assert (m3.dataset, m3.learning_rate) == (dataset, lr)
    assert (m3.optimizer.momentum, m3.optimizer.l2, m3.optimizer.weight_decay) == (0.0, decay, 0.0)
    assert (sgd.optimizer.weight_decay, sgd.batch_size) == (decay, batch)
    assert configs["noise50/sgd_x3"].batch_size == 3 * batch
    assert not [g for g in configs if "winsor" in g]  # the ResNets normalise by batch statistics
    with pytest.raises(ValueError, match="normalises by the batch's statistics"):
        memorisation.arms(scale, 1, winsorize_pcts=(2.0,))
    real, random = (a.config for a in catalog.plan("real_vs_random", scale, 1)[0])
    assert (real.label_noise, random.label_noise) == (0.0, 1.0)
    assert real.coherence.monitor_samples > 0 and real.dataset == dataset


def test_bad_arms_raise_one_line_before_anything():
    with pytest.raises(ValueError, match="method='adamw' is unknown; allowed: sgd, m3"):
        memorisation.arms("small", 1, methods=("sgd", "adamw"))
    with pytest.raises(ValueError, match="no field 'num_epoch'"):
        memorisation.arms("small", 1, {"num_epoch": 3})
    with pytest.raises(ValueError, match="monitor_samples > 0"):
        real_vs_random.arms("small", 1, {"coherence.monitor_samples": 0})
    with pytest.raises(ValueError, match="scale='tpu' is unknown"):
        fit_arm.base_config("default", "tpu")


def test_the_config_files_list_the_arms_the_experiments_plan():
    from configs import real_vs_random as rvr_config
    from configs import winsorize

    assert tuple(c for c in winsorize.get_config().sweep["values"] if c) == \
        memorisation.SMALL_WINSORIZE_PCTS
    assert tuple(rvr_config.get_config().sweep["values"]) == tuple(
        noise for noise, _ in real_vs_random.ARMS.values())


def test_cli_reproduce_of_a_fit_experiment_prints_one_line_per_arm(tmp_path):
    """Quiet by default (issue 25): the runner's line per arm, then the report; the trainer runs
    of the arms print neither Keras' epoch lines nor their absl INFO lines."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "trainers.reproduce", "--experiment=real_vs_random",
         f"--workdir={tmp_path}", "--seeds=1", "--set=num_epochs=2", "--set=max_train=200",
         "--set=max_test=100", "--set=coherence.monitor_samples=8"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (done.stdout + done.stderr).splitlines()
    arm_lines = [line for line in lines if re.match(r"\[\d/2\] (real|random)/seed0: ", line)]
    assert len(arm_lines) == 2, lines
    assert not [line for line in lines if re.match(r"Epoch \d|I\d{4} |\d+/\d+ - ", line)], lines
