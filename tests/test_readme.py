"""The README is a front page that works as written: at most 250 lines, the two quick-start
commands are real Makefile targets (and CI's), its three Python snippets run, its links resolve."""

import contextlib
import io
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def _readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def _blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", _readme(), flags=re.S | re.M)


def test_the_readme_is_a_front_page():
    assert len(_readme().splitlines()) <= 250


def test_quick_start_is_the_two_make_targets_that_ci_runs():
    quick_start = _readme().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```sh\n(.*?)^```", quick_start, flags=re.S | re.M)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == ["make demo", "make test"]
    # `make -n` resolves each target and prints its recipe without running it.
    plan = subprocess.run(["make", "-n", "demo", "test"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert "-m trainers.demo" in plan.stdout and "-m pytest" in plan.stdout
    ci = subprocess.run(["bash", "-n", os.path.join(REPO, ".ci", "run")], capture_output=True)
    assert ci.returncode == 0
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        assert re.search(r"^step make test$", f.read(), flags=re.M)


def test_every_relative_link_resolves():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _readme())
    relative = [link for link in links if not link.startswith(("http://", "https://"))]
    assert relative
    assert [link for link in relative if not os.path.exists(os.path.join(REPO, link))] == []


@pytest.mark.parametrize("index", range(3))
def test_each_python_snippet_runs_as_written(index):
    snippets = _blocks("python")
    assert len(snippets) == 3
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippets[index], f"README.md snippet {index + 1}", "exec"), {})  # noqa: S102
    assert out.getvalue().strip()  # each snippet ends by printing its result
