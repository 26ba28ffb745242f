"""The trend analysis of `scale` (its `analyses` hook): memorisation suppression (control − arm
corrupted train accuracy, last epoch) against log10 n, a least-squares line over all (n, seed)
points extrapolated to ImageNet's n, with a computed verdict.
"""

import math

import numpy as np

from cgh_tf import statistics


def trend(sizes, values, at):
    """`statistics.linear_fit` of values against log10(n) over the points (sizes[i], values[i]),
    extrapolated to n = `at`, with the slope per decade and the decades from the largest size to
    `at`; None when fewer than 3 points or fewer than 2 distinct sizes."""
    x = np.log10(np.asarray(sizes, dtype=np.float64))
    fit = statistics.linear_fit(x, values, math.log10(at))
    if fit is None:
        return None
    return {**fit, "slope_per_decade": fit["slope"], "predicted_95": fit["predicted_interval"],
            "at": at, "decades_extrapolated": math.log10(at) - float(x.max())}


def verdict(fit):
    """A computed phrase for a trend: grows / shrinks when |slope| > 2 SE, else no clear trend."""
    if fit is None:
        return "not enough sizes to fit a trend"
    b, se = fit["slope_per_decade"], fit["slope_se"]
    if se == 0:
        return f"slope {b:+.3f} per decade (no residual spread: SE 0, not a real uncertainty)"
    if abs(b) > 2 * se:
        direction = "grows" if b > 0 else "shrinks"
        return f"{direction} with n (slope {b:+.3f} ± {se:.3f} per decade, |t| = {abs(b) / se:.1f})"
    return (f"shows no clear trend with n (slope {b:+.3f} ± {se:.3f} per decade, "
            f"|t| = {abs(b) / se:.1f} < 2)")


def _suppression_points(runs, dataset, arm, control):
    """[(n, control − arm corrupted train accuracy)] per size and seed present in both."""
    values = {}
    for a, r in runs:
        if a.panel.startswith(dataset + "/"):
            values[(a.config.train_size, a.group.rsplit("/", 1)[1], a.seed)] = (
                r["summary"]["corrupted_accuracy"])
    return [(n, values[(n, control, s)] - v) for (n, name, s), v in values.items()
            if name == arm and (n, control, s) in values and v is not None
            and values[(n, control, s)] is not None]


def analyses(runs, pairs, target):
    """Per dataset: suppression (control − arm corrupted train accuracy, last epoch) of every
    (arm, control, matched) of `pairs` and SGD's corrupted accuracy against log10 n, fitted over
    all (n, seed) points and extrapolated to n = `target`; their verdicts."""
    lines, out = [], {}
    for dataset in dict.fromkeys(a.panel.split("/")[0] for a, _ in runs):
        fits = {f"{c} − {a}": trend(*zip(*points), target) if points else None
                for a, c, _ in pairs
                for points in [_suppression_points(runs, dataset, a, c)]}
        sgd = [(a.config.train_size, r["summary"]["corrupted_accuracy"]) for a, r in runs
               if a.panel.startswith(dataset + "/") and a.group.endswith("/sgd")]
        fits["SGD corrupted accuracy"] = trend(*zip(*sgd), target) if sgd else None
        out[dataset] = fits
        lines += [f"## {dataset}: suppression against log10(n)", "",
                  "Least squares over all (n, seed) points of control − arm corrupted train "
                  f"accuracy (last epoch), extrapolated to n = {target:,} (fitted mean ± SE "
                  "[95 % Student t]); trend verdict: |slope| > 2 SE.", "",
                  "| quantity | slope per decade ± SE | R² | at ImageNet's n | verdict |",
                  "|---|---|---|---|---|"]
        for name, fit in fits.items():
            if fit is None:
                lines.append(f"| {name} | n/a | n/a | n/a | {verdict(fit)} |")
                continue
            lo, hi = fit["predicted_95"]
            r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.2f}"
            lines.append(f"| {name} | {fit['slope_per_decade']:+.3f} ± {fit['slope_se']:.3f} | "
                         f"{r2} | {fit['predicted']:+.2f} ± {fit['predicted_se']:.2f} "
                         f"[{lo:+.2f}, {hi:+.2f}] | {verdict(fit)} |")
        lines.append("")
    return lines, {"trend": out}
