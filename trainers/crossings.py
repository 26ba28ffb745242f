"""The crossing analysis of `real_vs_random_arch`: real against random labels on the pairwise
coherence (r − 1)/(m − 1) of the training sample (ratios None where random's is missing or ≤ 0).
"""

import math

import numpy as np

from cgh_tf import statistics

from . import beyond_common as common

CURVE = "coherence/train/pairwise"   # (r − 1)/(m − 1) of the fixed training sample
SUMMARY = "train_pairwise"           # its summary keys: train_pairwise_init / _early / _end


def crossings(epochs, real, random):
    """(sign, [epochs]) over the logged epochs > 0 where both curves exist: sign ±1 of real −
    random where they first differ (0: never); every epoch whose difference has the opposite sign
    of the previous nonzero one (the curves crossed since the previous log)."""
    sign, current, flips = 0, 0, []
    for e, a, b in zip(epochs, real, random):
        if e is None or e <= 0 or a is None or b is None or math.isnan(a) or math.isnan(b):
            continue
        d = (a > b) - (a < b)
        if d == 0:
            continue
        if sign == 0:
            sign = d
        elif d != current:
            flips.append(e)
        current = d
    return sign, flips


def crossing(epochs, real, random):
    """(sign, first crossing epoch or None): see `crossings`."""
    sign, flips = crossings(epochs, real, random)
    return sign, (flips[0] if flips else None)


def ratio_curve(real, random):
    """real / random pointwise (None where either is missing or random is <= 0)."""
    return [None if a is None or b is None or b <= 0 else a / b for a, b in zip(real, random)]


def max_ratio(epochs, real, random):
    """(largest real / random over logged epochs > 0, its epoch); (None, None) if none."""
    found = [(r, e) for e, r in zip(epochs, ratio_curve(real, random))
             if e is not None and e > 0 and r is not None]
    return max(found, key=lambda pair: pair[0]) if found else (None, None)


def _mean_curve(results, key):
    """The mean over runs of curve `key`, point by point (None where no run has a value)."""
    arr = np.array([[np.nan if v is None else v for v in r["curves"][key]] for r in results],
                   dtype=float)
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, 0) if arr.size else arr
    return [None if not np.isfinite(v) else float(v) for v in mean]


def compare(real_runs, random_runs):
    """One dataset × architecture: ratios real / random per seed (paired) at init / early / end,
    the largest ratio over the logged epochs, the crossings (per seed and of the mean curves)."""
    by_seed = {r["config"]["seed"]: r for r in random_runs}
    pairs = [(r, by_seed[r["config"]["seed"]]) for r in real_runs if r["config"]["seed"] in by_seed]
    out = {"seeds": [a["config"]["seed"] for a, _ in pairs]}
    for when in ("init", "early", "end"):
        key = f"{SUMMARY}_{when}"
        out[f"ratio_{when}"] = ratio_curve([a["summary"][key] for a, _ in pairs],
                                           [b["summary"][key] for _, b in pairs])
    names = ("max_ratio", "epoch_of_max_ratio", "crossing_sign", "crossing_epoch")
    out.update({name: [] for name in names})
    for a, b in pairs:
        if a["curves"]["epoch"] != b["curves"]["epoch"]:
            raise ValueError("real and random runs logged at different epochs")
        curves = a["curves"]["epoch"], a["curves"][CURVE], b["curves"][CURVE]
        for name, value in zip(names, max_ratio(*curves) + crossing(*curves)):
            out[name].append(value)
    mean = (real_runs[0]["curves"]["epoch"], _mean_curve(real_runs, CURVE),
            _mean_curve(random_runs, CURVE))
    out["mean_curve_crossing_sign"], out["mean_curve_crossing_epoch"] = crossing(*mean)
    out["mean_curve_crossings"] = crossings(*mean)[1]
    out["mean_curve_max_ratio"], out["mean_curve_epoch_of_max_ratio"] = max_ratio(*mean)
    return out


def _crossing_text(sign, epoch):
    if sign == 0:
        return "never differ"
    above = "real > random" if sign > 0 else "real < random"
    return f"{above}, cross at {epoch:.3g}" if epoch is not None else f"{above}, never cross"


def _ratio_cell(ratios):
    """"mean ± sd" of the per-seed ratios, with "(k/n seeds)" when only k of n have one."""
    summary = statistics.summarize(ratios)
    return summary.text(".2f") + (f" ({summary.n}/{len(ratios)} seeds)"
                                  if summary.n < len(ratios) else "")


def analyses(runs, pairs):
    """`compare` per (real group, random group) of `pairs` as a table; ValueError for a pair
    whose arms measured different m."""
    by_group = common.by_group(runs)
    out, ms = {}, {}
    lines = ["Real / random ratio of the training sample's pairwise coherence (r − 1)/(m − 1) "
             "(per seed, paired by seed; mean ± sd; n/a where the random arm's is ≤ 0); largest "
             "ratio over logged epochs > 0 and crossings of the pairwise curves (per seed, and of "
             "the mean curves).", "",
             "| dataset/arch | m | ratio init | ratio early | ratio end | max ratio (epoch) "
             "| crossing per seed | crossing of mean curves | all crossings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for real, random in pairs:
        key = real.rsplit("/", 1)[0]
        m = {r["summary"]["m"] for r in by_group[real] + by_group[random]}
        if len(m) != 1:
            raise ValueError(f"{key}: the arms measured coherence on samples of different m: "
                             f"{sorted(m)}")
        ms[key] = m.pop()
        comp = out[key] = compare(by_group[real], by_group[random])
        per_seed = "; ".join(_crossing_text(s, e) for s, e in zip(comp["crossing_sign"],
                                                                   comp["crossing_epoch"]))
        max_cells = ", ".join("n/a (n/a)" if r is None else f"{r:.2f} ({e:.3g})"
                              for r, e in zip(comp["max_ratio"], comp["epoch_of_max_ratio"]))
        mean_crossing = _crossing_text(comp["mean_curve_crossing_sign"],
                                       comp["mean_curve_crossing_epoch"])
        lines.append(f"| {key} | {ms[key]} | " + " | ".join(
            _ratio_cell(comp[f"ratio_{w}"]) for w in ("init", "early", "end"))
            + f" | {max_cells} | {per_seed} | {mean_crossing} | "
            + (", ".join(f"{e:.3g}" for e in comp["mean_curve_crossings"]) or "none") + " |")
    return lines + [""], {"m": ms, "comparisons": out}
