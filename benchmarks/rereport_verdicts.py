r"""Re-derive the verdicts of committed results (`results/<name>[/<setting>]/`) from what their
results.json stores, without training: the one-off that added p-values and Holm's family-wise
step to runs made before it, and the check that committed verdicts still follow from their numbers.

For each results.json: re-plan the arms from its stored `command` (`trainers.catalog.plan`), rebuild
each run's summary from the stored per-seed column values (`groups[g]["metrics"][key]["per_seed"]`),
run the runner's own `tabulate` (and an analysis hook that evaluates declared rules, e.g.
depth_width's correlations, where it runs on the stored columns alone) and check that every stored
paired row and every stored verdict is reproduced exactly (minus the keys added since); then
results.json's comparisons / contrasts / verdicts / analyses and results.md's verdicts block are
what a fresh run writes (`runner.verdict_lines`).

    python benchmarks/rereport_verdicts.py            # check only: exit 1 if a file would change
    python benchmarks/rereport_verdicts.py --write    # rewrite the files, then run trainers.publish
    python benchmarks/rereport_verdicts.py --write results/scale results/depth_width   # some runs

A run written by the runner since the family-wise step is unchanged by it (check mode: 0 files);
one written before is rewritten exactly as the runner writes it now.
"""

import argparse
import glob
import json
import math
import os
import shlex
import sys

from cgh_tf import statistics
from trainers import catalog, outputs, reproduce, runner

ADDED = {"verdicts": ("p", "level", "p_holm", "survives_holm"), "comparisons": ("p",),
         "contrasts": ("p",)}


class Mismatch(ValueError):
    """The re-derivation does not reproduce a stored value: it is wrong, stop."""


def stored(folder):
    """(results.json dict, results.md text) of a run's folder."""
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        summary = json.load(f)
    with open(os.path.join(folder, runner.RESULTS_MD), encoding="utf-8") as f:
        return summary, f.read()


def planned(summary):
    """(arms, experiment) of a results.json's stored `python -m trainers.reproduce ...` command,
    at its stored number of seeds (the experiment's default may have changed since)."""
    options = {"set": []}
    for word in shlex.split(summary["command"])[3:]:
        key, _, value = word.lstrip("-").partition("=")
        if key == "set":
            options["set"].append(value)
        else:
            options[key] = value
    seeds = max(len(group["seeds"]) for group in summary["groups"].values())
    return catalog.plan(options["experiment"], options.get("scale", "small"),
                        int(options.get("seeds", seeds)), reproduce.parse_overrides(options["set"]))


def stored_runs(arms, summary):
    """[(Arm, {"summary": {column key: its stored value for the arm's seed}})] in plan order."""
    planned_dirs = {g: [a.path for a in arms if a.group == g] for g in dict.fromkeys(
        a.group for a in arms)}
    stored_dirs = {g: entry["arm_dirs"] for g, entry in summary["groups"].items()}
    if planned_dirs != stored_dirs:
        raise Mismatch("the re-planned arms are not the stored ones: "
                       f"{sorted(set(planned_dirs) ^ set(stored_dirs)) or 'same groups'}")
    runs = []
    for arm in arms:
        group = summary["groups"][arm.group]
        runs.append((arm, {"summary": {key: metric["per_seed"][str(arm.seed)]
                                       for key, metric in group["metrics"].items()}}))
    return runs


def _without_added(rows, part):
    return [{k: v for k, v in row.items() if k not in ADDED[part]} for row in rows]


def _without_p(tree):
    """`tree` without the "p" keys a correlation statistic gained."""
    if isinstance(tree, dict):
        return {k: _without_p(v) for k, v in tree.items() if k != "p"}
    return [_without_p(v) for v in tree] if isinstance(tree, list) else tree


def _same(new, old, rel=1e-12):
    """`new` == `old`, floats within `rel` relative: an analysis stored before
    `cgh_tf.statistics` summed exactly rounded (`math.fsum`) holds the last bits of NumPy's
    summation order of the time; the re-derived values are then the ones written."""
    if isinstance(new, dict) and isinstance(old, dict):
        return new.keys() == old.keys() and all(_same(new[k], old[k], rel) for k in new)
    if isinstance(new, list) and isinstance(old, list):
        return len(new) == len(old) and all(_same(a, b, rel) for a, b in zip(new, old))
    if isinstance(new, float) and isinstance(old, float):
        return math.isclose(new, old, rel_tol=rel, abs_tol=1e-300)
    return new == old


