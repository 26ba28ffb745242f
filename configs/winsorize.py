"""Winsorized gradient descent (ICLR 2020, arXiv 2002.10657) on MNIST-1D with 50 % label noise.

Per coordinate, the 100 per-example gradients of a batch are clipped to their c-th and (100 − c)-th
percentile before averaging, so with batch 100 exactly c examples are clipped on each side. c = 0 is
plain SGD. The paper's claim: winsorizing suppresses the weak directions that memorise the noisy
labels (lower accuracy on corrupted examples) far more than it slows learning of the pristine ones.

| field                      | value                  |
|----------------------------|------------------------|
| model                      | MLP 3 × 256 (ReLU)     |
| optimizer                  | plain SGD, lr 0.1, no momentum |
| `optimizer.aggregation`    | "winsorize"            |
| `optimizer.winsorize_pct`  | 2 (single-run default) |
| `batch_size`               | 100, `drop_remainder`  |
| `sweep`                    | `optimizer.winsorize_pct` ∈ (0, 1, 2, 4, 8) |
| `num_epochs`               | 60                     |

One run: `python -m trainers.train --config=configs/winsorize.py --workdir=/tmp/w2`.
The sweep: one workdir per value,

    for c in 0 1 2 4 8; do
      python -m trainers.train --config=configs/winsorize.py --workdir=/tmp/wins/c$c \\
          --config.optimizer.winsorize_pct=$c
    done

(`sweep` = `{"field", "values"}` is what the multi-arm runner `trainers/reproduce.py` reads; the
trainer ignores it). Cost per step: ≈ 3–4× plain SGD for c ≤ 4 (fused XLA network; the first step
compiles it), ≈ 50× for c = 8 at batch 100 (too large for the network: top_k on column blocks).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the winsorized-GD config (c = 2)."""
    config = default.get_config()
    config.model.kwargs = ml_collections.ConfigDict({"depth": 3, "width": 256})
    config.learning_rate = 0.1
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.0
    config.optimizer.aggregation = "winsorize"
    config.optimizer.winsorize_pct = 2.0
    config.batch_size = 100
    config.drop_remainder = True
    config.num_epochs = 60
    config.sweep = ml_collections.ConfigDict(
        {"field": "optimizer.winsorize_pct", "values": (0.0, 1.0, 2.0, 4.0, 8.0)})
    return config
