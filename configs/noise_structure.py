"""Memorisation suppression by the structure of the label noise (`python -m trainers.reproduce
--experiment=noise_structure`).

Base config of every run of `trainers/noise_structure.py`: the `scale` experiment's setting
(`configs/scale.py`: MLP 2 × 256 ReLU, SGD lr 0.2 without momentum, batch 64, 20 epochs) at one
training-set size, n = 4,000 MNIST-1D examples with 40 % label noise of the kind the arm's panel
names (`KINDS`), plus the exact coherence of fixed samples of the corrupted and of the pristine
examples (`coherence_samples` each, with their training labels, inference mode) at every logged
epoch. The noise kinds (`cgh_tf.data.corrupt_labels`):

| kind       | a selected label becomes                        | corrupted examples per (true, noisy) label pair |
|------------|-------------------------------------------------|-------------------------------------------------|
| `pair`     | (y + 1) mod 10                                  | ≈ 160 (10 pairs): a coherent corrupted set      |
| `uniform`  | uniform over the 10 classes (36 % change)       | ≈ 16 (90 pairs)                                 |
| `isolated` | its own dummy class 10 + j (1,610 outputs)      | 1: the ImageNet-at-high-noise regime            |

The same examples are selected for every kind (`data_seed`), and every seed pairs the arms (same
initialisation and batch order). Scales: `small` (default) only; `--set=epochs=N` etc. as usual.
"""

from configs import scale


def get_config():
    config = scale.get_config()
    config.train_size = 4000
    config.label_noise = 0.4
    config.coherence_samples = 256  # m of the fixed corrupted and pristine samples
    return config


KINDS = ("pair", "uniform", "isolated")  # from the most to the least coherent corrupted set
DATASETS = {"small": ("mnist1d",)}
SCALES = {"small": {}}
DATASET_CHANGES = {"small": {"mnist1d": {}}}
WINSORIZE_PCT = scale.WINSORIZE_PCT
