"""Winsorizing against its two obvious alternative explanations (`python -m trainers.reproduce
--experiment=winsorize_controls`, issue 24).

Base config of every run of `trainers/winsorize_controls.py`: the `scale` experiment's setting
(`configs/scale.py`: MLP 2 × 256 ReLU, plain SGD lr 0.2 without momentum, batch 64) on n = 4,000
MNIST-1D examples with 40 % uniform label noise (as `noise_structure`'s uniform panel), 20
epochs, logged at every epoch (the memorisation frontier). The arm (`trainers.winsorize_controls.
ARMS`) and `winsorize_pct` (c, or the c an arm is matched to) are set per arm.

| field                 | meaning                                                               |
|-----------------------|-----------------------------------------------------------------------|
| `arm`                 | "sgd", "winsorize", "clip" (per-example norm clipping of the share of values winsorizing at c changes), "matched_lr" (SGD at lr × the winsorized / mean update-norm ratio) |
| `winsorize_pct`       | c of the arm (0 for "sgd")                                            |
| `calibration_batches` | K: the share and the norm ratio are measured at initialisation on the first K batches of epoch 0 |
| `frontier_pristine`   | P: the frontier statistic is the corrupted train accuracy where the pristine one first reaches P (declared before the runs) |
"""

from configs import scale


def get_config():
    config = scale.get_config()
    config.train_size = 4000
    config.label_noise = 0.4
    config.epochs = 20
    config.log_epochs = tuple(range(0, 41))
    config.calibration_batches = 16
    config.frontier_pristine = 0.65
    config.checkpoint_every_logs = 5  # a checkpoint every 5 epochs
    del config["optimizer"], config["aggregation"]
    return config


WINSORIZE_PCTS = (2.0, 4.0)  # at batch 64: 1 and 3 values clipped per side and coordinate
DATASETS = {"small": ("mnist1d",)}
SCALES = {"small": {}}
DATASET_CHANGES = {"small": {"mnist1d": {}}}
