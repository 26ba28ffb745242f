r"""Aggregate the arms of an experiment over seeds: `results.json`, `results.md`, PNG figures.

| function                                   | returns / writes                                              |
|--------------------------------------------|---------------------------------------------------------------|
| `aggregate(experiment, results)`           | dict (the experiment's `results.json`): per arm group, per metric the per-seed values, mean, sample sd, n |
| `markdown(experiment, summary, command)`   | str: the `results.md` text (table + figure links)             |
| `format_cell(stats, fmt)`                  | str: one table cell, "mean ± sd" (n ≥ 2), "mean" (n = 1), "n/a" |
| `curves(results, key, series)`             | `(mean [E], low [E], high [E])` over seeds of a `history` (or `step_history`) key |
| `plot(path, experiment, figure, results)`  | writes one PNG (grid: a row per panel, a column per curve)    |
| `write_all(workdir, experiment, results, command)` | writes all of the above and the HParams dashboard (`write_hparams`) into `workdir`, returns the summary |
| `metric_value(result, metric)` / `count_updates(result)` | one number of an arm's results.json |

`results` is always `{arm.path: that arm's results.json dict}`. Every number of `results.md` is
`format_cell` of the `mean` / `std` stored in `results.json`, which are computed from the per-arm
values only (float64 `math.fsum`); spread = sample standard deviation (ddof = 1) over seeds.
"""

import math
import os
import re
import warnings

import ml_collections
import numpy as np

from cgh_tf.atomic_files import atomic_open
from trainers import config_schema
from trainers import hparams_board
from trainers import outputs
from trainers.sweep import SERIES, Metric

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------

# Reading numbers out of an arm's results.json

def count_updates(result: dict) -> int:
    """Optimizer updates made by the run of `result` (a results.json dict).

    Batches b = epochs × ceil(n / B) (or floor with drop_remainder). SGD / Adam and in-batch M3
    (k groups of one batch): b. M3 with k groups over consecutive batches: floor(b / k). RM3 /
    RA3 with window k: max(0, b − k + 1). (`config_schema.updates_per_batch`.)
    """
    config, dataset = ml_collections.ConfigDict(result["config"]), result["dataset"]
    n, batch = dataset["num_train"], config.batch_size
    per_epoch = n // batch if config.drop_remainder else -(-n // batch)
    batches = per_epoch * result["epochs_completed"]
    kind, k = config_schema.updates_per_batch(config)
    if kind == "every":
        return batches
    if kind == "every_kth":
        return batches // k
    return max(0, batches - k + 1)


def metric_value(result: dict, metric: Metric):
    """The value of `metric` in one arm's results.json dict: a float, or None if not available."""
    kind = metric.source[0]
    if kind == "final":
        value = result["final"].get(metric.source[1])
        return None if value is None else float(value)
    if kind == "dataset":
        return float(result["dataset"][metric.source[1]])
    if kind == "updates":
        return float(count_updates(result))
    if kind in SERIES:
        _, key, reducer = metric.source
        values = [float(v) for v in result.get(kind, {}).get(key, []) if v is not None]
        if not values:
            return None
        return {"first": values[0], "last": values[-1], "max": max(values), "min": min(values),
                "mean": math.fsum(values) / len(values)}[reducer]
    if kind in ("step_at", "step_of_max"):
        series = result.get("step_history", {})
        pairs = [(s, float(v)) for s, v in zip(series.get("step", []),
                                                series.get(metric.source[1], []))
                 if v is not None]
        if kind == "step_at":
            return next((v for s, v in pairs if s == metric.source[2]), None)
        return float(max(pairs, key=lambda p: p[1])[0]) if pairs else None
    raise ValueError(f"metric {metric.name}: unknown source {metric.source!r}")


