"""benchmarks/experiment_numbers.py (the same-numbers check of a refactoring): its tiny configs
cover every experiment of the catalog and plan, and its comparison reports a changed, a missing
and an added number. No training (the tiny runs themselves are the benchmark's)."""

import importlib.util
import json
import os

from trainers import catalog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "experiment_numbers", os.path.join(ROOT, "benchmarks", "experiment_numbers.py"))
numbers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(numbers)


def test_tiny_configs_cover_every_experiment_and_plan_two_seeds():
    assert set(numbers.TINY) == set(catalog.NAMES)
    for name in numbers.TINY:
        module, arms = numbers.tiny_plan(name)
        assert arms and {a.seed for a in arms} == {0, 1}, name
        assert module.EXPERIMENT.name == name


def _write(path, summary, curves):
    path.write_text(json.dumps({"x": {"g/seed0": {"summary": summary, "curves": curves}}}))
    return str(path)


def test_compare_reports_changed_missing_and_added_numbers(tmp_path, capsys):
    old = _write(tmp_path / "old.json", {"acc": 0.5}, {"step": [0, 1], "loss": [2.0, 1.0]})
    same = _write(tmp_path / "same.json", {"acc": 0.5}, {"step": [0, 1], "loss": [2.0, 1.0]})
    assert numbers.compare(old, same) == 0
    assert "x: identical" in capsys.readouterr().out
    added = _write(tmp_path / "added.json", {"acc": 0.5, "new": 1.0},
                   {"step": [0, 1], "loss": [2.0, 1.0]})
    assert numbers.compare(old, added) == 0
    assert "added ['summary[new]']" in capsys.readouterr().out
    one_ulp = _write(tmp_path / "ulp.json", {"acc": 0.5}, {"step": [0, 1],
                                                          "loss": [2.0, 1.0000000000000002]})
    assert numbers.compare(old, one_ulp) == 1
    assert "curves[loss]: [2.0, 1.0] != [2.0, 1.0000000000000002]" in capsys.readouterr().out
    (tmp_path / "missing.json").write_text(json.dumps({"x": {}}))
    assert numbers.compare(old, str(tmp_path / "missing.json")) == 1
    assert "g/seed0: missing" in capsys.readouterr().out
