"""benchmarks/rereport_verdicts.py: the committed verdicts follow from the committed per-seed
numbers through the runner's own code, and a run written before the family-wise step is rewritten
exactly as a fresh run writes it."""

import os
import re
import shutil

import pytest

from benchmarks import rereport_verdicts as rereport
from trainers import outputs, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_committed_result_is_what_its_stored_numbers_give():
    folders = rereport.folders(ROOT)
    assert len(folders) >= 16
    for folder in folders:
        summary, md, _ = rereport.rereport(folder)
        assert (summary, md) == rereport.stored(folder), folder


def _as_before_holm(folder, tmp_path):
    """A copy of a committed run as the runner wrote it before p-values and Holm."""
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    summary, md = rereport.stored(copy)
    block = runner.verdict_lines(summary["verdicts"])
    for part, keys in rereport.ADDED.items():
        summary[part] = [{k: v for k, v in row.items() if k not in keys} for row in summary[part]]
    old = ["", runner.VERDICTS_HEADING, ""] + [f"- **{v['rule']}** ({v['statement']}): "
                                               f"{v['text']}" for v in summary["verdicts"]]
    (copy / "results.md").write_text(md.replace("\n".join(block), "\n".join(old)))
    outputs.write_json(str(copy / "results.json"), summary)
    return copy, summary


def test_a_run_before_holm_is_rewritten_as_a_fresh_run_writes_it(tmp_path):
    folder = os.path.join(ROOT, "results", "alignment_order")
    copy, _ = _as_before_holm(folder, tmp_path)
    assert rereport.rereport(str(copy))[:2] == rereport.stored(folder)


def test_a_stored_verdict_its_numbers_do_not_give_stops_it(tmp_path):
    copy, summary = _as_before_holm(os.path.join(ROOT, "results", "alignment_order"), tmp_path)
    rule = summary["verdicts"][0]
    tampered = re.sub(r"-?\d+\.\d+", "0.123", rule["text"], count=1)   # its first number
    assert tampered != rule["text"]
    summary["verdicts"][0] = {**rule, "text": tampered}
    outputs.write_json(str(copy / "results.json"), summary)
    with pytest.raises(rereport.Mismatch, match="re-derived verdicts differ from the stored"):
        rereport.rereport(str(copy))


def test_the_command_rewrites_a_run_from_before_holm_and_then_leaves_it(tmp_path, monkeypatch):
    folder = os.path.join(ROOT, "results", "alignment_order")
    copy, _ = _as_before_holm(folder, tmp_path)
    monkeypatch.setattr("sys.argv", ["rereport_verdicts.py", str(copy)])
    assert rereport.main() == 1                                   # check only: it would change
    monkeypatch.setattr("sys.argv", ["rereport_verdicts.py", "--write", str(copy)])
    assert rereport.main() == 0 and rereport.stored(str(copy)) == rereport.stored(folder)
    monkeypatch.setattr("sys.argv", ["rereport_verdicts.py", str(copy)])
    assert rereport.main() == 0                                   # now what the runner writes


def test_arms_are_replanned_at_the_stored_seed_count_and_must_match(tmp_path):
    summary, _ = rereport.stored(os.path.join(ROOT, "results", "alignment_order"))
    seeds = {len(g["seeds"]) for g in summary["groups"].values()}
    arms, _ = rereport.planned(summary)
    assert {sum(a.group == g for a in arms) for g in summary["groups"]} == seeds
    group = next(iter(summary["groups"]))
    summary["groups"][group]["arm_dirs"] = summary["groups"][group]["arm_dirs"][:-1]
    with pytest.raises(rereport.Mismatch, match="the re-planned arms are not the stored ones"):
        rereport.stored_runs(arms, summary)