def mean_and_std(values: list) -> tuple:
    """(mean, sample sd) of a list of floats; sd None for n < 2, both None for n = 0."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(experiment, results: dict) -> dict:
    """The experiment-level `results.json`: per group the per-seed metric values and their statistics."""
    groups = {}
    for group in experiment.groups():
        arms = [arm for arm in experiment.arms if arm.group == group]
        metrics = {}
        for metric in experiment.metrics:
            pairs = [(arm.seed, metric_value(results[arm.path], metric)) for arm in arms]
            values = [v for _, v in pairs if v is not None]
            mean, std = mean_and_std(values)
            metrics[metric.name] = {"per_seed": {str(s): v for s, v in pairs}, "mean": mean,
                                    "std": std, "n": len(values)}
        groups[group] = {"label": arms[0].label, "panel": arms[0].panel,
                         "seeds": [arm.seed for arm in arms],
                         "arm_dirs": [arm.path for arm in arms], "metrics": metrics}
    return {"experiment": experiment.name, "title": experiment.title,
            "metrics": [{"name": m.name, "header": m.header, "fmt": m.fmt}
                        for m in experiment.metrics],
            "groups": groups, "comparisons": paired_comparisons(experiment, groups),
            "figures": [f.file for f in experiment.figures]}


def paired_comparisons(experiment, groups: dict) -> list:
    """Every metric of every declared (arm, control) pair: arm − control paired by seed, with its
    95 % Student-t interval (`cgh_tf.statistics.paired_difference`; rows as `runner.difference`)."""
    from cgh_tf import statistics

    from trainers import runner

    def per_seed(group, name):
        return {int(k): v for k, v in groups[group]["metrics"][name]["per_seed"].items()}

    return [runner.difference("between arms", arm, control, m.name, None,
                              statistics.paired_difference(per_seed(arm, m.name),
                                                           per_seed(control, m.name)))
            for arm, control in experiment.comparisons if arm in groups and control in groups
            for m in experiment.metrics]


def format_cell(stats: dict, fmt: str) -> str:
    """"mean ± sd" for n ≥ 2, "mean" for n = 1, "n/a" without values."""
    if stats["mean"] is None:
        return "n/a"
    if stats["std"] is None:
        return format(stats["mean"], fmt)
    return f"{format(stats['mean'], fmt)} ± {format(stats['std'], fmt)}"


def _setting(results: dict) -> str:
    """One sentence on the base setting, from the first arm's results.json."""
    first = next(iter(results.values()))
    config, data = first["config"], first["dataset"]
    sizes = f"{data['num_train']} train" + (f" / {data['num_test']} test" if "num_test" in data
                                            else "")
    return (f"{data['name']} ({sizes} examples), model `{config['model']['name']}` "
            f"{config['model'].get('kwargs') or ''}, {config['num_epochs']} epochs, batch "
            f"{config['batch_size']}, learning rate {config['learning_rate']} (first arm; the "
            f"arms differ as described above).")


