"""A sweep of MLP shapes (depth_width): a cross of a width sweep at a fixed depth and a depth sweep
at a fixed width, or the full grid, with the sweeps each model belongs to (its `Arm.tags`).

Config fields (`configs/depth_width.py`, `SWEEP_FIELDS`): `widths`, `depths` (non-empty tuples of
distinct ints >= 1), `fixed_depth`, `fixed_width` (ints >= 1), `grid` (bool).
"""

from . import beyond_common as common
from . import config_schema


def check(config):
    """ValueError (one line) for bad sweep fields."""
    for field in ("widths", "depths"):
        values = config[field]
        common.require(isinstance(values, (tuple, list)) and len(values) >= 1
                       and all(config_schema.is_int(v, 1) for v in values)
                       and len(set(values)) == len(values),
                       f"{field}={values!r} must be a non-empty tuple of distinct ints >= 1")
    common.require_ints(config, ("fixed_depth", "fixed_width"))
    common.require(isinstance(config.grid, bool), f"grid={config.grid!r} must be True or False")


def models(config):
    """[(depth, width, sweeps)] of the sweep, sweeps ⊆ {"width", "depth"} (the sweeps the model
    belongs to; in the grid, rows at `fixed_depth` / columns at `fixed_width` are the sweeps).

    Cross: the width sweep at `fixed_depth` then the depth sweep at `fixed_width`, their common
    model once; grid: every (depth, width) pair."""
    out = {}
    pairs = ([(d, w) for d in config.depths for w in config.widths] if config.grid else
             [(config.fixed_depth, w) for w in config.widths]
             + [(d, config.fixed_width) for d in config.depths])
    for depth, width in pairs:
        sweeps = out.setdefault((int(depth), int(width)), set())
        if depth == config.fixed_depth and width in config.widths:
            sweeps.add("width")
        if width == config.fixed_width and depth in config.depths:
            sweeps.add("depth")
    return [(d, w, tuple(sorted(s))) for (d, w), s in out.items()]
