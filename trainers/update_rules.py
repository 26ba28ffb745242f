"""The update rule of a graph-loop arm: its optimizer (through `cgh_tf.optimizers.build`, the one
parser), how many batches make one update, and how a batch's per-example gradients are aggregated.

| name                                       | what                                                  |
|--------------------------------------------|-------------------------------------------------------|
| `batches_per_update(plain)`                | {optimizer name: batches per update}: M3 takes 3, the others 1 |
| `AGGREGATIONS`                             | "mean" (plain batch gradient) or "winsorize" (arXiv 2002.10657) |
| `check_aggregation(config)`                | one-line ValueError for a bad aggregation / winsorize_pct |
| `build(config, per_update, **options)`     | (optimizer, batches per update, aggregator or None)  |
"""

from . import beyond_common as common

AGGREGATIONS = ("mean", "winsorize")


def batches_per_update(plain):
    """{name: batches per optimizer update} of `plain` (e.g. "sgd", "adamw") and M3 / RM3 / RA3
    over it: M3 updates once per 3 consecutive batches (median of their means); RM3 (running
    median of the last 3 batch gradients) and RA3 (their mean: RM3's control) update every batch."""
    return {plain: 1, "m3": 3, "rm3": 1, "ra3": 1}


def check_aggregation(config):
    """ValueError (one line) unless `config.aggregation` is one of AGGREGATIONS and
    `config.winsorize_pct` is a percentage in [0, 50) that is 0 or unset (None) unless
    winsorizing; winsorizing needs it spelled out (c = 0 is never a default)."""
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
    common.require(common.is_number(pct) and 0 <= pct < 50,
                   f"winsorize_pct={pct!r} must be a percentage in [0, 50) (clipped on each side)")


def build(config, per_update, **options):
    """(optimizer `config.optimizer` at `config.learning_rate` with M3 groups / RM3 window 3 and
    `options` (e.g. inner="adamw", weight_decay), batches per update from the table `per_update`,
    aggregator: None for the mean or `cgh_tf.aggregators` winsorize at `config.winsorize_pct`)."""
    from cgh_tf import aggregators, optimizers

    aggregation = config.get("aggregation", "mean")
    aggregator = (None if aggregation == "mean"
                  else aggregators.get("winsorize", float(config.winsorize_pct)))
    optimizer = optimizers.build(config.optimizer, float(config.learning_rate), groups=3,
                                 window=3, **options)
    return optimizer, per_update[config.optimizer], aggregator
