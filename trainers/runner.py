"""The one runner of declared experiments (`experiment.Experiment`): plan, run, report.

Files, the results.json schema and the locks: docs/design.md §7.0, "The runner's files".
"""

import json
import os
import time

from cgh_tf import statistics, workdir_lock
from cgh_tf.atomic_files import atomic_open

from . import config_schema, hparams_board, outputs

RESULTS_MD = "results.md"
VERDICTS_HEADING = "Verdicts (rules declared before the runs):"


def plan(experiment, scale="small", seeds=None, overrides=None):
    """The `Arm`s of `experiment` at `scale` with seeds 0..seeds−1 (default: its own), every
    config checked by the experiment; raises ValueError (one line) on a bad scale / seed count /
    override, before any file is written."""
    if scale not in experiment.scales:
        raise ValueError(f"--scale={scale} is not available for {experiment.name}; allowed: "
                         f"{', '.join(experiment.scales)}")
    seeds = experiment.default_seeds if seeds is None else seeds
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a positive int (the number of seeds)")
    overrides = dict(overrides or {})
    arms = list(experiment.arms(scale, seeds, overrides))
    for field, value in overrides.items():
        ignoring = _ignoring(experiment, arms, scale, seeds, overrides, field)
        if ignoring:
            kept = ", ".join(sorted({_text(config_schema.field_value(arm.config, field))
                                     for arm in ignoring}))
            who = (f"every arm of {experiment.name} sets {field} itself"
                   if len(ignoring) == len(arms) else f"{len(ignoring)} of the {len(arms)} arms "
                   f"of {experiment.name} ({', '.join(dict.fromkeys(a.group for a in ignoring))}) "
                   f"set {field} themselves")
            raise ValueError(f"--set={field}={value!r} would be ignored: {who} ({kept})")
    groups = {arm.group for arm in arms}
    for rule in experiment.declared("rules", arms):
        for group in (rule.arm, rule.control):
            if group not in groups:
                raise ValueError(f"{experiment.name}: rule {rule.name!r} names group {group!r}, "
                                 "which is not planned")
    return arms


def _ignoring(experiment, arms, scale, seeds, overrides, field):
    """The planned `arms` that ignore `overrides[field]`: planned without it, the arm's config is
    the same, although it holds `field` with another value (an arm that derives its value from
    the override changes; a config without the field: a field of the plan, e.g. which arms)."""
    try:
        without = {arm.path: _text(arm.config) for arm in experiment.arms(
            scale, seeds, {k: v for k, v in overrides.items() if k != field})}
    except ValueError:  # the other overrides need this one: it is not ignored
        return []
    value = overrides[field]
    return [arm for arm in arms if without.get(arm.path) == _text(arm.config) and json.loads(
        _text(value)) != json.loads(_text(config_schema.field_value(arm.config, field, value)))]


def _text(value) -> str:
    """`value` as its JSON text (a tuple as its list, a ConfigDict as its dict)."""
    return json.dumps(value.to_dict() if hasattr(value, "to_dict") else value, sort_keys=True,
                      default=str)


def run(experiment, arms, workdir, command="", echo=print, progress=False):
    """Run every arm into `WORKDIR/<group>/seed<k>` (finished ones are read, interrupted ones
    resume), one line per arm on `echo` (with `progress` the runs' own lines too), under the
    workdir's lock, every arm's directory checked first; then write the report and return the
    results.json dict."""
    echo = echo or (lambda line: None)
    runs = []
    with workdir_lock.hold(workdir, f"experiment {experiment.name}"):
        check_run_dirs(experiment, arms, workdir)
        for index, arm in enumerate(arms, 1):
            run_dir = os.path.join(workdir, arm.path)
            started = time.time()
            result = experiment.run_arm(arm.config, run_dir, echo=echo if progress else None)
            took = time.time() - started
            echo(f"[{index}/{len(arms)}] {arm.path}: {took:.0f} s; "
                 + describe(experiment, result["summary"]))
            runs.append((arm, result))
        return write_report(experiment, runs, workdir, command)


