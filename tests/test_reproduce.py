"""`trainers.reproduce` / `sweeps` / `report` / `demo`: every experiment at a tiny size.

Each experiment runs for real (in-process `train_and_evaluate`, 1 epoch, a few hundred MNIST-1D
examples); the tests check the files it writes (PNG, markdown, JSON, TensorBoard), that every
number of `results.md` is the mean (± sample sd) of the per-arm `results.json` values recomputed
here independently with NumPy, that finished arms are skipped on a re-run, and that the CIFAR-10 /
ImageNet versions produce valid configs with the authors' hyperparameters.
"""

import glob
import json
import os

import numpy as np
import pytest

from trainers import config_schema, demo, report, reproduce, sweep, sweeps

TINY = {"num_epochs": 1, "max_train": 300, "max_test": 100}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json(path):
    with open(path) as f:
        return json.load(f)


def _assert_png(path):
    from matplotlib import image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01  # not a blank canvas


def _table(workdir):
    """results.md table as {(setting?, arm label): {header: cell}}."""
    with open(os.path.join(workdir, report.RESULTS_MD)) as f:
        text = f.read()
    assert text.startswith("# ") and "Command: `" in text
    rows = report.parse_markdown_table(text)
    header, body = rows[0], rows[1:]
    assert all(len(row) == len(header) for row in body)
    return header, {tuple(row[:header.index("seeds")]): dict(zip(header, row)) for row in body}


def _cell(values, fmt):
    """Independent reference for a results.md cell: NumPy mean and sample sd (ddof=1)."""
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(np.mean(values), fmt)} ± {format(np.std(values, ddof=1), fmt)}"


def _arm_results(workdir, group):
    paths = sorted(glob.glob(os.path.join(workdir, group, "seed*", "results.json")))
    assert paths, f"no arm results under {workdir}/{group}"
    return [_json(p) for p in paths]


def _run(experiment, workdir):
    lines = []
    summary = reproduce.run(experiment, str(workdir), "python -m trainers.reproduce TEST",
                            echo=lines.append)
    assert len(lines) == len(experiment.arms)
    return summary


# ----------------------------------------------------------------------------------------------
# Experiments at a tiny size
# ----------------------------------------------------------------------------------------------

