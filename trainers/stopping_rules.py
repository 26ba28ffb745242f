"""The stopping rules of `early_stopping` (declared before any test result was seen; each picks
one log point, scored by the test accuracy there; docs/design.md §7.1) and their verdict."""

import math

from cgh_tf import statistics

from .curve_stats import best_index as first_best  # index of the first maximum, None skipped

RULES = ("final", "validation", "coherence_drop", "coherence_plateau", "oracle")
RULE_NAMES = {"final": "(a) train to the end",
              "validation": "(b) best noisy-validation accuracy",
              "coherence_drop": "(c1) train-sample m-coherence ≤ drop × running max",
              "coherence_plateau": "(c2) train-sample m-coherence reaches its minimum plateau",
              "oracle": "oracle: best test accuracy (upper bound)"}
TRAIN_SAMPLE_KEY = "coherence/train/m_coherence"


def _clean(values):
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
            for v in values]


def coherence_drop_index(values, drop):
    """First index t with values[t] <= drop · max(values[:t+1]) > 0 (None skipped), else None."""
    running = None
    for i, v in enumerate(_clean(values)):
        if v is None:
            continue
        running = v if running is None else max(running, v)
        if running > 0 and v <= drop * running:
            return i
    return None


def plateau_index(values, fraction):
    """First index t with values[t] <= min + fraction · (max − min); None if no value."""
    vals = _clean(values)
    present = [v for v in vals if v is not None]
    if not present:
        return None
    lo, hi = min(present), max(present)
    threshold = lo + fraction * (hi - lo)
    return next(i for i, v in enumerate(vals) if v is not None and v <= threshold)


def onset_index(values, rise):
    """Memorisation onset: first index after the first minimum of `values` (corrupted train
    accuracy) with value >= minimum + rise; None if never."""
    vals = _clean(values)
    present = [(v, i) for i, v in enumerate(vals) if v is not None]
    if not present:
        return None
    low, at = min(present)  # ties: the first index
    return next((i for i in range(at + 1, len(vals))
                 if vals[i] is not None and vals[i] >= low + rise), None)


def stopping_summary(curves, drop, plateau, rise):
    """Per rule the epoch, test / corrupted / pristine accuracy at its pick; the memorisation
    onset; the gaps to it in epochs; the coherence peak."""
    n = len(curves["step"])
    coh = curves[TRAIN_SAMPLE_KEY]
    drop_at = coherence_drop_index(coh, drop)
    picks = {"final": n - 1, "validation": first_best(curves["validation_accuracy"]),
             "coherence_drop": n - 1 if drop_at is None else drop_at,
             "coherence_plateau": plateau_index(coh, plateau),
             "oracle": first_best(curves["test_accuracy"])}
    out = {"coherence_drop_fired": 0 if drop_at is None else 1}
    for rule, i in picks.items():
        for key in ("test_accuracy", "epoch", "corrupted_accuracy", "pristine_accuracy"):
            out[f"{key}/{rule}"] = None if i is None else curves[key][i]
    onset = onset_index(curves["corrupted_accuracy"], rise)
    out["epoch/memorisation_onset"] = None if onset is None else curves["epoch"][onset]
    for rule in ("coherence_drop", "coherence_plateau", "validation", "oracle"):
        e = out[f"epoch/{rule}"]
        out[f"gap/{rule}_minus_onset"] = (None if e is None or onset is None
                                          else e - curves["epoch"][onset])
    peak = first_best(coh)
    out["max_m_coherence"] = None if peak is None else coh[peak]
    out["epoch/max_m_coherence"] = None if peak is None else curves["epoch"][peak]
    return out


def describe(config):
    """The rules with their parameters (of the config dict), as markdown."""
    return ("Rules (fixed before any test result was seen): "
            + "; ".join(f"**{rule}** = {name}" for rule, name in RULE_NAMES.items())
            + f". c1: drop = {config['coherence_drop']}; c2: plateau = min + "
            f"{config['plateau_fraction']} × (max − min); onset: rise {config['onset_rise']} "
            "above the minimum of the corrupted train accuracy (uses the corrupted mask).")


def _values(results, key):
    return [r["summary"].get(key) for r in results]


def _mean(results, key):
    return statistics.summarize(_values(results, key)).mean


def verdict(results):
    """Sentences: does c1 find the memorisation onset ("yes": it fired in every seed within
    max(1 epoch, 25 % of the onset epoch); its gap averaged where it fired); the rules' scores."""
    n = len(results)
    fired = [r for r in results if r["summary"]["coherence_drop_fired"] == 1]
    onset = _mean(results, "epoch/memorisation_onset")
    gap = _mean(fired, "gap/coherence_drop_minus_onset") if fired else None
    acc = {rule: _mean(results, f"test_accuracy/{rule}") for rule in RULES}
    found = sum(v is not None for v in _values(results, "epoch/memorisation_onset"))
    parts = [f"Memorisation onset found in {found}/{n} seeds (mean epoch "
             f"{'n/a' if onset is None else format(onset, '.2f')}); rule c1 fired in "
             f"{len(fired)}/{n} seeds."]
    if gap is None:
        parts.append("No c1 gap to compare: **no**.")
    else:
        pairs = [(r["summary"]["gap/coherence_drop_minus_onset"],
                  r["summary"]["epoch/memorisation_onset"]) for r in fired]
        close = len(fired) == n and all(
            g is not None and abs(g) <= max(1.0, 0.25 * o) for g, o in pairs)
        parts.append(f"Where it fired it picked on average {abs(gap):.2f} epochs "
                     f"{'after' if gap > 0 else 'before'} the onset. Within max(1 epoch, 25 % of "
                     "the onset epoch) of the onset in every seed: "
                     f"**{'yes' if close else 'no'}**.")
    ranked = sorted((rule for rule in RULES if rule != "oracle" and acc[rule] is not None),
                    key=lambda r: -acc[r])
    if ranked:
        parts.append("Mean test accuracy at the pick: " + ", ".join(
            f"{rule} {acc[rule]:.3f}" for rule in ranked)
            + (f" (oracle {acc['oracle']:.3f})." if acc["oracle"] is not None else "."))
    return " ".join(parts)
