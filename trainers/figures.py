"""Figures of declared experiments from `runs` = [(Arm, result dict)]: per point, the mean over
seeds with a 95 % CI band (mean ± t_{.975, n−1} · sd / √n, Student t; none for one seed; None
values left out), labelled axes, legends.
"""

import math
import os

import numpy as np

from cgh_tf import statistics

BAND = "band: 95 % CI over seeds (Student t)"


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_band(points):
    """(mean, low, high) float64 [len(points)]: per point, over its values (one per seed)."""
    stats = [statistics.summarize(values) for values in points]
    mean = np.array([np.nan if s.mean is None else s.mean for s in stats], dtype=float)
    half = np.array([0.0 if s.sd is None else statistics.t_quantile(0.975, s.n - 1) * s.sd
                     / math.sqrt(s.n) for s in stats], dtype=float)
    return mean, mean - half, mean + half


def _band(ax, xs, points, alpha=0.2, color=None, **line):
    """The mean over seeds of `points` (per x, its values) as a line, its CI as a band."""
    colored = {} if color is None else {"color": color}
    mean, low, high = mean_band(points)
    ax.plot(xs, mean, **colored, **line)
    ax.fill_between(xs, low, high, alpha=alpha, **colored)


def per_dataset(runs):
    """[(dataset, [(Arm, result)] of that dataset)] by `arm.config.dataset`, in plan order."""
    out = {}
    for arm, result in runs:
        out.setdefault(arm.config.dataset, []).append((arm, result))
    return list(out.items())


def _groups(runs):
    groups = {}
    for arm, result in runs:
        groups.setdefault(arm.group, (arm, []))[1].append(result)
    return groups


def _save(fig, workdir, name, title, key=f"line: mean over seeds; {BAND}"):
    fig.suptitle(f"{title} ({key})", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, name), dpi=90)
    pyplot().close(fig)
    return name


def _label(ax, x_label, y_label, log_x):
    if log_x:
        ax.set_xscale("log", base=log_x)
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    ax.tick_params(labelsize=7)


def summary_vs_axis(workdir, name, runs, keys, axis, x_label, title, log_x=None, series=None):
    """Per (summary key, y label) of `keys`, the value against `config[axis]`, a line per
    `series(arm)` (None: one line)."""
    plt = pyplot()
    lines = {}
    for arm, results in _groups(runs).values():
        lines.setdefault(series(arm) if series else "mean", []).append((arm, results))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.0), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        for line, members in lines.items():
            _band(ax, [results[0]["config"][axis] for _, results in members],
                  [[r["summary"].get(key) for r in results] for _, results in members],
                  marker="o", ms=3, label=line)
        _label(ax, x_label, label, log_x)
    axes[0][0].legend(fontsize=6)
    return _save(fig, workdir, name, title)


def curves_per_group(workdir, name, runs, keys, x, x_label, title, log_x=None, row_of=None,
                     series="curves"):
    """Per (curve key, y label) and row (`row_of(arm)`), every arm's curve (`result[series]`)
    against curve `x`; an arm without the key has no line in that panel."""
    plt = pyplot()
    rows = {}
    for arm, results in _groups(runs).values():
        rows.setdefault(row_of(arm) if row_of else "", []).append((arm, results))
    fig, axes = plt.subplots(len(rows), len(keys), figsize=(3.3 * len(keys), 2.8 * len(rows)),
                             squeeze=False)
    for axes_row, (row, members) in zip(axes, rows.items()):
        for i, (arm, results) in enumerate(members):
            xs = np.array(results[0][series][x], dtype=float)
            xs = np.maximum(xs, 0.5) if log_x else xs
            color = plt.get_cmap("viridis")(i / max(1, len(members) - 1))
            for ax, (key, _) in zip(axes_row, keys):
                if any(key not in r[series] for r in results):
                    continue
                _band(ax, xs, zip(*[r[series][key] for r in results]), 0.15, color,
                      ls=arm.linestyle, label=arm.label)
        for ax, (_, label) in zip(axes_row, keys):
            _label(ax, x_label, f"{row} {label}".strip(), log_x)
        axes_row[0].legend(fontsize=6, ncol=2)
    return _save(fig, workdir, name, title)


def profiles(workdir, name, runs, panels, title):
    """Per (x key, y key, x label, y label) of `panels`, every group's `result["profiles"][y]`
    against the mean over seeds of its `[x]` (lists of equal length, e.g. per decile)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.6 * len(panels), 9.0), 3.2),
                             squeeze=False)
    for ax, (x_key, y_key, x_label, y_label) in zip(axes[0], panels):
        for arm, results in _groups(runs).values():
            xs, _, _ = mean_band(zip(*[r["profiles"][x_key] for r in results]))
            _band(ax, xs, zip(*[r["profiles"][y_key] for r in results]), marker="o", ms=3,
                  label=arm.label)
        _label(ax, x_label, y_label, None)
    axes[0][0].legend(fontsize=6)
    return _save(fig, workdir, name, title)


def bars(workdir, name, runs, keys, title):
    """Per (summary key, y label) of `keys`, a bar per group with its CI as error bar."""
    plt = pyplot()
    groups = _groups(runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys):
        mean, low, high = mean_band([[r["summary"].get(key) for r in results]
                                     for _, results in groups.values()])
        ax.bar(range(len(groups)), mean, yerr=[mean - low, high - mean], capsize=3)
        ax.set_xticks(range(len(groups)), [arm.label for arm, _ in groups.values()],
                      rotation=30, ha="right", fontsize=7)
        _label(ax, "", label, None)
    return _save(fig, workdir, name, title,
                 "bar: mean over seeds; error bar: 95 % CI over seeds (Student t)")


def frontier(workdir, name, runs, x_key, y_key, x_label, y_label, title):
    """Per arm, curve `y_key` against curve `x_key` (logged at the same points), both means over
    seeds, with y's band (a trade-off curve such as the memorisation frontier)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    for i, (arm, results) in enumerate(_groups(runs).values()):
        xs, _, _ = mean_band(zip(*[r["curves"][x_key] for r in results]))
        _band(ax, xs, zip(*[r["curves"][y_key] for r in results]), 0.15,
              plt.get_cmap("tab10")(i % 10), ls=arm.linestyle, marker=".", ms=3,
              label=arm.label)
    _label(ax, x_label, y_label, None)
    ax.legend(fontsize=6)
    return _save(fig, workdir, name, title)