def test_memorisation_tiny_files_numbers_and_skip_on_rerun(tmp_path):
    experiment = sweeps.build("memorisation", seeds=1, overrides=TINY,
                                   noise_levels=(0.0, 0.5), winsorize_pcts=(2.0,),
                                   winsorize_max_train=200)
    groups = experiment.groups()
    assert groups == [f"noise{p}/{m}" for p in ("00", "50") for m in (
        "sgd", "m3", "rm3", "ra3", "sgd_x3")] + ["noise50_n200/winsor0", "noise50_n200/winsor2"]
    summary = _run(experiment, tmp_path)

    for name in ("memorisation.png", "winsorization.png"):
        _assert_png(tmp_path / name)
    for arm in experiment.arms:
        arm_dir = tmp_path / arm.path
        assert glob.glob(str(arm_dir / "tensorboard" / "train" / "events.out.tfevents.*"))
        assert glob.glob(str(arm_dir / "tensorboard" / "validation" / "events.out.tfevents.*"))
        assert glob.glob(str(arm_dir / "hparams" / "events.out.tfevents.*"))  # HParams session
    assert glob.glob(str(tmp_path / "events.out.tfevents.*.hparams_config"))
    assert _json(tmp_path / "results.json") == json.loads(json.dumps(summary))

    header, table = _table(tmp_path)
    assert header[:3] == ["setting", "arm", "seeds"]
    finals = {"pristine train acc": "pristine_train_accuracy",
              "corrupted train acc (vs noisy label)": "corrupted_train_accuracy",
              "test acc": "test_accuracy"}
    for group in groups:
        arm = next(a for a in experiment.arms if a.group == group)
        row = table[(arm.panel, arm.label)]
        results = _arm_results(tmp_path, group)
        for column, key in finals.items():
            assert row[column] == _cell([r["final"][key] for r in results], ".3f"), (group, column)
        assert row["best test acc (any epoch)"] == _cell(
            [max(r["history"]["val_accuracy"]) for r in results], ".3f")
    # 0 % noise: no corrupted examples, so no memorisation number.
    assert table[("0% noise", "SGD")]["corrupted train acc (vs noisy label)"] == "n/a"
    # The control makes M3's number of updates: ceil(300/192) = 2 updates vs floor(ceil(300/64)/3) = 1
    # here (equal, 21 per epoch, at the default 4000 examples).
    assert table[("50% noise", "SGD")]["updates"] == "5"
    assert table[("50% noise", "M3")]["updates"] == "1"
    assert table[("50% noise", "RM3")]["updates"] == "3"
    assert table[("50% noise", "SGD, batch x3 (M3's update count)")]["updates"] == "2"
    # Winsorization rows: first 200 examples, drop_remainder: 3 batches of 64 per epoch.
    assert table[("50% noise, 200 examples", "SGD (c=0)")]["updates"] == "3"
    assert table[("50% noise, 200 examples", "winsorized SGD, c=2%")]["updates"] == "3"

    # Each robust arm against its matched control, paired by seed (one seed: no interval).
    pairs = {(d["arm"], d["control"], d["metric"]): d for d in summary["comparisons"]}
    d = pairs[("noise50/m3", "noise50/sgd_x3", "test")]
    m3, x3 = (_arm_results(tmp_path, g)[0]["final"]["test_accuracy"]
              for g in ("noise50/m3", "noise50/sgd_x3"))
    assert list(d["differences"]) == [m3 - x3] and d["low"] is None and d["n"] == 1
    assert ("noise50_n200/winsor2", "noise50_n200/winsor0", "updates") in pairs
    assert "Arm − control, paired by seed" in (tmp_path / "results.md").read_text()

    # Arm configs: what each arm claims to be.
    configs = {a.group: a.config for a in experiment.arms}
    assert configs["noise50/sgd_x3"].batch_size == 3 * configs["noise50/sgd"].batch_size
    assert configs["noise50/m3"].optimizer.name == "m3"
    winsor, plain = configs["noise50_n200/winsor2"], configs["noise50_n200/winsor0"]
    assert (winsor.optimizer.aggregation, winsor.optimizer.winsorize_pct) == ("winsorize", 2.0)
    assert plain.optimizer.aggregation == "mean" and plain.drop_remainder and winsor.drop_remainder
    assert plain.max_train == winsor.max_train == 200
    assert all(c.optimizer.momentum == 0.0 for c in configs.values())
    assert configs["noise00/sgd"].label_noise == 0.0 and configs["noise50/ra3"].label_noise == 0.5

    # A re-run skips every finished arm and rewrites identical tables.
    before = (tmp_path / "results.md").read_bytes()
    _run(experiment, tmp_path)
    timings = _json(tmp_path / reproduce.TIMINGS_FILE)
    assert all(entry["skipped"] for entry in timings["arms"].values())
    assert (tmp_path / "results.md").read_bytes() == before


def test_real_vs_random_coherence_curves_and_per_layer_figure(tmp_path):
    experiment = sweeps.build("real_vs_random", seeds=1,
                                   overrides={**TINY, "coherence.monitor_samples": 8,
                                              "learning_times.every_steps": 0})
    assert [a.config.label_noise for a in experiment.arms] == [0.0, 1.0]
    _run(experiment, tmp_path)
    for figure in experiment.figures:
        _assert_png(tmp_path / figure.file)
    _, table = _table(tmp_path)
    for group, label in (("real", "real labels"), ("random", "random labels")):
        (result,) = _arm_results(tmp_path, group)
        history = result["history"]
        row = table[(label,)]
        assert row["m-coh. train (last)"] == _cell([history["coherence/train/m_coherence"][-1]],
                                                   ".2f")
        assert row["m-coh. test sample (last)"] == _cell(
            [history["coherence/test/m_coherence"][-1]], ".2f")
        assert 0 < history["coherence/train/m_coherence"][-1] <= 8  # r in [0, m], m = 8
        steps = result["step_history"]  # every 9 steps; 5 steps: step 0 and the epoch end
        assert steps["step"] == [0, 5]
        assert row["m-coh. train sample (first measurement, step 0)"] == _cell(
            [steps["coherence/train/m_coherence"][0]], ".2f")
        assert row["m-coh. train (after 9 steps)"] == "n/a"
        assert row["step of that max"] == _cell(
            [float(steps["step"][int(np.argmax(steps["coherence/train/m_coherence"]))])], ".0f")
    columns = report.expand_columns(experiment.figures[2].columns, {"r": result})
    assert [key for key, _ in columns] == [f"coherence/train/{layer}/m_coherence"
                                           for layer in ("dense_0", "dense_1", "logits")]


