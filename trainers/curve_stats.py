"""Numbers read off logged curves ({key: [value per log point]}, None where not measured): the
summaries of the custom-loop experiments are pure functions of their curves, so a results.json
can be re-summarised without training.
"""

import math

import numpy as np

POSITIONS = ("epoch", "step")


def last_values(curves):
    """{key: curves[key][-1]} for every curve except the positions (epoch, step)."""
    return {key: values[-1] for key, values in curves.items() if key not in POSITIONS}


def best_index(values, highest=True):
    """Index of the first largest (`highest`) or smallest value, None / NaN skipped; None if there
    is no value."""
    # the largest (±value, −index): the best value, at its first index
    found = [(v if highest else -v, -i) for i, v in enumerate(values)
             if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return -max(found)[1] if found else None


def best_at(curves, key, highest=True, x="epoch"):
    """(first largest / smallest value of curves[key], curves[x] there); (None, None) if none."""
    best = best_index(curves[key], highest)
    return (None, None) if best is None else (curves[key][best], curves[x][best])


def first_reaching(curves, key, threshold, x="step"):
    """curves[x] at the first point where curves[key] >= threshold; None if it never does."""
    return next((at for at, v in zip(curves[x], curves[key])
                 if v is not None and v >= threshold), None)


def value_at(curves, key, at, x="step"):
    """curves[key] at the first point with curves[x] == at (within 1e-9); None when `at` is None,
    the key was never logged or that point was not logged."""
    if at is None or key not in curves:
        return None
    return next((v for position, v in zip(curves[x], curves[key])
                 if position is not None and abs(position - at) < 1e-9), None)


def params(model):
    """The number of trainable parameters of `model`."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))
