"""The installed package: the wheel puts only `cgh_tf` in site-packages (trainers and configs as
`cgh_tf.trainers` / `cgh_tf.configs`), and its console script trains from any directory with a
shipped config named, not pathed. Built from a copy of the repository, installed (without
dependencies: they come from this interpreter's environment) into a fresh venv that does not
see the repository."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_SHIPPED = (".git", ".venv", ".venvs", "workdirs", "build", "dist", "site", "*.egg-info",
               "__pycache__", "docs", "tests", "benchmarks")


def _packages_in_repository():
    """Every package directory the wheel must hold, by its installed name."""
    names = []
    for top, installed in (("cgh_tf", "cgh_tf"), ("trainers", "cgh_tf.trainers"),
                           ("configs", "cgh_tf.configs")):
        for directory, _, files in os.walk(os.path.join(REPO, top)):
            if "__init__.py" in files and "__pycache__" not in directory:
                relative = os.path.relpath(directory, os.path.join(REPO, top))
                names.append(installed if relative == "." else
                             installed + "." + relative.replace(os.sep, "."))
    return sorted(names)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (path,) = (tmp / "dist").glob("cgh_tf-*.whl")
    return path


def test_the_wheel_holds_only_cgh_tf_with_trainers_configs_and_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt")).rpartition("/")[0]
        assert archive.read(f"{info}/top_level.txt").decode().split() == ["cgh_tf"]
        scripts = archive.read(f"{info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"cgh_tf", info}
    packages = sorted({os.path.dirname(n).replace("/", ".") for n in names if n.endswith("/__init__.py")})
    assert packages == _packages_in_repository()
    assert {"cgh_tf/py.typed", "cgh_tf/configs/default.py", "cgh_tf/trainers/train.py",
            f"{info}/LICENSE"} <= set(names)
    assert "cgh-train = cgh_tf.trainers.console:train" in scripts
    assert "cgh-reproduce = cgh_tf.trainers.console:reproduce" in scripts


@pytest.mark.slow
def test_cgh_train_from_anywhere_trains_one_epoch_of_a_shipped_config(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies (TensorFlow, Keras, ...) from this environment, after the venv's own packages.
    with open(os.path.join(purelib, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--ignore-installed", str(wheel)], check=True, capture_output=True,
                   timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}

    where = subprocess.run(
        [str(python), "-c", "import importlib.util as u, cgh_tf; print(cgh_tf.__file__); "
         "print(u.find_spec('trainers'), u.find_spec('configs'))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=True)
    installed, generic = where.stdout.splitlines()
    assert installed.startswith(purelib) and generic == "None None"

    workdir = elsewhere / "run"
    run = subprocess.run(
        [str(venv / "bin" / "cgh-train"), "--config=default", f"--workdir={workdir}",
         "--config.num_epochs=1", "--config.max_train=200", "--config.max_test=100",
         "--config.model.kwargs.width=16", "--config.batch_size=50", "--noprogress"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(workdir / "results.json") as f:
        assert len(json.load(f)["history"]["loss"]) == 1  # one epoch
