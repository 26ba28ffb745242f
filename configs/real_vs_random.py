"""Real vs random labels (Zhang et al. 2017; 2008.01217, 2203.10036): coherence while fitting each.

MNIST-1D, MLP 2 × 256, plain SGD lr 0.2, batch 64, 100 epochs, with every coherence measurement on:

| field                         | value | what it gives                                                  |
|-------------------------------|-------|----------------------------------------------------------------|
| `label_noise`                 | 0.0   | real labels (the single-run default); 1.0 = random labels     |
| `coherence.every`             | 1     | m-coherence / alpha of every training batch (`m_coherence`, `alpha`) |
| `coherence.per_layer`         | True  | also per layer, batch and monitor                              |
| `coherence.monitor_samples`   | 256   | fixed samples train / test / pristine (/ corrupted) of m = 256 |
| `coherence.monitor_every_steps` | 9   | the monitor also at step 0 and every 9 batches (7 per epoch of 63 batches; `step_history`) |
| `learning_times.every_steps`  | 20    | per-example learning times every 20 batches                   |
| `sweep`                       | `label_noise` ∈ (0.0, 1.0) | the two arms: real, random labels        |

With random labels (p = 1, "uniform" noise) about 10 % of the labels stay correct, hence the
pristine sample; the corrupted sample and f^p / f^c are logged when p > 0.

    python -m trainers.train --config=configs/real_vs_random.py --workdir=/tmp/real
    python -m trainers.train --config=configs/real_vs_random.py --workdir=/tmp/random \\
        --config.label_noise=1.0

`sweep` = `{"field": dotted config field, "values": tuple}` lists the two arms of the
`real_vs_random` experiment (`trainers/real_vs_random.py`); the trainer itself ignores it.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    """Return the real-labels run; `--config.label_noise=1.0` gives the random-labels arm."""
    config = default.get_config()
    config.label_noise = 0.0
    config.num_epochs = 100
    config.coherence.every = 1
    config.coherence.per_layer = True
    config.coherence.monitor_samples = 256
    config.coherence.monitor_every_steps = 9
    config.learning_times.every_steps = 20
    config.sweep = ml_collections.ConfigDict({"field": "label_noise", "values": (0.0, 1.0)})
    return config