def test_easy_hard_tiny_reads_the_parts_of_each_arm(tmp_path):
    experiment = sweeps.build("easy_hard", seeds=1,
                                   overrides={**TINY, "easy_hard.probe_epochs": 1})
    _run(experiment, tmp_path)
    _assert_png(tmp_path / "easy_hard.png")
    (result,) = _arm_results(tmp_path, "easy_hard")
    _, table = _table(tmp_path)
    row = table[("easy / hard",)]
    assert row["easy: test acc (own held-out part)"] == _cell(
        [result["final"]["easy_test_accuracy"]], ".3f")
    assert row["hard: test acc (own held-out part)"] == _cell(
        [result["final"]["hard_test_accuracy"]], ".3f")
    easy = _json(tmp_path / "easy_hard" / "seed0" / "easy" / "results.json")
    assert row["easy: train acc (last)"] == _cell([easy["history"]["accuracy"][-1]], ".3f")
    assert int(row["easy examples"]) + int(row["hard examples"]) == 300


def test_demo_runs_the_50_percent_memorisation_arms_and_prints_table(tmp_path):
    summary = demo.run_demo(str(tmp_path), arms=("sgd", "sgd_x3"), epochs=1,
                            overrides={"max_train": 192, "max_test": 50}, echo=None)
    assert list(summary["groups"]) == ["noise50/sgd", "noise50/sgd_x3"]
    text = demo.summary_text(str(tmp_path), summary)
    assert os.path.join(str(tmp_path), "memorisation.png") in text
    assert "| 50% noise | SGD | 1 |" in text
    _assert_png(tmp_path / "memorisation.png")
    (result,) = _arm_results(tmp_path, "noise50/sgd")
    assert result["config"]["label_noise"] == 0.5 and result["epochs_completed"] == 1
    # --fresh retrains: the finished arm is deleted first.
    demo.run_demo(str(tmp_path), arms=("sgd",), epochs=1, fresh=True,
                  overrides={"max_train": 192, "max_test": 50}, echo=None)
    assert not _json(tmp_path / reproduce.TIMINGS_FILE)["arms"]["noise50/sgd/seed0"]["skipped"]


# ----------------------------------------------------------------------------------------------
# Larger scales: configs only
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale, dataset, model, lr, batch", [
    ("cifar10", "cifar10", "resnet18_cifar", 0.1, 128),
    ("imagenet", "imagenet2012", "resnet50_imagenet", 0.1, 256),
])
def test_scales_give_valid_configs_with_the_authors_hyperparameters(tmp_path, scale, dataset,
                                                                    model, lr, batch):
    for name in sweeps.EXPERIMENTS:
        experiment = sweeps.build(name, scale=scale, seeds=2)
        assert len({a.path for a in experiment.arms}) == len(experiment.arms)
        for arm in experiment.arms:
            config_schema.validate(arm.config)
            assert arm.config.dataset == dataset and arm.config.learning_rate == lr
            assert arm.config.model.name == model or name == "easy_hard"
    memorisation = {a.group: a.config for a in sweeps.build("memorisation", scale).arms}
    decay = 5e-4 if scale == "cifar10" else 1e-4
    m3 = memorisation["noise50/m3"]
    assert (m3.optimizer.momentum, m3.optimizer.l2, m3.optimizer.weight_decay) == (0.0, decay, 0.0)
    sgd = memorisation["noise50/sgd"]
    assert (sgd.optimizer.momentum, sgd.optimizer.weight_decay, sgd.batch_size) == (0.0, decay,
                                                                                   batch)
    assert memorisation["noise50/sgd_x3"].batch_size == 3 * batch
    assert memorisation["noise25/rm3"].label_noise == 0.25
    assert sgd.num_epochs == (200 if scale == "cifar10" else 90)
    plan = _json(reproduce.write_plan(sweeps.build("real_vs_random", scale),
                                      str(tmp_path / scale)))
    assert plan["arms"]["random/seed0"]["config"]["label_noise"] == 1.0
    assert plan["arms"]["real/seed0"]["config"]["coherence"]["monitor_samples"] > 0


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------

def test_mean_and_sd_and_cells_match_numpy():
    values = [0.25, 0.5, 0.875]
    mean, std = report.mean_and_std(values)
    assert mean == pytest.approx(np.mean(values), rel=1e-15)
    assert std == pytest.approx(np.std(values, ddof=1), rel=1e-15)
    assert report.mean_and_std([0.3]) == (0.3, None) and report.mean_and_std([]) == (None, None)
    assert report.format_cell({"mean": mean, "std": std}, ".3f") == "0.542 ± 0.315"  # sd = sqrt(0.197917 / 2)
    assert report.format_cell({"mean": 0.3, "std": None}, ".2f") == "0.30"
    assert report.format_cell({"mean": None, "std": None}, ".2f") == "n/a"


