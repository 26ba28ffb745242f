"""`trainers.reproduce` and `trainers.demo`: the one CLI path's argument checks, and the demo (the
declared `memorisation` experiment at 50 % noise) run for real at a tiny size. The experiments
themselves: tests/test_fit_experiments.py, test_beyond_papers.py and the experiment tests; every
experiment's dry run: tests/test_dry_run.py."""

import json
import os

import pytest

from trainers import catalog, demo, reproduce

from native_log import program_lines

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _json(path):
    with open(path) as f:
        return json.load(f)


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path


def _arm_results(workdir, group):
    return [_json(os.path.join(workdir, group, "seed0", "results.json"))]


def test_demo_runs_the_50_percent_memorisation_arms_and_prints_table(tmp_path):
    summary = demo.run_demo(str(tmp_path), arms=("sgd", "sgd_x3"), epochs=1,
                            overrides={"max_train": 192, "max_test": 50}, echo=None)
    assert list(summary["groups"]) == ["noise50/sgd", "noise50/sgd_x3"]
    text = demo.summary_text(str(tmp_path), summary)
    assert os.path.join(str(tmp_path), "memorisation.png") in text
    assert "| noise50/sgd | 1 |" in text and "Arm − control" not in text  # the first table
    _assert_png(tmp_path / "memorisation.png")
    (result,) = _arm_results(tmp_path, "noise50/sgd")
    assert result["config"]["label_noise"] == 0.5 and result["epochs_completed"] == 1
    # --fresh retrains: the finished arm is deleted first.
    demo.run_demo(str(tmp_path), arms=("sgd",), epochs=1, fresh=True,
                  overrides={"max_train": 192, "max_test": 50}, echo=None)
    assert _json(tmp_path / "noise50/sgd/seed0/timings.json")["epochs_this_invocation"] == 1


def test_bad_names_and_overrides_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="experiment='memorization' is unknown; allowed: "
                                         "memorisation, real_vs_random"):
        reproduce.reproduce("memorization", str(tmp_path), dry_run=True)
    with pytest.raises(ValueError, match="--scale=tpu is not available for memorisation; "
                                         "allowed: small, cifar10, imagenet"):
        reproduce.reproduce("memorisation", str(tmp_path), scale="tpu", dry_run=True)
    with pytest.raises(ValueError, match="no field 'num_epoch'"):
        reproduce.reproduce("memorisation", str(tmp_path), set_items=["num_epoch=3"],
                            dry_run=True)
    with pytest.raises(ValueError) as error:  # ml_collections' TypeError, as one line
        reproduce.reproduce("memorisation", str(tmp_path), set_items=["num_epochs=1.5"],
                            dry_run=True)
    assert str(error.value).startswith("override num_epochs=1.5: ") and "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []
    assert reproduce.parse_overrides(["num_epochs=5", "lr_schedule.decay_epochs=(3, 6)",
                                      "dataset=mnist", "max_train=None"]) == {
        "num_epochs": 5, "lr_schedule.decay_epochs": (3, 6), "dataset": "mnist",
        "max_train": None}
    with pytest.raises(ValueError, match="must look like FIELD=VALUE"):
        reproduce.parse_overrides(["num_epochs"])
    assert set(catalog.SCALES) == {s for n in catalog.NAMES for s in catalog.declared(n).scales}


def test_demo_pairs_every_robust_arm_with_its_control():
    arms = demo.demo_arms()
    assert [arm.group for arm in arms] == ["noise50/sgd", "noise50/m3", "noise50/sgd_x3",
                                           "noise50/rm3", "noise50/ra3", "noise50/winsor2"]
    configs = {arm.group: arm.config for arm in arms}
    winsorized, sgd = configs["noise50/winsor2"], configs["noise50/sgd"]
    assert (winsorized.optimizer.aggregation, winsorized.optimizer.winsorize_pct) == ("winsorize",
                                                                                      2.0)
    assert winsorized.batch_size == sgd.batch_size and winsorized.optimizer.name == "sgd"
    assert configs["noise50/sgd_x3"].batch_size == 3 * sgd.batch_size
    assert {c.num_epochs for c in configs.values()} == {demo.DEMO_EPOCHS}
    assert demo.parse_arms("winsorized, sgd") == ["winsorized", "sgd"]


@pytest.mark.slow
def test_every_binary_s_flag_errors_are_one_line(tmp_path):
    """An unknown value, a value of the wrong type, an unknown flag, a missing required flag, an
    argument that is not a flag: exit status 1 and one line `error: ...`, nothing written (was:
    absl's "FATAL Flags parsing error" and a second line; the demo's --arms its usage text)."""
    import subprocess
    import sys

    workdir = f"--workdir={tmp_path / 'w'}"
    cases = {
        ("trainers.reproduce", "--experiment=nope", workdir): "error: flag --experiment=nope: "
        "value should be one of <memorisation|",
        ("trainers.reproduce", "--experiment=scale", "--seeds=x", workdir): "error: flag "
        "--seeds=x: invalid literal for int() with base 10: 'x'",
        ("trainers.reproduce", "--experiment=scale"): "error: flag --workdir=None: Flag "
        "--workdir must have a value other than None.",
        ("trainers.reproduce", "--experiment=scale", workdir, "--dry_run", "extra"):
            "error: unexpected arguments ['extra']; every option is a --flag",
        ("trainers.demo", workdir, "--bogus=1"): "error: Unknown command line flag 'bogus'",
        ("trainers.demo", workdir, "--arms=sgd,zz"): "error: unknown arms ['zz']; allowed: sgd, "
        "m3, rm3, ra3, sgd_x3, winsorized",
        ("trainers.publish", "--collect=nope=DIR", "--root=/nonexistent"): "error: --collect="
        "'nope=DIR' must be NAME[/SETTING]=WORKDIR with NAME one of memorisation, ",
        ("trainers.publish", "--root"): "error: Missing value for flag --root",
        ("trainers.publish", "extra"): "error: unexpected arguments ['extra']; every option is a "
        "--flag"}
    started = {case: subprocess.Popen([sys.executable, "-m", *case], cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for case in cases}
    for case, message in cases.items():
        stdout, stderr = started[case].communicate(timeout=300)
        lines = program_lines(stderr)
        assert started[case].returncode == 1 and len(lines) == 1, (case, stderr[-2000:])
        assert lines[0].startswith(message) and stdout == "", (case, lines)
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.parametrize("program, flags", [
    ("trainers.train", ["--config=configs/default.py", "--config.max_train=64"]),
    ("trainers.reproduce", ["--experiment=double_descent", "--seeds=1"])])
def test_a_file_system_error_is_one_line_naming_the_path(tmp_path, program, flags):
    """A path the program must write that cannot be written (here the workdir's lock file is a
    directory): exit status 1 and one line naming it, not a traceback (trainers.demo catches the
    same `train.RUN_ERRORS` as trainers.reproduce)."""
    import subprocess
    import sys

    lock = tmp_path / ".cgh_tf.lock"
    lock.mkdir()
    done = subprocess.run([sys.executable, "-m", program, *flags, f"--workdir={tmp_path}"],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: [Errno 21] Is a directory: '{lock}'"], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and sorted(os.listdir(tmp_path)) == [lock.name]
