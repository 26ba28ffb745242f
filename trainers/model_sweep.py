"""The MLP shapes of depth_width (`configs/depth_width.py` `SWEEP_FIELDS`): a width sweep at
`fixed_depth` crossed with a depth sweep at `fixed_width`, or the full grid (`grid`)."""

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
    """[(depth, width, sweeps)], sweeps ⊆ {"width", "depth"} the model belongs to (in the grid:
    its row at `fixed_depth` / column at `fixed_width`); a model common to both sweeps once."""
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
