"""Quiet by default (cgh_tf/quiet.py): a default trainer run prints Keras' line per epoch and the
results, nothing from TensorFlow's C++ runtime; `--verbosity` brings the rest back; a config error
is one line."""

import logging
import os
import re
import subprocess
import sys

import pytest

from cgh_tf import quiet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 2
TINY = ["--config=configs/default.py", "--config.max_train=200", "--config.max_test=100",
        f"--config.num_epochs={EPOCHS}", "--config.model.kwargs.width=16", "--config.batch_size=50",
        "--config.eval_batch_size=100", "--noprogress"]
NOISE = ("cuInit", "use_unbounded_threadpool", "oneDNN", "absl::InitializeLog", "cuda drivers",
         "Sharding callback", "cpu_feature_guard")


def test_verbosity_given():
    assert not quiet.verbosity_given(["-m", "--workdir=x", "--config.verbose=1"])
    for given in (["--verbosity=0"], ["-v", "1"], ["-v=1"], ["--verbosity", "0"]):
        assert quiet.verbosity_given(["-m", *given])


def test_running_as_program():
    python = "/venv/bin/python"
    assert quiet.running_as_program(["-m"], [python, "-m", "trainers.train", "--workdir=x"])
    assert quiet.running_as_program(["-m"], [python, "-u", "-m", "cgh_tf.trainers.reproduce"])
    assert quiet.running_as_program(["/venv/bin/cgh-train", "--workdir=x"], [python, "cgh-train"])
    assert not quiet.running_as_program(["-m"], [python, "-m", "pytest", "tests"])
    assert not quiet.running_as_program(["-m"], [python, "-m", "my_trainers.train"])
    assert not quiet.running_as_program(["train.py"], [python, "train.py"])
    assert not quiet.running_as_program([], [])


def test_stderr_held_back_drops_the_output_of_a_block_that_succeeds(capfd):
    with quiet.stderr_held_back():
        os.write(2, b"banner\n")
    assert capfd.readouterr().err == ""


def test_stderr_held_back_shows_the_output_of_a_block_that_fails(capfd):
    with pytest.raises(ImportError):
        with quiet.stderr_held_back():
            os.write(2, b"why the import failed\n")
            raise ImportError("no")
    assert capfd.readouterr().err == "why the import failed\n"


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR])
def test_logs_at_least_hides_lower_records_for_the_block_only(level, caplog):
    from absl import logging as absl_logging

    loggers = [logging.getLogger("absl"), logging.getLogger("tensorflow")]
    before = [logger.level for logger in loggers]
    caplog.set_level(logging.INFO)
    try:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)  # inherits the root's INFO
        with quiet.logs_at_least(level):
            absl_logging.info("hidden")
            assert all(not lg.isEnabledFor(level - 10) and lg.isEnabledFor(level) for lg in loggers)
        assert [logger.level for logger in loggers] == [logging.NOTSET] * 2  # own levels back
        absl_logging.info("shown")
        loggers[0].setLevel(logging.ERROR)  # already quieter: not made louder
        with quiet.logs_at_least(logging.WARNING):
            assert loggers[0].getEffectiveLevel() == logging.ERROR
    finally:
        for logger, own in zip(loggers, before):
            logger.setLevel(own)
    assert [r.getMessage() for r in caplog.records] == ["shown"]


def test_warnings_only_from_a_directory():
    keep = quiet.WarningsOnlyFrom("/site/tensorflow")

    def record(level, path):
        return logging.LogRecord("absl", level, path, 1, "message", (), None)

    assert not keep.filter(record(logging.INFO, "/site/tensorflow/python/saver.py"))
    assert keep.filter(record(logging.WARNING, "/site/tensorflow/python/saver.py"))
    assert keep.filter(record(logging.INFO, "/repo/trainers/single_run.py"))
    assert keep.filter(record(logging.INFO, "/site/tensorflow_datasets/core.py"))


def _train(workdir, *extra):
    """A default run: no TF_CPP_MIN_LOG_LEVEL, no CUDA_VISIBLE_DEVICES; stdout + stderr lines."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    out = subprocess.run([sys.executable, "-m", "trainers.train", *TINY, f"--workdir={workdir}",
                          *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return out.returncode, (out.stdout + out.stderr).splitlines()


@pytest.mark.slow
def test_a_default_run_prints_one_keras_line_per_epoch_and_the_results(tmp_path):
    returncode, lines = _train(tmp_path / "run")
    assert returncode == 0, "\n".join(lines[-30:])
    assert len(lines) == 2 * EPOCHS + 1, lines  # "Epoch k/N" + Keras' line per epoch, results
    for epoch in range(EPOCHS):
        assert lines[2 * epoch] == f"Epoch {epoch + 1}/{EPOCHS}"
        assert re.match(r"\d+/\d+ - .* - loss: [\d.]+ .*- val_loss: ", lines[2 * epoch + 1])
    assert lines[-1].endswith(f"results in {tmp_path / 'run' / 'results.json'}")

    returncode, verbose = _train(tmp_path / "verbose", "--verbosity=1")
    assert returncode == 0, "\n".join(verbose[-30:])
    assert sum(f"epoch {epoch + 1}/{EPOCHS}: " in line for line in verbose
               for epoch in range(EPOCHS)) == EPOCHS  # the absl epoch line is DEBUG
    assert len(verbose) > len(lines)


@pytest.mark.slow
def test_a_config_error_is_one_line(tmp_path):
    returncode, lines = _train(tmp_path / "bad", "--config.num_epochs=-1")
    assert returncode == 1
    assert len(lines) == 1 and lines[0].startswith("error: ") and "num_epochs" in lines[0], lines
    assert not any(noise in lines[0] for noise in NOISE)