def check_run_dirs(experiment, arms, workdir):
    """ConfigError (one line) if `workdir` holds another experiment's report or a trainer run's
    results, or an arm's directory a run of another config, before any arm runs: each loop's own
    check (a fit arm's trainer run may resume to more epochs); reads only."""
    from . import beyond_common, single_run

    report = outputs.read_json(os.path.join(workdir, outputs.RESULTS_FILE), keys=("experiment",))
    if report is not None and report["experiment"] != experiment.name:
        raise config_schema.ConfigError(
            f"workdir {workdir} holds the results of experiment {report['experiment']!r}; use "
            f"another workdir for {experiment.name}")

    for arm in arms:
        run_dir = os.path.join(workdir, arm.path)
        if experiment.loop == "fit":
            single_run.check_workdir_holds_config(run_dir, arm.config)
        else:
            beyond_common.check_run_dir(run_dir, arm.config.to_dict())


def describe(experiment, summary):
    """The progress line of a finished run: "header value" of the `progress` columns."""
    shown = [c for c in experiment.columns if c.key in experiment.progress]
    return ", ".join(f"{c.header} " + ("n/a" if summary.get(c.key) is None
                                       else format(summary[c.key], c.fmt)) for c in shown)


def per_seed(runs, group, key):
    """{seed: summary[key]} of the runs of `group` (the report's input from here on)."""
    return {arm.seed: result["summary"].get(key) for arm, result in runs if arm.group == group}


def _metric(values):
    """{per_seed, mean, sd, n} in results.json of {seed: value} (None: no value)."""
    s = statistics.summarize(list(values.values()))
    return {"per_seed": {str(seed): v for seed, v in values.items()},
            "mean": s.mean, "sd": s.sd, "n": s.n}


def difference(runs, kind, arm, control, metric, control_metric=None):
    """One row of `comparisons` / `contrasts` in results.json: `arm`'s `metric` − `control`'s
    `control_metric` (default: `metric`), paired by seed (`statistics.paired_difference`)."""
    diff = statistics.paired_difference(per_seed(runs, arm, metric),
                                        per_seed(runs, control, control_metric or metric))
    return {"kind": kind, "arm": arm, "control": control, "metric": metric,
            "control_metric": control_metric, **diff.as_dict()}


def tabulate(experiment, runs, analysis_verdicts=()):
    """The results.json dict of `runs` = [(Arm, result)] without files, figures and seconds; the
    verdicts of the declared rules, then the `analysis_verdicts` entries (rules an analysis hook
    evaluates), are one family (`statistics.family_wise`)."""
    arms = [arm for arm, _ in runs]
    groups = {}   # group -> its entry, in plan order
    for group in dict.fromkeys(arm.group for arm in arms):
        members = [arm for arm in arms if arm.group == group]
        groups[group] = {"label": members[0].label, "panel": members[0].panel,
                         "seeds": [a.seed for a in members], "arm_dirs": [a.path for a in members],
                         "metrics": {c.key: _metric(per_seed(runs, group, c.key))
                                     for c in experiment.columns}}
    compared = [c.key for c in experiment.columns
                if experiment.compared is None or c.key in experiment.compared]
    comparisons = [difference(runs, "between arms", arm, control, key)
                   for arm, control in experiment.declared("comparisons", arms) for key in compared]
    contrasts = [difference(runs, "within arm", group, group, metric, control_metric)
                 for metric, control_metric in experiment.contrasts for group in groups]
    verdicts = [rule.evaluate(per_seed(runs, rule.arm, rule.metric),
                              per_seed(runs, rule.control, rule.control_metric or rule.metric)
                              ).entry(rule.statement())
                for rule in experiment.declared("rules", arms)]
    return {"experiment": experiment.name, "title": experiment.title,
            "columns": [{"key": c.key, "header": c.header, "fmt": c.fmt}
                        for c in experiment.columns],
            "groups": groups, "comparisons": comparisons, "contrasts": contrasts,
            "verdicts": statistics.family_wise(verdicts + list(analysis_verdicts))}


def _cell(stats, fmt, n_total):
    """"mean ± sd", with "(k/n seeds)" when only k of the arm's n seeds have a value."""
    text = statistics.Summary(stats["mean"], stats["sd"], stats["n"]).text(fmt)
    return text + (f" ({stats['n']}/{n_total} seeds)" if 0 < stats["n"] < n_total else "")


def _interval(d, fmt):
    """"mean [low, high]" of a paired-difference row."""
    if d["mean"] is None:
        return "n/a"
    if d["low"] is None:
        return f"{format(d['mean'], fmt)} (n = {d['n']}, no CI)"
    return f"{format(d['mean'], fmt)} [{format(d['low'], fmt)}, {format(d['high'], fmt)}]"