def analysis_verdicts(experiment, runs, stored):
    """The declared-rule verdicts an analysis hook adds to the family, when the hook runs on the
    stored columns alone and reproduces the stored analyses; else ([], reason)."""
    if experiment.analyses is None:
        return [], None, "no analysis hook"
    try:
        lines, analyses = experiment.analyses(runs)
    except (KeyError, TypeError, IndexError) as error:   # needs curves / configs not stored
        return [], None, f"analysis hook needs more than the columns ({type(error).__name__})"
    verdicts = analyses.pop("verdicts", [])
    analyses = json.loads(outputs.to_json(analyses))   # as stored
    if not _same(_without_p(analyses), _without_p(stored)):
        if verdicts:
            raise Mismatch(f"{experiment.name}: the re-derived analyses differ from the stored")
        return [], None, "analysis hook differs on the columns alone (declares no rule)"
    return verdicts, (lines, analyses), "re-derived"


def verdict_block(lines):
    """(start, stop) of results.md's verdicts block: from the blank line before its heading to
    after its last "- **" line."""
    start = lines.index(runner.VERDICTS_HEADING) - 1
    stop = next(i for i in range(start + 2, len(lines)) if lines[i].startswith("- **"))
    while stop < len(lines) and lines[stop].startswith("- **"):
        stop += 1
    return start, stop


def rereport(folder):
    """(new results.json dict, new results.md text, notes) of the run in `folder`; Mismatch if
    the stored numbers do not give the stored verdicts."""
    summary, md = stored(folder)
    arms, experiment = planned(summary)
    runs = stored_runs(arms, summary)
    columns = {c.key for c in experiment.columns}
    for rule in experiment.declared("rules", arms):
        for metric in (rule.metric, rule.control_metric or rule.metric):
            if metric not in columns:
                raise Mismatch(f"{folder}: rule {rule.name!r} reads {metric!r}, not a stored column")
    extra, analysed, note = analysis_verdicts(experiment, runs, summary.get("analyses"))
    new = json.loads(outputs.to_json(runner.tabulate(experiment, runs, extra)))  # as stored
    for part in ("comparisons", "contrasts", "verdicts"):
        old_rows = _without_added(summary[part], part)
        if _without_added(new[part], part)[:len(old_rows)] != old_rows:
            raise Mismatch(f"{folder}: the re-derived {part} differ from the stored ones")
    if new["groups"] != summary["groups"]:
        raise Mismatch(f"{folder}: the re-derived groups differ from the stored ones")
    lines = md.split("\n")
    if summary["verdicts"]:
        start, stop = verdict_block(lines)
        written = (runner.verdict_lines(summary["verdicts"]) if "p_holm" in summary["verdicts"][0]
                   else ["", runner.VERDICTS_HEADING, ""] + [
                       f"- **{v['rule']}** ({v['statement']}): {v['text']}"
                       for v in summary["verdicts"]])
        if lines[start:stop] != written:
            raise Mismatch(f"{folder}: results.md's verdicts are not the stored ones")
        lines[start:stop] = runner.verdict_lines(new["verdicts"])
    elif new["verdicts"]:
        raise Mismatch(f"{folder}: declares rules but stored none")
    if analysed and "\n".join(analysed[0]) not in md:
        raise Mismatch(f"{folder}: results.md does not hold the re-derived analysis lines")
    updated = {**summary, **{k: new[k] for k in ("comparisons", "contrasts", "verdicts")}}
    if analysed:
        updated["analyses"] = analysed[1]
    return updated, "\n".join(lines), f"{experiment.name}: analyses {note}"


def folders(root):
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "results", "**",
                                                                     "results.json"),
                                                        recursive=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=".")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("folders", nargs="*", help="results/<name>[/<setting>] (default: all)")
    args = parser.parse_args()
    chosen, changed = args.folders or folders(args.root), []
    for folder in chosen:
        summary, md, note = rereport(folder)
        before = stored(folder)
        tally = statistics.family_tally(summary["verdicts"]) if summary["verdicts"] else "no rule"
        print(f"{folder}: {tally}; {note}")
        if (summary, md) != before:
            changed.append(folder)
            if args.write:
                outputs.write_json(os.path.join(folder, "results.json"), summary)
                with open(os.path.join(folder, runner.RESULTS_MD), "w", encoding="utf-8") as f:
                    f.write(md)
    print(f"{len(changed)} of {len(chosen)} would change" if not args.write
          else f"{len(changed)} rewritten")
    return 1 if changed and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
