"""Memorisation suppression (control − arm corrupted train accuracy, last epoch, per seed) and
its least-squares trend against log10 n: the analyses of `scale` and `noise_structure`."""

import math

import numpy as np

from cgh_tf import statistics

from . import runner


def suppression(runs, panel, arm, control):
    """{seed: control − arm corrupted train accuracy} of the groups `<panel>/<arm>` and
    `<panel>/<control>`, over the seeds both have."""
    a, c = (runner.per_seed(runs, f"{panel}/{g}", "corrupted_accuracy") for g in (arm, control))
    return {s: c[s] - a[s] for s in a if s in c and None not in (a[s], c[s])}


def trend(sizes, values, at):
    """`statistics.linear_fit` of values against log10 n, extrapolated to n = `at`, with the
    decades extrapolated; None below 3 points or 2 distinct sizes."""
    x = np.log10(np.asarray(sizes, dtype=np.float64))
    fit = statistics.linear_fit(x, values, math.log10(at))
    if fit is None:
        return None
    return {**fit, "slope_per_decade": fit["slope"], "predicted_95": fit["predicted_interval"],
            "at": at, "decades_extrapolated": math.log10(at) - float(x.max())}


def verdict(fit):
    """Grows / shrinks when |slope| > 2 SE, else no clear trend."""
    if fit is None:
        return "not enough sizes to fit a trend"
    b, se = fit["slope_per_decade"], fit["slope_se"]
    if se == 0:
        return f"slope {b:+.3f} per decade (no residual spread: SE 0, not a real uncertainty)"
    if abs(b) > 2 * se:
        direction = "grows" if b > 0 else "shrinks"
        return (f"{direction} with n (slope {b:+.3f} ± {se:.3f} per decade, "
                f"|t| = {abs(b) / se:.1f})")
    return (f"shows no clear trend with n (slope {b:+.3f} ± {se:.3f} per decade, "
            f"|t| = {abs(b) / se:.1f} < 2)")


def analyses(runs, pairs, target):
    """Per dataset, the trends of the suppression of every (arm, control, matched) of `pairs` and
    of SGD's corrupted accuracy, fitted over all (n, seed) points, at n = `target`."""
    lines, out, sizes = [], {}, {}
    for a, _ in runs:
        sizes.setdefault(a.panel.split("/")[0], {})[a.panel] = a.config.train_size

    def fit(panel_sizes, values_of):  # values_of(panel) -> {seed: value}
        points = [(n, v) for panel, n in panel_sizes.items() for v in values_of(panel).values()]
        return trend(*zip(*points), target) if points else None

    for dataset, panel_sizes in sizes.items():
        fits = {f"{c} − {a}": fit(panel_sizes, lambda p, a=a, c=c: suppression(runs, p, a, c))
                for a, c, _ in pairs}
        fits["SGD corrupted accuracy"] = fit(
            panel_sizes, lambda p: runner.per_seed(runs, f"{p}/sgd", "corrupted_accuracy"))
        out[dataset] = fits
        lines += [f"## {dataset}: suppression against log10(n)", "",
                  "Least squares over all (n, seed) points of control − arm corrupted train "
                  f"accuracy (last epoch), extrapolated to n = {target:,} (fitted mean ± SE "
                  "[95 % Student t]); trend verdict: |slope| > 2 SE.", "",
                  "| quantity | slope per decade ± SE | R² | at ImageNet's n | verdict |",
                  "|---|---|---|---|---|"]
        for name, found in fits.items():
            if found is None:
                lines.append(f"| {name} | n/a | n/a | n/a | {verdict(found)} |")
                continue
            lo, hi = found["predicted_95"]
            r2 = "n/a" if found["r2"] is None else f"{found['r2']:.2f}"
            lines.append(f"| {name} | {found['slope_per_decade']:+.3f} ± {found['slope_se']:.3f} "
                         f"| {r2} | {found['predicted']:+.2f} ± {found['predicted_se']:.2f} "
                         f"[{lo:+.2f}, {hi:+.2f}] | {verdict(found)} |")
        lines.append("")
    return lines, {"trend": out}