def test_metric_values_and_update_counts_by_hand():
    result = {"config": {"batch_size": 64, "drop_remainder": False,
                         "optimizer": {"name": "m3", "groups": 3, "window": 3}},
              "dataset": {"num_train": 4000}, "epochs_completed": 30,
              "final": {"test_accuracy": 0.5}, "history": {"f": [0.3, None, 0.1, 0.2]}}
    assert report.count_updates(result) == 63 * 30 // 3  # 630
    result["config"]["optimizer"]["m3_in_batch"] = True  # k groups of one batch: every batch
    assert report.count_updates(result) == 63 * 30
    result["config"]["optimizer"]["name"] = "m5"
    assert report.count_updates(result) == 63 * 30
    result["config"]["optimizer"]["m3_in_batch"] = False
    assert report.count_updates(result) == 63 * 30 // 5
    result["config"]["optimizer"]["name"] = "ra4"
    assert report.count_updates(result) == 63 * 30 - 3
    result["config"]["optimizer"]["name"] = "rm3"
    assert report.count_updates(result) == 63 * 30 - 2
    result["config"]["optimizer"]["name"] = "sgd"
    result["config"]["batch_size"] = 192
    assert report.count_updates(result) == 21 * 30  # = M3's 630: the control
    result["config"]["drop_remainder"] = True
    assert report.count_updates(result) == 20 * 30
    Metric = sweep.Metric
    for reducer, expected in (("first", 0.3), ("last", 0.2), ("max", 0.3), ("min", 0.1),
                              ("mean", 0.2)):
        value = report.metric_value(result, Metric("x", "x", ("history", "f", reducer)))
        assert value == pytest.approx(expected, rel=1e-15)
    assert report.metric_value(result, Metric("x", "x", ("history", "absent", "last"))) is None
    assert report.metric_value(result, Metric("x", "x", ("final", "test_accuracy"))) == 0.5
    result["step_history"] = {"step": [0, 9, 18, 20], "f": [0.5, 0.9, None, 0.7]}
    assert report.metric_value(result, Metric("x", "x", ("step_history", "f", "min"))) == 0.5
    assert report.metric_value(result, Metric("x", "x", ("step_at", "f", 9))) == 0.9
    assert report.metric_value(result, Metric("x", "x", ("step_at", "f", 18))) is None
    assert report.metric_value(result, Metric("x", "x", ("step_of_max", "f"))) == 9.0


def test_bad_names_and_overrides_raise_clear_errors():
    with pytest.raises(ValueError, match="allowed: real_vs_random, memorisation"):
        sweeps.build("memorization")
    with pytest.raises(ValueError, match="scale='tpu' is unknown; allowed: small, cifar10"):
        sweeps.build("memorisation", scale="tpu")
    with pytest.raises(ValueError, match="seeds=0 must be a positive int"):
        sweeps.build("memorisation", seeds=0)
    with pytest.raises(ValueError, match="no field 'num_epoch'"):
        sweeps.build("memorisation", overrides={"num_epoch": 3})
    with pytest.raises(ValueError) as error:  # ml_collections' TypeError, as one line
        sweeps.build("memorisation", overrides={"num_epochs": 1.5})
    assert str(error.value).startswith("override num_epochs=1.5: ") and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="method='adamw' is unknown"):
        sweeps.build("memorisation", methods=("sgd", "adamw"))
    assert reproduce.parse_overrides(["num_epochs=5", "lr_schedule.decay_epochs=(3, 6)",
                                      "dataset=mnist", "max_train=None"]) == {
        "num_epochs": 5, "lr_schedule.decay_epochs": (3, 6), "dataset": "mnist",
        "max_train": None}
    with pytest.raises(ValueError, match="must look like FIELD=VALUE"):
        reproduce.parse_overrides(["num_epochs"])


def test_demo_pairs_every_robust_arm_with_its_control():
    experiment = demo.demo_experiment()
    assert experiment.groups() == ["noise50/sgd", "noise50/m3", "noise50/sgd_x3", "noise50/rm3",
                                   "noise50/ra3", "noise50/winsor2"]
    configs = {arm.group: arm.config for arm in experiment.arms}
    winsorized, sgd = configs["noise50/winsor2"], configs["noise50/sgd"]
    assert (winsorized.optimizer.aggregation, winsorized.optimizer.winsorize_pct) == ("winsorize",
                                                                                      2.0)
    assert winsorized.batch_size == sgd.batch_size and winsorized.optimizer.name == "sgd"
    assert configs["noise50/sgd_x3"].batch_size == 3 * sgd.batch_size
    assert {c.num_epochs for c in configs.values()} == {demo.DEMO_EPOCHS}
    assert demo.parse_arms("winsorized, sgd") == ["winsorized", "sgd"]
