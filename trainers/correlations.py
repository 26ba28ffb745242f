"""The analysis hook of correlations across groups (e.g. across models of a sweep): one point per
arm group (the mean of a summary key over its seeds), the declared `statistics.CorrelationRule`s
evaluated on those points (Pearson r with its Fisher-z 95 % CI) and Spearman's ρ beside them.
"""

import math

from cgh_tf import rank_correlation, statistics


def group_means(runs, keys, keep):
    """{key: [mean over the seeds of each group]} over the (Arm, result) `runs` whose arm
    `keep(arm)` accepts, one point per arm group in plan order (None where no seed has a value)."""
    by_group = {}
    for arm, result in runs:
        if keep(arm):
            by_group.setdefault(arm.group, []).append(result["summary"])
    return {k: [statistics.summarize([s[k] for s in ss]).mean for ss in by_group.values()]
            for k in keys}


def spearman(x, y):
    """Spearman's ρ (`cgh_tf.rank_correlation`) of the pairs where neither value is None; None
    with fewer than 3 pairs or a constant side."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    rho = rank_correlation.spearman(*zip(*pairs)) if len(pairs) >= 3 else math.nan
    return None if math.isnan(rho) else rho


def per_panel(runs, rules, subsets, keep, title):
    """Per panel of the runs and per named subset {name: arm -> bool} of its kept arms (`keep`),
    the `rules` evaluated across groups: (markdown lines, {panel: {"<subset>/<rule>": statistic
    with "spearman"}}, the verdict entries for the run's family of rules, `Verdict.entry`);
    `title(panel)` heads each panel's table."""
    lines, out, verdicts = [], {}, []
    keys = sorted({k for rule in rules for k in (rule.x, rule.y)})
    for panel in dict.fromkeys(a.panel for a, _ in runs):
        lines += [title(panel), "", "One point per arm group (mean over its seeds). Rules "
                  "declared before the runs: an effect if the 95 % Fisher-z CI of Pearson r "
                  "excludes 0; they belong to the run's Holm family (their family-wise p: in "
                  "the verdicts above).", "", "| rule | sweep | verdict | Spearman ρ |",
                  "|---|---|---|---|"]
        out[panel] = {}
        for name, subset in subsets.items():
            means = group_means(runs, keys, lambda a: a.panel == panel and keep(a) and subset(a))
            for rule in rules:
                verdict = rule.evaluate(means[rule.x], means[rule.y])
                rho = spearman(means[rule.x], means[rule.y])
                out[panel][f"{name}/{rule.name}"] = {**verdict.statistic, "spearman": rho}
                verdicts.append({**verdict.entry(f"{rule.statement()}; across the {name} models "
                                                 "of the panel, one point per arm group (mean "
                                                 "over its seeds)"),
                                 "rule": f"{panel}, {name} models: {rule.name}"})
                lines.append(f"| {rule.name} | {name} | {verdict.text} | "
                             f"{'n/a' if rho is None else f'{rho:+.2f}'} |")
        lines.append("")
    return lines, out, verdicts