def difference_lines(title, rows, fmts):
    """The markdown table of paired-difference rows (`difference`); fmts: {metric: format}."""
    if not rows:
        return []
    lines = ["", f"{title}:", "", "| arm | control | quantity | difference [95 % CI] | d_z |",
             "|---|---|---|---|---|"]
    for d in rows:
        quantity = d["metric"] + (f" − {d['control_metric']}" if d["control_metric"] else "")
        d_z = "n/a" if d["d_z"] is None else f"{d['d_z']:.2f}"
        lines.append(f"| {d['arm']} | {d['control']} | {quantity} | "
                     f"{_interval(d, fmts.get(d['metric'], '.3f'))} | {d_z} |")
    return lines


def markdown(experiment, summary, command, setting_lines, analysis_lines):
    """The results.md text: title, command, setting, table, paired differences, verdicts."""
    columns = experiment.columns
    lines = [f"# {summary['title']}", "", f"Command: `{command}`", "", *setting_lines,
             "Cells: mean ± sample sd (ddof 1) over seeds; differences: mean [95 % CI] of the "
             f"per-seed differences ({statistics.T_METHOD}).", "",
             "| arm | seeds | " + " | ".join(c.header for c in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for group, entry in summary["groups"].items():
        lines.append(f"| {group} | {len(entry['seeds'])} | " + " | ".join(
            _cell(entry["metrics"][c.key], c.fmt, len(entry["seeds"])) for c in columns) + " |")
    fmts = {c.key: c.fmt for c in columns}
    lines += difference_lines("Arm − control, paired by seed", summary["comparisons"], fmts)
    lines += difference_lines("Within each arm, paired by seed", summary["contrasts"], fmts)
    lines += verdict_lines(summary["verdicts"])
    return "\n".join(lines + [""] + list(analysis_lines)) + "\n"


def verdict_lines(verdicts):
    """The verdicts block of results.md: the family and its method once, then every rule with
    its statement, its verdict (unadjusted CI) and its family-wise ending."""
    if not verdicts:
        return []
    return ["", VERDICTS_HEADING, "", f"{statistics.FAMILY_NOTE} Here: "
            f"{statistics.family_tally(verdicts)}.", ""] + [
        f"- **{v['rule']}** ({v['statement']}): {v['text']}; {statistics.holm_text(v, verdicts)}"
        for v in verdicts]


def write_report(experiment, runs, workdir, command):
    """Write results.json, results.md, the figures, timings.json and the HParams sessions. An
    arm's seconds are those it recorded when it finished (`seconds_last_invocation`: the
    wall-clock of the invocation that finished it), summed per group over its seeds."""
    analysis_lines, analyses = experiment.analyses(runs) if experiment.analyses else ([], {})
    summary = {**tabulate(experiment, runs, analyses.pop("verdicts", ())), "command": command,
               "analyses": analyses}
    summary["figures"] = experiment.figures(workdir, runs) if experiment.figures else []
    setting = list(experiment.setting(runs)) if experiment.setting else []
    trained = summary["training_seconds"] = {}
    for arm, result in runs:
        trained[arm.group] = round(trained.get(arm.group, 0.0)
                                   + (result.get("seconds_last_invocation") or 0.0), 1)
    tail = ["Wall-clock seconds per arm (sum over seeds, as recorded by each run when it "
            "finished): " + ", ".join(f"{g} {s:.0f}" for g, s in trained.items())
            + f"; total {sum(trained.values()):.0f} s.", ""]
    tail += [f"![{f}]({f})" for f in summary["figures"]]
    text = markdown(experiment, summary, command, setting, list(analysis_lines) + tail)
    with atomic_open(os.path.join(workdir, RESULTS_MD), "w") as f:
        f.write(text)
    outputs.write_json(os.path.join(workdir, outputs.RESULTS_FILE), summary)
    outputs.write_json(os.path.join(workdir, outputs.TIMINGS_FILE),
                       {"arms": trained, "total_seconds": round(sum(trained.values()), 1)})
    hparams_board.write_sweep(workdir, [
        (os.path.join(workdir, arm.path), result["config"], {"group": arm.group},
         result["summary"], result.get("curves")) for arm, result in runs])
    return summary
