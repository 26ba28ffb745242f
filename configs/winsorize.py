"""Winsorized gradient descent (ICLR 2020, arXiv 2002.10657) on MNIST-1D with 50 % label noise.

Per coordinate, the per-example gradients of a batch are clipped to their c-th and (100 − c)-th
nearest-rank percentiles before averaging. c = 0 is plain SGD. The paper's claim: winsorizing
suppresses the weak directions that memorise the noisy labels (lower accuracy on corrupted
examples) far more than it slows learning of the pristine ones.

This is the setup behind the README's "Winsorized GD" table (`trainers/memorisation.py`
on `configs/default.py`: 50 % uniform noise, all 4,000 examples, 30 epochs, c ∈ {2, 4, 8} against
c = 0), so a single run of this config reproduces one cell of that table:

| field                      | value                  |
|----------------------------|------------------------|
| model                      | MLP 2 × 256 (ReLU)     |
| optimizer                  | plain SGD, lr 0.2, no momentum |
| `optimizer.aggregation`    | "winsorize"            |
| `optimizer.winsorize_pct`  | 2 (single-run default) |
| `batch_size`               | 64, `drop_remainder` (winsorizing needs a static batch) |
| `sweep`                    | `optimizer.winsorize_pct` ∈ (0, 2, 4, 8) |
| `num_epochs`               | 30                     |

One run: `python -m trainers.train --config=configs/winsorize.py --workdir=/tmp/w2`.
The sweep: one workdir per value,

    for c in 0 2 4 8; do
      python -m trainers.train --config=configs/winsorize.py --workdir=/tmp/wins/c$c \\
          --config.optimizer.winsorize_pct=$c
    done

(`sweep` = `{"field", "values"}` lists the values of the memorisation experiment's arms; the
trainer ignores it). Cost per step, measured at batch 100 with a 3 × 256 MLP: ≈ 3–4× plain SGD for
c ≤ 4 (fused XLA network; the first step compiles it), ≈ 50× for c = 8 (too large for the network:
top_k on column blocks).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the winsorized-GD config (c = 2) of the README's winsorization table."""
    config = default.get_config()
    config.model.kwargs = ml_collections.ConfigDict({"depth": 2, "width": 256})
    config.learning_rate = 0.2
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.0
    config.optimizer.aggregation = "winsorize"
    config.optimizer.winsorize_pct = 2.0
    config.batch_size = 64
    config.drop_remainder = True
    config.num_epochs = 30
    config.sweep = ml_collections.ConfigDict(
        {"field": "optimizer.winsorize_pct", "values": (0.0, 2.0, 4.0, 8.0)})
    return config