def markdown(experiment, summary: dict, command: str, results: dict) -> str:
    """The `results.md` text: title, description, command, setting, table, figures."""
    metrics = experiment.metrics
    has_panels = any(g["panel"] for g in summary["groups"].values())
    headers = (["setting"] if has_panels else []) + ["arm", "seeds"] + [m.header for m in metrics]
    lines = [f"# {experiment.title}", "", experiment.description, "",
             f"Command: `{command}`", "", f"Setting: {_setting(results)}", "",
             "Cells: mean ± sample standard deviation over seeds (just the value for one seed); "
             "every number is aggregated from the `results.json` of the arm directories "
             "`<arm>/seed<k>/`.", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for group, entry in summary["groups"].items():
        n_seeds = len(entry["seeds"])
        row = ([entry["panel"]] if has_panels else []) + [entry["label"], str(n_seeds)]
        row += [format_cell(entry["metrics"][m.name], m.fmt) for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    from trainers import runner

    lines += runner.difference_lines("Arm − control, paired by seed (mean [95 % CI], Student t)",
                                     summary.get("comparisons", ()),
                                     {m.name: m.fmt for m in metrics})
    lines.append("")
    for figure in experiment.figures:
        lines += [f"![{figure.title}]({figure.file})", ""]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list:
    """Rows of the first markdown table in `text` as lists of cell strings (header first)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows if "---|" not in row]


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _history_array(result: dict, key: str, series: str = "history"):
    """`[points]` float array of `result[series][key]` (None -> NaN), or None if the key is absent.

    series: "history" (one point per epoch) or "step_history" (one per step measurement).
    """
    values = result.get(series, {}).get(key)
    if values is None:
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def curves(results: list, key: str, series: str = "history") -> tuple:
    """`(mean, low, high)`, each `[points]`, of `series` `key` over the seeds' results (NaN-aware).

    low / high are the minimum / maximum over seeds (the band drawn in the figures); seeds
    lacking the key are left out, and the curves end at the shortest seed's last epoch. Empty
    arrays if no seed has the key.
    """
    arrays = [a for a in (_history_array(r, key, series) for r in results) if a is not None]
    if not arrays:
        empty = np.zeros(0)
        return empty, empty, empty
    epochs = min(len(a) for a in arrays)
    stack = np.stack([a[:epochs] for a in arrays])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # epochs where every seed lacks a value
        return np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)


def expand_columns(columns, results: dict, series: str = "history") -> list:
    """Columns with a `*` key replaced by one column per matching `series` key (sorted)."""
    keys = sorted({k for r in results.values() for k in r.get(series, {})})
    expanded = []
    for key, label in columns:
        if "*" not in key:
            expanded.append((key, label))
            continue
        pattern = re.compile("^" + re.escape(key).replace(r"\*", "([^/]+)") + "$")
        for found in keys:
            match = pattern.match(found)
            if match:
                expanded.append((found, f"{label}: {match.group(1)}"))
    return expanded


def _colors(experiment) -> dict:
    labels = list(dict.fromkeys(arm.label for arm in experiment.arms))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f", "#ff7f0e", "#8c564b",
               "#e377c2", "#17becf", "#bcbd22"]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def plot(path: str, experiment, figure, results: dict) -> None:
    """Write `figure` of `experiment` as a PNG: mean over seeds per arm, min–max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups = list(figure.groups or experiment.groups())
    arms_of = {g: [a for a in experiment.arms if a.group == g] for g in groups}
    panels = list(dict.fromkeys(arms_of[g][0].panel for g in groups))
    columns = expand_columns(figure.columns, {a.path: results[a.path]
                                              for g in groups for a in arms_of[g]}, figure.series)
    if not columns:
        columns = [(figure.columns[0][0], figure.columns[0][1])]
    colors = _colors(experiment)
    fig, axes = plt.subplots(len(panels), len(columns), squeeze=False, sharex=True,
                             sharey=bool(figure.ylim), figsize=(4.2 * len(columns) + 0.6,
                                                                3.2 * len(panels) + 0.8))
    for row, panel in enumerate(panels):
        for col, (key, ylabel) in enumerate(columns):
            ax = axes[row][col]
            drawn = _draw_panel(ax, figure, key, [g for g in groups if arms_of[g][0].panel == panel],
                                arms_of, results, colors)
            if not drawn:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                        color="0.5")
            if row == 0:
                ax.set_title(ylabel, fontsize=10)
            if col == 0:
                ax.set_ylabel(panel or ylabel.split("\n")[0], fontsize=10)
            if row == len(panels) - 1:
                ax.set_xlabel(figure.x_label)
            if figure.ylim:
                ax.set_ylim(*figure.ylim)
            if figure.x == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        with_lines = [ax for ax in axes[row] if ax.get_legend_handles_labels()[0]]
        if with_lines:
            with_lines[0].legend(fontsize=8, loc="best")
    seeds = sorted({a.seed for g in groups for a in arms_of[g]})
    fig.suptitle(f"{figure.title} — line: mean over {len(seeds)} seed(s), band: min–max",
                 fontsize=11)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def _draw_panel(ax, figure, key, groups, arms_of, results, colors) -> bool:
    drawn = False
    for group in groups:
        arm_results = [results[a.path] for a in arms_of[group]]
        mean, low, high = curves(arm_results, key, figure.series)
        if mean.size == 0 or np.all(np.isnan(mean)):
            continue
        label, color = arms_of[group][0].label, colors[arms_of[group][0].label]
        if figure.x == "epoch":
            x = np.arange(1, len(mean) + 1)
        else:
            x = curves(arm_results, figure.x, figure.series)[0]
            if x.size == 0:
                continue
            mean, low, high, x = mean[:len(x)], low[:len(x)], high[:len(x)], x[:len(mean)]
        along_time = figure.x in ("epoch", "step")
        ax.plot(x, mean, color=color, label=label, linestyle=arms_of[group][0].linestyle,
                marker="" if along_time else ".", markersize=3)
        if len(arm_results) > 1 and along_time:
            ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        if figure.log_y and np.nanmin(low) > 0:
            ax.set_yscale("log")
        drawn = True
    return drawn


# ----------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------

def write_all(workdir: str, experiment, results: dict, command: str) -> dict:
    """Write `results.json`, `results.md` and every figure of `experiment` into `workdir`."""
    summary = aggregate(experiment, results)
    summary["command"] = command
    outputs.write_json(os.path.join(workdir, RESULTS_JSON), summary)
    for figure in experiment.figures:
        plot(os.path.join(workdir, figure.file), experiment, figure, results)
    with atomic_open(os.path.join(workdir, RESULTS_MD), "w") as f:
        f.write(markdown(experiment, summary, command, results))
    write_hparams(workdir, experiment, results)
    return summary


def write_hparams(workdir: str, experiment, results: dict) -> None:
    """TensorBoard's HParams dashboard of the sweep: a session per arm (`WORKDIR/<arm>/hparams`)
    with the config fields that differ between arms and the table's metrics of the arm."""
    runs = [(os.path.join(workdir, arm.path), results[arm.path]["config"], {"arm": arm.group},
             {m.name: metric_value(results[arm.path], m) for m in experiment.metrics}, None)
            for arm in experiment.arms if arm.path in results]
    hparams_board.write_sweep(workdir, runs)
