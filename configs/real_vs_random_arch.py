"""Real vs random labels across architectures (`python -m trainers.reproduce --experiment=real_vs_random_arch`).

Claim tested (arXiv 2203.10036, abstract): coherence "takes on very different values on real and
random datasets for several common vision networks" (measured as m-coherence, arXiv 2008.01217). Base config of one run of
`trainers/real_vs_random_arch.py`: one architecture (`arch`: `mlp`, `cnn`, `resnet`) trained with
SGD + momentum on real labels (`label_noise=0.0`) or 100 % random labels (`label_noise=1.0`,
uniform over all classes, so ≈ 10 % stay correct). The arms are every architecture × {real,
random} × seed; the m-coherence r and the pairwise coherence (r − 1)/(m − 1) (per layer and
overall) of the training set and the test set (`coherence_samples=0`, issue 24: m = n as the
papers; m > 0: fixed samples of m, the same for every arm) are logged at the epochs of
`log_epochs` (dense early: fractions of the first epoch), streamed in batches of
`coherence_batch_size`.

| field | meaning |
|---|---|
| `dataset` | `mnist1d` (40-long 1-D signals: Conv1D versions of the CNN / ResNet) or `mnist5k` (28×28×1: Conv2D) |
| `arch` | `mlp` (`depth` × Dense(`width`)), `cnn` (per `cnn_filters` entry Conv 3 + max-pool 2, Dense(`dense_width`)), `resnet` (Conv-BN stem, per `resnet_filters` entry `resnet_blocks` basic blocks with BatchNormalization, the first of each later stage with stride 2, global average pooling) |
| `data_seed` | which labels the random arm gets; -1 = the run's `seed` (different random labels per seed) |
| `sample_seed` | which training / test examples form the fixed coherence samples (same for every arm) |
| `early_epoch` | the "early" column of the table (must be in `log_epochs`) |

Scales (`SCALES`): `small` (default; `DATASETS["small"]`, epochs per dataset in
`DATASET_CHANGES`; mnist5k 30 epochs, long enough to see whether the curves cross) and `full`
(both datasets, longer training). `--set=dataset=NAME`
runs only NAME; `--set=arch=NAME` only that architecture.
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        dataset="mnist1d",
        arch="mlp",
        label_noise=0.0,         # set by the arms: 0.0 real, 1.0 random
        noise_kind="uniform",    # random labels uniform over all classes (Zhang et al. 2017)
        data_seed=-1,            # -1: the run's seed
        sample_seed=0,           # the fixed coherence samples (same for every arm)
        seed=0,                  # weights and batch order
        max_train=0,             # 0 = the whole training split
        max_test=0,              # 0 = the whole test split
        # architectures
        width=256,
        depth=2,
        cnn_filters=(32, 64),
        dense_width=128,
        resnet_filters=(16, 32, 64),
        resnet_blocks=1,
        resnet_stem_stride=1,
        bn_momentum=0.9,         # moving-statistics momentum (PyTorch's default 0.1 = Keras 0.9)
        # training: plain SGD with heavy-ball momentum, the same for every architecture
        learning_rate=0.05,
        momentum=0.9,
        batch_size=64,
        epochs=40,
        log_epochs=(0, 0.125, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48,
                    64, 80, 100, 128, 160, 200),
        early_epoch=1,
        coherence_samples=0,     # m of the fixed train and test samples, every arm; 0 = whole splits
        coherence_batch_size=256,  # examples per streamed batch of the coherence measure
        checkpoint_every_logs=1,
    ))


ARCHS = ("mlp", "cnn", "resnet")
# The datasets a scale runs by default; `--set=dataset=NAME` runs only NAME.
DATASETS = {"small": ("mnist1d",), "full": ("mnist1d", "mnist5k")}
SCALES = {
    "small": {},
    "full": {},
}
# mnist5k's 28×28 convolutions cost ~20× MNIST-1D's 40-long ones on this CPU: thinner CNN / ResNet
# and a stride-2 ResNet stem (14×14 after the stem) keep the small scale in its time budget.
MNIST5K_MODELS = {"cnn_filters": (16, 32), "resnet_filters": (8, 16, 32), "resnet_stem_stride": 2}
# Per scale and dataset: changes applied after the scale's and before `--set` overrides.
DATASET_CHANGES = {
    "small": {"mnist1d": {"epochs": 30}, "mnist5k": MNIST5K_MODELS | {"epochs": 30}},
    "full": {"mnist1d": {"epochs": 200}, "mnist5k": MNIST5K_MODELS | {"epochs": 100}},
}
