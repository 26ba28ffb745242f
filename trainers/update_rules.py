"""The update rule of a graph-loop arm: optimizer (`cgh_tf.optimizers.build`), batches per
update, aggregation of a batch's per-example gradients."""

from . import beyond_common as common
from . import config_schema

AGGREGATIONS = ("mean", "winsorize")


def batches_per_update(plain):
    """{name: batches per update} of `plain` (e.g. "sgd") and M3 (3) / RM3 / RA3 (1) over it."""
    return {plain: 1, "m3": 3, "rm3": 1, "ra3": 1}


def check_aggregation(config):
    """ValueError (one line) unless `aggregation` is one of AGGREGATIONS and `winsorize_pct` a
    percentage, 0 or None unless winsorizing (where it must be spelled out)."""
    from cgh_tf import aggregators

    common.require_one_of(config, "aggregation", AGGREGATIONS)
    pct = config.winsorize_pct
    if pct is None:
        aggregators.get(config.aggregation)  # the library's one line for winsorize without c
        return
    require_percentage(pct)
    common.require(config.aggregation == "winsorize" or pct == 0,
                   f"winsorize_pct={pct!r} has no effect with aggregation={config.aggregation!r}; "
                   "set aggregation='winsorize' or winsorize_pct=0")


def require_percentage(pct):
    """ValueError (one line) unless `pct` (winsorize_pct) is a number in [0, 50)."""
    common.require(config_schema.is_number(pct) and 0 <= pct < 50,
                   f"winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")


def build(config, per_update, **options):
    """(optimizer at `learning_rate`, groups / window 3, `options`; `per_update[optimizer]`;
    the winsorize aggregator or None for the mean)."""
    from cgh_tf import aggregators, optimizers

    aggregation = config.get("aggregation", "mean")
    aggregator = (None if aggregation == "mean"
                  else aggregators.get("winsorize", float(config.winsorize_pct)))
    optimizer = optimizers.build(config.optimizer, float(config.learning_rate), groups=3,
                                 window=3, **options)
    return optimizer, per_update[config.optimizer], aggregator
