"""Memorisation suppression vs training-set size (`python -m trainers.reproduce --experiment=scale`).

Base config of every run of `trainers/scale.py`: an MLP (`depth` × `width` ReLU) trained with plain
SGD (no momentum, lr 0.2, batch 64: the repository's default memorisation setting) on
`train_size` examples with 50 % uniform label noise, for a fixed number of `epochs` whatever the
size. One run per (dataset, size, arm, seed); the arms (`trainers.scale.ARMS`) change `optimizer`,
`batch_size` or `aggregation` of this config.

| field             | meaning                                                                       |
|-------------------|-------------------------------------------------------------------------------|
| `dataset`         | "mnist1d" (training sets generated at any size, `cgh_tf.data.load(train_size=)`) or "mnist5k" (the first `train_size` ≤ 4,000 of its real digits) |
| `train_size`      | n, the number of training examples (set per run from `SIZES`)                 |
| `label_noise`, `noise_kind` | 50 %, "uniform" (the authors' ImageNet code: ≈ 45 % of labels change) |
| `data_seed`       | which labels are corrupted (the same for every arm and seed)                  |
| `seed`            | weights and batch order (paired across arms: same init, same permutations)    |
| `optimizer`       | "sgd", "m3" (one update per 3 batches), "rm3", "ra3"                          |
| `aggregation`, `winsorize_pct` | "mean", or "winsorize" with c % clipped per side (per-example) |
| `batch_size`      | examples per batch B; M3 consumes 3 batches per update                         |
| `epochs`, `log_epochs` | training length (epochs, the same at every size) and when to measure     |

Scales (`SCALES`, sizes in `SIZES`): `small` (default): MNIST-1D n ∈ {1,000, 4,000, 16,000}, 20
epochs; with `--set=dataset=mnist5k`: n ∈ {1,000, 2,000, 4,000} (all it has), 20 epochs. `full`:
MNIST-1D n ∈ {1,000, 4,000, 16,000, 64,000}, 40 epochs; mnist5k as small with 100 epochs.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        train_size=2000,
        label_noise=0.5,
        noise_kind="uniform",
        data_seed=0,
        seed=0,
        width=256,
        depth=2,
        arm="sgd",               # the arm's name (trainers.scale.ARMS); set per arm
        optimizer="sgd",
        learning_rate=0.2,
        batch_size=64,
        aggregation="mean",
        winsorize_pct=0.0,
        epochs=20,
        log_epochs=(0, 1, 2, 3, 5, 8, 12, 16, 20, 30, 40, 60, 80, 100),
        checkpoint_every_logs=1,
    ))


SIZES = {  # scale -> dataset -> training-set sizes of the sweep
    "small": {"mnist1d": (1000, 4000, 16000), "mnist5k": (1000, 2000, 4000)},
    "full": {"mnist1d": (1000, 4000, 16000, 64000), "mnist5k": (1000, 2000, 4000)},
}
# The datasets a scale runs by default; `--set=dataset=NAME` runs only NAME (one of SIZES[scale]).
DATASETS = {"small": ("mnist1d",), "full": ("mnist1d", "mnist5k")}
SCALES = {"small": {}, "full": {"epochs": 40}}
# Per scale and dataset: changes applied after the scale's and before `--set` overrides.
DATASET_CHANGES = {
    "small": {"mnist1d": {}, "mnist5k": {}},
    "full": {"mnist1d": {}, "mnist5k": {"epochs": 100}},
}
WINSORIZE_PCT = 2.0  # c of the winsorized arm (at batch 64: 1 example clipped per side)
IMAGENET_TRAIN_SIZE = 1281167  # the extrapolation target
